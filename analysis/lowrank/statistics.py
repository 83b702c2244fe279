"""Statistics of the low-rank study: per rank and scale type (:func:`sweep`), over records,
projections and refresh gaps (:func:`study`), the draw's share of the spread (:func:`draw_noise`),
the paper's ratios beside ours (:func:`paper_comparison`) and tables (:func:`pivot`)."""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import pandas as pd
import torch
from torch import Tensor

from theory.apollo_bound import compressed_dim, interval, theorem_eps
from zoo.optimizers.lowrank import SCALE_EPS

from ..capture import LAYER_KINDS, GradientRecord
from .factors import BETAS, EPS, AdamFactors, _check_grads, _check_ranks, full_factors, lowrank_factors, rank_sweep

__all__ = ["PAPER_RATIOS", "SWEEP_COLUMNS", "sweep", "study", "draw_noise", "paper_comparison", "pivot"]

PAPER_RATIOS = {1 / 8: 0.35, 1 / 4: 0.5}
"""r/n -> the ratio s^R/s the APOLLO paper measures on LLaMA (Fig. 4/8, PAPERS.md §B.3), the same
across layer types and depths."""

QUANTILES = (0.05, 0.5, 0.95)


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each row of ``a`` (K, C) with ``b`` (C,) (no ties expected)."""
    def centred_ranks(x):
        ranks = x.argsort(dim=-1).argsort(dim=-1).to(torch.float64)
        return ranks - ranks.mean(dim=-1, keepdim=True)
    ra, rb = centred_ranks(a), centred_ranks(b)
    return (ra @ rb) / (ra.norm(dim=-1) * rb.norm())


SWEEP_COLUMNS = ("rank", "n", "channels", "r_over_n", "sqrt_r_over_n", "scale", "raw_ratio", "ratio",
                 "ratio_q05", "ratio_median", "ratio_q95", "rel_error", "rel_error_q95", "spread", "band_eps",
                 "band_low", "band_high", "inside_band", "spearman", "cosine", "cosine_exact")


def sweep(grads: Tensor, ranks: Sequence[int] | None = None, proj="random", *, seed: int = 0,
          gap: int | None = None, delta: float = 0.1, band_eps: float | None = None, betas=BETAS,
          eps: float = EPS, bias_correction: bool = True, scale_eps: float = SCALE_EPS,
          full: AdamFactors | None = None) -> pd.DataFrame:
    """One row per (rank, scale), scale "channel" or "tensor", for ``grads`` [steps, m, n].

    Columns: rank, n (compressed dimension), channels (C, those with s_j > 0), r_over_n,
    sqrt_r_over_n; raw_ratio (mean over channels of s^R_j/s_j: the paper's measured ratio);
    ratio, ratio_q05, ratio_median, ratio_q95 (of √(n/r)·s^R_j/s_j); rel_error, rel_error_q95
    (mean and 95% quantile of |√(n/r)·s^R_j/s_j - 1|); spread (mean of |ratio_j / median - 1|:
    the error no common constant, i.e. no learning-rate change, can absorb); band_eps, band_low, band_high, inside_band
    (Theorem A.4's ε for ``delta`` and t = steps, or ``band_eps`` for every rank; its interval
    and the fraction of channels inside it; NaN where ε >= 1: the theorem says nothing);
    spearman (rank correlation of s^R_j and s_j; NaN for the tensor); cosine (cos(G_t·s^R, G̃)),
    cosine_exact (the same with AdamW's own s: the best that scale type can do).

    ``ranks`` default to :func:`rank_sweep` (n); ``full`` may pass :func:`full_factors` of the
    same grads and moment settings. Other arguments as :func:`lowrank_factors`.

    √(n/r) is the scale of a N(0, 1/r) projection. An SVD projection has orthonormal rows: its
    s^R/s is about √(r/n) / √(fraction of ‖g_j‖² in the top-r space), and Adam's element-wise
    normalisation differs between bases, so its scale follows the gradient's spectrum. For it,
    read spread, spearman and cosine, which no common scale changes.
    """
    grads = _check_grads(grads)
    n = compressed_dim(grads.shape[1:])
    ranks = rank_sweep(n) if ranks is None else _check_ranks(ranks, n)
    moments = dict(betas=betas, eps=eps, bias_correction=bias_correction, scale_eps=scale_eps)
    full = full_factors(grads, **moments) if full is None else full
    channel, tensor = lowrank_factors(grads, ranks, proj, seed=seed, gap=gap, **moments)
    valid = full.channel > 0
    rank_t = torch.tensor(ranks, dtype=torch.float64)
    norm = (n / rank_t).sqrt()
    ratio_channel = (channel[:, valid] / full.channel[valid]).to(torch.float64)
    ratio_tensor = (tensor / full.tensor).to(torch.float64)[:, None]
    exact = {"channel": full.cosine(full.channel), "tensor": full.cosine(torch.ones_like(full.channel))}
    cosine = {"channel": full.cosine(channel), "tensor": exact["tensor"].expand(len(ranks))}
    spearman = {"channel": _spearman(channel[:, valid], full.channel[valid]),
                "tensor": torch.full((len(ranks),), math.nan)}
    rows = []
    for scale, raw in (("channel", ratio_channel), ("tensor", ratio_tensor)):
        scaled = raw * norm[:, None]
        error = (scaled - 1).abs()
        quantiles = torch.quantile(scaled, torch.tensor(QUANTILES, dtype=torch.float64), dim=1)
        error_q95 = torch.quantile(error, 0.95, dim=1)
        spread = (scaled / quantiles[1][:, None] - 1).abs().mean(dim=1)
        for k, rank in enumerate(ranks):
            e = theorem_eps(rank, len(grads), delta) if band_eps is None else float(band_eps)
            low, high = interval(e) if e < 1 else (math.nan, math.nan)
            inside = ((scaled[k] >= low) & (scaled[k] <= high)).double().mean().item() if e < 1 else math.nan
            rows.append({
                "rank": rank, "n": n, "channels": raw.shape[1], "r_over_n": rank / n,
                "sqrt_r_over_n": math.sqrt(rank / n), "scale": scale, "raw_ratio": raw[k].mean().item(),
                "ratio": scaled[k].mean().item(), "ratio_q05": quantiles[0, k].item(),
                "ratio_median": quantiles[1, k].item(), "ratio_q95": quantiles[2, k].item(),
                "rel_error": error[k].mean().item(), "rel_error_q95": error_q95[k].item(),
                "spread": spread[k].item(),
                "band_eps": e, "band_low": low, "band_high": high, "inside_band": inside,
                "spearman": spearman[scale][k].item(), "cosine": cosine[scale][k].item(),
                "cosine_exact": exact[scale].item()})
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def study(records: Sequence[GradientRecord], ranks: Sequence[int] | None = None,
          projs: Sequence = ("random",), gaps: Sequence[int | None] = (None,), *, seed: int = 0,
          draws: int = 1, **options) -> pd.DataFrame:
    """:func:`sweep` for every record, projection kind and refresh gap, in one frame with the
    columns name, label, layer, kind, step, m, n_cols (the weight's shape), steps, proj, gap,
    draw ahead of :data:`SWEEP_COLUMNS`. Record i is projected with seed ``seed + i + 1`` (the
    zoo's seeds for the records as the parameters of one group). ``draws`` > 1 repeats the random
    projection with independent draws (draw d: seed ``seed + d·len(records) + i + 1``; the SVD
    projection has no draw, it comes once, as draw 0): :func:`draw_noise` separates what the
    draw of P does from what the weight does. Ranks above a record's compressed dimension are
    left out for that record; ``ranks=None`` is :func:`rank_sweep` of each. ``options`` go to
    :func:`sweep` (delta, band_eps, betas, eps, bias_correction)."""
    for proj in projs:
        if not (isinstance(proj, str) and proj in ("random", "svd")):
            raise ValueError(f"Invalid proj: {proj!r}; allowed 'random', 'svd'")
    if isinstance(draws, bool) or not isinstance(draws, numbers.Integral) or draws < 1:
        raise ValueError(f"Invalid draws: {draws!r}; allowed an int >= 1")
    if not records:
        raise ValueError("no gradient records to study")
    frames = []
    for i, rec in enumerate(records):
        grads = _check_grads(rec.grads)
        n = compressed_dim(grads.shape[1:])
        kept = rank_sweep(n) if ranks is None else [r for r in ranks if r <= n]
        if not kept:
            continue
        moments = {k: options[k] for k in ("betas", "eps", "bias_correction", "scale_eps") if k in options}
        full = full_factors(grads, **moments)
        for proj in projs:
            for gap in gaps:
                for draw in range(draws if proj == "random" else 1):
                    frame = sweep(grads, kept, proj, seed=seed + draw * len(records) + i + 1, gap=gap, full=full,
                                  **options)
                    context = {"name": rec.name, "label": rec.label, "layer": rec.layer, "kind": rec.kind,
                               "step": rec.step, "m": grads.shape[1], "n_cols": grads.shape[2],
                               "steps": len(grads), "proj": proj, "gap": gap if gap else len(grads), "draw": draw}
                    frames.append(frame.assign(**context)[list(context) + list(SWEEP_COLUMNS)])
    if not frames:
        raise ValueError(f"no record has a compressed dimension >= the smallest rank asked for ({min(ranks)})")
    return pd.concat(frames, ignore_index=True)


def draw_noise(frame: pd.DataFrame, by: str | Sequence[str] = (), *, scale: str = "channel") -> pd.DataFrame:
    """Is the spread of s^R/s across weights the weights' or the draw's? For the random-projection
    rows of a :func:`study` frame with ``draws`` > 1, per rank (and group ``by``): ``mean`` raw
    ratio, ``within`` (the std over draws of one record's ratio, averaged over records),
    ``between`` (the std over records of their draw-averaged ratios) and ``noise_floor``
    (within/√draws: what ``between`` would be if the records did not differ at all), with the
    numbers of draws and records. ``between`` near ``noise_floor``: the weights agree, and one
    draw's record-to-record differences are the projection's."""
    by = [by] if isinstance(by, str) else list(by)
    rows = frame[(frame["scale"] == scale) & (frame["proj"] == "random")]
    record = ["name", "step", "gap"]
    groups = ["rank", "r_over_n"] + by
    per_record = rows.groupby(groups + [k for k in record if k not in by])["raw_ratio"].agg(["mean", "std", "size"])
    if per_record["size"].min() < 2:
        raise ValueError("draw_noise needs a study with draws >= 2 (random projection)")
    table = per_record.groupby(groups).agg(mean=("mean", "mean"), within=("std", "mean"), between=("mean", "std"),
                                           draws=("size", "min"), records=("mean", "size")).reset_index()
    table.insert(table.columns.get_loc("between") + 1, "noise_floor", table["within"] / table["draws"].pow(0.5))
    table.insert(2, "sqrt_r_over_n", table["r_over_n"].map(math.sqrt))
    return table.sort_values(groups, key=_kind_order, kind="stable", ignore_index=True)


def _kind_order(column: pd.Series) -> pd.Series:
    """Sort key: q, k, v, o, gate, up, down in :data:`LAYER_KINDS` order (other kinds after)."""
    if column.name != "kind":
        return column
    return column.map(lambda k: LAYER_KINDS.index(k) if k in LAYER_KINDS else len(LAYER_KINDS))


def paper_comparison(frame: pd.DataFrame, by: str | Sequence[str] = "kind", *, scale: str = "channel",
                     wide: bool = False) -> pd.DataFrame:
    """The paper's measured ratios (:data:`PAPER_RATIOS`) beside ours: one row per r/n of the
    paper and per group ``by``, from the rows of a :func:`study` frame with that r/n and
    ``scale`` ("channel", the paper's, or "tensor"). Columns: √(r/n), the paper's figure, our
    raw ratio s^R/s (``ours``: the channels' mean, averaged over the group's records), the
    channels' 5% and 95% quantiles of s^R_j/s_j (``ours_q05``, ``ours_q95``: each record's,
    averaged over the group's records; for the tensor they equal ``ours``), the range of the
    records' means (``ours_min``, ``ours_max``: how much one weight, or one draw of P, moves
    it), the mean relative error |√(n/r)·s^R/s - 1| and the number of records.

    ``wide=True``: one row per group, columns (r/n with the paper's figure, statistic) for
    ours, 5%, 95%, min and max."""
    by = [by] if isinstance(by, str) else list(by)
    rows = frame[(frame["scale"] == scale)
                 & frame["r_over_n"].apply(lambda x: any(math.isclose(x, p) for p in PAPER_RATIOS))]
    rows = rows.assign(r_over_n=rows["r_over_n"].map(lambda x: min(PAPER_RATIOS, key=lambda p: abs(p - x))),
                       q05=rows["ratio_q05"] * rows["sqrt_r_over_n"], q95=rows["ratio_q95"] * rows["sqrt_r_over_n"])
    table = rows.groupby(["r_over_n"] + by).agg(
        ours=("raw_ratio", "mean"), ours_q05=("q05", "mean"), ours_q95=("q95", "mean"),
        ours_min=("raw_ratio", "min"), ours_max=("raw_ratio", "max"),
        rel_error=("rel_error", "mean"), records=("raw_ratio", "size")).reset_index()
    table = table.sort_values(["r_over_n"] + by, key=_kind_order, kind="stable", ignore_index=True)
    table.insert(len(by) + 1, "sqrt_r_over_n", table["r_over_n"].map(math.sqrt))
    table.insert(len(by) + 2, "paper", table["r_over_n"].map(PAPER_RATIOS))
    if not wide or table.empty:
        return table
    stats = {"ours": "mean", "ours_q05": "5%", "ours_q95": "95%", "ours_min": "min", "ours_max": "max"}
    table = table.assign(r_over_n=[f"r = n/{round(1 / x)} (paper {p:g})" for x, p in
                                   zip(table["r_over_n"], table["paper"])])
    groups = list(dict.fromkeys(table[by].itertuples(index=False, name=None)))
    wide_table = table.pivot(index=by, columns="r_over_n", values=list(stats)).rename(columns=stats)
    wide_table = wide_table.reindex(pd.MultiIndex.from_tuples(groups, names=by) if len(by) > 1
                                    else pd.Index([g[0] for g in groups], name=by[0]))
    wide_table.columns = wide_table.columns.swaplevel(0, 1)
    order = [f"r = n/{round(1 / x)} (paper {p:g})" for x, p in sorted(PAPER_RATIOS.items())]
    wide_table = wide_table[[(r, s) for r in order for s in stats.values() if (r, s) in wide_table.columns]]
    wide_table.columns.names = [None, None]
    return wide_table


def pivot(frame: pd.DataFrame, value: str | list[str] = "raw_ratio", index: str | Sequence[str] = "name",
          columns: str | Sequence[str] = "rank", **where) -> pd.DataFrame:
    """A table of ``value`` (one column or a list; mean over the rest) for the rows of ``frame`` whose columns equal
    ``where`` (e.g. ``scale="channel"``, ``proj="svd"``), ``index`` down and ``columns`` across."""
    rows = frame
    for column, wanted in where.items():
        rows = rows[rows[column] == wanted]
    return rows.pivot_table(index=index, columns=columns, values=value, aggfunc="mean", sort=False)
