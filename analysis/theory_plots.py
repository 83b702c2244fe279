"""Figures of the theory checks: H(t) and L(t) along base and cautious ODE trajectories."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from theory import numeric

__all__ = ["energy_frame", "plot_energy"]

SMOOTHING = dict(sign_smoothing=1e-3, mask_smoothing=1e-2)
"""sign() and the mask smoothed for the integrator, as theory.numeric documents."""


def energy_frame(families=("heavy_ball", "adam", "signum", "lion"), loss: str = "quadratic",
                 t_end: float = 10.0) -> pd.DataFrame:
    """Long table (family, system, t, H, L) of base and cautious ("mean" mask) trajectories of
    each family on ``loss`` from the loss's start, at rest."""
    frames = []
    for family in families:
        for cautious in (False, True):
            traj = numeric.ode_trajectory(family, loss, cautious=cautious, t_end=t_end, **SMOOTHING)
            frames.append(pd.DataFrame({"family": family, "system": "cautious" if cautious else "base",
                                        "t": traj.t, "H": traj.H, "L": traj.L}))
    return pd.concat(frames, ignore_index=True)


def plot_energy(frame: pd.DataFrame) -> plt.Figure:
    """One column per family: H(t) on top, L(t) below, base and cautious overlaid."""
    families = list(dict.fromkeys(frame["family"]))
    fig, axes = plt.subplots(2, len(families), figsize=(3.6 * len(families), 6), squeeze=False)
    for j, family in enumerate(families):
        part = frame[frame["family"] == family]
        for i, quantity in enumerate(("H", "L")):
            sns.lineplot(data=part, x="t", y=quantity, hue="system", ax=axes[i, j], legend=(i == j == 0))
            axes[i, j].set_title(f"{family}: {quantity}(t)")
    fig.tight_layout()
    return fig
