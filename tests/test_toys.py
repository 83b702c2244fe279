"""analysis.toys: the 2-D test functions, trajectories, the registry table and mask fractions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

import zoo  # noqa: E402
from analysis import toys  # noqa: E402


def _grad(fn, point):
    w = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    fn(w).backward()
    return w.grad


# -- the functions ----------------------------------------------------------------------------

def test_quadratic_values_and_minimum():
    assert toys.quadratic(torch.tensor([1.0, 1.0])).item() == 5.0   # the paper's start, §A.4
    assert toys.quadratic(torch.tensor([0.5, -2.0])).item() == 5.0
    assert toys.quadratic(torch.tensor(toys.QUADRATIC_MIN)).item() == 0.0
    assert torch.equal(_grad(toys.quadratic, toys.QUADRATIC_MIN), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(_grad(toys.quadratic, (1.0, 1.0)), torch.tensor([8.0, 2.0], dtype=torch.float64))


def test_rosenbrock_values_and_minimum():
    assert toys.rosenbrock(torch.tensor([0.0, 0.0])).item() == 1.0
    assert toys.rosenbrock(torch.tensor([-1.0, 1.0])).item() == 4.0
    assert toys.rosenbrock(torch.tensor([0.0, 1.0])).item() == 101.0
    assert toys.rosenbrock(torch.tensor(toys.ROSENBROCK_MIN)).item() == 0.0
    assert torch.equal(_grad(toys.rosenbrock, toys.ROSENBROCK_MIN), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("fn", [toys.quadratic, toys.rosenbrock])
def test_functions_are_nonnegative_and_batch(fn):
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    values = fn(points)
    assert values.shape == (50,)
    assert (values >= 0).all()
    torch.testing.assert_close(values[7], fn(points[7]))


def test_problems_start_and_minimum():
    for problem in toys.PROBLEMS.values():
        assert problem.fn(torch.tensor(problem.minimum, dtype=torch.float64)).item() == 0.0
        assert problem.xlim[0] < problem.minimum[0] < problem.xlim[1]
        assert problem.ylim[0] < problem.start[1] < problem.ylim[1]
    assert toys.PROBLEMS["quadratic"].start == (1.0, 1.0)


# -- trajectories -----------------------------------------------------------------------------

def test_trajectory_shape_start_and_losses():
    path, losses = toys.trajectory("sgdm", toys.quadratic, (1.0, 1.0), 7, lr=0.05, momentum=0.9)
    assert path.shape == (8, 2) and losses.shape == (8,)
    assert path.dtype == np.float64
    np.testing.assert_array_equal(path[0], [1.0, 1.0])
    np.testing.assert_allclose(losses, 4 * path[:, 0] ** 2 + path[:, 1] ** 2, rtol=1e-15)
    # the first heavy-ball step is plain gradient descent: w1 = w0 - lr * (8, 2)
    np.testing.assert_allclose(path[1], [1 - 0.05 * 8, 1 - 0.05 * 2], rtol=1e-15)


def test_adamw_decreases_the_quadratic():
    _, losses = toys.trajectory("adamw", toys.quadratic, (1.0, 1.0), 100, lr=0.05, weight_decay=0.0)
    assert losses[-1] < 1e-3 * losses[0]


def test_cautious_sgdm_beats_sgdm_on_the_quadratic():
    """The notebook's setting: the heavy ball overshoots (its loss rises at times); its cautious
    twin refuses most of those steps and ends far lower."""
    _, cautious = toys.trajectory("c-sgdm", toys.quadratic, (1.0, 1.0), 60, lr=0.05, momentum=0.9)
    _, plain = toys.trajectory("sgdm", toys.quadratic, (1.0, 1.0), 60, lr=0.05, momentum=0.9)
    assert np.diff(plain).max() > 0.1                       # a visible overshoot
    assert np.diff(cautious).max() < np.diff(plain).max() * 1e-2
    assert cautious[-1] < 1e-3 * plain[-1]


def test_lion_approaches_the_rosenbrock_minimum():
    path, losses = toys.trajectory("lion", toys.rosenbrock, (-1.2, 1.0), 200, lr=0.02)
    assert losses[-1] < 0.05 * losses[0]
    assert np.linalg.norm(path[-1] - np.array(toys.ROSENBROCK_MIN)) < 0.5


def test_trajectory_rejects_a_start_off_the_plane():
    with pytest.raises(ValueError, match="start"):
        toys.trajectory("sgdm", toys.quadratic, (1.0, 1.0, 1.0), 3)


def test_twin_runs_pairs_each_optimizer_with_its_cautious_twin():
    runs = toys.twin_runs(toys.PROBLEMS["quadratic"], {"sgdm": dict(lr=0.05), "lion": dict(lr=0.03)}, 5)
    assert list(runs) == ["sgdm", "c-sgdm", "lion", "c-lion"]
    for path, losses in runs.values():
        assert path.shape == (6, 2) and losses.shape == (6,)
    assert toys.cautious_twin("AdamW") == "c-adamw"
    with pytest.raises(KeyError):
        toys.cautious_twin("c-adamw")


# -- the registry table -----------------------------------------------------------------------

def test_registry_table_has_one_row_per_name():
    table = toys.registry_table()
    assert list(table.columns) == ["name", "family", "cautious", "base", "has_momentum", "low_rank",
                                   "state_formula", "reference"]
    assert table["name"].tolist() == zoo.names()
    for row in table.itertuples(index=False):
        rec = zoo.info(row.name)
        assert (row.family, row.cautious, row.base, row.state_formula) == \
               (rec.family, rec.cautious, rec.base, rec.state_formula)
    assert table["cautious"].sum() == len(zoo.names(cautious=True))


# -- the mask fractions -----------------------------------------------------------------------

@pytest.mark.parametrize("name, hparams", [("c-sgdm", dict(lr=0.05)), ("c-adamw", dict(lr=0.03)),
                                           ("c-lion", dict(lr=0.01)), ("c-muon", dict(lr=0.05))])
def test_aligned_fractions_of_cautious_optimizers(name, hparams):
    fractions = np.asarray(toys.aligned_fractions(name, 40, 0, **hparams))
    assert fractions.shape == (40,)
    assert np.all((fractions >= 0) & (fractions <= 1))
    assert fractions[0] == 1.0               # first step: the momentum is the gradient itself
    assert fractions[1:].min() < 1.0         # later, the mask does act
    np.testing.assert_array_equal(fractions, toys.aligned_fractions(name, 40, 0, **hparams))  # seeded


@pytest.mark.parametrize("name", ["sgdm", "adamw", "lion"])
def test_aligned_fractions_are_nan_without_caution(name):
    """Decision: a plain optimizer gives all-nan fractions (what ``aligned_fraction()`` reports),
    not an error, so plain and cautious optimizers can be run side by side."""
    fractions = toys.aligned_fractions(name, 5, 0, lr=0.01)
    assert len(fractions) == 5 and all(math.isnan(f) for f in fractions)


def test_least_squares_loss_is_seeded_and_decreases():
    weight, loss = toys.least_squares(seed=3, batch_size=None)
    assert weight.shape == (32, 16)
    first = loss()
    first.backward()
    with torch.no_grad():
        weight -= 0.05 * weight.grad
    assert loss().item() < first.item()
    assert toys.least_squares(seed=3, batch_size=None)[1]().item() == first.item()


def test_fraction_summary():
    table = toys.fraction_summary({"c-x": np.array([1.0, 1.0, 0.6, 0.4])})
    assert table.loc["c-x", "aligned (kept)"] == pytest.approx(0.5)
    assert table.loc["c-x", "masked (zeroed)"] == pytest.approx(0.5)


# -- figures ----------------------------------------------------------------------------------

def test_plots_return_figures():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    problem = toys.PROBLEMS["rosenbrock"]
    runs = toys.twin_runs(problem, {"adamw": dict(lr=0.1)}, 5)
    fig = toys.plot_twin_trajectories(problem, runs)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert {line.get_label() for line in fig.axes[0].get_lines()} >= {"adamw", "c-adamw"}
    fig2 = toys.plot_trajectories(problem.fn, {"adamw": runs["adamw"][0]})
    fig3 = toys.plot_curves({n: losses for n, (_, losses) in runs.items()}, ylabel="loss", logy=True,
                            reference=0.55, reference_label="ref")
    assert isinstance(fig2, Figure) and isinstance(fig3, Figure)
    assert fig3.axes[0].get_yscale() == "log"
    for f in (fig, fig2, fig3):
        plt.close(f)
