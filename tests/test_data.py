"""analysis/data.py: the text corpora split by whole documents, windows of bytes and of memory-mapped
token files, tokenizers, Hugging Face datasets, the command line, IDX image sets."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_idx_set
from analysis.data import (END_OF_TEXT, VAL_EVERY, DataNotFoundError, FASHION_MNIST_DIR,
                           load_dataset_text, load_images, load_text, load_token_files, load_tokenizer, main,
                           sample_windows, train_tokenizer, write_token_files)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arrays = write_idx_set(tmp_path, compress=compress)
    data = load_images(tmp_path)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(data.train_images.numpy(), arrays["train"][0])
    np.testing.assert_array_equal(data.test_labels.numpy(), arrays["t10k"][1])
    assert data.source == str(tmp_path)


def test_missing_image_set_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        load_images(tmp_path)
    if not FASHION_MNIST_DIR.exists():
        with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
            load_images()


def test_not_an_idx_file_is_refused(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(20)))
    with pytest.raises(ValueError, match="not an IDX file"):
        load_images(tmp_path)


def test_shakespeare_is_split_by_whole_plays():
    corpus = load_text("shakespeare")
    n = len(corpus.train_documents) + len(corpus.val_documents)
    assert n == 38 and len(corpus.val_documents) == n // VAL_EVERY
    assert not set(corpus.train_documents) & set(corpus.val_documents)
    assert corpus.vocab_size == 256 and corpus.train.dtype == torch.uint8
    # a play's opening line appears in its own split only
    title = corpus.val_documents[0].replace("-", " ")
    assert len(corpus.val) > 100_000 and len(corpus.train) > 8 * len(corpus.val)
    text = bytes(corpus.val[:200].tolist()).decode()
    assert text.startswith("# ") and title.split()[0].lower() in text.lower()


def test_corpus_hash_is_stable_and_distinguishes_corpora():
    a, b = load_text("shakespeare"), load_text("shakespeare")
    assert a.sha256 == b.sha256 and torch.equal(a.train, b.train)
    stdlib = load_text("stdlib")
    assert stdlib.sha256 != a.sha256 and not any("test" in d.split("/")[:-1] for d in stdlib.train_documents)


def test_unknown_corpus():
    with pytest.raises(ValueError, match="allowed: shakespeare, stdlib"):
        load_text("wikipedia")


def test_windows_are_shifted_by_one_and_reproducible():
    tokens = torch.arange(1000) % 251
    tokens = tokens.to(torch.uint8)
    x, y = sample_windows(tokens, 6, 32, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (6, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], (x[:, -1] + 1) % 251)
    x2, _ = sample_windows(tokens, 6, 32, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="too short"):
        sample_windows(tokens[:20], 2, 32, torch.Generator())


def test_site_packages_is_the_third_corpus():
    with pytest.raises(ValueError, match="allowed: shakespeare, stdlib, site-packages"):
        load_text("wikipedia")
    with pytest.raises(ValueError, match="roots applies to the 'site-packages' corpus only"):
        load_text("stdlib", roots=["/nowhere"])


# ---------------------------------------------------------------- token files

def test_token_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 1000, 5000), rng.integers(0, 1000, 700)
    folder = write_token_files(tmp_path / "tokens", torch.from_numpy(train), val, 1000, tokenizer="tok", source="test")
    meta = json.loads((folder / "meta.json").read_text())
    raw = (folder / "train.bin").read_bytes() + (folder / "val.bin").read_bytes()
    assert meta == {"vocab_size": 1000, "dtype": "uint16", "train_tokens": 5000, "val_tokens": 700,
                    "sha256": hashlib.sha256(raw).hexdigest(), "tokenizer": "tok", "source": "test"}
    assert raw == train.astype("<u2").tobytes() + val.astype("<u2").tobytes()
    corpus = load_token_files(folder)
    assert isinstance(corpus.train, np.memmap) and isinstance(corpus.val, np.memmap)
    assert corpus.train.dtype == np.uint16 and not corpus.train.flags.writeable
    np.testing.assert_array_equal(corpus.train, train)
    np.testing.assert_array_equal(corpus.val, val)
    assert (corpus.name, corpus.vocab_size, corpus.tokenizer, corpus.sha256) == (
        f"files:{folder}", 1000, "tok", meta["sha256"])
    assert corpus.train_documents == corpus.val_documents == ()


def test_a_vocabulary_over_65536_is_stored_as_uint32(tmp_path):
    train, val = np.array([0, 65535, 65536, 69999, 3]), np.array([69999, 1, 2])
    folder = write_token_files(tmp_path, train, val, 70_000)
    assert json.loads((folder / "meta.json").read_text())["dtype"] == "uint32"
    assert (folder / "train.bin").stat().st_size == 4 * len(train)
    corpus = load_token_files(folder)
    assert corpus.train.dtype == np.uint32 and corpus.vocab_size == 70_000
    np.testing.assert_array_equal(corpus.train, train)
    assert json.loads((write_token_files(tmp_path / "edge", train[:2], val[1:], 65_536) / "meta.json")
                      .read_text())["dtype"] == "uint16"


def test_npy_token_files(tmp_path):
    np.save(tmp_path / "train.npy", np.array([5, 9, 2, 7], dtype=np.uint32))
    np.save(tmp_path / "val.npy", np.array([1, 11, 3], dtype=np.uint32))
    corpus = load_token_files(tmp_path)
    assert isinstance(corpus.train, np.memmap) and corpus.vocab_size == 12   # the largest token + 1
    np.testing.assert_array_equal(corpus.val, [1, 11, 3])
    (tmp_path / "meta.json").write_text('{"vocab_size": 50}')
    assert load_token_files(tmp_path).vocab_size == 50
    (tmp_path / "meta.json").write_text('{"vocab_size": 10}')
    with pytest.raises(ValueError, match=r"val.npy holds token 11 at position 1, but vocab_size is 10"):
        load_token_files(tmp_path)


def _corrupt(folder: Path, what: str) -> None:
    """Break token files written by write_token_files in one way."""
    meta = json.loads((folder / "meta.json").read_text())
    if what == "no val.bin":
        (folder / "val.bin").unlink()
    elif what == "no meta.json":
        (folder / "meta.json").unlink()
    elif what == "dtype":
        (folder / "meta.json").write_text(json.dumps({**meta, "dtype": "int16"}))
    elif what == "no vocab_size":
        (folder / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    elif what == "odd size":
        (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes() + b"\x00")
    elif what == "token too large":
        del meta["sha256"]
        (folder / "meta.json").write_text(json.dumps({**meta, "vocab_size": 90}))
    elif what == "val too small":
        (folder / "val.bin").write_bytes(np.array([1], "<u2").tobytes())
    elif what == "changed":
        (folder / "val.bin").write_bytes(np.array([1, 2, 3], "<u2").tobytes())
    elif what == "not json":
        (folder / "meta.json").write_text("vocab_size = 100")


@pytest.mark.parametrize("what, error, match", [
    ("no val.bin", DataNotFoundError, r"lacks val.bin; token files are train.bin, val.bin and meta.json"),
    ("no meta.json", DataNotFoundError, r"lacks meta.json"),
    ("dtype", ValueError, r"dtype 'int16' is not allowed; token files hold uint16 or uint32"),
    ("no vocab_size", ValueError, r"must hold at least \{\"vocab_size\""),
    ("odd size", ValueError, r"train.bin has 201 bytes, not a multiple of 2 \(uint16\)"),
    ("token too large", ValueError, r"train.bin holds token 99 at position 3, but vocab_size is 90"),
    ("val too small", ValueError, r"val.bin holds 1 tokens; each split needs at least 2"),
    ("changed", ValueError, r"SHA-256 .* differs from meta.json's"),
    ("not json", ValueError, r"meta.json is not JSON"),
])
def test_bad_token_files_are_named(tmp_path, what, error, match):
    train = np.arange(100) % 100
    train[3] = 99
    folder = write_token_files(tmp_path / "tokens", train, np.arange(10), 100)
    _corrupt(folder, what)
    with pytest.raises(error, match=match):
        load_token_files(folder)


def test_token_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no token folder .*python -m analysis.data prepare"):
        load_token_files(tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="lacks train.npy, val.npy; token files are train.bin"):
        load_token_files(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        load_token_files(tmp_path / "file")
    with pytest.raises(ValueError, match="val tokens holds token 7 at position 1, but vocab_size is 7"):
        write_token_files(tmp_path / "w", np.array([0, 1]), np.array([0, 7]), 7)
    with pytest.raises(ValueError, match="train tokens must be a 1-D integer Tensor or numpy array, got list"):
        write_token_files(tmp_path / "w", [0, 1], np.array([0, 6]), 7)
    with pytest.raises(ValueError, match="train tokens holds token -1 at position 0"):
        write_token_files(tmp_path / "w", np.array([-1, 1]), np.array([0, 6]), 7)
    with pytest.raises(ValueError, match="val has 1 tokens; each split needs at least 2"):
        write_token_files(tmp_path / "w", np.array([0, 1]), np.array([6]), 7)
    with pytest.raises(ValueError, match=r"vocab_size must be an integer in \[1, 2\*\*32\]"):
        write_token_files(tmp_path / "w", np.array([0, 1]), np.array([0, 1]), 2 ** 32 + 1)


def test_memmap_windows_equal_tensor_windows(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 70_000, 3000)
    folder = write_token_files(tmp_path, tokens, tokens[:100], 70_000)
    mapped = load_token_files(folder).train
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        x, y = sample_windows(mapped, 4, 64, a)
        x_ref, y_ref = sample_windows(torch.from_numpy(tokens), 4, 64, b)
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert torch.equal(a.get_state(), b.get_state())
    with pytest.raises(ValueError, match="1-D unsigned integers, got 1-D int64"):
        sample_windows(tokens, 4, 64, a)


# ---------------------------------------------------------------- the site-packages corpus

def _fake_site_packages(root: Path) -> dict[str, bytes]:
    """Ten packages and a module; with an empty file, a non-UTF-8 file, a duplicate and a __pycache__.
    Returns the files that belong to the corpus: relative path -> bytes."""
    files = {f"pkg{i}/__init__.py": f"# package {i}\nvalue = {i} * 'é'\n".encode() for i in range(10)}
    files["pkg7/core.py"] = ("def zyzzyva():\n    return 'zyzzyva'\n" * 40).encode()   # validation only
    files["pkg2/sub/util.py"] = b"import os\nprint(os.sep, '" + END_OF_TEXT.encode() + b"')\n"
    files["single.py"] = b"ONE = 1\n"
    for name, data in {**files, "pkg1/empty.py": b"", "pkg3/latin.py": "x = 'é'\n".encode("latin-1"),
                       "pkg9/copy.py": files["pkg2/sub/util.py"], "pkg4/__pycache__/x.py": b"y = 2\n",
                       "pkg5/readme.txt": b"not python"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_site_packages_split_by_package_without_duplicates(tmp_path):
    files = _fake_site_packages(tmp_path)
    corpus = load_text("site-packages", roots=[tmp_path])
    packages = sorted({name.split("/")[0] for name in files} | {"pkg1", "pkg3", "pkg9"})
    held_out = set(packages[VAL_EVERY - 1::VAL_EVERY])
    assert held_out == {"pkg7"}
    assert corpus.val_documents == tuple(sorted(n for n in files if n.split("/")[0] in held_out))
    assert corpus.train_documents == tuple(sorted(n for n in files if n.split("/")[0] not in held_out))
    assert bytes(corpus.train.numpy()) == b"".join(files[n] for n in corpus.train_documents)
    assert bytes(corpus.val.numpy()) == b"".join(files[n] for n in corpus.val_documents)
    assert corpus.sha256 == hashlib.sha256(bytes(corpus.train.numpy()) + bytes(corpus.val.numpy())).hexdigest()
    assert corpus.vocab_size == 256 and corpus.tokenizer == "bytes" and corpus.train.dtype == torch.uint8
    with pytest.raises(DataNotFoundError, match="no site-packages folder"):
        load_text("site-packages", roots=[tmp_path / "missing"])


def test_site_packages_of_this_python():
    corpus = load_text("site-packages")
    train = {name.split("/")[0] for name in corpus.train_documents}
    val = {name.split("/")[0] for name in corpus.val_documents}
    assert not train & val and "numpy" in train | val and len(train | val) >= VAL_EVERY
    assert len(corpus.train) > 10_000_000 and len(corpus.val) > 100_000 and corpus.vocab_size == 256
    digest = hashlib.sha256(corpus.train.numpy())
    digest.update(corpus.val.numpy())
    assert corpus.sha256 == digest.hexdigest()
    # a sample of the documents: no two with the same contents, and their bytes in order in the split
    root = Path(sysconfig.get_paths()["purelib"])
    picked = [root / name for name in corpus.train_documents[:200]]
    contents = [path.read_bytes() for path in picked]
    assert len(set(contents)) == len(contents)
    assert bytes(corpus.train[:sum(map(len, contents))].numpy()) == b"".join(contents)


# ---------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE of at most 320 tokens trained on a fake site-packages, and that folder."""
    root = tmp_path_factory.mktemp("site-packages")
    _fake_site_packages(root)
    return train_tokenizer("site-packages", 320, root.parent / "bpe" / "tokenizer.json", roots=[root]), root


def _split_documents(tokens: np.ndarray, tokenizer) -> list[str]:
    """The documents of tokens in which each document ends with the end-of-text token (id 0)."""
    parts = np.split(tokens, np.flatnonzero(tokens == 0) + 1)
    assert len(parts[-1]) == 0
    return [tokenizer.decode(part.tolist()) for part in parts[:-1]]


def test_bpe_round_trip_on_training_documents_only(bpe):
    path, root = bpe
    tokenizer = load_tokenizer(path)
    assert 257 < tokenizer.get_vocab_size() <= 320 and tokenizer.token_to_id(END_OF_TEXT) == 0
    assert not any("zyzz" in token for token in tokenizer.get_vocab())   # only in a validation package
    corpus = load_text("site-packages", tokenizer=path, roots=[root])
    assert corpus.train.dtype == corpus.val.dtype == np.uint16
    assert corpus.vocab_size == tokenizer.get_vocab_size() and corpus.tokenizer == str(path.resolve())
    for tokens, names in ((corpus.train, corpus.train_documents), (corpus.val, corpus.val_documents)):
        assert _split_documents(tokens, tokenizer) == [(root / name).read_text() for name in names]
    assert END_OF_TEXT in (root / "pkg2/sub/util.py").read_text()   # encoded as text, not as the token
    assert corpus.sha256 == hashlib.sha256(corpus.train.tobytes() + corpus.val.tobytes()).hexdigest()
    # a loaded tokenizer works the same, and token files remember which tokenizer made them
    assert np.array_equal(load_text("site-packages", tokenizer=tokenizer, roots=[root]).train, corpus.train)
    folder = write_token_files(root.parent / "tokens", corpus.train, corpus.val, corpus.vocab_size,
                               tokenizer=corpus.tokenizer)
    assert load_token_files(folder, tokenizer=path).sha256 == corpus.sha256
    with pytest.raises(ValueError, match=r"the tokenizer bytes has 256 tokens, but .* was made by tokenizer .*"
                                         r"bpe/tokenizer.json with vocab_size"):
        load_token_files(folder, tokenizer="bytes")


def test_tokenizer_errors(tmp_path, bpe):
    for bad in (256, 2 ** 32, 300.0):
        with pytest.raises(ValueError, match=r"vocab_size must be an integer in \[257, 2\*\*32\)"):
            train_tokenizer("shakespeare", bad, tmp_path / "tok.json")
    with pytest.raises(DataNotFoundError, match="no tokenizer file or folder .*missing.json: expected a tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json is not a tokenizer.json of the tokenizers library"):
        load_tokenizer(tmp_path / "bad.json")
    assert load_tokenizer(bpe[0].parent).get_vocab_size() == load_tokenizer(bpe[0]).get_vocab_size()   # a folder


# ---------------------------------------------------------------- Hugging Face datasets

@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """The datasets library's cache in tmp_path, not in the home folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _jsonl(path: Path, n: int = 21) -> list[str]:
    texts = [f"document {i}: " + "café " * (i % 4) + ("\nsecond line" if i % 3 else "") for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts)))
    return texts


def test_jsonl_dataset_holds_out_every_val_every_th_document(tmp_path, hf_cache, bpe):
    texts = _jsonl(tmp_path / "docs.jsonl")
    tokenizer = load_tokenizer(bpe[0])
    corpus = load_dataset_text(tmp_path / "docs.jsonl", bpe[0])
    held_out = [i % VAL_EVERY == VAL_EVERY - 1 for i in range(len(texts))]
    assert _split_documents(corpus.train, tokenizer) == [t for t, out in zip(texts, held_out) if not out]
    assert _split_documents(corpus.val, tokenizer) == [texts[7], texts[15]]
    assert corpus.name == f"dataset:{tmp_path / 'docs.jsonl'}:train"
    assert corpus.vocab_size == tokenizer.get_vocab_size() and corpus.train.dtype == np.uint16
    streamed = load_dataset_text(tmp_path / "docs.jsonl", bpe[0], streaming=True)
    assert np.array_equal(streamed.train, corpus.train) and np.array_equal(streamed.val, corpus.val)
    assert streamed.sha256 == corpus.sha256
    first = load_dataset_text(tmp_path / "docs.jsonl", "bytes", val_every=3, max_documents=7, streaming=True)
    assert first.train.dtype == np.uint8 and first.vocab_size == 256 and first.tokenizer == "bytes"
    assert bytes(first.train) == "".join(texts[i] for i in (0, 1, 3, 4, 6)).encode()
    assert bytes(first.val) == (texts[2] + texts[5]).encode()


def test_txt_dataset_is_one_document_per_line(tmp_path, hf_cache):
    lines = [f"line {i} ünï" for i in range(10)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    corpus = load_dataset_text(tmp_path / "lines.txt", "bytes", val_every=4)
    assert bytes(corpus.val) == (lines[3] + lines[7]).encode()
    assert bytes(corpus.train) == "".join(lines[i] for i in (0, 1, 2, 4, 5, 6, 8, 9)).encode()


@pytest.mark.parametrize("streaming", [False, True])
def test_dataset_errors(tmp_path, hf_cache, streaming):
    _jsonl(tmp_path / "docs.jsonl")
    with pytest.raises(ValueError, match=r"has no column 'body'; its columns: id, text"):
        load_dataset_text(tmp_path / "docs.jsonl", "bytes", text_column="body", streaming=streaming)
    with pytest.raises(DataNotFoundError, match="no dataset file or folder .*missing.jsonl"):
        load_dataset_text(tmp_path / "missing.jsonl", "bytes", streaming=streaming)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_dataset_text(tmp_path / "docs.jsonl", None, streaming=streaming)
    with pytest.raises(ValueError, match="gave 6 documents; every 8th is validation, so at least 8 are needed"):
        load_dataset_text(tmp_path / "docs.jsonl", "bytes", max_documents=6, streaming=streaming)
    with pytest.raises(ValueError, match=r"docs.jsonl: (Unknown|Bad) split.*validation.*\['train'\]"):
        load_dataset_text(tmp_path / "docs.jsonl", "bytes", split="validation", streaming=streaming)
    (tmp_path / "null.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
    with pytest.raises(ValueError, match="row 1 of dataset .*null.jsonl holds NoneType in column 'text', not text"):
        load_dataset_text(tmp_path / "null.jsonl", "bytes", streaming=streaming)
    (tmp_path / "docs.xml").write_text("<doc/>")
    with pytest.raises(ValueError, match=r"docs.xml: a dataset file must end in .txt, .json, .jsonl"):
        load_dataset_text(tmp_path / "docs.xml", "bytes", streaming=streaming)


# ---------------------------------------------------------------- command line

def test_prepare_writes_loadable_token_files(tmp_path, hf_cache, bpe, capsys):
    _jsonl(tmp_path / "docs.jsonl")
    main(["prepare", "--dataset", str(tmp_path / "docs.jsonl"), "--tokenizer", str(bpe[0]), "--out",
          str(tmp_path / "tokens")])
    out = capsys.readouterr().out
    written = load_token_files(tmp_path / "tokens", tokenizer=bpe[0])
    direct = load_dataset_text(tmp_path / "docs.jsonl", bpe[0])
    assert np.array_equal(written.train, direct.train) and np.array_equal(written.val, direct.val)
    assert written.sha256 == direct.sha256 and written.tokenizer == direct.tokenizer == str(bpe[0].resolve())
    assert f"{len(direct.train):,} train and {len(direct.val):,} validation tokens" in out
    assert str(tmp_path / "tokens") in out


@pytest.mark.parametrize("argv, match", [
    (["prepare", "--dataset", "{tmp}/missing.jsonl", "--tokenizer", "bytes", "--out", "{tmp}/t"],
     "no dataset file or folder"),
    (["prepare", "--dataset", "{tmp}/docs.jsonl", "--text-column", "body", "--tokenizer", "bytes", "--out", "{tmp}/t"],
     "has no column 'body'; its columns: id, text"),
    (["prepare", "--corpus", "shakespeare", "--tokenizer", "{tmp}/missing.json", "--out", "{tmp}/t"],
     "no tokenizer file or folder"),
    (["prepare", "--corpus", "stdlib", "--split", "val", "--tokenizer", "bytes", "--out", "{tmp}/t"],
     "--split apply to --dataset only"),
    (["prepare", "--corpus", "wikipedia", "--tokenizer", "bytes", "--out", "{tmp}/t"], "invalid choice: 'wikipedia'"),
    (["tokenizer", "--corpus", "shakespeare", "--vocab-size", "256", "--out", "{tmp}/tok.json"],
     "expected an integer >= 257"),
    (["tokenizer", "--corpus", "shakespeare", "--vocab-size", str(2 ** 32), "--out", "{tmp}/tok.json"],
     r"vocab_size must be an integer in \[257, 2\*\*32\)"),
])
def test_bad_input_is_a_one_line_usage_error(tmp_path, hf_cache, capsys, argv, match):
    _jsonl(tmp_path / "docs.jsonl")
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"python -m analysis.data {argv[0]}: error: ") and re.search(match, err)


def test_command_line_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.data", "prepare", "--dataset", str(tmp_path / "no.jsonl"),
                           "--tokenizer", "bytes", "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "no dataset file or folder" in done.stderr and "Traceback" not in done.stderr
