"""Toy problems for looking at the zoo by eye: 2-D test functions, trajectories, mask statistics.

Used by ``notebooks/01_zoo_tour.ipynb``; everything here is small enough to run in seconds on a CPU.

- :func:`quadratic` and :func:`rosenbrock`: 2-D test functions of a length-2 tensor ``w``;
  :data:`PROBLEMS` pairs each with a start point, its minimiser and a plotting window.
- :func:`trajectory`: the iterates of one zoo optimizer minimising such a function;
  :func:`twin_runs`: the same for optimizers and their cautious twins.
- :func:`least_squares` and :func:`aligned_fractions`: how many coordinates the cautious mask
  keeps, step by step, on a small least-squares problem.
- :func:`registry_table`: the registry as a :class:`pandas.DataFrame`.
- :func:`plot_trajectories`, :func:`plot_twin_trajectories`, :func:`plot_curves`: figures
  (seaborn / matplotlib), each returned as a ``matplotlib.figure.Figure``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import zoo

__all__ = ["quadratic", "rosenbrock", "QUADRATIC_MIN", "ROSENBROCK_MIN", "ToyProblem", "PROBLEMS",
           "registry_table", "trajectory", "cautious_twin", "twin_runs", "least_squares",
           "aligned_fractions", "fraction_summary", "plot_trajectories", "plot_twin_trajectories",
           "plot_curves"]

QUADRATIC_MIN = (0.0, 0.0)
"""The minimiser of :func:`quadratic` (value 0)."""
ROSENBROCK_MIN = (1.0, 1.0)
"""The minimiser of :func:`rosenbrock` (value 0)."""


def quadratic(w: Tensor) -> Tensor:
    """The ill-conditioned quadratic of PAPERS.md §A.4: L(w) = 4 w1² + w2².

    Hessian diag(8, 2) (condition number 4); minimum 0 at w = (0, 0). The paper starts at (1, 1).
    ``w`` is a tensor whose last dimension has length 2 (a batch of points gives a batch of values).
    """
    return 4 * w[..., 0] ** 2 + w[..., 1] ** 2


def rosenbrock(w: Tensor) -> Tensor:
    """Rosenbrock's banana valley: L(w) = (1 - w1)² + 100 (w2 - w1²)².

    Minimum 0 at w = (1, 1), at the end of a long curved valley along w2 = w1².
    ``w`` is a tensor whose last dimension has length 2.
    """
    return (1 - w[..., 0]) ** 2 + 100 * (w[..., 1] - w[..., 0] ** 2) ** 2


@dataclass(frozen=True)
class ToyProblem:
    """A 2-D test function with the start point used here, its minimiser and a plotting window."""

    name: str
    fn: Callable[[Tensor], Tensor]
    start: tuple[float, float]
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]


PROBLEMS = {
    "quadratic": ToyProblem("quadratic", quadratic, (1.0, 1.0), QUADRATIC_MIN, (-1.5, 1.5), (-1.5, 1.5)),
    "rosenbrock": ToyProblem("rosenbrock", rosenbrock, (-1.2, 1.0), ROSENBROCK_MIN, (-2.0, 2.0), (-1.0, 3.0)),
}
"""The two toys: the quadratic from the paper's start (1, 1) (PAPERS.md §A.4) and Rosenbrock
from the classic start (-1.2, 1)."""


# -- the registry -----------------------------------------------------------------------------

REGISTRY_COLUMNS = ("name", "family", "cautious", "base", "has_momentum", "low_rank",
                    "state_formula", "reference")


def registry_table() -> pd.DataFrame:
    """One row per :func:`zoo.names` entry (sorted), with the fields of :func:`zoo.info` named in
    ``REGISTRY_COLUMNS``: name, family, cautious, base (the non-cautious twin, or None),
    has_momentum, low_rank, state_formula, reference."""
    rows = []
    for name in zoo.names():
        rec = zoo.info(name)
        rows.append({col: getattr(rec, col) for col in REGISTRY_COLUMNS})
    table = pd.DataFrame(rows, columns=list(REGISTRY_COLUMNS))
    table["base"] = pd.Series([row["base"] for row in rows], dtype=object)  # None, not NaN
    return table


# -- 2-D trajectories -------------------------------------------------------------------------

def trajectory(name: str, fn: Callable[[Tensor], Tensor], start: Sequence[float] = (1.0, 1.0),
               steps: int = 100, **hparams) -> tuple[np.ndarray, np.ndarray]:
    """Run ``zoo.get(name)`` with ``hparams`` on one float64 parameter w ∈ ℝ² minimising ``fn``.

    For t = 0 … steps − 1: evaluate L(w_t) = fn(w_t), back-propagate, ``step()``.
    Returns ``(path, losses)``: ``path[t] = w_t`` with shape (steps + 1, 2), ``path[0] = start``;
    ``losses[t] = fn(w_t)`` with shape (steps + 1,). A diverging run is not stopped: its later
    entries may be inf or nan.
    """
    w = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    if w.shape != (2,):
        raise ValueError(f"start must be a point of the plane (2 numbers), got {start!r}")
    opt = zoo.get(name)([w], **hparams)
    path = np.empty((steps + 1, 2))
    losses = np.empty(steps + 1)
    for t in range(steps + 1):
        opt.zero_grad()
        loss = fn(w)
        path[t] = w.detach().numpy()
        losses[t] = loss.item()
        if t == steps:
            break
        loss.backward()
        opt.step()
    return path, losses


def cautious_twin(name: str) -> str:
    """The registered cautious twin of the plain optimizer ``name`` (``"sgdm"`` -> ``"c-sgdm"``).

    Raises ``KeyError`` when ``name`` is itself cautious or has no twin."""
    twins = zoo.names(base=name)
    if not twins:
        raise KeyError(f"{name!r} has no registered cautious twin")
    return twins[0]


def twin_runs(problem: ToyProblem, hparams: Mapping[str, dict], steps: int) -> dict:
    """:func:`trajectory` on ``problem`` for each plain name in ``hparams`` and its cautious twin,
    both with the same hyper-parameters ``hparams[name]``.

    Returns ``{name: (path, losses)}`` ordered plain, twin, plain, twin, ….
    """
    runs = {}
    for name, hp in hparams.items():
        for run_name in (name, cautious_twin(name)):
            runs[run_name] = trajectory(run_name, problem.fn, problem.start, steps, **hp)
    return runs


# -- the cautious mask on a least-squares problem ---------------------------------------------

def least_squares(seed: int = 0, shape: tuple[int, int] = (32, 16), samples: int = 256,
                  noise: float = 0.1, batch_size: int | None = 32):
    """A small linear regression: find W ∈ ℝ^{out×in} (``shape``) from data Y = X W*ᵀ + noise.

    X ∈ ℝ^{samples×in} and W* have standard normal entries, noise is N(0, ``noise``²), all drawn
    from ``seed``. The loss of a batch B is L(W) = ½ mean_{i∈B} ‖W x_i − y_i‖²; each call to the
    returned loss draws a fresh batch of ``batch_size`` rows (the whole data set when None), so
    the gradients are stochastic as in training.

    Returns ``(weight, loss)``: the parameter W (zeros, float32, requires_grad) and a function
    ``loss() -> Tensor`` of it.
    """
    gen = torch.Generator().manual_seed(seed)
    out_features, in_features = shape
    x = torch.randn(samples, in_features, generator=gen)
    w_star = torch.randn(out_features, in_features, generator=gen)
    y = x @ w_star.T + noise * torch.randn(samples, out_features, generator=gen)
    weight = torch.zeros(shape, requires_grad=True)

    def loss() -> Tensor:
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randint(samples, (batch_size,), generator=gen)
            xb, yb = x[idx], y[idx]
        return 0.5 * ((xb @ weight.T - yb) ** 2).sum(dim=1).mean()

    return weight, loss


def aligned_fractions(name: str, steps: int = 200, seed: int = 0, **hparams) -> np.ndarray:
    """The fraction of coordinates the cautious mask kept, after each of ``steps`` steps of
    ``zoo.get(name)(**hparams)`` on :func:`least_squares` ``(seed)`` (a 32×16 weight).

    Entry t is ``opt.aligned_fraction()`` after step t + 1: nnz(1[u ∘ g > 0]) / numel, the share
    of coordinates whose update u agrees in sign with the gradient g (PAPERS.md §A.1). The share
    the mask zeroed (the *masked* fraction) is ``1 - aligned_fractions(...)``.

    For a non-cautious name the optimizer computes no mask and every entry is nan (the value
    ``aligned_fraction()`` itself reports); this is not an error, so cautious and plain
    optimizers can be run side by side.
    """
    weight, loss = least_squares(seed)
    opt = zoo.get(name)([weight], **hparams)
    fractions = np.empty(steps)
    for t in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
        fractions[t] = opt.aligned_fraction()
    return fractions


def fraction_summary(fractions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per optimizer (rows): the mean aligned (kept) and masked (zeroed) fraction over the second
    half of the steps of :func:`aligned_fractions`, where the early transient is over."""
    rows = {name: {"aligned (kept)": float(np.mean(f[len(f) // 2:])),
                   "masked (zeroed)": float(np.mean(1 - f[len(f) // 2:]))}
            for name, f in fractions.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


# -- figures ----------------------------------------------------------------------------------

def _pair_of(label: str) -> tuple[str, bool]:
    """(the plain optimizer's name, whether ``label`` is a cautious twin); a label that is not a
    zoo name is its own plain pair."""
    try:
        rec = zoo.info(label)
    except KeyError:
        return label, False
    return rec.base or rec.name, rec.cautious


def _style(label: str, labels: Sequence[str]) -> dict:
    """Line style of ``label`` among ``labels``: an optimizer and its cautious twin share a hue
    (seaborn's "Paired" palette), the plain one light and solid, the twin dark and dashed."""
    import seaborn as sns

    bases = list(dict.fromkeys(_pair_of(n)[0] for n in labels))
    base, cautious = _pair_of(label)
    palette = sns.color_palette("Paired", 12)
    k = bases.index(base) % 6
    if cautious:
        return {"color": palette[2 * k + 1], "linestyle": "--", "linewidth": 1.4}
    return {"color": palette[2 * k], "linestyle": "-", "linewidth": 2.2}


def plot_trajectories(fn: Callable[[Tensor], Tensor], paths: Mapping[str, np.ndarray], *,
                      xlim: tuple[float, float] = (-1.5, 1.5), ylim: tuple[float, float] = (-1.5, 1.5),
                      minimum: Sequence[float] | None = None, title: str | None = None,
                      ax=None, levels: int = 20):
    """Draw ``paths`` (label -> array (T, 2) from :func:`trajectory`) over contour lines of ``fn``.

    Contours are spaced evenly in log(1 + fn) so that both the valley floor and the walls show.
    An optimizer and its ``c-`` twin share a hue: the plain one light and solid, the twin dark
    and dashed. ``minimum``
    is marked with a star. Returns the figure (the one of ``ax`` when given).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    else:
        fig = ax.figure
    grid_x, grid_y = torch.meshgrid(torch.linspace(*xlim, 300, dtype=torch.float64),
                                    torch.linspace(*ylim, 300, dtype=torch.float64), indexing="xy")
    values = fn(torch.stack([grid_x, grid_y], dim=-1))
    ax.contour(grid_x.numpy(), grid_y.numpy(), torch.log1p(values).numpy(), levels=levels,
               cmap="Greys", linewidths=0.6, alpha=0.8)
    labels = list(paths)
    for label, path in paths.items():
        path = np.asarray(path)
        ax.plot(path[:, 0], path[:, 1], marker="o", markersize=2, label=label,
                **_style(label, labels))
        ax.plot(*path[0], marker="s", color="black", markersize=5)
    if minimum is not None:
        ax.plot(*minimum, marker="*", color="gold", markeredgecolor="black", markersize=14)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_twin_trajectories(problem: ToyProblem, runs: Mapping[str, tuple], *, size: float = 4.5):
    """One panel per optimizer pair of ``runs`` (from :func:`twin_runs`): both trajectories over
    the contours of ``problem``. Returns the figure."""
    import matplotlib.pyplot as plt

    pairs: dict[str, list[str]] = {}
    for name in runs:
        pairs.setdefault(_pair_of(name)[0], []).append(name)
    fig, axes = plt.subplots(1, len(pairs), figsize=(size * len(pairs), size), squeeze=False)
    for ax, (base, members) in zip(axes[0], pairs.items()):
        plot_trajectories(problem.fn, {n: runs[n][0] for n in members}, xlim=problem.xlim,
                          ylim=problem.ylim, minimum=problem.minimum, ax=ax,
                          title=f"{problem.name}: {' vs '.join(members)}")
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, np.ndarray], *, ylabel: str, xlabel: str = "step",
                logy: bool = False, title: str | None = None, reference: float | None = None,
                reference_label: str | None = None, ylim: tuple[float, float] | None = None, ax=None):
    """Line plot of ``curves`` (label -> 1-D array indexed by step), one line per label.

    Zoo names are styled as in :func:`plot_trajectories`. ``reference`` draws a horizontal
    dotted line (labelled ``reference_label``). Returns the figure.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    labels = list(curves)
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(len(values)), values, label=label, **_style(label, labels))
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle=":", linewidth=1.2, label=reference_label)
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig
