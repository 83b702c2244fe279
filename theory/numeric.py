"""Numeric checks (scipy) of the Hamiltonian / Lyapunov statements of PAPERS.md §A.2.

- :func:`adversarial_dHdt`: search states and gradients in a box for a point where ``dH/dt > 0``
  (the chain rule at ``(∇L, s)``: ``w`` enters only through ``∇L``, which is a free variable).
- :func:`ode_trajectory`: integrate a system with ``scipy.integrate.solve_ivp`` on a test loss and
  record ``H`` and ``L``; :func:`check_nonincreasing` tests them against a tolerance derived from
  the integrator's ``rtol``/``atol``; :func:`find_L_increase` exhibits a base trajectory whose loss
  goes up.
- :func:`adam_violation_threshold`: the largest ``a/b`` at which the search still finds
  ``dH/dt > 0`` for Adam, against the prediction ``√V/(4(√V + e))`` for the box ``v ≤ V``.

Test losses (:data:`LOSSES`): ``quadratic`` ``4w₁² + w₂²`` (PAPERS.md §A.4), ``rosenbrock``
``(1 − w₁)² + 100(w₂ − w₁²)²`` and ``wavy10``, a smooth non-convex function on ℝ¹⁰ (see
:data:`wavy`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

from theory.dynamics import NumericSystem, build, numeric

__all__ = ["TestLoss", "LOSSES", "quadratic", "rosenbrock", "wavy", "AdversarialResult", "adversarial_dHdt",
           "adam_violation_threshold", "Trajectory", "ode_trajectory", "MonotoneCheck", "check_nonincreasing",
           "find_L_increase", "numeric_system"]


# -- test losses -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TestLoss:
    """A smooth test loss: ``fn(w)`` and ``grad(w)`` on arrays with the coordinates on the last axis."""
    __test__ = False   # not a pytest class
    name: str
    dim: int
    fn: Callable
    grad: Callable
    start: tuple
    description: str


def _quadratic(w):
    w = np.asarray(w, dtype=float)
    return 4.0 * w[..., 0] ** 2 + w[..., 1] ** 2


def _quadratic_grad(w):
    w = np.asarray(w, dtype=float)
    return np.stack([8.0 * w[..., 0], 2.0 * w[..., 1]], axis=-1)


def _rosenbrock(w):
    w = np.asarray(w, dtype=float)
    return (1.0 - w[..., 0]) ** 2 + 100.0 * (w[..., 1] - w[..., 0] ** 2) ** 2


def _rosenbrock_grad(w):
    w = np.asarray(w, dtype=float)
    x, y = w[..., 0], w[..., 1]
    return np.stack([-2.0 * (1.0 - x) - 400.0 * x * (y - x ** 2), 200.0 * (y - x ** 2)], axis=-1)


WAVY_C, WAVY_KAPPA, WAVY_RHO = 1.0, 2.0, 0.1


def _wavy(w):
    w = np.asarray(w, dtype=float)
    i = np.arange(w.shape[-1])
    chain = w[..., 1:] - w[..., :-1]
    return ((0.5 * w ** 2 + WAVY_C * np.cos(WAVY_KAPPA * w + i)).sum(-1)
            + 0.5 * WAVY_RHO * (chain ** 2).sum(-1))


def _wavy_grad(w):
    w = np.asarray(w, dtype=float)
    i = np.arange(w.shape[-1])
    g = w - WAVY_C * WAVY_KAPPA * np.sin(WAVY_KAPPA * w + i)
    chain = WAVY_RHO * (w[..., 1:] - w[..., :-1])
    g[..., 1:] += chain
    g[..., :-1] -= chain
    return g


quadratic = TestLoss("quadratic", 2, _quadratic, _quadratic_grad, (1.0, 1.0),
                     "4 w1^2 + w2^2 (PAPERS.md §A.4), start (1, 1)")
rosenbrock = TestLoss("rosenbrock", 2, _rosenbrock, _rosenbrock_grad, (-1.2, 1.0),
                      "(1 - w1)^2 + 100 (w2 - w1^2)^2, start (-1.2, 1)")
wavy = TestLoss("wavy10", 10, _wavy, _wavy_grad, tuple(np.linspace(-2.0, 2.5, 10)),
                "sum_i [w_i^2/2 + cos(2 w_i + i)] + (0.1/2) sum_i (w_{i+1} - w_i)^2 on R^10: smooth, "
                "bounded below (>= -10), non-convex (d2L/dw_i^2 = 1 + 0.2 - 4 cos(2 w_i + i) takes both "
                "signs), many local minima; start linspace(-2, 2.5, 10)")
"""``wavy10``: ``L(w) = Σ_i [w_i²/2 + c·cos(κ w_i + i)] + (ρ/2) Σ_i (w_{i+1} − w_i)²`` with c = 1,
κ = 2, ρ = 0.1, on ℝ¹⁰. Smooth, bounded below by ``−10``, coercive, non-convex: the diagonal of
its Hessian ``1 + 2ρ·(interior) − cκ² cos(κ w_i + i)`` ranges over about [−3, 5.2]; the phases
``i`` break the symmetry between coordinates and the chain term couples them."""

LOSSES = {loss.name: loss for loss in (quadratic, rosenbrock, wavy)}


def _loss(loss) -> TestLoss:
    if isinstance(loss, TestLoss):
        return loss
    if isinstance(loss, str):
        try:
            return LOSSES[loss]
        except KeyError:
            raise KeyError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}") from None
    raise TypeError(f"loss must be a TestLoss or one of {list(LOSSES)}, got {loss!r}")


def numeric_system(family: str, loss=quadratic, cautious: bool = False, mask="mean", params: dict | None = None,
                   sign_smoothing: float = 0.0, mask_smoothing: float = 0.0, k=None) -> NumericSystem:
    """The numeric form of ``family`` (built once per call from :func:`theory.dynamics.build`)."""
    loss = _loss(loss)
    system = build(family, cautious=cautious, mask=None, n=1, k=k)
    return numeric(system, loss.fn, loss.grad, mask=mask if cautious else None, params=params,
                   sign_smoothing=sign_smoothing, mask_smoothing=mask_smoothing if cautious else 0.0)


# -- adversarial search ------------------------------------------------------------------------

@dataclass
class AdversarialResult:
    """The largest ``dH/dt`` found, where, and whether it breaks ``dH/dt ≤ 0`` (by more than ``tol``)."""
    family: str
    cautious: bool
    mask: object
    params: dict
    max_dHdt: float
    argmax: dict
    violated: bool
    tol: float
    evaluations: int


def adversarial_dHdt(family: str, cautious: bool = False, mask="mean", params: dict | None = None, seed: int = 0,
                     restarts: int = 20, n: int = 2, bound: float = 10.0, v_range: tuple = (1e-6, 1e4),
                     samples: int = 4096, tol: float = 1e-9, sign_smoothing: float = 0.0, k=None,
                     quantity: str = "H") -> AdversarialResult:
    """Maximise ``dH/dt`` (``quantity="L"``: ``dL/dt``) over gradients ``g`` and momenta ``m`` in
    ``[−bound, bound]ⁿ`` and (Adam) second moments ``v`` in ``v_range`` (searched in log scale).

    ``samples`` random points, then ``restarts`` local maximisations (Powell's derivative-free
    method with the box as bounds: the masks and sign() make dH/dt piecewise smooth) from the best
    of them and, for the second half, from fresh random points. ``violated`` is ``max > tol``
    (absolute). ``params`` are the system's parameters by name (missing ones from
    :data:`theory.dynamics.DEFAULT_PARAMS`). The mask couples the ``n`` coordinates, so ``n``
    matters for the cautious systems (e.g. Lion with the "paper" mask, see the tests).
    """
    ns = numeric(build(family, cautious=cautious, mask=None, n=1, k=k), _quadratic, _quadratic_grad,
                 mask=mask if cautious else None, params=params, sign_smoothing=sign_smoothing)
    kinds = ns.system.s_kinds
    lo = [-bound] * n * 2
    hi = [bound] * n * 2
    if "v" in kinds:
        lo += [np.log10(v_range[0])] * n
        hi += [np.log10(v_range[1])] * n
    lo, hi = np.array(lo), np.array(hi)

    def unpack(z):
        z = np.asarray(z, dtype=float)
        g, m = z[..., :n], z[..., n:2 * n]
        s = (m,) if len(kinds) == 1 else (m, 10.0 ** z[..., 2 * n:])
        return g, s

    def value(z):
        g, s = unpack(z)
        with np.errstate(all="ignore"):
            out = ns.dH_dt(g, s) if quantity == "H" else ns.dL_dt(g, s)
        return np.where(np.isfinite(out), out, -np.inf)

    rng = np.random.default_rng(seed)
    Z = lo + (hi - lo) * rng.random((samples, lo.size))
    vals = value(Z)
    evaluations = samples
    best = int(np.argmax(vals))
    best_z, best_v = Z[best], float(vals[best])
    starts = list(Z[np.argsort(-vals)[: (restarts + 1) // 2]])
    starts += list(lo + (hi - lo) * rng.random((restarts // 2, lo.size)))
    for z0 in starts:
        res = minimize(lambda z: -float(value(z)), z0, method="Powell", bounds=list(zip(lo, hi)),
                       options={"maxiter": 2000})
        evaluations += int(res.nfev)
        v = float(value(res.x))
        if v > best_v:
            best_z, best_v = np.asarray(res.x), v
    g, s = unpack(best_z)
    argmax = {"g": g.tolist(), "m": s[0].tolist()}
    if len(s) == 2:
        argmax["v"] = s[1].tolist()
    return AdversarialResult(family, cautious, mask if cautious else None, dict(ns.params), best_v, argmax,
                             bool(best_v > tol), tol, evaluations)


def adam_violation_threshold(b: float = 1.0, e: float = 1e-3, v_max: float = 1e4, n: int = 1, lo: float = 0.0,
                             hi: float = 0.5, iterations: int = 12, restarts: int = 4, samples: int = 1024,
                             seed: int = 0) -> dict:
    """Bisection on ``r = a/b`` for the boundary between ratios where :func:`adversarial_dHdt` finds
    ``dH/dt > 0`` for Adam (``v ∈ [1e-6, v_max]``) and ratios where it does not.

    Returns ``{"largest_violating": r_lo, "smallest_clean": r_hi, "predicted": √V/(4(√V + e)),
    "paper": 0.25, "trace": [(r, max dH/dt), ...]}``. Analytically (theory.symbolic): at ``∇L = 0``
    the coordinate term is ``−m²/(√v + e)·(1 − (b/4a)·√v/(√v + e))``, so a violation exists in the
    box iff ``a/b < √V/(4(√V + e))``, which tends to the paper's 1/4 as ``V → ∞`` or ``e → 0``.
    """
    trace = []

    def violated(r):
        res = adversarial_dHdt("adam", params={"a": r * b, "b": b, "e": e}, seed=seed, restarts=restarts, n=n,
                               v_range=(1e-6, v_max), samples=samples)
        trace.append((r, res.max_dHdt))
        return res.violated

    if not violated(lo if lo > 0 else 1e-3) or violated(hi):
        raise ValueError("bracket [lo, hi] does not straddle the violation boundary")
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if violated(mid):
            lo = mid
        else:
            hi = mid
    root = np.sqrt(v_max)
    return {"largest_violating": lo, "smallest_clean": hi, "predicted": root / (4 * (root + e)), "paper": 0.25,
            "trace": trace}


# -- trajectories ------------------------------------------------------------------------------

@dataclass
class Trajectory:
    """A solution of ``solve_ivp`` with ``H``, ``L`` and per-step tolerances along it.

    ``H_tol[k]`` (``L_tol[k]``) bounds the increase of H (L) between steps k and k+1 that the
    integration error can cause (see :func:`ode_trajectory`)."""
    family: str
    cautious: bool
    mask: object
    loss: str
    params: dict
    t: np.ndarray
    w: np.ndarray
    s: tuple
    H: np.ndarray
    L: np.ndarray
    H_tol: np.ndarray
    L_tol: np.ndarray
    rtol: float
    atol: float
    nfev: int
    success: bool
    message: str
    system: NumericSystem = field(repr=False, default=None)


ERROR_SAFETY = 100.0
"""Safety factor on the integrator's local error estimate in the monotonicity tolerance (see
:func:`ode_trajectory`)."""


def _step_tolerance(grad_F: np.ndarray, Y: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """``ERROR_SAFETY · √N · Σ_i |∂F/∂y_i| (atol + rtol |y_i|)`` at each step's end point (the max
    over the two end points of the step)."""
    N = Y.shape[1]
    per_point = np.sqrt(N) * (np.abs(grad_F) * (atol + rtol * np.abs(Y))).sum(1)
    return ERROR_SAFETY * np.maximum(per_point[1:], per_point[:-1])


def ode_trajectory(family: str, loss="quadratic", w0=None, cautious: bool = False, mask="mean", t_end: float = 10.0,
                   m0=None, v0=None, sign_smoothing: float = 0.0, mask_smoothing: float = 0.0, rtol: float = 1e-8,
                   atol: float = 1e-10, method: str = "BDF", max_steps: int = 100_000, k=None,
                   **params) -> Trajectory:
    """Integrate ``family`` (cautious with ``mask`` if asked) on ``loss`` from ``w0`` (default: the
    loss's start), ``m0`` (default 0: at rest) and, for Adam, ``v0`` (default ``∇L(w0)² + 1e-2``,
    which keeps ``v > 0``; v stays positive since ``v̇ ≥ −bv``), up to ``t_end``.
    ``params`` are the system's parameters (``a``, ``b``, ``e``, ``gamma``, ``alpha``, ``eps``).

    Tolerance of the monotonicity checks: solve_ivp accepts a step when the RMS over the N
    components of ``err_i / (atol + rtol |y_i|)`` is ≤ 1, so each component's estimated local
    error is ≤ ``√N (atol + rtol |y_i|)``. Starting from ``y_k`` the exact flow does not increase
    H (the claim under test), so the computed ``H(y_{k+1}) − H(y_k)`` exceeds 0 by at most
    ``Σ_i |∂H/∂y_i| |err_i|`` to first order. The local error estimate is asymptotic, not a bound
    (BDF near an equilibrium exceeded it by a factor ~20 in our runs), hence the safety factor
    :data:`ERROR_SAFETY` = 100; this is ``H_tol`` (``L_tol`` likewise with ``∂L/∂w``). At
    rtol = 1e-8 it allows relative changes of order 1e-5 per step, far below the increases that
    the checks must detect (L rising by 1e-2..1 along the base systems).
    Accumulated (global) error does not enter: each step is compared with its own start.

    Discontinuities: with exact ``sign`` and masks the right-hand side jumps, the error estimate
    is unreliable on steps that cross a switching surface (RK45 from rest on Signum accepts a
    first step that raises H by 1e-5 against a tolerance of 1e-9), and Lion and the cautious
    systems on coupled losses slide along a switching surface, where the integrator chatters
    (stopped after ``max_steps`` right-hand-side evaluations, ``success=False``). Pass
    ``sign_smoothing`` (H stays an exact Lyapunov function of the smoothed system) and, for
    cautious systems, ``mask_smoothing`` δ' (see :func:`theory.dynamics.mask_fn`); the latter's
    bounded effect is added to the tolerances: ``c_L (1 + c) n δ' Δt`` to ``H_tol`` and
    ``c n δ' Δt`` to ``L_tol`` (c: the soft mask's constant, else 0). The default method is BDF:
    the smoothed systems are stiff in the boundary layers (LSODA and RK45 chattered on cautious
    heavy ball and Lion on ``wavy10``; BDF integrated all 24 family × loss × {base, cautious}
    combinations with sign_smoothing = 1e-3, mask_smoothing = 1e-2).
    """
    lo = _loss(loss)
    w0 = np.asarray(lo.start if w0 is None else w0, dtype=float)
    ns = numeric_system(family, lo, cautious=cautious, mask=mask, params=params, sign_smoothing=sign_smoothing,
                        mask_smoothing=mask_smoothing, k=k)
    n = w0.size
    m0 = np.zeros(n) if m0 is None else np.asarray(m0, dtype=float)
    y0 = [w0, m0]
    if "v" in ns.system.s_kinds:
        y0.append(lo.grad(w0) ** 2 + 1e-2 if v0 is None else np.asarray(v0, dtype=float))
    y0 = np.concatenate(y0)
    calls = {"n": 0}

    class _TooMany(Exception):
        pass

    def f(t, y):
        calls["n"] += 1
        if calls["n"] > max_steps:
            raise _TooMany
        return ns.f(t, y)

    try:
        sol = solve_ivp(f, (0.0, t_end), y0, method=method, rtol=rtol, atol=atol)
        T, Y, success, message = sol.t, sol.y.T, bool(sol.success), sol.message
        if not success:
            message += " (a switching surface or sliding mode? try sign_smoothing / mask_smoothing > 0)"
    except _TooMany:
        sol = None
        T, Y, success = np.array([0.0]), y0[None], False
        message = (f"stopped after {max_steps} right-hand-side evaluations (a sliding mode? try "
                   "sign_smoothing > 0 or a shorter t_end)")
    w, s = ns.split(Y)
    H = np.array([ns.H(y) for y in Y])
    L = np.array([ns.L(y) for y in Y])
    grad_H = np.array([ns.grad_H(y) for y in Y])
    grad_L = np.concatenate([lo.grad(w), np.zeros_like(Y[:, n:])], axis=1)
    H_tol = _step_tolerance(grad_H, Y, rtol, atol)
    L_tol = _step_tolerance(grad_L, Y, rtol, atol)
    if cautious and mask_smoothing:
        c = float(mask) if not isinstance(mask, str) and not callable(mask) else 0.0
        dt = np.diff(T)
        H_tol = H_tol + ns.L_coeff * (1.0 + c) * n * mask_smoothing * dt
        L_tol = L_tol + c * n * mask_smoothing * dt
    return Trajectory(family=family, cautious=cautious, mask=mask if cautious else None, loss=lo.name,
                      params=dict(ns.params), t=T, w=w, s=s, H=H, L=L, H_tol=H_tol, L_tol=L_tol,
                      rtol=rtol, atol=atol, nfev=calls["n"], success=success, message=message, system=ns)


@dataclass
class MonotoneCheck:
    """``ok``: no step increases the quantity by more than its tolerance."""
    quantity: str
    ok: bool
    max_increase: float        # largest step increase (may be > 0 within tolerance)
    max_excess: float          # largest (increase − tolerance); ≤ 0 when ok
    worst_step: int
    total_change: float
    steps: int


def check_nonincreasing(traj: Trajectory, quantity: str = "H") -> MonotoneCheck:
    """Is ``traj.H`` (or ``traj.L``) non-increasing up to the integration tolerance?"""
    values = traj.H if quantity == "H" else traj.L
    tol = traj.H_tol if quantity == "H" else traj.L_tol
    if not traj.success:
        raise RuntimeError(f"integration failed: {traj.message}")
    inc = np.diff(values)
    if inc.size == 0:
        return MonotoneCheck(quantity, True, 0.0, -np.inf, -1, 0.0, 0)
    excess = inc - tol
    worst = int(np.argmax(excess))
    return MonotoneCheck(quantity, bool(excess.max() <= 0), float(inc.max()), float(excess.max()), worst,
                         float(values[-1] - values[0]), int(inc.size))


def find_L_increase(family: str, loss="quadratic", cautious: bool = False, mask="mean", t_end: float = 10.0,
                    tries: int = 20, seed: int = 0, margin: float = 100.0, **kwargs) -> tuple:
    """A trajectory along which L increases by more than ``margin`` times its tolerance at some
    step: the loss's start first, then random starts ``w0`` in ``[−2, 2]ⁿ`` (and random momenta
    for the later tries). Returns ``(trajectory, check)``; raises ``LookupError`` if none of the
    ``tries`` shows an increase."""
    lo = _loss(loss)
    rng = np.random.default_rng(seed)
    for attempt in range(tries):
        w0 = np.asarray(lo.start) if attempt == 0 else rng.uniform(-2, 2, lo.dim)
        m0 = None if attempt < tries // 2 else rng.uniform(-1, 1, lo.dim)
        traj = ode_trajectory(family, lo, w0, cautious=cautious, mask=mask, t_end=t_end, m0=m0, **kwargs)
        if not traj.success:
            continue
        inc = np.diff(traj.L)
        if inc.size and np.any(inc > margin * traj.L_tol):
            return traj, check_nonincreasing(traj, "L")
    raise LookupError(f"no trajectory of {family} on {lo.name} with an increase of L in {tries} tries")



