"""theory.toy: the 2-D toy of PAPERS.md §A.4 with the zoo's sgdm / c-sgdm."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.toy import (GOH_LR, GOH_MOMENTUM, METHODS, OPTIMAL_RATE, PAPER_RATES, best_rates,
                        convergence_rate, inner_product_mask, rate_grid, trajectory)


@pytest.fixture(scope="module")
def table():
    return best_rates()


def heavy_ball(lr, beta, steps):
    """z <- beta z + grad L(w); w <- w - lr z, written out by hand."""
    w, z = np.array([1.0, 1.0]), np.zeros(2)
    out = [w.copy()]
    for _ in range(steps):
        z = beta * z + np.array([8.0, 2.0]) * w
        w = w - lr * z
        out.append(w.copy())
    return np.array(out)


@settings(max_examples=15, deadline=None)
@given(st.floats(0.01, 0.3), st.floats(0.0, 0.9))
def test_zoo_sgdm_is_the_heavy_ball_of_the_paper(lr, beta):
    np.testing.assert_allclose(trajectory("sgdm", lr, beta, 40), heavy_ball(lr, beta, 40),
                               rtol=1e-12, atol=1e-15)


def test_gdm_at_goh_point_converges_at_one_third():
    assert convergence_rate("sgdm", GOH_LR, GOH_MOMENTUM, 2000) == pytest.approx(OPTIMAL_RATE, abs=5e-4)
    # the double root: k 3^-k, so every finite estimate is above 1/3 (0.3345 at K = 400)
    rate = convergence_rate("sgdm", GOH_LR, GOH_MOMENTUM, 400)
    assert OPTIMAL_RATE < rate < OPTIMAL_RATE * 2 ** (1 / 200) + 1e-4


@pytest.mark.parametrize("norm", ["mean", 0.0, inner_product_mask])
def test_power_of_two_renormalisation_does_not_change_the_trajectory(norm):
    steps = 120   # ||w|| stays far above underflow: the plain trajectory is exact
    w = trajectory("c-sgdm", 0.185, 0.08, steps, caution_norm=norm)
    plain = (np.linalg.norm(w[steps]) / np.linalg.norm(w[0])) ** (1 / steps)
    assert convergence_rate("c-sgdm", 0.185, 0.08, steps, norm, start=0) == pytest.approx(plain, rel=1e-13)


def test_soft_and_inner_masks_never_act_on_the_optimal_heavy_ball():
    gdm = trajectory("sgdm", GOH_LR, GOH_MOMENTUM, 100)
    for norm in (0.0, 0.01, 0.1, inner_product_mask):
        np.testing.assert_array_equal(trajectory("c-sgdm", GOH_LR, GOH_MOMENTUM, 100, norm), gdm)


def test_inner_product_mask_is_a_working_caution_norm():
    # at a large momentum the update sometimes opposes the gradient: the mask drops whole steps
    assert not np.array_equal(trajectory("c-sgdm", 0.2, 0.6, 60, inner_product_mask),
                              trajectory("sgdm", 0.2, 0.6, 60))


@pytest.mark.parametrize("lr", [0.1, 0.3, 2.0])
def test_plain_gradient_descent_rate_is_its_spectral_radius(lr):
    # beta = 0: w_k = diag(1 - 8 lr, 1 - 2 lr)^k w_0; renormalisation keeps even |15|^2000 finite
    expected = max(abs(1 - 8 * lr), abs(1 - 2 * lr))
    assert convergence_rate("sgdm", lr, 0.0, 2000) == pytest.approx(expected, rel=1e-10)


def test_best_rate_table_shape(table):
    assert list(table.columns) == ["method", "optimizer", "caution_norm", "rate", "lr", "momentum",
                                   "paper_rate"]
    assert list(table["method"]) == [m.label for m in METHODS]
    assert table.set_index("method").loc["GDM", "paper_rate"] == PAPER_RATES["GDM"]


def test_cautious_gdm_beats_gdm(table):
    """The issue's ordering: best C-GDM (the zoo's default "mean") < best GDM; and GDM cannot beat
    the optimal heavy-ball rate 1/3 while C-GDM does."""
    rates = table.set_index("method")["rate"]
    assert rates["C-GDM mean"] < rates["GDM"]
    assert rates["GDM"] >= OPTIMAL_RATE
    assert rates["C-GDM mean"] < OPTIMAL_RATE


def test_gdm_grid_never_beats_one_third():
    grid = rate_grid(METHODS[0], grid=((0.15, 0.2, 0.25), (0.0, 0.1, 0.2, 0.3)), steps=200)
    assert (grid["rate"] >= OPTIMAL_RATE).all()
