"""theory.masks: condition (6) and the inner-product conditions of Theorem 2.1 (PAPERS.md §A.2)."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theory.masks import (MaskReport, check_mask, condition_6_holds, inner_product_mask,
                          probe_vectors, soft_mask, zoo_mask)
from zoo.caution import caution_mask

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
vectors = st.integers(1, 12).flatmap(lambda n: arrays(np.float64, n, elements=finite))
pairs = st.integers(1, 12).flatmap(lambda n: st.tuples(arrays(np.float64, n, elements=finite),
                                                         arrays(np.float64, n, elements=finite)))
ZOO_NORMS = ["mean", "paper", 0.0, 0.01, 0.1, 0.5]


@settings(max_examples=150, deadline=None)
@given(pairs, st.sampled_from(ZOO_NORMS))
def test_zoo_mask_is_what_the_zoo_computes_for_any_factorisation(pair, norm):
    u, g = (torch.from_numpy(a) for a in pair)
    # x = u * g as a float: exact in sign unless the product underflows (the zoo compares signs)
    assume(bool(((u * g != 0) | (u == 0) | (g == 0)).all()))
    expected = caution_mask(u, g, norm).numpy()
    np.testing.assert_array_equal(zoo_mask(norm)((u * g).numpy()), expected)


@pytest.mark.parametrize("c", [0.0, 0.01, 0.1, 1.0])
def test_soft_mask_formula_matches_the_zoo(c):
    for x in probe_vectors(dims=(1, 4), samples=20):
        np.testing.assert_array_equal(soft_mask(c)(x), zoo_mask(c)(x))


@pytest.mark.parametrize("norm", ["mean", 0.0, 0.01, 0.1, 0.5])
def test_mean_and_soft_masks_satisfy_everything(norm):
    report = check_mask(zoo_mask(norm))
    assert isinstance(report, MaskReport)
    assert report.condition_6 and report.inner_nonneg and report.faster_than_base, report.note
    assert report.counterexample is None and report.ok
    assert report.checked > 1000   # corners, every {-1,0,1}^n pattern for n <= 5, random draws


def test_paper_normalisation_violates_condition_6_when_every_coordinate_agrees():
    report = check_mask(zoo_mask("paper"), "paper")
    assert not report.condition_6
    assert report.inner_nonneg               # x^T phi >= 0 still holds
    assert not report.faster_than_base       # x^T (1 - phi) = sum(x)/(n+1) > 0 in that corner
    x = report.counterexample
    assert (x > 0).all()                     # the all-agree corner
    n = x.size
    np.testing.assert_allclose(zoo_mask("paper")(x), n / (n + 1), rtol=1e-15)
    assert "every coordinate agrees" in report.note


@settings(max_examples=150, deadline=None)
@given(vectors)
def test_paper_normalisation_satisfies_condition_6_outside_that_corner(x):
    phi = zoo_mask("paper")(x)
    assert float(x @ phi) >= 0
    if (x > 0).all():
        assert not condition_6_holds(x, phi)
    else:
        assert condition_6_holds(x, phi)


@settings(max_examples=200, deadline=None)
@given(vectors, st.sampled_from(["mean", 0.0, 0.01, 0.1, 2.0]))
def test_condition_6_and_inner_products_on_drawn_vectors(x, norm):
    phi = zoo_mask(norm)(x)
    assert condition_6_holds(x, phi)
    scale = float(np.abs(x).sum() * (1 + np.abs(phi).max()))
    assert float(x @ phi) >= -1e-12 * scale
    assert float(x @ (1 - phi)) <= 1e-12 * scale


@pytest.mark.parametrize("mask, name", [(lambda x: 0.5 * (x > 0), "0.5*1[x>0]"),
                                        (lambda x: np.zeros_like(x), "phi=0")])
def test_shrinking_masks_are_rejected(mask, name):
    report = check_mask(mask, name)
    assert not report.condition_6 and not report.faster_than_base
    assert report.inner_nonneg
    assert report.counterexample is not None and (report.counterexample > 0).any()


def test_inner_product_mask_meets_theorem_2_1_but_not_condition_6():
    report = check_mask(inner_product_mask)
    assert not report.condition_6
    assert report.inner_nonneg and report.faster_than_base
    x = report.counterexample
    assert (x > 0).any() and (x < 0).any()


def test_scaled_indicator_with_alpha_at_least_one_passes_and_below_one_fails():
    assert check_mask(lambda x: 2.0 * (x >= 0)).ok
    assert check_mask(lambda x: 1.0 * (x >= 0)).ok
    assert not check_mask(lambda x: 0.99 * (x >= 0)).condition_6


def test_a_mask_that_pushes_against_the_gradient_fails_the_inner_product():
    report = check_mask(lambda x: np.where(x < 0, 5.0, 1.0))   # amplifies disagreeing coordinates
    assert not report.condition_6 and not report.inner_nonneg and not report.faster_than_base
    assert (report.counterexample < 0).any()


def test_mean_mask_scale_is_at_least_one_in_every_sign_pattern():
    for x in probe_vectors(dims=(1, 2, 3, 4, 5), samples=0):
        phi = zoo_mask("mean")(x)
        assert (phi[x > 0] >= 1).all() and (phi[x <= 0] == 0).all()


def test_zoo_mask_accepts_a_callable_caution_norm():
    doubled = zoo_mask(lambda update, grad: 2.0 * (update * grad > 0))
    x = np.array([1.0, -2.0, 0.0, 3.0])
    np.testing.assert_array_equal(doubled(x), [2.0, 0.0, 0.0, 2.0])
    assert check_mask(doubled).ok
    with pytest.raises(ValueError):
        zoo_mask("median")
