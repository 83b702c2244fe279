"""Symbolic checks (sympy) of the Hamiltonian / Lyapunov statements of PAPERS.md §A.2.

``verify(family, cautious, mask)`` derives ``dH/dt`` and ``dL/dt`` along the system of
:mod:`theory.dynamics` by the chain rule (nothing typed in), compares them with the closed forms,
and proves ``dH/dt ≤ 0`` (and, for a cautious system, ``dL/dt ≤ 0``) where it can.

How an inequality is proved: the parameters are rewritten so that the condition becomes a
positivity assumption (Adam: ``a = b/4 + κ``, κ ≥ 0; Lion: ``γ = κ/((1 + κ)ε)``, i.e.
``0 ≤ εγ < 1``, plus the end point ``εγ = 1``); the sign-carrying variables of ``sign()``/``|·|``
are split into the cases ``+p``, ``−p``, ``0`` (p > 0; Lion is written in ``(m, m̃)`` instead of
``(m, ∇L)``); then each case is certified by a *monomial certificate*: the expression is a fraction
whose denominator is a polynomial with nonnegative coefficients in positive quantities and whose
numerator, negated, has only nonnegative coefficients, odd powers only of nonnegative quantities
(``sqrt(v)``, ``|m|``, the parameters). Since the systems are coordinate-separable, ``dH/dt`` is
proved term by term (the split into coordinate terms, and their equality up to renaming, are
checked). Theorem 2.1 is checked with the mask as free symbols ``φ_i``; the mask inequalities
``xᵀ(1 − φ(x)) ≤ 0`` and ``xᵀφ(x) ≥ 0`` by enumerating the sign patterns of ``x``.

When a certificate fails, a random search (then an exact rational evaluation) looks for a point
that breaks the inequality: found, the claim is "refuted" with that counterexample; not found,
it is "not proved symbolically" and the detail names the inequality, for the numeric check of
:mod:`theory.numeric` to take over. Nothing passes silently.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from theory.dynamics import (FAMILIES, System, _canonical_k_derivatives, _k_derivative, build, mask_fn,
                             time_derivative)

__all__ = ["FAMILIES", "STATUSES", "Claim", "SymbolicResult", "TheoremResult", "verify", "theorem_2_1",
           "mask_conditions", "adam_condition_tightness", "certify_nonpositive"]

STATUSES = ("proved", "not proved symbolically", "refuted")
_RANK = {s: i for i, s in enumerate(STATUSES)}   # proved < not proved < refuted


@dataclass
class Claim:
    """One checked statement. ``asserted``: part of the Lyapunov claim that ``status`` aggregates
    (False for informative checks: PAPERS.md's transcriptions, the base system's ``dL/dt``)."""
    statement: str
    status: str
    detail: str = ""
    counterexample: dict | None = None
    asserted: bool = True


@dataclass
class SymbolicResult:
    """``status`` aggregates the asserted claims: ``dH/dt ≤ 0`` under ``condition`` with the
    closed form of ``dH/dt``, and for a cautious system ``dL/dt ≤ 0`` and Theorem 2.1's
    identities. ``claims`` lists every statement checked, PAPERS.md's included."""
    family: str
    cautious: bool
    mask: object
    dH_dt: sp.Expr
    dL_dt: sp.Expr
    condition: str
    status: str
    detail: str
    claims: list = field(default_factory=list)
    system: System | None = None

    def claim(self, prefix: str) -> Claim:
        """The first claim whose statement starts with ``prefix``."""
        for c in self.claims:
            if c.statement.startswith(prefix):
                return c
        raise KeyError(prefix)


@dataclass
class TheoremResult:
    """Theorem 2.1 for a family with a generic mask ``φ_i`` (free symbols), for the normalised
    Hamiltonian ``H/c_L = L + K/c_L`` (``c_L = α`` for Lion, else 1)."""
    family: str
    dH_identity: bool
    dL_identity: bool
    dH_dt: sp.Expr
    dL_dt: sp.Expr
    Delta_H: sp.Expr
    statement: str

    @property
    def status(self) -> str:
        return "proved" if self.dH_identity and self.dL_identity else "not proved symbolically"


# -- certificates ------------------------------------------------------------------------------

def _nonneg_poly(p: sp.Expr, strict: bool = False) -> bool:
    """True if the polynomial ``p`` (generators chosen by sympy: symbols, sqrt(v), ...) has only
    nonnegative coefficients and odd powers only of nonnegative generators; with ``strict``, also
    a positive term made of strictly positive generators only (so p > 0)."""
    p = sp.expand(p)
    if p == 0:
        return not strict
    if p.is_number:
        return bool(p > 0) if strict else bool(p >= 0)
    try:
        poly = sp.Poly(p)
    except sp.PolynomialError:
        return False
    if not poly.gens:
        return bool(p > 0) if strict else bool(p >= 0)
    if poly.domain not in (sp.ZZ, sp.QQ):
        return False
    has_positive = False
    for monom, coeff in poly.terms():
        if coeff < 0:
            return False
        for gen, k in zip(poly.gens, monom):
            if k % 2 and not gen.is_nonnegative:
                return False
        if coeff > 0 and all(k == 0 or gen.is_positive for gen, k in zip(poly.gens, monom)):
            has_positive = True
    return has_positive or not strict


def certify_nonpositive(expr: sp.Expr) -> bool:
    """A monomial certificate that ``expr ≤ 0`` wherever it is defined (see the module docstring)."""
    expr = sp.sympify(expr)
    if expr.is_nonpositive:
        return True
    num, den = sp.fraction(sp.together(expr))
    if _nonneg_poly(den, strict=True):
        return _nonneg_poly(-num)
    if _nonneg_poly(-den, strict=True):
        return _nonneg_poly(num)
    return False


def _canonical_signs(expr):
    """Simplify the arguments of sign() and Abs() (so that reparametrised arguments collapse)."""
    return expr.replace(lambda e: isinstance(e, (sp.sign, sp.Abs)),
                        lambda e: e.func(sp.factor(sp.cancel(e.args[0]))))


def _sign_cases(expr, variables):
    """Yield ``(assignment, expr)`` for every sign case of ``variables``: ``v = +p``, ``−p`` or 0."""
    pos = {v: sp.Symbol(f"{v.name}_abs", positive=True) for v in variables}
    for signs in itertools.product((1, -1, 0), repeat=len(variables)):
        sub = {v: s * pos[v] for v, s in zip(variables, signs)}
        yield dict(zip(variables, signs)), _canonical_signs(expr.subs(sub))


def _sign_word(s):
    return {1: "+", -1: "-", 0: "0"}[s]


# -- proof plans -------------------------------------------------------------------------------

_KAPPA = sp.Symbol("kappa", nonnegative=True)


def _param(system: System, name: str) -> sp.Symbol:
    return next(p for p in system.params if p.name == name)


def _condition_cases(system: System) -> list[tuple[str, dict]]:
    """Substitutions that turn the system's condition into positivity assumptions."""
    if system.family == "adam":
        a, b = _param(system, "a"), _param(system, "b")
        return [("a = b/4 + kappa, kappa >= 0", {a: b / 4 + _KAPPA})]
    if system.family in ("lion", "lion_k"):
        gamma, eps = _param(system, "gamma"), _param(system, "epsilon")
        cases = [("eps*gamma = kappa/(1 + kappa) in [0, 1)", {gamma: _KAPPA / ((1 + _KAPPA) * eps)})]
        if system.family == "lion":
            cases.append(("eps*gamma = 1", {gamma: 1 / eps}))
        return cases
    return [("no condition", {})]


def _m_tilde_symbols(system):
    return sp.symbols(f"mt1:{system.n + 1}", real=True)


def _reparametrise(expr, system: System, cond_sub: dict):
    """Lion: write ``∇L`` through ``m̃``: ``g_i = (m̃_i − (1 − εγ) m_i)/(εα)``; returns
    ``(expr, split variables per coordinate)``."""
    expr = sp.sympify(expr).subs(cond_sub)
    if system.family in ("lion", "lion_k"):
        alpha, gamma, eps = (_param(system, n) for n in ("alpha", "gamma", "epsilon"))
        c = (1 - eps * gamma).subs(cond_sub)
        mt = _m_tilde_symbols(system)
        expr = expr.subs({gi: (ti - c * mi) / (eps * alpha) for gi, ti, mi in zip(system.g, mt, system.s)})
        expr = _canonical_signs(expr)
        return expr, [(system.s[i], mt[i]) for i in range(system.n)]
    if system.family == "signum":
        return expr, [(system.s[i],) for i in range(system.n)]
    return expr, [() for _ in range(system.n)]


def _has_sign(expr) -> bool:
    return expr.has(sp.sign, sp.Abs)


def _prove_nonpositive(expr, system: System, coords=None) -> tuple[bool, list]:
    """Prove ``expr ≤ 0`` under the condition (all condition cases, all sign cases of the
    coordinates ``coords``, default all). Returns ``(proved, failed case descriptions)``."""
    failed = []
    coords = range(system.n) if coords is None else coords
    for cond_name, cond_sub in _condition_cases(system):
        e, split = _reparametrise(expr, system, cond_sub)
        variables = [v for i in coords for v in split[i]] if _has_sign(e) else []
        for assignment, case in _sign_cases(e, variables):
            if not certify_nonpositive(case):
                word = ", ".join(f"{v}{_sign_word(s)}" for v, s in assignment.items())
                text = str(case)
                failed.append(f"[{cond_name}; {word or 'all'}] "
                              f"{text if len(text) < 400 else text[:400] + '...'} <= 0")
    return not failed, failed


def _prove_zero(expr, system: System) -> bool:
    """``expr ≡ 0`` (all sign cases when it holds sign()/Abs()). Terms that involve a single
    coordinate's split variables are grouped by coordinate and checked group by group."""
    e, split = _reparametrise(expr, system, {})
    if not _has_sign(e):
        return sp.expand(sp.cancel(sp.expand(e))) == 0 or sp.simplify(e) == 0
    groups: dict = {}
    for term in sp.Add.make_args(sp.expand(e)):
        owners = [i for i, vs in enumerate(split) if term.free_symbols & set(vs)]
        key = owners[0] if len(owners) == 1 else ("mixed" if owners else "none")
        groups.setdefault(key, []).append(term)
    for key, terms in groups.items():   # every group ≡ 0 implies the sum ≡ 0 (sound, maybe not complete)
        variables = ([v for vs in split for v in vs] if key == "mixed" else
                     [] if key == "none" else list(split[key]))
        for _, case in _sign_cases(sp.Add(*terms), variables):
            if sp.expand(sp.cancel(sp.expand(case))) != 0 and sp.simplify(case) != 0:
                return False
    return True


# -- counterexamples ---------------------------------------------------------------------------

def _sample(symbol, rng, size):
    mag = 10.0 ** rng.uniform(-2, 2, size)
    if symbol.is_positive:
        return mag
    if symbol.is_nonnegative:
        return np.where(rng.random(size) < 0.1, 0.0, mag)
    return np.where(rng.random(size) < 0.05, 0.0, mag * rng.choice((-1.0, 1.0), size))


def _rational(x: float):
    return sp.Rational(x).limit_denominator(10**6) if x != 0 else sp.Integer(0)


def _simple_values(symbol, value):
    """Candidate simpler values for ``symbol`` near ``value`` (in its domain), simplest first."""
    sgn = 1 if value >= 0 else -1
    cands = [0, sgn, 2 * sgn, sp.Rational(sgn, 2), 10 * sgn, sp.Rational(sgn, 10), 100 * sgn,
             sp.Rational(sgn, 100), -sgn, sp.Integer(round(float(value)))]
    out = []
    for c in cands:
        c = sp.Integer(c) if isinstance(c, int) else c
        if symbol.is_positive and not c > 0 or symbol.is_nonnegative and c < 0:
            continue
        if c not in out:
            out.append(c)
    return out


def _simplify_point(expr, point, positive):
    """Greedily replace coordinates of ``point`` by simple values while ``expr`` keeps its sign."""
    def ok(pt):
        val = sp.N(expr.subs(pt), 30)
        return val.is_real and bool(val > 0) if positive else bool(val != 0)

    for s in list(point):
        for c in _simple_values(s, point[s]):
            trial = {**point, s: c}
            if ok(trial):
                point = trial
                break
    return point


def find_positive(expr, seed: int = 0, samples: int = 4000, fixed: dict | None = None) -> dict | None:
    """A point (exact rationals, simplified greedily) where ``expr > 0``, by random search over the
    free symbols (log-uniform magnitudes in [1e-2, 1e2], random signs for real symbols), confirmed
    by exact evaluation; None if none is found (or ``expr`` holds undefined functions)."""
    expr = sp.sympify(expr).subs(fixed or {})
    if expr.atoms(sp.core.function.AppliedUndef):
        return None
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    if not symbols:
        return {"value": expr} if bool(expr > 0) else None
    rng = np.random.default_rng(seed)
    f = sp.lambdify(symbols, expr, modules="numpy")
    cols = [_sample(s, rng, samples) for s in symbols]
    with np.errstate(all="ignore"):
        vals = np.broadcast_to(np.asarray(f(*cols), dtype=float), (samples,))
    order = np.argsort(-np.nan_to_num(vals, nan=-np.inf))
    for idx in order[:20]:
        if not vals[idx] > 0:
            break
        point = {s: _rational(float(c[idx])) for s, c in zip(symbols, cols)}
        if bool(sp.N(expr.subs(point), 30) > 0):
            point = _simplify_point(expr, point, positive=True)
            out = {s.name: v for s, v in point.items()}
            out.update({k.name: v for k, v in (fixed or {}).items()})
            out["value"] = sp.nsimplify(sp.simplify(expr.subs(point)))
            return out
    return None


def _find_nonzero(expr, seed: int = 0) -> dict | None:
    found = find_positive(expr, seed=seed)
    return found if found is not None else find_positive(-expr, seed=seed + 1)


# -- the per-coordinate split ------------------------------------------------------------------

def _coordinate_terms(system: System, F: sp.Expr) -> list:
    """``dF/dt = Σ_i term_i`` with ``term_i`` collecting coordinate i's state (base systems)."""
    terms = []
    for i in range(system.n):
        part = sp.diff(F, system.w[i]) * system.w_dot_explicit[i]
        for j in range(len(system.s_kinds)):
            si = system.s[j * system.n + i]
            part += sp.diff(F, si) * system.s_dot[j * system.n + i]
        part = part.subs({sp.Derivative(system.L, wi): gi for wi, gi in zip(system.w, system.g)})
        terms.append(_canonical_k_derivatives(part, system))
    return terms


def _rename(system: System, i: int, j: int) -> dict:
    ci, cj = system.coordinate(i), system.coordinate(j)
    return {ci[k]: cj[k] for k in ci}


def _separable_check(system: System, total, terms) -> bool:
    if sp.expand(total - sum(terms)) != 0:
        return False
    for i, t in enumerate(terms):
        own = set(system.coordinate(i).values()) | set(system.params)
        if not t.free_symbols <= own:
            return False
        if i and sp.expand(terms[0].subs(_rename(system, 0, i), simultaneous=True) - t) != 0:
            return False
    return True


# -- checks ------------------------------------------------------------------------------------

def _check_identity(statement, lhs, rhs, system, asserted=True) -> Claim:
    diff = lhs - rhs
    if _prove_zero(diff, system):
        return Claim(statement, "proved", "sympy: the difference simplifies to 0 in every sign case",
                     asserted=asserted)
    ce = _find_nonzero(diff)
    if ce is not None:
        return Claim(statement, "refuted", f"the two sides differ by {ce['value']} at the given point",
                     counterexample=ce, asserted=asserted)
    return Claim(statement, "not proved symbolically",
                 f"sympy could not reduce {diff} to 0 and no point where it is nonzero was found",
                 asserted=asserted)


def _search_counterexample(statement, expr, system, asserted, fixed=None) -> Claim | None:
    for cond_name, cond_sub in _condition_cases(system):
        ce = find_positive(sp.sympify(expr).subs(cond_sub), fixed=fixed)
        if ce is not None:
            return Claim(statement, "refuted", f"positive ({ce['value']}) at the given point [{cond_name}]",
                         counterexample=ce, asserted=asserted)
    return None


def _check_nonpositive(statement, expr, system, terms=None, asserted=True, search_fixed=None,
                       search_first=False) -> Claim:
    """``expr ≤ 0`` under the system's condition; ``terms``: its separable coordinate terms.
    ``search_first``: look for a counterexample before trying a certificate."""
    if search_first:
        found = _search_counterexample(statement, expr, system, asserted, search_fixed)
        if found is not None:
            return found
    if terms is not None and _separable_check(system, expr, terms):
        ok, failed = _prove_nonpositive(terms[0], system, coords=[0])
        how = ("proved for coordinate 1's term (dH/dt is a sum of identical coordinate terms); "
               "cases: condition rewritten as positivity, sign cases split, monomial certificates")
    else:
        ok, failed = _prove_nonpositive(expr, system)
        how = "condition rewritten as positivity, sign cases split, monomial certificates"
    if ok:
        return Claim(statement, "proved", how, asserted=asserted)
    if not search_first:
        found = _search_counterexample(statement, expr, system, asserted, search_fixed)
        if found is not None:
            return found
    return Claim(statement, "not proved symbolically",
                 "no certificate for: " + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else "")
                 + " — no counterexample found by random search; check numerically "
                 "(theory.numeric.adversarial_dHdt)", asserted=asserted)


def _lion_k_lemma_claim(system: System, dH, statement) -> Claim:
    """Lion-K with a general convex k: the closed form is a nonnegative combination of
    ``(k'(p) − k'(q))(p − q) ≥ 0`` (k' nondecreasing) and ``k'(z) z ≥ 0`` (k minimised at 0)."""
    alpha, gamma, eps = (_param(system, n) for n in ("alpha", "gamma", "epsilon"))
    c = 1 - eps * gamma
    P = sp.symbols(f"P1:{system.n + 1}", nonnegative=True)   # (k'(m̃) − k'(cm))(m̃ − cm)
    Q = sp.symbols(f"Q1:{system.n + 1}", nonnegative=True)   # k'(cm) cm
    combination = -(1 / eps) * sum(P) - (gamma / c) * sum(Q)
    kp = _k_derivative(system.k)
    mt = system.aux["m_tilde"]
    back = {Pi: (kp(t) - kp(c * mi)) * (t - c * mi) for Pi, t, mi in zip(P, mt, system.s)}
    back.update({Qi: kp(c * mi) * (c * mi) for Qi, mi in zip(Q, system.s)})
    if sp.cancel(sp.expand(dH - combination.subs(back))) != 0 and sp.simplify(dH - combination.subs(back)) != 0:
        return Claim(statement, "not proved symbolically",
                     "dH/dt is not the expected combination of the convexity terms")
    ok, failed = _prove_nonpositive(combination, system)
    premises = _convexity_premises(system)
    if ok and premises == "proved":
        return Claim(statement, "proved",
                     "dH/dt equals (checked by sympy) -(1/eps)*sum P_i - (gamma/c)*sum Q_i "
                     "with P_i = (k'(m~_i) - k'(c m_i))(m~_i - c m_i) >= 0 (k convex: k' nondecreasing) and "
                     "Q_i = k'(c m_i) c m_i >= 0 (k convex, minimised at 0), and 1/eps, gamma/c >= 0 "
                     "for 0 <= eps*gamma < 1")
    found = _search_counterexample(statement, dH, system, True)
    if found is not None:
        found.detail += f" (premises on k: {premises})"
        return found
    return Claim(statement, "not proved symbolically",
                 f"combination certificate: {ok} ({failed[:2]}); premises on k: {premises}; "
                 "no counterexample found by random search")


def _convexity_premises(system: System) -> str:
    k = system.k
    if isinstance(k, sp.core.function.UndefinedFunction):
        return "proved"   # assumed: k convex with its minimum at 0 (the family's hypothesis)
    z = sp.Symbol("z", real=True)
    d1 = sp.diff(k(z), z)
    d2 = sp.diff(k(z), z, 2)
    ok2 = certify_nonpositive(-d2) or bool(sp.simplify(d2).is_nonnegative)
    ok1 = all(certify_nonpositive(-case) for _, case in _sign_cases(_canonical_signs(z * d1), [z]))
    if ok1 and ok2:
        return "proved"
    return f"not proved symbolically (k''(z) = {d2} >= 0: {ok2}; z k'(z) = {z * d1} >= 0: {ok1})"


def mask_conditions(mask, n: int = 2) -> dict:
    """The mask inequalities of Theorem 2.1 for ``φ = mask_fn(mask)`` with ``n`` coordinates, by
    enumerating the sign patterns of ``x`` (``mask=None``: a generic φ satisfying condition (6)).
    Returns ``{"H": Claim(xᵀ(1 − φ(x)) ≤ 0), "L": Claim(xᵀφ(x) ≥ 0), "condition_6": Claim}``."""
    xs = sp.symbols(f"x1:{n + 1}", real=True)
    p = sp.symbols(f"p1:{n + 1}", positive=True)
    q = sp.symbols(f"q1:{n + 1}", nonnegative=True)
    r = sp.symbols(f"r1:{n + 1}", real=True)
    phi = None if mask is None else mask_fn(mask)
    fails = {"H": None, "L": None, "condition_6": None}
    for signs in itertools.product((1, -1, 0), repeat=n):
        x = [s * pi for s, pi in zip(signs, p)]
        if phi is None:   # condition (6): φ_i ≥ 1 where x_i > 0, φ_i ≤ 0 where x_i < 0
            f = [1 + qi if s > 0 else (-qi if s < 0 else ri) for s, qi, ri in zip(signs, q, r)]
        else:
            f = [sp.sympify(v) for v in phi(x)]
        A = sum(xi * (1 - fi) for xi, fi in zip(x, f))
        B = sum(xi * fi for xi, fi in zip(x, f))
        pattern = "".join(_sign_word(s) for s in signs)
        one = {pi: 1 for pi in p}
        if fails["H"] is None and not certify_nonpositive(A):
            fails["H"] = (pattern, {f"x{i + 1}": xi.subs(one) for i, xi in enumerate(x)}, A.subs(one))
        if fails["L"] is None and not certify_nonpositive(-B):
            fails["L"] = (pattern, {f"x{i + 1}": xi.subs(one) for i, xi in enumerate(x)}, B.subs(one))
        if fails["condition_6"] is None:
            for i, (s, fi) in enumerate(zip(signs, f)):
                bad = (s > 0 and not certify_nonpositive(1 - fi)) or (s < 0 and not certify_nonpositive(fi))
                if bad:
                    fails["condition_6"] = (pattern, {f"x{j + 1}": xj.subs(one) for j, xj in enumerate(x)},
                                            {f"phi{i + 1}": fi.subs(one)})
                    break
    out = {}
    names = {"H": f"x^T(1 - phi(x)) <= 0 for all x in R^{n}",
             "L": f"x^T phi(x) >= 0 for all x in R^{n}",
             "condition_6": "condition (6): phi_i >= 1 where x_i > 0, phi_i <= 0 where x_i < 0"}
    for key, statement in names.items():
        fail = fails[key]
        if fail is None:
            out[key] = Claim(statement, "proved", f"all {3 ** n} sign patterns of x certified")
            continue
        pattern, point, value = fail
        refuted = (key == "condition_6") or (key == "H" and bool(value > 0)) or (key == "L" and bool(value < 0))
        if refuted:
            out[key] = Claim(statement, "refuted", f"sign pattern {pattern}: value {value} at x = {point}",
                             counterexample={**point, "value": value})
        else:
            out[key] = Claim(statement, "not proved symbolically", f"no certificate for sign pattern {pattern}")
    return out


def _theorem_identities(system: System) -> tuple[bool, bool, sp.Expr, sp.Expr, sp.Expr]:
    """Theorem 2.1's identities for a cautious ``system`` with its mask as the placeholders φ_i,
    for ``H/c_L``: ``d(H/c_L)/dt = xᵀ(1 − φ) − Δ^H``, ``dL/dt = −xᵀφ − ‖∇L‖²_Φ`` (Φ = 0)."""
    base = build(system.family, n=system.n, k=system.k if system.family == "lion_k" else None)
    Hn = system.H / system.L_coeff
    dH_c = time_derivative(system, Hn, explicit_mask=False)
    dL_c = time_derivative(system, system.L, explicit_mask=False)
    Delta = -time_derivative(base, base.H / base.L_coeff)
    xs, phis = system.x, system.phi
    rhs_H = sum(x * (1 - f) for x, f in zip(xs, phis)) - Delta
    rhs_L = -sum(x * f for x, f in zip(xs, phis))
    ok_H = sp.expand(dH_c - rhs_H) == 0
    ok_L = sp.expand(dL_c - rhs_L) == 0
    return ok_H, ok_L, dH_c, dL_c, Delta


def theorem_2_1(family: str, n: int = 2) -> TheoremResult:
    """Theorem 2.1 (PAPERS.md §A.2) for ``family`` with a generic mask (symbols φ_i):
    ``dH/dt = xᵀ(1 − φ(x)) − Δ^H`` and ``dL/dt = −xᵀφ(x) − ‖∇L‖²_Φ`` (here Φ = 0), with
    ``Δ^H = −dH/dt`` of the base system, all derived by the chain rule and compared by sympy.
    For Lion (H = αL + K) the identities are those of ``H/α = L + K/α``; for ``H`` itself the first
    one reads ``dH/dt = α xᵀ(1 − φ) − αΔ^{H/α}``."""
    system = build(family, cautious=True, mask=None, n=n)
    ok_H, ok_L, dH, dL, Delta = _theorem_identities(system)
    return TheoremResult(family, ok_H, ok_L, dH, dL, Delta,
                         "d(H/c_L)/dt = x^T(1 - phi) - Delta^H and dL/dt = -x^T phi, x = grad L * u, "
                         f"c_L = {system.L_coeff}")


def adam_condition_tightness() -> Claim:
    """The Adam condition ``a ≥ b/4`` is necessary (for unbounded v): for ``a < b/4`` (written
    ``a = b/(4(1 + κ))``, κ > 0), at ``∇L = 0`` and ``√v > v* = 4ae/(b − 4a)`` (``√v = v* + t``),
    the coordinate term of dH/dt is positive for every m ≠ 0 (proved by monomial certificate).
    With a box ``v ≤ V`` a violation exists iff ``a/b < √V / (4(√V + e))``."""
    system = build("adam", n=1)
    a, b, e = (_param(system, n) for n in ("a", "b", "e"))
    (g,), (m,), (v,) = system.g, system.s[:1], system.s[1:]
    kappa = sp.Symbol("kappa", positive=True)
    t = sp.Symbol("t", positive=True)
    dH = time_derivative(system, system.H)
    a_val = b / (4 * (1 + kappa))
    vstar = (4 * a * e / (b - 4 * a)).subs(a, a_val)
    expr = dH.subs({g: 0}).subs(v, (vstar + t) ** 2).subs(a, a_val)
    m_pos = sp.Symbol("m_abs", positive=True)
    ok = certify_nonpositive(-expr.subs(m, m_pos)) and sp.simplify(expr.subs(m, m_pos)) != 0
    status = "proved" if ok else "not proved symbolically"
    return Claim("Adam: a >= b/4 is necessary (for a < b/4, dH/dt > 0 at grad L = 0, m != 0, "
                 "sqrt(v) > 4ae/(b - 4a))", status,
                 "positivity certificate of dH/dt at grad L = 0, a = b/(4(1+kappa)), sqrt(v) = 4ae/(b-4a) + t"
                 if ok else f"no certificate for {sp.simplify(expr)} > 0", asserted=False)


# -- verify ------------------------------------------------------------------------------------

def _condition_text(system: System) -> str:
    text = str(system.condition) if system.condition is not None else "none"
    text += f" (assumptions: {system.assumptions})"
    if system.cautious:
        text += ("; mask: any phi satisfying condition (6)" if system.mask is None
                 else f"; mask: {system.mask!r}")
    return text


def _aggregate(claims) -> str:
    asserted = [c for c in claims if c.asserted]
    return max((c.status for c in asserted), key=_RANK.__getitem__, default="proved")


def _paper_claims(system: System) -> list:
    """PAPERS.md's transcriptions for this family (not aggregated)."""
    out = []
    if "H" in system.paper and sp.expand(system.paper["H"] - system.H) != 0:
        Hp = system.paper["H"]
        dHp = time_derivative(system, Hp)
        claim = _check_nonpositive(f"PAPERS.md: H = {Hp} is non-increasing", dHp, system, asserted=False)
        if claim.status == "refuted":
            a = _param(system, "a")
            ok, _ = _prove_nonpositive(dHp.subs(a, 1), system)
            claim.detail += ("; it holds when a = 1 (the form m' = grad L - gamma*m), where it equals ours"
                             if ok else "")
        out.append(claim)
    if "dH_dt" in system.paper:
        dH = time_derivative(system, system.H)
        out.append(_check_identity(f"PAPERS.md: dH/dt = {system.paper['dH_dt']}", dH, system.paper["dH_dt"],
                                   system, asserted=False))
    return out


def verify(family: str, cautious: bool = False, mask=None, n: int = 2, k=None) -> SymbolicResult:
    """Check the Hamiltonian claims of ``family`` (see the module docstring for the method).

    Base system: ``dH/dt`` equals the closed form; ``dH/dt ≤ 0`` under the condition; plus
    PAPERS.md's statements and the (unclaimed) sign of ``dL/dt``. Cautious system (``mask``: a
    :func:`theory.dynamics.mask_fn` spec, or None for any φ satisfying condition (6)): Theorem
    2.1's identities, the mask inequalities, then ``dH/dt ≤ 0`` and ``dL/dt ≤ 0``; a mask that
    breaks ``xᵀ(1 − φ) ≤ 0`` (the "paper" normalisation when every coordinate agrees) gets a
    counterexample state searched for the cautious ``dH/dt`` itself.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    base = build(family, n=n, k=k)
    dH_base = time_derivative(base, base.H)
    claims: list[Claim] = []
    # the base system's closed form and Lyapunov property
    claims.append(_check_identity(f"dH/dt = {base.closed_form} (base)", dH_base, base.closed_form, base))
    statement = "dH/dt <= 0 (base)"
    if family == "lion_k" and base.k is not sp.Abs:   # general convex k: identity + convexity lemmas
        base_claim = _lion_k_lemma_claim(base, dH_base, statement)
    else:
        base_claim = _check_nonpositive(statement, dH_base, base, terms=_coordinate_terms(base, base.H))
    claims.append(base_claim)
    if family == "adam":
        claims.append(adam_condition_tightness())
    if not cautious:
        claims.extend(_paper_claims(base))
        dL = time_derivative(base, base.L)
        ce = find_positive(dL)
        claims.append(Claim("dL/dt <= 0 (not claimed for the base system)",
                            "refuted" if ce else "not proved symbolically",
                            "L can increase along the base dynamics, as PAPERS.md §A.2 says" if ce
                            else "not searched: k is an undefined function" if dL.atoms(
                                sp.core.function.AppliedUndef) else "no point with dL/dt > 0 found",
                            counterexample=ce, asserted=False))
        system, dH = base, dH_base
    else:
        system = build(family, cautious=True, mask=mask, n=n, k=k)
        ok_H, ok_L, *_ = _theorem_identities(system)
        for name, ok in (("Theorem 2.1: d(H/c_L)/dt = x^T(1 - phi) - Delta^H", ok_H),
                         ("Theorem 2.1: dL/dt = -x^T phi", ok_L)):
            claims.append(Claim(name, "proved" if ok else "not proved symbolically",
                                "sympy: identity with phi as free symbols" if ok
                                else "the difference did not expand to 0"))
        mc = mask_conditions(mask, n)
        for key in ("condition_6", "H", "L"):
            mc[key].asserted = False
            claims.append(mc[key])
        dH = time_derivative(system, system.H)
        dL = time_derivative(system, system.L)
        # dH/dt <= 0
        if ok_H and base_claim.status == "proved" and mc["H"].status == "proved":
            claims.append(Claim("dH/dt <= 0 (cautious)", "proved",
                                "Theorem 2.1: dH/dt = c_L x^T(1 - phi) + dH_base/dt, both terms <= 0"))
        elif mask is None:
            claims.append(Claim("dH/dt <= 0 (cautious)", "not proved symbolically",
                                f"base: {base_claim.status}; mask inequality: {mc['H'].status}"))
        else:   # the sufficient condition fails: look for a counterexample first, then try a proof
            claims.append(_check_nonpositive("dH/dt <= 0 (cautious)", dH, system, search_first=True))
            claims[-1].detail = (f"x^T(1 - phi) <= 0 is {mc['H'].status} ({mc['H'].detail}); "
                                 + claims[-1].detail)
        # dL/dt <= 0
        if ok_L and mc["L"].status == "proved":
            claims.append(Claim("dL/dt <= 0 (cautious)", "proved", "Theorem 2.1: dL/dt = -x^T phi <= 0"))
        elif mask is None:
            claims.append(Claim("dL/dt <= 0 (cautious)", "not proved symbolically", mc["L"].detail))
        else:
            claims.append(_check_nonpositive("dL/dt <= 0 (cautious)", dL, system, search_first=True))
    status = _aggregate(claims)
    lines = [f"{system.description}", f"status {status} (aggregate of the asserted claims)"]
    for c in claims:
        tag = "" if c.asserted else " [not aggregated]"
        ce = f"; counterexample {c.counterexample}" if c.counterexample else ""
        lines.append(f"- {c.statement}: {c.status}{tag} — {c.detail}{ce}")
    return SymbolicResult(family=family, cautious=cautious, mask=mask, dH_dt=dH, dL_dt=dL,
                          condition=_condition_text(system),
                          status=status, detail="\n".join(lines), claims=claims, system=system)
