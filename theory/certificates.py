"""The link between the zoo and the theory: for any registered name, its Lyapunov certificate.

``certificate(name)`` returns the certificate of the name's family (a cautious twin gets the
cautious dynamics of its base, PAPERS.md §A.2) or an explicit "no certificate known" with the
reason; ``Certificate.check()`` checks it three ways (sympy, an adversarial search with scipy,
ODE trajectories); ``report()`` is one row per registered name.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

import zoo

from . import dynamics, numeric, symbolic

__all__ = ["Certificate", "certificate", "report", "SYSTEMS", "NO_CERTIFICATE"]

# zoo family -> (continuous system of theory.dynamics, its condition in the zoo's terms)
SYSTEMS = {
    "sgd": ("heavy_ball", "none"),
    "adam": ("adam", "a >= b/4, with a = 1 - beta1 and b = 1 - beta2 the moments' per-step rates"),
    "signum": ("signum", "none"),
    "lion": ("lion", "eps gamma <= 1"),
}

# zoo family -> why no certificate is known
NO_CERTIFICATE = {
    "nadam": "Nesterov's look-ahead mixes g and m with step-dependent weights; the paper gives no "
             "Hamiltonian for NAdam",
    "adafactor": "the factored second moment couples coordinates through row and column means; no "
                 "Hamiltonian is stated for it",
    "laprop": "momentum of the normalised gradient; not among the paper's examples",
    "adopt": "the second moment lags the gradient by one step and the update is clipped; not among "
             "the paper's examples",
    "muon": "Newton-Schulz orthogonalisation is not a coordinate-wise preconditioner; no "
            "Hamiltonian is stated for it",
    "apollo": "a low-rank estimate of Adam's scaling; APOLLO's theory is an approximation bound "
              "(Theorem A.4, theory.apollo_bound), not a Lyapunov function",
    "galore": "Adam in a subspace that changes every T steps; no Hamiltonian is stated for it",
    "fira": "GaLore plus a scaled residual; no Hamiltonian is stated for it",
    "rmsprop": "momentum over a gradient divided by its running RMS, whose preconditioner lags the "
               "gradient by its own average; not among the paper's examples, and no Hamiltonian is "
               "stated for it",
    "lamb": "the trust ratio rescales each tensor's Adam step by ||p|| / ||u||, a factor that is "
            "neither coordinate-wise nor smooth where a norm vanishes; no Hamiltonian is stated for it",
    "radam": "Adam whose adaptive step switches on after a warm-up and is scaled by a step-dependent "
             "rectifier; the paper's Adam Hamiltonian covers the unrectified continuous-time limit, "
             "not this discrete switch",
    "ademamix": "Adam's numerator mixed with a slow, uncorrected EMA of the gradient, whose weight and rate "
                "may be warmed up by step-dependent schedules; not among the paper's examples, and no "
                "Hamiltonian is stated for it",
    "adan": "Nesterov momentum built from an EMA of the gradient's step-to-step difference, over a second "
            "moment of the extrapolated gradient, with a proximal decay; not among the paper's examples, and no "
            "Hamiltonian is stated for it",
    "schedule-free": "the gradient is taken at an interpolation of the Adam-normalised iterate z and its "
                     "step-weighted average x; Schedule-Free's theory is an online-to-batch regret bound, not a "
                     "Lyapunov function, and it is not among the paper's examples",
    "soap": "Adam in the eigenbasis of Shampoo's preconditioner, a rotation that changes every few steps and "
            "is not coordinate-wise; the paper's Adam Hamiltonian holds in a fixed basis only, and none is "
            "stated for SOAP",
    "mars": "Adam or Lion on the gradient plus a scaled step-to-step gradient difference, clipped to norm 1 per "
            "tensor (a non-smooth, not coordinate-wise map); not among the paper's examples, and no Hamiltonian is "
            "stated for it",
}


@dataclass(frozen=True)
class Certificate:
    """What the theory says about one registered optimizer name."""

    name: str
    family: str
    cautious: bool
    system: str | None           # theory.dynamics family, None when no certificate is known
    hamiltonian: str
    lyapunov: str                # which quantity decreases: H, and L for cautious systems
    condition: str
    condition_at_defaults: bool | None
    reason: str = ""             # why there is no certificate

    @property
    def known(self) -> bool:
        return self.system is not None

    def check(self, trajectories: bool = True, seed: int = 0) -> dict:
        """Verdicts: ``symbolic`` (sympy's status), ``numeric`` (the adversarial search for a
        state where the claimed dH/dt <= 0 fails) and ``trajectory`` (H non-increasing along an
        ODE trajectory on the quadratic 4w1^2 + w2^2, and L too for a cautious system)."""
        if not self.known:
            return {"symbolic": "no certificate", "numeric": "no certificate", "trajectory": "no certificate"}
        verdict = {"symbolic": symbolic.verify(self.system, cautious=self.cautious).status}
        found = numeric.adversarial_dHdt(self.system, cautious=self.cautious, seed=seed, restarts=4)
        verdict["numeric"] = "violated" if found.violated else "no violation found"
        if trajectories:
            # sign() and the mask smoothed for the integrator (H stays a Lyapunov function)
            traj = numeric.ode_trajectory(self.system, "quadratic", cautious=self.cautious, t_end=5.0,
                                          sign_smoothing=1e-3, mask_smoothing=1e-2)
            checks = [numeric.check_nonincreasing(traj, "H")]
            if self.cautious:
                checks.append(numeric.check_nonincreasing(traj, "L"))
            verdict["trajectory"] = ("non-increasing" if all(c.ok for c in checks) else "increases")
        return verdict


def _condition_at_defaults(family: str, defaults) -> bool | None:
    if family == "adam":
        beta1, beta2 = defaults["betas"]
        return 1 - beta1 >= (1 - beta2) / 4
    return True


def certificate(name: str) -> Certificate:
    """The certificate of a registered optimizer ``name`` (any spelling the registry accepts)."""
    rec = zoo.info(name)
    if rec.family in SYSTEMS:
        system, condition = SYSTEMS[rec.family]
        lyapunov = "H and L (Theorem 2.1, mask satisfying condition (6))" if rec.cautious else "H"
        hamiltonian = f"H = {dynamics.build(system, n=2).H}  ({dynamics.build(system).description})"
        return Certificate(rec.name, rec.family, rec.cautious, system, hamiltonian, lyapunov, condition,
                           _condition_at_defaults(rec.family, rec.defaults))
    reason = NO_CERTIFICATE.get(rec.family, f"family {rec.family!r} has no known certificate")
    return Certificate(rec.name, rec.family, rec.cautious, None, "", "", "", None,
                       reason=f"no certificate known: {reason}")


def report(names=None, checks: bool = True) -> pd.DataFrame:
    """One row per registered name: certificate, condition, and (``checks``) the three verdicts."""
    rows = []
    verdicts: dict = {}
    for name in names or zoo.names():
        cert = certificate(name)
        row = {"name": cert.name, "family": cert.family, "cautious": cert.cautious,
               "system": cert.system or "-", "hamiltonian": cert.hamiltonian or cert.reason,
               "lyapunov": cert.lyapunov, "condition": cert.condition,
               "condition at defaults": cert.condition_at_defaults}
        if checks:
            key = (cert.system, cert.cautious)   # twins of one system share their verdicts
            if key not in verdicts:
                verdicts[key] = cert.check()
            row.update(verdicts[key])
        rows.append(row)
    return pd.DataFrame(rows)
