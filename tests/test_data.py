"""analysis/data.py: the text corpora split by whole documents, byte windows, IDX image sets."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import write_idx_set
from analysis.data import (VAL_EVERY, DataNotFoundError, FASHION_MNIST_DIR, load_images, load_text,
                           sample_windows)


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
