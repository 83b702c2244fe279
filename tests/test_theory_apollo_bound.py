"""theory.apollo_bound: Monte-Carlo check of APOLLO's Theorem A.4 (PAPERS.md §B.3)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zoo
from theory.apollo_bound import (BETAS, EPS, channel_scales, compressed_dim, condition_holds,
                                 coverage_table, gradient_sequence, interval, scale_ratios,
                                 theorem_eps)
from zoo.projection import gaussian


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def table():
    return coverage_table(trials=25)


def test_condition_and_interval():
    eps = theorem_eps(128, 3, 0.2)
    assert 128 == pytest.approx(8 / eps**2 * math.log(2 * 3 / 0.2))
    assert condition_holds(128, eps, 3, 0.2)
    assert not condition_holds(127, eps, 3, 0.2)
    assert not condition_holds(10**6, 1.0, 3, 0.2)          # eps >= 1: no interval
    low, high = interval(0.5)
    assert low == pytest.approx(math.sqrt(0.5) / 1.5) and high == pytest.approx(math.sqrt(1.5) / 0.5)
    with pytest.raises(ValueError):
        interval(1.0)


@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_projected_scale_is_what_zoo_apollo_applies(shape):
    """s^R from zoo.projection equals the factor the zoo's APOLLO step multiplies G by (its
    projection seed is the group seed 0 plus the parameter's 1-based index)."""
    t, rank = 4, 8
    grads = gradient_sequence("lowrank", shape, t, seed=3)
    weight = torch.zeros(shape, dtype=torch.float64)
    opt = zoo.get("apollo")([weight], lr=1.0, rank=rank, betas=BETAS, eps=EPS,
                            norm_growth_limit=None, update_proj_gap=100)
    for grad in grads:
        before = weight.clone()
        weight.grad = grad
        opt.step()
    step_size = math.sqrt(1 - BETAS[1] ** t) / (1 - BETAS[0] ** t)
    applied = (before - weight) / (step_size * grads[-1])
    ours = channel_scales(grads, gaussian(shape, rank, 1, "cpu", torch.float64))
    torch.testing.assert_close(applied, ours.expand_as(applied), rtol=1e-6, atol=0)


def test_coverage_at_least_one_minus_delta_when_the_condition_holds(table):
    held = table[table["condition"]]
    assert len(held) == len(table) == 6          # eps = theorem_eps(r): the condition holds
    assert (held["coverage"] >= 1 - held["delta"]).all()


def test_ratio_is_sqrt_r_over_n(table):
    """s^R/s ≈ √(r/n): 0.35 at r = n/8, 0.5 at r = n/4 (paper Fig. 4/8)."""
    for _, row in table.iterrows():
        assert row["raw_ratio"] == pytest.approx(row["sqrt_r_over_n"], rel=0.05)
        assert row["mean_ratio"] == pytest.approx(1.0, abs=0.05)
    by_rank = table.groupby("r_over_n")["raw_ratio"].mean()
    assert by_rank[0.125] == pytest.approx(0.35, abs=0.02)
    assert by_rank[0.25] == pytest.approx(0.5, abs=0.02)


def test_a_too_small_rank_for_a_tight_interval_misses_channels():
    """eps = 0.2 needs r >= 8/0.04 log(30) ≈ 680 > n: at r = n/8 some channel falls outside."""
    rows = coverage_table(ranks=[32], kinds=("gaussian",), eps=0.2, trials=10)
    assert not rows["condition"].iloc[0]
    assert rows["coverage"].iloc[0] < 0.5


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([32, 64, 128]), st.sampled_from(["gaussian", "lowrank"]))
def test_every_channel_inside_the_interval_for_drawn_projections(seed, rank, kind):
    shape, t, delta = (256, 512), 3, 0.2
    grads = gradient_sequence(kind, shape, t, seed=seed % 7)
    n = compressed_dim(shape)
    eps = theorem_eps(rank, t, delta)
    ratio = scale_ratios(grads, rank, seed) * math.sqrt(n / rank)
    if eps < 1:
        low, high = interval(eps)
        assert bool(((ratio >= low) & (ratio <= high)).all())
    if kind == "gaussian":   # channels' distortions average out; for low rank + noise one P
        assert float(ratio.mean()) == pytest.approx(1.0, abs=0.1)   # shifts them all together
