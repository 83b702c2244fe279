"""theory.discrete: Theorems 2.3 and 2.4 (PAPERS.md §A.3) with the zoo's optimizers."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.discrete import (default_problems, monotonicity_table, quadratic_problem,
                             robust_regression_problem, run_losses, sigma_mask, sine_problem,
                             step_bound, step_bound_table)
from zoo.caution import caution_mask


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mono():
    return monotonicity_table(starts=4, steps=40)


def test_smoothness_constants_bound_the_hessian():
    for problem in default_problems():
        for w in problem.starts(5, seed=1):
            hess = torch.autograd.functional.hessian(problem.loss, w)
            assert float(torch.linalg.matrix_norm(hess, ord=2)) <= problem.mu * (1 + 1e-12)
    quad = quadratic_problem()
    hess = torch.autograd.functional.hessian(quad.loss, torch.zeros(quad.dim, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(hess, ord=2)) == pytest.approx(quad.mu)


def test_sigma_mask_never_increases_the_loss(mono):
    sigma = mono[mono["mask"] == "sigma"]
    assert len(sigma) == 9                          # 3 problems x sgdm, lion, signum
    assert (sigma["max_rel_increase"] <= 1e-12).all()
    assert (sigma["increases"] == 0).all()


def test_base_optimizers_do_increase_the_loss_on_the_same_problems(mono):
    base = mono[mono["mask"] == "none"].set_index(["problem", "optimizer"])
    assert (base.xs("sgdm", level="optimizer")["increases"] > 0).all()
    assert (base.groupby(level="problem")["max_increase"].max() > 1e-3).all()
    # the zoo's default cautious twin ("mean") carries no such guarantee either
    assert (mono[mono["mask"] == "mean"]["increases"] > 0).any()


def test_sigma_below_eps_alpha_loses_the_guarantee():
    rows = monotonicity_table(problems=[quadratic_problem()], starts=3, steps=40, sigma_factor=0.0)
    sgdm = rows[(rows["optimizer"] == "sgdm") & (rows["mask"] == "sigma")]
    assert int(sgdm["increases"].iloc[0]) > 0       # sigma = 0 is the plain 1[g u >= 0] mask


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 1000), st.floats(0.3, 3.0), st.floats(1.0, 3.0), st.sampled_from(["c-sgdm", "c-lion", "c-signum"]))
def test_sigma_mask_monotone_on_drawn_quadratics(seed, lr_mu, alpha, name):
    problem = quadratic_problem(dim=6, condition=30.0, seed=seed)
    if name == "c-sgdm":
        hp = dict(lr=lr_mu / problem.mu, momentum=0.9, dampening=0.0)
    elif name == "c-lion":
        hp = dict(lr=0.05 * lr_mu, betas=(0.9, 0.99))
    else:
        hp = dict(lr=0.05 * lr_mu, momentum=0.9)
    hp["caution_norm"] = sigma_mask(problem.mu, hp["lr"] * alpha, alpha)
    losses = run_losses(problem, name, hp, problem.starts(1, seed)[0], 25)
    assert (np.diff(losses) <= 1e-12 * (1 + np.abs(losses[:-1]))).all()


def test_sigma_mask_values():
    mask = sigma_mask(mu=4.0, sigma=0.5, alpha=2.0)       # threshold mu sigma / 2 = 1
    u = torch.tensor([1.0, 1.0, -2.0, 0.0, 1.0], dtype=torch.float64)
    g = torch.tensor([1.0, 0.5, -2.0, 3.0, -1.0], dtype=torch.float64)   # g u = [1, .5, 4, 0, -1]
    torch.testing.assert_close(mask(u, g), torch.tensor([2.0, 0.0, 2.0, 2.0, 0.0], dtype=torch.float64))


def test_step_bound_formula():
    u = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    g = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    phi = caution_mask(u, g, 0.0)                           # [1, 0, 0]
    delta, eps_max = step_bound(u, g, phi, mu=2.0)
    # x = [1, -2, -1]; delta = -(x (1 - phi)).sum() = 3; r = [0, 2, -1]
    r = math.sqrt(5.0)
    assert delta == pytest.approx(3.0)
    assert eps_max == pytest.approx(2 * 3.0 / (2.0 * r * (2 * math.sqrt(6.0) + r)))
    assert step_bound(u, u, torch.ones(3, dtype=torch.float64), 1.0)[1] == math.inf


def test_cautious_step_within_the_bound_is_never_worse():
    table = step_bound_table(states=12, fractions=(0.25, 1.0, 100.0))
    inside = table[table["fraction"] <= 1]
    assert (inside["states"] > 0).all()
    assert (inside["max_gap"] <= 1e-12).all()
    assert (inside["cautious_not_worse"] == 1.0).all()
    # "paper" leaves states with delta < 0 (every coordinate agrees) outside the theorem
    assert set(table["caution_norm"]) == {"mean", "paper", 0.0, 0.1}
    # far beyond the bound the cautious step can be worse
    assert (table[table["fraction"] == 100.0]["max_gap"] > 0).any()


def test_problems_are_nonconvex_where_claimed():
    for problem in (robust_regression_problem(), sine_problem()):
        eigs = [float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(problem.loss, w)).min())
                for w in problem.starts(20, seed=2)]
        assert min(eigs) < 0
