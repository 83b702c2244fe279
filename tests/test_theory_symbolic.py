"""theory.dynamics and theory.symbolic: the Hamiltonian claims of PAPERS.md §A.2 checked by sympy."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from theory import dynamics, symbolic
from theory.symbolic import FAMILIES, certify_nonpositive, mask_conditions, theorem_2_1, verify

BASE = ["heavy_ball", "adam", "signum", "lion", "lion_k"]


def _at(expr, point: dict):
    """``expr`` at a point given by symbol names."""
    return expr.subs({s: point[s.name] for s in expr.free_symbols if s.name in point})


# -- the systems ---------------------------------------------------------------------------------

def test_families_and_system_fields():
    assert FAMILIES == dynamics.FAMILIES == ("heavy_ball", "adam", "signum", "lion", "lion_k")
    s = dynamics.build("adam", n=3)
    assert len(s.w) == len(s.g) == 3 and [x.name for x in s.s] == ["m1", "m2", "m3", "v1", "v2", "v3"]
    assert s.condition == sp.Ge(sp.Symbol("a", positive=True), sp.Symbol("b", positive=True) / 4)
    assert len(s.w_dot) == 3 and len(s.s_dot) == 6 and s.phi is None and "Adam" in s.description
    c = dynamics.build("heavy_ball", cautious=True, mask="mean", n=2)
    assert c.phi is not None and len(c.phi_values) == 2
    with pytest.raises(KeyError, match="known"):
        dynamics.build("sgd")
    with pytest.raises(ValueError, match="non-cautious"):
        dynamics.build("heavy_ball", mask="mean")
    with pytest.raises(ValueError, match="Invalid mask"):
        dynamics.build("heavy_ball", cautious=True, mask=-1.0)


def test_time_derivative_is_the_chain_rule():
    s = dynamics.build("heavy_ball", n=2)
    a, gamma = s.params
    # d/dt L = sum g_i * w'_i = -sum g_i m_i; d/dt (m1^2/2) = m1 (a g1 - gamma m1)
    assert sp.expand(dynamics.time_derivative(s, s.L) + s.g[0] * s.s[0] + s.g[1] * s.s[1]) == 0
    assert sp.expand(dynamics.time_derivative(s, s.s[0] ** 2 / 2) - s.s[0] * (a * s.g[0] - gamma * s.s[0])) == 0


# -- base systems: proved ------------------------------------------------------------------------

@pytest.mark.parametrize("family", BASE)
def test_base_hamiltonian_is_proved(family):
    r = verify(family)
    assert r.status == "proved", r.detail
    assert r.claim("dH/dt <= 0 (base)").status == "proved"
    assert r.claim("dH/dt = ").status == "proved"          # our closed form, derived by sympy
    assert not r.cautious and isinstance(r.dH_dt, sp.Expr) and r.condition


def test_lion_k_with_l1_norm_and_pseudo_huber():
    assert verify("lion_k", k=sp.Abs).status == "proved"      # H = alpha L + |m|_1, also a Lyapunov fn
    assert verify("lion_k", k=lambda z: sp.sqrt(1 + z ** 2) - 1).status == "proved"


def test_lion_k_needs_k_minimised_at_zero():
    r = verify("lion_k", k=lambda z: z ** 4 / 4 - z)            # convex, minimum at z = 1
    assert r.status == "refuted"
    assert r.claim("dH/dt <= 0 (base)").counterexample["value"] > 0


def test_base_loss_can_increase():
    for family in ("heavy_ball", "adam", "signum", "lion"):
        c = verify(family).claim("dL/dt <= 0")
        assert c.status == "refuted" and not c.asserted and c.counterexample["value"] > 0


# -- PAPERS.md's statements --------------------------------------------------------------------

@pytest.mark.parametrize("family", ["heavy_ball", "signum"])
def test_papers_hamiltonian_needs_a_equal_one(family):
    r = verify(family)
    c = r.claim("PAPERS.md: H =")
    assert c.status == "refuted" and not c.asserted
    assert c.counterexample["a"] != 1 and c.counterexample["value"] > 0
    assert "holds when a = 1" in c.detail


def test_papers_lion_closed_form_is_wrong():
    r = verify("lion")
    c = r.claim("PAPERS.md: dH/dt =")
    assert c.status == "refuted"
    s = r.system
    p = dict(alpha=1, epsilon=1, gamma=sp.Rational(1, 2), g1=0, g2=0, m1=1, m2=0)
    ours, paper = _at(r.dH_dt, p), _at(s.paper["dH_dt"], p)
    assert ours == -sp.Rational(1, 4) and paper == -sp.Rational(3, 4)    # m~ = m/2


def test_adam_condition_is_tight():
    c = symbolic.adam_condition_tightness()
    assert c.status == "proved"
    s = dynamics.build("adam", n=1)
    dH = dynamics.time_derivative(s, s.H)
    # a = b/8 < b/4, e = 1, grad L = 0: sqrt(v) > 4ae/(b - 4a) = 1 makes dH/dt > 0
    assert _at(dH, dict(a=sp.Rational(1, 8), b=1, e=1, g1=0, m1=1, v1=4)) > 0
    assert _at(dH, dict(a=sp.Rational(1, 8), b=1, e=1, g1=0, m1=1, v1=sp.Rational(1, 4))) < 0


# -- cautious systems ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", BASE)
@pytest.mark.parametrize("mask", [None, "mean", 0.1])
def test_cautious_hamiltonian_and_loss_are_proved(family, mask):
    r = verify(family, cautious=True, mask=mask)
    assert r.status == "proved", r.detail
    assert r.claim("dH/dt <= 0 (cautious)").status == "proved"
    assert r.claim("dL/dt <= 0 (cautious)").status == "proved"


@pytest.mark.parametrize("family", ["heavy_ball", "adam", "signum", "lion"])
def test_paper_normalisation_breaks_the_hamiltonian(family):
    r = verify(family, cautious=True, mask="paper")
    assert r.status == "refuted"
    c = r.claim("dH/dt <= 0 (cautious)")
    assert c.status == "refuted" and c.counterexample["value"] > 0
    assert r.claim("dL/dt <= 0 (cautious)").status == "proved"     # x^T phi >= 0 still holds
    if family in ("heavy_ball", "signum"):                          # no condition rewriting: re-evaluate
        assert _at(r.dH_dt, c.counterexample) > 0


def test_mask_conditions():
    mean, paper = mask_conditions("mean", 3), mask_conditions("paper", 3)
    assert all(c.status == "proved" for c in mean.values())
    assert paper["condition_6"].status == "refuted" and paper["H"].status == "refuted"
    assert paper["H"].counterexample["value"] == sp.Rational(3, 4)   # x = (1,1,1), phi = 3/4
    assert paper["L"].status == "proved"
    c = sp.Symbol("c", nonnegative=True)
    assert all(v.status == "proved" for v in mask_conditions(c, 2).values())
    assert all(v.status == "proved" for v in mask_conditions(None, 2).values())   # condition (6) itself
    half = mask_conditions(lambda x: tuple(sp.Piecewise((sp.Rational(1, 2), xi > 0), (0, True)) for xi in x), 2)
    assert half["H"].status == "refuted" and half["L"].status == "proved"


@pytest.mark.parametrize("family", BASE)
def test_theorem_2_1_identities(family):
    t = theorem_2_1(family)
    assert t.dH_identity and t.dL_identity and t.status == "proved"
    assert t.dH_dt.has(sp.Symbol("phi1", real=True))       # a generic mask


# -- the certificate -----------------------------------------------------------------------------

def test_certificate_is_sound_on_examples():
    x = sp.Symbol("x", real=True)
    p, q = sp.symbols("p q", positive=True)
    assert certify_nonpositive(-x ** 2 - p * x ** 4)
    assert certify_nonpositive(-(p + q) / (p * q + 1))
    assert not certify_nonpositive(x)               # sign-indefinite
    assert not certify_nonpositive(-x ** 2 + p)
    assert not certify_nonpositive(-p * x ** 3)     # odd power of a real symbol
    assert not certify_nonpositive(-1 / x ** 2 + 1)


# -- numeric spot checks of the symbolic identities (hypothesis) -----------------------------------

coords = st.floats(-5, 5, allow_nan=False, allow_subnormal=False)
positive = st.floats(0.05, 5, allow_nan=False, allow_subnormal=False)
_LION = dynamics.build("lion", n=1)
_LION_DH = sp.lambdify([*_LION.g, *_LION.s, *_LION.params], dynamics.time_derivative(_LION, _LION.H))
_LION_CLOSED = sp.lambdify([*_LION.g, *_LION.s, *_LION.params], _LION.closed_form)
_ADAM = dynamics.build("adam", n=1)
_ADAM_DH = sp.lambdify([*_ADAM.g, *_ADAM.s, *_ADAM.params], dynamics.time_derivative(_ADAM, _ADAM.H))
_ADAM_CLOSED = sp.lambdify([*_ADAM.g, *_ADAM.s, *_ADAM.params], _ADAM.closed_form)


@settings(max_examples=200, deadline=None)
@given(coords, coords, positive, st.floats(0, 1, allow_nan=False), positive)
def test_lion_derivative_matches_closed_form_and_is_nonpositive(g, m, alpha, eps_gamma, eps):
    gamma = eps_gamma / eps
    dH = _LION_DH(g, m, alpha, gamma, eps)
    assert dH == pytest.approx(_LION_CLOSED(g, m, alpha, gamma, eps), abs=1e-9)
    assert dH <= 1e-9


@settings(max_examples=200, deadline=None)
@given(coords, coords, st.floats(0.01, 100), positive, positive, st.floats(1e-3, 1))
def test_adam_derivative_matches_closed_form(g, m, v, a, b, e):
    dH = _ADAM_DH(g, m, v, a, b, e)
    assert dH == pytest.approx(_ADAM_CLOSED(g, m, v, a, b, e), rel=1e-9, abs=1e-9)
    if a >= b / 4:
        assert dH <= 1e-9 * (1 + abs(dH))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False, allow_subnormal=False), min_size=1, max_size=6),
       st.sampled_from(["mean", "paper", 0.0, 0.3]))
def test_mask_fn_numpy_and_sympy_agree(x, norm):
    phi = dynamics.mask_fn(norm)
    exact = [float(v) for v in phi([sp.Float(xi) for xi in x])]
    np.testing.assert_allclose(phi(np.array(x)), exact, rtol=1e-12)
