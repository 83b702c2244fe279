"""Figures of the low-rank study (seaborn)."""
from __future__ import annotations

import pandas as pd

from .statistics import PAPER_RATIOS, pivot

__all__ = ["plot_ratio_vs_rank", "plot_heatmap"]


def plot_ratio_vs_rank(frame: pd.DataFrame, hue: str = "kind", *, paper: bool = True):
    """s^R/s against r/n (log-log), channel-wise (left) and tensor-wise (right), one line per
    ``hue`` (mean over records of the channel mean; the shaded band is the channels' 5-95%
    range, averaged over records), with √(r/n) (dashed), Theorem A.4's band √(r/n)·[low, high]
    (grey, where ε < 1; averaged over records of the same r/n) and the paper's ratios (black
    diamonds). Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    scales = [s for s in ("channel", "tensor") if s in set(frame["scale"])]
    fig, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 4.2), sharey=True, squeeze=False)
    levels = list(dict.fromkeys(frame[hue]))
    palette = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    for ax, scale in zip(axes[0], scales):
        part = frame[frame["scale"] == scale]
        band = part.groupby("r_over_n")[["band_low", "band_high", "sqrt_r_over_n"]].mean()
        ax.fill_between(band.index, band["band_low"] * band["sqrt_r_over_n"],
                        band["band_high"] * band["sqrt_r_over_n"], color="0.85", label="Thm A.4 band")
        ax.plot(band.index, band["sqrt_r_over_n"], "k--", lw=1, label="√(r/n)")
        for level, rows in part.groupby(hue, sort=False):
            rows = rows.groupby("r_over_n")[["raw_ratio", "ratio_q05", "ratio_q95", "sqrt_r_over_n"]].mean()
            if scale == "channel":
                ax.fill_between(rows.index, rows["ratio_q05"] * rows["sqrt_r_over_n"],
                                rows["ratio_q95"] * rows["sqrt_r_over_n"], color=palette[level], alpha=0.2)
            ax.plot(rows.index, rows["raw_ratio"], marker="o", ms=3, color=palette[level], label=str(level))
        if paper:
            ax.plot(list(PAPER_RATIOS), list(PAPER_RATIOS.values()), "kD", ms=6, label="paper (Fig. 4/8)")
        ax.set(xscale="log", yscale="log", xlabel="r / n", title=f"{scale}-wise", ylabel="s^R / s")
        ax.set_xscale("log", base=2)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_heatmap(frame: pd.DataFrame, value: str = "rel_error", scale: str = "channel"):
    """A seaborn heat map of ``value`` (mean over the other columns), one row per record label,
    one column per rank, for the rows of ``scale``. Returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = pivot(frame, value, index="label", scale=scale)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * table.shape[1], 1.0 + 0.32 * table.shape[0]))
    sns.heatmap(table, annot=table.shape[1] <= 14, fmt=".2f", cmap="viridis", ax=ax,
                cbar_kws={"label": value})
    ax.set(xlabel="rank r", ylabel="", title=f"{value}, {scale}-wise")
    fig.tight_layout()
    return fig
