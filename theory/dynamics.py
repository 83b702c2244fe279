"""The continuous-time systems of the Cautious Optimizers paper (PAPERS.md §A.2), each defined once.

Every system has a parameter state ``w`` and an optimizer state ``s`` (momentum ``m``, and the second
moment ``v`` for Adam), a Hamiltonian ``H(w, s) = c_L * L(w) + K(s)`` and a base update direction
``u(g, s)`` (``g = ∇L(w)``) with ``ẇ = −u``. The cautious version replaces it by ``ẇ = −φ(x) ∘ u``
with ``x = g ∘ u`` (the paper's ``x = ∇L ∘ ∇K(s)``: ``u`` and ``∇K(s)`` agree in sign coordinate by
coordinate, and for heavy ball and Signum ``u = ∇K(s)`` up to a positive factor); ``ṡ`` is unchanged.
None of the systems has a direct gradient term (the paper's ``Φ = 0``).

The families (n coordinates, all coupled only through L, and in the cautious case through the
mask's normalisation):

``heavy_ball``  ``ẇ = −m``, ``ṁ = a∇L − γm``; ``H = L + ‖m‖²/(2a)``, ``dH/dt = −(γ/a)‖m‖²``.
    The paper's two forms are ``a = 1`` (``ṁ = ∇L − γm``, ``H = L + ½‖m‖²``) and ``γ = a``
    (``ṁ = a(∇L − m)``, ``H = L + ‖m‖²/(2a)``, ``dH/dt = −‖m‖²``). PAPERS.md's ``½‖m‖²`` is right
    for the first form only.
``adam``  ``ẇ = −m/(√v + e)``, ``ṁ = a(∇L − m)``, ``v̇ = b(∇L² − v)``;
    ``H = L + Σ m²/(2a(√v + e))``,
    ``dH/dt = −Σ m²((4a − b)v + 4ae√v + b∇L²) / (4a√v(√v + e)²)``: ≤ 0 when ``a ≥ b/4``.
``signum``  ``ẇ = −sign(m)``, ``ṁ = a∇L − γm``; ``H = L + ‖m‖₁/a``, ``dH/dt = −(γ/a)‖m‖₁``.
    PAPERS.md's ``H = L + ‖m‖₁`` is the case ``a = 1``.
``lion``  (Chen et al. 2023's Lion ODE without weight decay) ``ṁ = α∇L − γm``,
    ``m̃ = (1 − εγ)m + εα∇L`` (= ``m + εṁ``), ``ẇ = −sign(m̃)``; ``H = αL + (1 − εγ)‖m‖₁``,
    ``dH/dt = −((1 − εγ)/ε)⟨sign m̃ − sign m, m̃ − m⟩ − γ‖m̃‖₁`` ≤ 0 when ``0 ≤ εγ ≤ 1``.
``lion_k``  the same ODE with ``sign`` replaced by ``∇K`` for a separable convex
    ``K(m) = Σ k(m_i)`` minimised at 0 (``k`` an undefined sympy function by default, or given);
    PAPERS.md's Lion-K Hamiltonian ``H = aL + K((1 − b)m)/(1 − b)`` with ``a = α``, ``b = εγ < 1``:
    ``dH/dt = −(1/ε)⟨∇K(m̃) − ∇K(cm), m̃ − cm⟩ − (γ/c)⟨∇K(cm), cm⟩`` with ``c = 1 − εγ``.

Masks (the cautious φ as a function of ``x``; PAPERS.md §A.1, zoo's ``caution_norm``) come from
:func:`mask_fn`. ``numeric`` turns a system into ``f(t, y)`` for ``scipy.integrate.solve_ivp``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Callable

import numpy as np
import sympy as sp

__all__ = ["System", "NumericSystem", "FAMILIES", "DEFAULT_PARAMS", "build", "mask_fn",
           "numeric", "time_derivative", "check_mask"]

FAMILIES = ("heavy_ball", "adam", "signum", "lion", "lion_k")

DEFAULT_PARAMS = {
    "heavy_ball": {"a": 1.0, "gamma": 1.0},
    "adam": {"a": 1.0, "b": 1.0, "e": 1e-3},
    "signum": {"a": 1.0, "gamma": 1.0},
    "lion": {"alpha": 1.0, "gamma": 1.0, "eps": 0.5},
    "lion_k": {"alpha": 1.0, "gamma": 1.0, "eps": 0.5},
}
"""Parameter values used by the numerics when none are given (each satisfies its condition)."""

MEAN_CLAMP = sp.Rational(1, 1000)   # zoo.caution.MEAN_CLAMP, exact


# -- masks -------------------------------------------------------------------------------------

def check_mask(norm) -> None:
    """Raise ``ValueError`` unless ``norm`` is "mean", "paper", a real c >= 0 (number or sympy
    symbol), or a callable ``phi(x)``."""
    if callable(norm) or norm in ("mean", "paper"):
        return
    if isinstance(norm, sp.Symbol) and norm.is_nonnegative:
        return
    if isinstance(norm, Real) and not isinstance(norm, bool) and np.isfinite(norm) and norm >= 0:
        return
    raise ValueError(f"Invalid mask {norm!r}; allowed: 'mean', 'paper', a float c >= 0 (soft mask "
                     "phi_c), a nonnegative sympy Symbol, or a callable phi(x)")


def mask_fn(norm="mean", smoothing: float = 0.0) -> Callable:
    """``φ`` as a function of ``x = ∇L ∘ u`` for zoo's normalisations (PAPERS.md §A.1):

    ``"mean"``   ``φ = 1[x > 0] · n / max(nnz, 10⁻³ n)`` (= ``1[x>0] / max(mean(1[x>0]), 10⁻³)``)
    ``"paper"``  ``φ = 1[x > 0] · n / (nnz + 1)``
    ``c``        ``φ = 1[x > 0] − c · 1[x ≤ 0]`` (soft mask; a float or a nonnegative sympy Symbol)
    callable     returned unchanged: it must map ``x`` to ``φ`` for the inputs it is given.

    The returned ``phi(x)`` accepts a sequence of sympy expressions (returns a tuple of sympy
    expressions, Piecewise in the signs of ``x``) or a numpy array whose last axis holds the ``n``
    coordinates (returns an array of the same shape).

    ``smoothing`` (δ ≥ 0, numpy only, default 0 = exact): replace the indicator ``1[x > 0]`` by the
    ramp ``clip(x/δ, 0, 1)`` (zero for ``x ≤ 0``, one for ``x ≥ δ``). This is what makes the
    cautious ODEs integrable where they slide along ``x_i = 0``; its cost is bounded: ``xᵀφ ≥ 0``
    still holds exactly for "mean"/"paper" (``xᵀφ ≥ −c·n·δ`` for the soft mask) and
    ``xᵀ(1 − φ) ≤ (1 + c)·n·δ`` wherever the exact mask gives ≤ 0 ("mean", soft; c = 0 for "mean").
    """
    check_mask(norm)
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    if callable(norm):
        if smoothing:
            raise ValueError("smoothing applies to 'mean', 'paper' and soft masks, not to a callable")
        return norm

    def phi(x):
        if isinstance(x, (list, tuple)) and any(isinstance(xi, sp.Basic) for xi in x):
            if smoothing:
                raise ValueError("mask smoothing is for the numerics only")
            x = [sp.sympify(xi) for xi in x]
            n = len(x)
            pos = [sp.Piecewise((1, xi > 0), (0, True)) for xi in x]
            if norm == "mean":
                scale = n / sp.Max(sum(pos), MEAN_CLAMP * n)
                return tuple(p * scale for p in pos)
            if norm == "paper":
                scale = sp.Integer(n) / (sum(pos) + 1)
                return tuple(p * scale for p in pos)
            c = norm if isinstance(norm, sp.Basic) else sp.Rational(str(norm))
            return tuple(sp.Piecewise((1, xi > 0), (-c, True)) for xi in x)
        x = np.asarray(x, dtype=float)
        pos = np.clip(x / smoothing, 0.0, 1.0) if smoothing else (x > 0).astype(float)
        n = x.shape[-1]
        if norm == "mean":
            return pos * (n / np.maximum(pos.sum(-1, keepdims=True), float(MEAN_CLAMP) * n))
        if norm == "paper":
            return pos * (n / (pos.sum(-1, keepdims=True) + 1.0))
        return pos - float(norm) * (1.0 - pos)

    phi.norm = norm
    phi.smoothing = smoothing
    return phi


# -- the systems -------------------------------------------------------------------------------

@dataclass(frozen=True)
class System:
    """One continuous-time optimizer, symbolically, with ``n`` coordinates.

    ``w_dot`` and ``s_dot`` are expressions in the gradient symbols ``g`` (``g_i = ∂L/∂w_i``), the
    state ``s`` and the parameters; a cautious ``w_dot`` holds the mask as the placeholder symbols
    ``phi`` (``phi_values`` are the mask's expressions in ``x``, or None for a generic mask).
    ``H = L_coeff * L(w) + K`` with ``L`` an undefined function of ``w``.
    """
    family: str
    cautious: bool
    n: int
    w: tuple
    g: tuple
    s: tuple                      # optimizer state, grouped by kind: (m_1..m_n, [v_1..v_n])
    s_kinds: tuple                # ("m",) or ("m", "v")
    params: tuple
    u: tuple                      # base update direction: base ẇ = −u
    x: tuple                      # g ∘ u
    phi: tuple | None             # placeholders φ_i (cautious only)
    phi_values: tuple | None      # mask expressions in x, or None (generic mask)
    mask: object                  # the mask spec given to build (None: generic)
    w_dot: tuple
    s_dot: tuple
    K: sp.Expr
    K_terms: tuple                # K = sum(K_terms), K_terms[i] depends on coordinate i only
    L_coeff: sp.Expr
    condition: sp.Basic | None    # relation among the parameters required by the claim
    closed_form: sp.Expr          # the base dH/dt in closed form (ours; checked by theory.symbolic)
    paper: dict                   # PAPERS.md's statements for this family: {"H": ..., "dH_dt": ...}
    aux: dict                     # named sub-expressions, e.g. {"m_tilde": (...)}
    description: str
    k: object = None              # lion_k: the scalar convex function k (sympy Function or Lambda)
    assumptions: str = ""
    L_fun: sp.Function = field(default=sp.Function("L"))

    @property
    def L(self) -> sp.Expr:
        """``L(w)`` as an undefined function of the coordinates."""
        return self.L_fun(*self.w)

    @property
    def H(self) -> sp.Expr:
        return self.L_coeff * self.L + self.K

    @property
    def state(self) -> tuple:
        """All state symbols ``(w, s)``."""
        return self.w + self.s

    @property
    def w_dot_explicit(self) -> tuple:
        """``w_dot`` with the mask placeholders replaced by the mask's expressions (if any)."""
        if not self.cautious or self.phi_values is None:
            return self.w_dot
        sub = dict(zip(self.phi, self.phi_values))
        return tuple(e.subs(sub) for e in self.w_dot)

    def coordinate(self, i: int) -> dict:
        """The symbols of coordinate ``i``: ``{"w": w_i, "g": g_i, "m": m_i, ["v": v_i]}``."""
        out = {"w": self.w[i], "g": self.g[i]}
        for j, kind in enumerate(self.s_kinds):
            out[kind] = self.s[j * self.n + i]
        return out


def _symbols(n):
    w = sp.symbols(f"w1:{n + 1}", real=True)
    g = sp.symbols(f"g1:{n + 1}", real=True)
    m = sp.symbols(f"m1:{n + 1}", real=True)
    v = sp.symbols(f"v1:{n + 1}", positive=True)
    return w, g, m, v


def _k_derivative(k):
    """``k'`` as a callable on sympy expressions, for an undefined function or a concrete ``k``."""
    if isinstance(k, sp.core.function.UndefinedFunction):
        kp = sp.Function(f"{k.__name__}_prime")
        return kp
    z = sp.Dummy("z", real=True)
    dk = sp.diff(k(z), z)
    return lambda arg: dk.subs(z, arg)


def build(family: str, cautious: bool = False, mask=None, n: int = 2, k=None) -> System:
    """The system of ``family`` with ``n`` coordinates (see the module docstring).

    ``cautious``: ``ẇ = −φ(x) ∘ u``. ``mask``: None for a generic φ (placeholders only; the claims
    then assume condition (6) of PAPERS.md §A.2), or a spec accepted by :func:`mask_fn`.
    ``k`` (``lion_k`` only): the scalar convex function of ``K(m) = Σ k(m_i)``; None for an
    undefined function ``k`` (with derivative ``k_prime``), or e.g. ``sympy.Abs`` or
    ``lambda z: sympy.sqrt(1 + z**2) - 1``.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if mask is not None:
        check_mask(mask)
    w, g, m, v = _symbols(n)
    aux: dict = {}
    kfun = None
    s_kinds = ("m",)
    s = tuple(m)
    if family == "heavy_ball":
        a = sp.Symbol("a", positive=True)
        gamma = sp.Symbol("gamma", nonnegative=True)
        params = (a, gamma)
        u = tuple(m)
        s_dot = tuple(a * gi - gamma * mi for gi, mi in zip(g, m))
        K_terms = tuple(mi**2 / (2 * a) for mi in m)
        L_coeff = sp.Integer(1)
        condition = None
        closed = -gamma / a * sum(mi**2 for mi in m)
        paper = {"H": sp.Function("L")(*w) + sum(mi**2 for mi in m) / 2}
        assumptions = "a > 0, gamma >= 0"
        description = ("heavy-ball momentum: w' = -m, m' = a*grad L - gamma*m; "
                       "H = L + |m|^2/(2a), dH/dt = -(gamma/a)|m|^2 (the paper's forms: a = 1, or gamma = a)")
    elif family == "adam":
        a, b, e = sp.symbols("a b e", positive=True)
        params = (a, b, e)
        s_kinds = ("m", "v")
        s = tuple(m) + tuple(v)
        u = tuple(mi / (sp.sqrt(vi) + e) for mi, vi in zip(m, v))
        s_dot = tuple(a * (gi - mi) for gi, mi in zip(g, m)) + tuple(b * (gi**2 - vi) for gi, vi in zip(g, v))
        K_terms = tuple(mi**2 / (2 * a * (sp.sqrt(vi) + e)) for mi, vi in zip(m, v))
        L_coeff = sp.Integer(1)
        condition = sp.Ge(a, b / 4)
        closed = -sum(mi**2 * ((4 * a - b) * vi + 4 * a * e * sp.sqrt(vi) + b * gi**2)
                      / (4 * a * sp.sqrt(vi) * (sp.sqrt(vi) + e)**2) for gi, mi, vi in zip(g, m, v))
        paper = {"H": sp.Function("L")(*w) + sum(K_terms)}
        assumptions = "a > 0, b > 0, e > 0, v > 0"
        description = ("Adam: w' = -m/(sqrt(v)+e), m' = a(grad L - m), v' = b(grad L^2 - v); "
                       "H = L + sum m^2/(2a(sqrt(v)+e)); dH/dt <= 0 when a >= b/4")
    elif family == "signum":
        a = sp.Symbol("a", positive=True)
        gamma = sp.Symbol("gamma", nonnegative=True)
        params = (a, gamma)
        u = tuple(sp.sign(mi) for mi in m)
        s_dot = tuple(a * gi - gamma * mi for gi, mi in zip(g, m))
        K_terms = tuple(sp.Abs(mi) / a for mi in m)
        L_coeff = sp.Integer(1)
        condition = None
        closed = -gamma / a * sum(sp.Abs(mi) for mi in m)
        paper = {"H": sp.Function("L")(*w) + sum(sp.Abs(mi) for mi in m)}
        assumptions = "a > 0, gamma >= 0"
        description = ("Signum (signed momentum): w' = -sign(m), m' = a*grad L - gamma*m; "
                       "H = L + |m|_1/a, dH/dt = -(gamma/a)|m|_1")
    else:   # lion, lion_k: Chen et al. (2023)'s Lion-K ODE, no weight decay
        alpha, eps = sp.symbols("alpha epsilon", positive=True)
        gamma = sp.Symbol("gamma", nonnegative=True)
        params = (alpha, gamma, eps)
        c = 1 - eps * gamma
        mt = tuple(c * mi + eps * alpha * gi for gi, mi in zip(g, m))
        aux["m_tilde"] = mt
        s_dot = tuple(alpha * gi - gamma * mi for gi, mi in zip(g, m))
        L_coeff = alpha
        if family == "lion":
            u = tuple(sp.sign(t) for t in mt)
            K_terms = tuple(c * sp.Abs(mi) for mi in m)
            condition = sp.Le(eps * gamma, 1)
            closed = (-(c / eps) * sum((sp.sign(t) - sp.sign(mi)) * (t - mi) for t, mi in zip(mt, m))
                      - gamma * sum(sp.Abs(t) for t in mt))
            paper = {"dH_dt": -c * sum(sp.Abs(t) for t in mt) - gamma * sum(sp.Abs(mi) for mi in m)}
            assumptions = "alpha > 0, epsilon > 0, gamma >= 0"
            description = ("Lion (Chen et al. 2023 ODE, no weight decay): m' = alpha*grad L - gamma*m, "
                           "m~ = (1-eps*gamma)m + eps*alpha*grad L, w' = -sign(m~); "
                           "H = alpha*L + (1-eps*gamma)|m|_1; dH/dt = -((1-eps*gamma)/eps)<sign m~ - sign m, m~ - m>"
                           " - gamma|m~|_1 <= 0 for 0 <= eps*gamma <= 1")
        else:
            kfun = sp.Function("k") if k is None else k
            kp = _k_derivative(kfun)
            u = tuple(kp(t) for t in mt)
            K_terms = tuple(kfun(c * mi) / c for mi in m)
            condition = sp.Lt(eps * gamma, 1)
            closed = (-(1 / eps) * sum((kp(t) - kp(c * mi)) * (t - c * mi) for t, mi in zip(mt, m))
                      - (gamma / c) * sum(kp(c * mi) * (c * mi) for mi in m))
            paper = {}
            assumptions = ("alpha > 0, epsilon > 0, gamma >= 0; k convex with its minimum at 0 "
                           "(k' nondecreasing, z*k'(z) >= 0)")
            description = ("Lion-K: the Lion ODE with w' = -grad K(m~), K(m) = sum k(m_i) convex; "
                           "H = alpha*L + K((1-b)m)/(1-b) with b = eps*gamma < 1 (PAPERS.md's a = alpha)")
    K = sum(K_terms)
    x = tuple(gi * ui for gi, ui in zip(g, u))
    phi = phi_values = None
    w_dot = tuple(-ui for ui in u)
    if cautious:
        phi = sp.symbols(f"phi1:{n + 1}", real=True)
        w_dot = tuple(-p * ui for p, ui in zip(phi, u))
        if mask is not None:
            phi_values = tuple(mask_fn(mask)(list(x)))
            if len(phi_values) != n:
                raise ValueError(f"mask returned {len(phi_values)} values for {n} coordinates")
        description = ("cautious " + description + "; cautious: w' = -phi(x)*u, x = grad L * u, "
                       + ("phi generic (condition (6) assumed)" if mask is None else f"mask {mask!r}"))
    elif mask is not None:
        raise ValueError("mask given for a non-cautious system")
    return System(family=family, cautious=cautious, n=n, w=tuple(w), g=tuple(g), s=s, s_kinds=s_kinds,
                  params=params, u=u, x=x, phi=phi, phi_values=phi_values, mask=mask, w_dot=w_dot,
                  s_dot=s_dot, K=K, K_terms=K_terms, L_coeff=L_coeff, condition=condition,
                  closed_form=closed, paper=paper, aux=aux, description=description, k=kfun,
                  assumptions=assumptions)


def _canonical_k_derivatives(expr, system: System):
    """Write ``Subs(Derivative(k(ξ), ξ), ξ, z)`` and ``Derivative(k(z), z)`` as ``k_prime(z)``."""
    if system.family != "lion_k" or not isinstance(system.k, sp.core.function.UndefinedFunction):
        return expr
    kp = _k_derivative(system.k)

    def is_kd(e):
        return (isinstance(e, sp.Derivative) and e.expr.func == system.k and len(e.variables) == 1
                and e.expr.args == e.variables)

    expr = expr.replace(lambda e: isinstance(e, sp.Subs) and is_kd(e.expr),
                        lambda e: kp(e.point[0]))
    return expr.replace(is_kd, lambda e: kp(e.variables[0]))


def time_derivative(system: System, F: sp.Expr, explicit_mask: bool = True) -> sp.Expr:
    """``dF/dt`` along the system by the chain rule: ``Σ ∂F/∂w_i ẇ_i + Σ ∂F/∂s_j ṡ_j``, with
    ``∂L/∂w_i`` replaced by ``g_i``. ``explicit_mask``: use the mask's expressions (else the
    placeholders ``φ_i``)."""
    w_dot = system.w_dot_explicit if explicit_mask else system.w_dot
    total = sum(sp.diff(F, wi) * wd for wi, wd in zip(system.w, w_dot))
    total += sum(sp.diff(F, si) * sd for si, sd in zip(system.s, system.s_dot))
    total = total.subs({sp.Derivative(system.L, wi): gi for wi, gi in zip(system.w, system.g)})
    return _canonical_k_derivatives(total, system)


# -- numerics ----------------------------------------------------------------------------------

def _smooth_sign(expr, delta):
    """Replace ``sign(z)`` by ``z/√(z² + δ²)`` and ``|z|`` by ``√(z² + δ²) − δ`` (δ > 0)."""
    if not delta:
        return expr
    d = sp.Float(delta)
    expr = expr.replace(sp.sign, lambda z: z / sp.sqrt(z**2 + d**2))
    return expr.replace(sp.Abs, lambda z: sp.sqrt(z**2 + d**2) - d)


def _vectorize(fn):
    def wrapped(*args):
        out = np.asarray(fn(*args), dtype=float)
        shape = np.broadcast_shapes(*(np.shape(a) for a in args)) if args else ()
        return np.broadcast_to(out, shape).copy() if out.shape != shape else out
    return wrapped


@dataclass
class NumericSystem:
    """A :class:`System` lambdified for numpy, coordinate-wise, for any dimension ``n``.

    The state vector is ``y = concat(w, m, [v])`` (each of length ``n``). ``f(t, y)`` is the
    right-hand side for ``scipy.integrate.solve_ivp``; ``H(y)`` and ``L(y)`` evaluate the
    Hamiltonian and the loss; ``dH_dt(g, s)`` and ``dL_dt(g, s)`` evaluate the chain rule at a
    gradient ``g`` and state ``s = (m, [v])`` (arrays with the coordinates on the last axis, any
    leading batch shape).
    """
    system: System
    loss_fn: Callable
    grad_fn: Callable
    phi: Callable | None
    params: dict
    sign_smoothing: float
    mask_smoothing: float
    _u: Callable
    _w_dot: Callable
    _s_dot: tuple
    _K_term: Callable
    _dK: tuple
    L_coeff: float

    @property
    def n_kinds(self) -> int:
        return len(self.system.s_kinds)

    def split(self, y):
        y = np.asarray(y, dtype=float)
        n = y.shape[-1] // (1 + self.n_kinds)
        parts = [y[..., i * n:(i + 1) * n] for i in range(1 + self.n_kinds)]
        return parts[0], tuple(parts[1:])

    def w_dot(self, g, s):
        u = self._u(g, *s)
        if self.phi is None:
            return self._w_dot(g, *s)
        return self._w_dot(g, *s, np.asarray(self.phi(g * u), dtype=float))

    def s_dot(self, g, s):
        return tuple(f(g, *s) for f in self._s_dot)

    def f(self, t, y):
        w, s = self.split(y)
        if self.n_kinds == 2 and np.any(s[1] <= 0):
            raise FloatingPointError(f"v left the domain v > 0 at t={t}: {s[1]}")
        g = np.asarray(self.grad_fn(w), dtype=float)
        return np.concatenate([self.w_dot(g, s), *self.s_dot(g, s)])

    def K(self, s):
        return self._K_term(*s).sum(-1)

    def H(self, y):
        w, s = self.split(y)
        return self.L_coeff * self.loss_fn(w) + self.K(s)

    def L(self, y):
        w, _ = self.split(y)
        return self.loss_fn(w)

    def grad_H(self, y):
        """``(∂H/∂w, ∂H/∂s)`` concatenated like ``y`` (used for error bounds)."""
        w, s = self.split(y)
        gw = self.L_coeff * np.asarray(self.grad_fn(w), dtype=float)
        return np.concatenate([gw, *(d(*s) for d in self._dK)])

    def dH_dt(self, g, s):
        g = np.asarray(g, dtype=float)
        s = tuple(np.asarray(si, dtype=float) for si in s)
        total = self.L_coeff * (g * self.w_dot(g, s)).sum(-1)
        for d, sd in zip(self._dK, self.s_dot(g, s)):
            total = total + (d(*s) * sd).sum(-1)
        return total

    def dL_dt(self, g, s):
        g = np.asarray(g, dtype=float)
        return (g * self.w_dot(g, tuple(np.asarray(si, dtype=float) for si in s))).sum(-1)


def numeric(system: System, loss_fn: Callable, grad_fn: Callable, mask=None, params: dict | None = None,
            sign_smoothing: float = 0.0, mask_smoothing: float = 0.0) -> NumericSystem:
    """Lambdify ``system`` into a :class:`NumericSystem` for ``loss_fn`` / ``grad_fn`` (numpy
    functions of ``w``, any dimension).

    ``mask``: φ for a cautious system (a :func:`mask_fn` spec); default the system's own mask.
    ``params``: numeric values by parameter name (``a``, ``b``, ``e``, ``gamma``, ``alpha``,
    ``epsilon``/``eps``); missing ones come from :data:`DEFAULT_PARAMS`.

    ``sign_smoothing`` (δ, default 0: exact ``sign``/``|·|``): the sign-based systems have a
    discontinuous right-hand side, and Lion's ``m̃`` slides along ``m̃ = 0`` (a Filippov sliding
    mode) where an explicit integrator chatters. With δ > 0 every ``|z|`` in the system (in ``K``)
    becomes ``√(z² + δ²) − δ`` and every ``sign(z)`` (in ``ẇ``) its derivative ``z/√(z² + δ²)``:
    the integrated system is then the same family with the convex pseudo-Huber ``K_δ`` (a Lion-K
    / generalised Signum), for which the (smoothed) ``H`` is still an exact Lyapunov function, and
    ``|H_δ − H| ≤ n·δ·(coefficient of ‖m‖₁ in H)``. Nothing is smoothed unless δ is given. The
    masks are smoothed only when ``mask_smoothing`` (δ' > 0) is given: the cautious systems slide
    along ``x_i = 0`` wherever moving coordinate i would push its gradient back across zero (the
    Rosenbrock valley), and an integrator then chatters; ``mask_fn(norm, smoothing=δ')`` replaces
    ``1[x > 0]`` by a ramp of width δ', which keeps ``dL/dt ≤ 0`` exactly for "mean"/"paper" and
    lets H grow at rate at most ``c_L (1 + c) n δ'`` (see :func:`mask_fn`; no continuous mask can
    satisfy condition (6), which forces a jump at 0).
    """
    if sign_smoothing < 0:
        raise ValueError(f"sign_smoothing must be >= 0, got {sign_smoothing}")
    if system.family == "lion_k" and isinstance(system.k, sp.core.function.UndefinedFunction):
        raise ValueError("lion_k with an undefined k cannot be integrated: build it with a concrete k")
    values = {}
    for key, val in {**DEFAULT_PARAMS[system.family], **(params or {})}.items():
        values["epsilon" if key == "eps" else key] = val
    by_name = {p.name: p for p in system.params}
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)} for {system.family}; "
                         f"known: {sorted(by_name)}")
    sub = {by_name[k]: sp.Float(v) for k, v in values.items()}
    # parameters may violate the system's condition on purpose (e.g. Adam with a < b/4)
    # coordinate-wise templates: coordinate 0 of the system
    c0 = system.coordinate(0)
    s0 = [c0[kind] for kind in system.s_kinds]
    g0 = c0["g"]

    def template(expr, extra=(), with_g=True):
        expr = _smooth_sign(sp.sympify(expr), sign_smoothing).subs(sub)
        args = ([g0] if with_g else []) + list(s0) + list(extra)
        free = expr.free_symbols - set(args)
        if free:
            raise ValueError(f"{system.family}: expression {expr} is not coordinate-separable ({free})")
        return _vectorize(sp.lambdify(args, expr, modules="numpy"))

    cautious = system.cautious
    phi = None
    if cautious:
        spec = mask if mask is not None else system.mask
        if spec is None:
            raise ValueError("a cautious system needs a mask (build it with one or pass mask=)")
        phi = mask_fn(spec, smoothing=mask_smoothing)
    elif mask is not None:
        raise ValueError("mask given for a non-cautious system")
    u = template(system.u[0])
    w_dot = template(system.w_dot[0], extra=(system.phi[0],) if cautious else ())
    s_dot = tuple(template(system.s_dot[j * system.n]) for j in range(len(system.s_kinds)))
    K_expr = _smooth_sign(system.K_terms[0], sign_smoothing)
    K_term = template(K_expr, with_g=False)
    dK = tuple(template(sp.diff(K_expr, si), with_g=False) for si in s0)
    L_coeff = float(system.L_coeff.subs(sub))
    return NumericSystem(system=system, loss_fn=loss_fn, grad_fn=grad_fn, phi=phi, params=values,
                         sign_smoothing=sign_smoothing, mask_smoothing=mask_smoothing if cautious else 0.0,
                         _u=u, _w_dot=w_dot, _s_dot=s_dot, _K_term=K_term, _dK=dK, L_coeff=L_coeff)
