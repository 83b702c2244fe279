"""theory.numeric: adversarial search for dH/dt > 0, ODE trajectories, and the numeric form of the
systems (PAPERS.md §A.2)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theory import dynamics, numeric
from theory.numeric import (LOSSES, adam_violation_threshold, adversarial_dHdt, check_nonincreasing,
                            find_L_increase, ode_trajectory)
from zoo.caution import caution_mask

FAST = dict(restarts=2, samples=512)


# -- adversarial search ----------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.2])
def test_adam_violation_found_far_below_b_over_4(ratio):
    r = adversarial_dHdt("adam", params=dict(a=ratio, b=1.0, e=1e-3), **FAST)
    assert r.violated and r.max_dHdt > 1e-3
    assert set(r.argmax) == {"g", "m", "v"}


@pytest.mark.parametrize("ratio", [0.25, 0.3, 1.0])
def test_adam_no_violation_when_a_at_least_b_over_4(ratio):
    r = adversarial_dHdt("adam", params=dict(a=ratio, b=1.0, e=1e-3), **FAST)
    assert not r.violated and r.max_dHdt <= 1e-9


def test_adam_threshold_matches_the_box_prediction():
    out = adam_violation_threshold(b=2.0, e=0.1, v_max=100.0, iterations=6, restarts=2, samples=512)
    # violations exist iff a/b < sqrt(V)/(4(sqrt(V) + e)) = 0.2475..., just below the paper's 1/4
    assert out["largest_violating"] <= out["predicted"] <= out["smallest_clean"] <= 0.25


@pytest.mark.parametrize("family", ["heavy_ball", "adam", "signum", "lion"])
def test_no_violation_for_base_and_mean_mask(family):
    assert not adversarial_dHdt(family, **FAST).violated
    assert not adversarial_dHdt(family, cautious=True, mask="mean", **FAST).violated
    assert not adversarial_dHdt(family, cautious=True, mask="mean", quantity="L", **FAST).violated
    assert adversarial_dHdt(family, quantity="L", **FAST).violated          # base: L can go up


@pytest.mark.parametrize("family", ["heavy_ball", "adam", "signum"])
def test_paper_mask_violation_found(family):
    assert adversarial_dHdt(family, cautious=True, mask="paper", **FAST).violated


def test_lion_paper_mask_needs_eps_gamma_at_least_one_over_n_plus_one():
    # all coordinates aligned: dH/dt per coordinate <= alpha|g|(1/(n+1) - eps*gamma)
    bad = adversarial_dHdt("lion", cautious=True, mask="paper", params=dict(gamma=0.5, eps=0.5), n=2, **FAST)
    good = adversarial_dHdt("lion", cautious=True, mask="paper", params=dict(gamma=0.5, eps=0.5), n=5, **FAST)
    assert bad.violated and not good.violated


# -- trajectories ----------------------------------------------------------------------------------

T_END = {"quadratic": 5.0, "rosenbrock": 3.0, "wavy10": 3.0}
SMOOTH = dict(sign_smoothing=1e-3, mask_smoothing=1e-2)


@pytest.mark.parametrize("loss", ["quadratic", "rosenbrock", "wavy10"])
@pytest.mark.parametrize("family", ["heavy_ball", "adam", "signum", "lion"])
def test_trajectories_h_nonincreasing_and_cautious_l_nonincreasing(family, loss):
    base = ode_trajectory(family, loss, t_end=T_END[loss], **SMOOTH)
    caut = ode_trajectory(family, loss, cautious=True, mask="mean", t_end=T_END[loss], **SMOOTH)
    for traj in (base, caut):
        assert traj.success, traj.message
        check = check_nonincreasing(traj, "H")
        assert check.ok, check
        assert check.total_change < 0
    assert check_nonincreasing(caut, "L").ok


def test_lion_k_trajectory_with_pseudo_huber():
    traj = ode_trajectory("lion_k", "rosenbrock", t_end=3.0, k=lambda z: sp.sqrt(1e-4 + z ** 2) - 1e-2)
    assert traj.success and check_nonincreasing(traj, "H").ok


@pytest.mark.parametrize("family", ["heavy_ball", "adam", "signum", "lion"])
def test_base_trajectory_where_the_loss_increases(family):
    traj, check = find_L_increase(family, "quadratic", t_end=5.0, tries=3, **SMOOTH)
    assert not check.ok and check.max_increase > 1e-3
    assert check_nonincreasing(traj, "H").ok           # while H still decreases


def test_loss_increases_on_the_nonconvex_function_too():
    traj, check = find_L_increase("heavy_ball", "wavy10", t_end=3.0, tries=3)
    assert not check.ok


def test_paper_mask_raises_h_from_rest():
    # from rest x = 0, then m grows along g: every coordinate agrees, phi = n/(n+1) < 1 and
    # dH/dt = x^T(1 - phi) - |m|^2 > 0 while m is small
    traj = ode_trajectory("heavy_ball", "quadratic", cautious=True, mask="paper", t_end=1.0)
    check = check_nonincreasing(traj, "H")
    assert not check.ok and check.max_excess > 0
    assert check_nonincreasing(traj, "L").ok          # x^T phi >= 0: L still decreases


def test_exact_sign_without_smoothing_is_reported_not_hidden():
    traj = ode_trajectory("lion", "rosenbrock", t_end=3.0, max_steps=3000)
    assert not traj.success and "sign_smoothing" in traj.message
    with pytest.raises(RuntimeError, match="integration failed"):
        check_nonincreasing(traj)


# -- the numeric form ---------------------------------------------------------------------------

finite = st.floats(-4, 4, allow_nan=False, allow_subnormal=False)


@lru_cache(maxsize=None)
def _numeric(family, mask):
    if mask is None:
        return numeric.numeric_system(family)
    return numeric.numeric_system(family, cautious=True, mask=mask)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(arrays(np.float64, n, elements=finite),
                                                     arrays(np.float64, n, elements=finite),
                                                     arrays(np.float64, n, elements=st.floats(0.01, 10)))),
       st.sampled_from(["heavy_ball", "adam", "signum", "lion"]), st.sampled_from(["mean", "paper", 0.2]))
def test_theorem_2_1_identity_at_random_states(state, family, mask):
    g, m, v = state
    s = (m, v) if family == "adam" else (m,)
    base, caut = _numeric(family, None), _numeric(family, mask)
    x = g * base._u(g, *s)
    phi = dynamics.mask_fn(mask)(x)
    np.testing.assert_allclose(caut.dH_dt(g, s), base.dH_dt(g, s) + base.L_coeff * (x * (1 - phi)).sum(),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(caut.dL_dt(g, s), -(x * phi).sum(), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: arrays(np.float64, n, elements=finite)),
       st.sampled_from(["mean", "paper", 0.0, 0.1]))
def test_mask_fn_is_zoos_mask(x, norm):
    ours = dynamics.mask_fn(norm)(x)
    theirs = caution_mask(torch.from_numpy(x), torch.ones(x.size, dtype=torch.float64), norm).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(sorted(LOSSES)), st.integers(0, 2**31 - 1))
def test_loss_gradients(name, seed):
    loss = LOSSES[name]
    w = np.random.default_rng(seed).uniform(-2, 2, loss.dim)
    h = 1e-6
    fd = np.array([(loss.fn(w + h * e) - loss.fn(w - h * e)) / (2 * h) for e in np.eye(loss.dim)])
    np.testing.assert_allclose(loss.grad(w), fd, rtol=1e-6, atol=1e-5)


def test_wavy10_is_nonconvex_and_bounded_below():
    loss = LOSSES["wavy10"]
    assert loss.dim == 10
    rng = np.random.default_rng(0)
    W = rng.uniform(-6, 6, (20000, 10))
    assert loss.fn(W).min() >= -10.0
    # a negative second difference along a coordinate: not convex
    w, e, h = np.zeros(10), np.eye(10)[0], 1e-3
    assert loss.fn(w + h * e) + loss.fn(w - h * e) - 2 * loss.fn(w) < 0


def test_numeric_validates_its_inputs():
    s = dynamics.build("lion", n=1)
    with pytest.raises(ValueError, match="unknown parameters"):
        dynamics.numeric(s, LOSSES["quadratic"].fn, LOSSES["quadratic"].grad, params={"beta": 1.0})
    with pytest.raises(ValueError, match="undefined k"):
        dynamics.numeric(dynamics.build("lion_k", n=1), np.sum, np.sign)
    with pytest.raises(ValueError, match="needs a mask"):
        dynamics.numeric(dynamics.build("lion", cautious=True, n=1), np.sum, np.sign)
    with pytest.raises(ValueError, match="sign_smoothing"):
        dynamics.numeric(s, np.sum, np.sign, sign_smoothing=-1.0)
    ns = dynamics.numeric(s, LOSSES["quadratic"].fn, LOSSES["quadratic"].grad, params={"eps": 0.25})
    assert ns.params["epsilon"] == 0.25
    y = np.array([1.0, 1.0, 0.5, -0.5])
    assert ns.f(0.0, y).shape == (4,) and np.isfinite(ns.H(y))
