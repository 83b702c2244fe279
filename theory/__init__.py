"""Machine-checked theory for the zoo (PAPERS.md §A.2-A.4, §B.3).

- :mod:`theory.dynamics`: the continuous-time systems (heavy ball, Adam, Signum, Lion, Lion-K),
  base and cautious, defined once in sympy and lambdified for numerics.
- :mod:`theory.symbolic`: dH/dt and dL/dt derived by sympy, Theorem 2.1's identities, conditions.
- :mod:`theory.numeric`: adversarial search for violations (scipy.optimize), ODE trajectories
  (scipy.integrate).
- :mod:`theory.masks`: condition (6) and x^T phi(x) >= 0 for the zoo's masks and user masks.
- :mod:`theory.discrete`: Theorems 2.3 and 2.4 with the zoo's real optimizers.
- :mod:`theory.toy`: the 2-D toy's convergence rates (PAPERS.md §A.4).
- :mod:`theory.apollo_bound`: a Monte-Carlo check of APOLLO's Theorem A.4.
- :func:`certificate` / :func:`report`: the certificate of any registered optimizer name.
"""
__all__ = ["Certificate", "certificate", "report"]


def __getattr__(name: str):
    """``theory.certificate`` and the rest load sympy and scipy on first use, so that importing
    one light module (``theory.apollo_bound``) does not."""
    if name in __all__:
        from . import certificates
        return getattr(certificates, name)
    raise AttributeError(f"module 'theory' has no attribute {name!r}")
