"""Discrete-time guarantees of cautious steps (PAPERS.md §A.3), checked with the zoo's optimizers.

L is µ-smooth (‖∇L(a) - ∇L(b)‖ <= µ‖a - b‖); a cautious step is ``w+ = w - ε φ ∘ u`` with ``u`` the
optimizer's update direction and ``g = ∇L(w)``.

Theorem 2.4 (:func:`monotonicity_table`). With the σ-mask ``φ = α·1[g ∘ u >= (µσ/2)·u ∘ u]`` and
σ >= ε·α, ``L(w_{k+1}) <= L(w_k)`` at every step, whatever produced u (momentum, sign, ...)::

    L(w+) <= L(w) - εα Σ_S g_i u_i + (µ/2) ε²α² Σ_S u_i²  <=  L(w) - (µ/2) εα (σ - εα) Σ_S u_i²

(S the kept coordinates). The σ-mask is passed to the zoo as a callable ``caution_norm``
(:func:`sigma_mask`); the zoo hands it the exact update direction for c-sgdm (the momentum
buffer, dampening 0), c-lion and c-signum (the sign vector), so the zoo's step is the theorem's.

Theorem 2.3 (:func:`step_bound_table`). For a state with ``Δ = -xᵀ(1 - φ(x)) >= 0`` (x = u ∘ g) and
``r = u ∘ (1 - φ)``, the cautious step ends no higher than the base step when
``ε <= 2Δ / (µ‖r‖(2‖u‖ + ‖r‖))``. Proof sketch (checked here numerically): with a = w - εu and
w+ = a + εr, ``L(w+) - L(a) <= ε∇L(a)ᵀr + (µ/2)ε²‖r‖² <= -εΔ + µε²‖u‖‖r‖ + (µ/2)ε²‖r‖²``.
The states are put into the zoo's ``sgdm`` / ``c-sgdm`` by presetting the momentum buffer so that
the buffer after the step is u.

Test problems (:func:`quadratic_problem`, :func:`robust_regression_problem`, :func:`sine_problem`)
come with a valid smoothness constant µ (exact for the quadratic, an upper bound otherwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import zoo
from zoo.caution import caution_mask

__all__ = ["Problem", "quadratic_problem", "sine_problem", "robust_regression_problem", "default_problems", "sigma_mask",
           "run_losses", "monotonicity_table", "step_bound", "step_bound_table"]


@dataclass(frozen=True)
class Problem:
    """A µ-smooth test function on ℝ^dim: ``loss(w)`` for a float64 vector, ``mu`` a valid
    smoothness constant, ``scale`` the spread of random starts (N(0, scale²) per coordinate)."""

    name: str
    dim: int
    loss: Callable[[Tensor], Tensor]
    mu: float
    scale: float = 1.0
    convex: bool = True

    def grad(self, w: Tensor) -> Tensor:
        w = w.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(w), w)
        return g

    def starts(self, count: int, seed: int = 0) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return self.scale * torch.randn(count, self.dim, generator=gen, dtype=torch.float64)


def quadratic_problem(dim: int = 10, condition: float = 50.0, seed: int = 0,
                      indefinite: bool = False) -> Problem:
    """L(w) = ½ wᵀAw + bᵀw with A = Q diag(λ) Qᵀ, λ log-spaced in [1, condition] (some negated
    when ``indefinite``: a non-convex quadratic); µ = max |λ| exactly."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)
    if indefinite:
        lam[::3] = -lam[::3]
    a = q @ torch.diag(lam) @ q.T
    a = (a + a.T) / 2
    b = torch.randn(dim, generator=gen, dtype=torch.float64)

    def loss(w):
        return 0.5 * w @ a @ w + b @ w

    name = f"{'indefinite ' if indefinite else ''}quadratic d={dim} kappa={condition:g}"
    return Problem(name, dim, loss, float(lam.abs().max()), 1.0, not indefinite)


def sine_problem(dim: int = 10, waves: int = 6, seed: int = 0) -> Problem:
    """A smooth non-convex function: L(w) = ½ wᵀAw + Σ_k a_k sin(c_kᵀw + d_k) with A ⪰ 0; its
    Hessian A - Σ a_k sin(·) c_k c_kᵀ has norm at most µ = ‖A‖ + Σ|a_k|‖c_k‖²."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    a_mat = m @ m.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    amp = 1.0 + torch.rand(waves, generator=gen, dtype=torch.float64)
    c = 1.5 * torch.randn(waves, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    d = 2 * math.pi * torch.rand(waves, generator=gen, dtype=torch.float64)
    mu = float(torch.linalg.eigvalsh(a_mat).max() + (amp * (c * c).sum(1)).sum())

    def loss(w):
        return 0.5 * w @ a_mat @ w + (amp * torch.sin(c @ w + d)).sum()

    return Problem(f"quadratic+sines d={dim}", dim, loss, mu, 2.0, False)


def robust_regression_problem(dim: int = 10, samples: int = 30, ridge: float = 0.1,
                              seed: int = 0) -> Problem:
    """A smooth non-convex function bounded below: Cauchy-loss regression
    L(w) = Σ_i log(1 + (a_iᵀw - b_i)²) + (λ/2)‖w‖². Since |d²/dt² log(1 + t²)| <= 2, its Hessian has
    norm at most µ = 2‖A‖² + λ."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(samples, dim, generator=gen, dtype=torch.float64) / math.sqrt(dim)
    b = 3 * torch.randn(samples, generator=gen, dtype=torch.float64)
    mu = float(2 * torch.linalg.matrix_norm(a, ord=2) ** 2 + ridge)

    def loss(w):
        return torch.log1p((a @ w - b) ** 2).sum() + 0.5 * ridge * (w @ w)

    return Problem(f"cauchy regression d={dim}", dim, loss, mu, 3.0, False)


def default_problems() -> list[Problem]:
    """A convex quadratic and two smooth non-convex functions bounded below (Cauchy-loss
    regression, quadratic plus sines)."""
    return [quadratic_problem(), robust_regression_problem(), sine_problem()]


def sigma_mask(mu: float, sigma: float, alpha: float = 1.0):
    """Theorem 2.4's mask as a zoo ``caution_norm``: ``(u, g) -> α·1[g ∘ u >= (µσ/2)·u ∘ u]``."""
    threshold = mu * sigma / 2

    def mask(update: Tensor, grad: Tensor) -> Tensor:
        return (grad * update >= threshold * update * update).to(update.dtype) * alpha

    mask.__name__ = f"sigma_mask(mu={mu:g}, sigma={sigma:g}, alpha={alpha:g})"
    return mask


def run_losses(problem: Problem, optimizer: str, hparams: dict, start: Tensor, steps: int) -> np.ndarray:
    """L(w_0), ..., L(w_steps) of the zoo optimizer ``optimizer`` (built with ``hparams``) from
    ``start``."""
    w = start.detach().clone()
    opt = zoo.get(optimizer)([w], **hparams)
    losses = [float(problem.loss(w))]
    for _ in range(steps):
        w.grad = problem.grad(w)
        opt.step()
        losses.append(float(problem.loss(w)))
    return np.array(losses)


def _configs(problem: Problem, sgdm_lr: float, sign_lr: float):
    """(optimizer label, base zoo name, base hparams, cautious zoo name) for each family."""
    return [
        ("sgdm", "sgdm", dict(lr=sgdm_lr / problem.mu, momentum=0.9, dampening=0.0), "c-sgdm"),
        ("lion", "lion", dict(lr=sign_lr, betas=(0.9, 0.99)), "c-lion"),
        ("signum", "signum", dict(lr=sign_lr, momentum=0.9), "c-signum"),
    ]


def monotonicity_table(problems: Sequence[Problem] | None = None, starts: int = 10, steps: int = 60,
                       alpha: float = 1.0, sigma_factor: float = 1.0, sgdm_lr: float = 1.0,
                       sign_lr: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Theorem 2.4 on each problem for sgdm, lion and signum: the base optimizer, the zoo's default
    cautious twin ("mean") and the twin with the σ-mask, σ = ``sigma_factor``·ε·α (>= εα when
    ``sigma_factor >= 1``), run for ``steps`` steps from ``starts`` random points.

    ``sgdm_lr`` is in units of 1/µ (heavy ball, momentum 0.9); ``sign_lr`` is absolute. Columns:
    problem, mu, optimizer, mask, lr, sigma, max_increase (largest L(w_{k+1}) - L(w_k) over all
    steps and starts), max_rel_increase (divided by 1 + |L(w_k)|), increases (number of steps with
    L(w_{k+1}) > L(w_k) + 1e-12 (1 + |L(w_k)|)), steps_total, mean_final_loss.
    """
    problems = default_problems() if problems is None else problems
    rows = []
    for problem in problems:
        points = problem.starts(starts, seed)
        for label, base, hparams, cautious in _configs(problem, sgdm_lr, sign_lr):
            lr = hparams["lr"]
            sigma = sigma_factor * lr * alpha
            variants = [("none", base, hparams), ("mean", cautious, hparams),
                        ("sigma", cautious, dict(hparams, caution_norm=sigma_mask(problem.mu, sigma, alpha)))]
            for mask_name, name, hp in variants:
                diffs, rel, finals = [], [], []
                for point in points:
                    losses = run_losses(problem, name, hp, point, steps)
                    d = np.diff(losses)
                    diffs.append(d)
                    rel.append(d / (1 + np.abs(losses[:-1])))
                    finals.append(losses[-1])
                diffs, rel = np.concatenate(diffs), np.concatenate(rel)
                rows.append({"problem": problem.name, "mu": problem.mu, "optimizer": label,
                             "mask": mask_name, "lr": lr,
                             "sigma": sigma if mask_name == "sigma" else math.nan,
                             "max_increase": float(diffs.max()), "max_rel_increase": float(rel.max()),
                             "increases": int((rel > 1e-12).sum()), "steps_total": diffs.size,
                             "mean_final_loss": float(np.mean(finals))})
    return pd.DataFrame(rows)


def step_bound(u: Tensor, grad: Tensor, phi: Tensor, mu: float) -> tuple[float, float]:
    """(Δ, ε_max) of Theorem 2.3 for update ``u``, gradient ``grad`` and mask values ``phi``:
    Δ = -xᵀ(1-φ), ε_max = 2Δ / (µ‖r‖(2‖u‖ + ‖r‖)) with r = u ∘ (1-φ) (inf when r = 0)."""
    x = u * grad
    delta = float(-(x * (1 - phi)).sum())
    r = float(torch.linalg.vector_norm(u * (1 - phi)))
    if r == 0:
        return delta, math.inf
    return delta, 2 * delta / (mu * r * (2 * float(torch.linalg.vector_norm(u)) + r))


def _zoo_step(problem: Problem, w: Tensor, u: Tensor, lr: float, cautious: bool, norm) -> Tensor:
    """One step of the zoo's sgdm / c-sgdm from w whose update direction is u (the momentum buffer
    is preset to (u - g)/β with β = 1/2, so that β·buffer + g = u)."""
    p = w.detach().clone()
    g = problem.grad(p)
    kwargs = dict(lr=lr, momentum=0.5, dampening=0.0)
    if cautious:
        kwargs["caution_norm"] = norm
    opt = zoo.get("c-sgdm" if cautious else "sgdm")([p], **kwargs)
    opt.state[p]["momentum_buffer"] = (u - g) * 2.0
    p.grad = g
    opt.step()
    return p


def step_bound_table(problems: Sequence[Problem] | None = None, norms=("mean", "paper", 0.0, 0.1),
                     states: int = 40, fractions: Sequence[float] = (0.1, 0.5, 1.0, 10.0, 100.0),
                     noise: float = 1.5, seed: int = 0) -> pd.DataFrame:
    """Theorem 2.3 with the zoo's masks: for random states (w, u = ∇L(w) + noise·‖∇L‖/√d·ξ) where
    Δ >= 0 and r ≠ 0, step with ε = fraction·ε_max through the zoo's sgdm and c-sgdm and compare
    the losses. Fractions <= 1 are covered by the theorem; larger ones show what happens beyond.

    Columns: problem, caution_norm, fraction, states (tested), skipped_delta_negative,
    skipped_r_zero, max_gap (largest L(cautious) - L(base), relative to 1 + |L(base)|),
    cautious_not_worse (fraction of states with gap <= 1e-12).
    """
    problems = default_problems() if problems is None else problems
    rows = []
    for problem in problems:
        gen = torch.Generator().manual_seed(seed)
        ws = problem.starts(states, seed)
        for norm in norms:
            gaps = {f: [] for f in fractions}
            neg = zero = 0
            for w in ws:
                g = problem.grad(w)
                xi = torch.randn(problem.dim, generator=gen, dtype=torch.float64)
                u = g + noise * float(g.norm()) / math.sqrt(problem.dim) * xi
                # the zoo's mask on (u, g) as sgdm will see them
                phi = caution_mask(u, g, norm)
                delta, eps_max = step_bound(u, g, phi, problem.mu)
                if delta < 0:
                    neg += 1
                    continue
                if not math.isfinite(eps_max):
                    zero += 1
                    continue
                for f in fractions:
                    lr = f * eps_max
                    base = float(problem.loss(_zoo_step(problem, w, u, lr, False, norm)))
                    caut = float(problem.loss(_zoo_step(problem, w, u, lr, True, norm)))
                    gaps[f].append((caut - base) / (1 + abs(base)))
            for f in fractions:
                arr = np.array(gaps[f])
                rows.append({"problem": problem.name, "caution_norm": norm, "fraction": f,
                             "states": arr.size, "skipped_delta_negative": neg, "skipped_r_zero": zero,
                             "max_gap": float(arr.max()) if arr.size else math.nan,
                             "cautious_not_worse": float((arr <= 1e-12).mean()) if arr.size else math.nan})
    return pd.DataFrame(rows)
