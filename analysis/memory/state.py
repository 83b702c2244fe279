"""Optimizer-state memory of the papers' LLaMA sizes: formula against measurement, beside the
APOLLO paper's Table 2 (PAPERS.md §B.2, §C).

Used by ``notebooks/02_memory.ipynb``. Every number comes from :func:`zoo.memory.state_table`,
which builds each model on the ``meta`` device (shapes only, no memory), lets each optimizer
take two steps and counts the bytes of the tensors in ``optimizer.state`` (projection seed and
limiter norm included). Low-rank optimizers get the q, k, v, o, gate, up, down weights in their
low-rank group; embeddings, lm_head and norms are in a group without a rank, where every
low-rank optimizer keeps AdamW's two moments, as the reference scripts do.

Units: **GB = 10⁹ bytes**, **GiB = 2³⁰ bytes**. The paper says "GB" without saying which;
the frames give totals in both.

- :data:`PAPER_TABLE2`: the paper's totals (weights + optimizer states, BF16, GB).
- :func:`memory_frame`: one row per (model size, optimizer), formula and measurement side by
  side, with the paper's total; ``include_full_rank_states=False`` leaves out the states of the
  parameters outside the low-rank group (how the paper's APOLLO-Mini totals appear to be made).
- :func:`paper_comparison`: the paper's totals beside ours, with and without those states.
- :func:`plot_state_memory`: the optimizer state per model size as a seaborn bar chart, and the
  totals with the paper's figures as markers.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

import zoo
from zoo.memory import expected_state_bytes, is_llama_block_matrix, llama_shapes, state_bytes, state_table

__all__ = ["GB", "GIB", "CONFIGS", "OPTIMIZERS", "PAPER_TABLE2",
           "full_rank_state_bytes", "memory_frame", "paper_comparison", "plot_state_memory"]

GB = 10**9
"""Bytes in a gigabyte (SI)."""
GIB = 2**30
"""Bytes in a gibibyte."""

CONFIGS = ("60M", "130M", "350M", "1B")
"""The LLaMA sizes of the paper's Table 2 (PAPERS.md §C)."""
OPTIMIZERS = ("adamw", "galore", "fira", "apollo", "apollo-mini")
"""The optimizers of the paper's Table 2, in its order."""

_LOW_RANK_TOTALS = {"60M": 0.24, "130M": 0.52, "350M": 1.22, "1B": 4.38}
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "adamw": {"60M": 0.36, "130M": 0.76, "350M": 2.06, "1B": 7.80},
    "galore": dict(_LOW_RANK_TOTALS),
    "fira": dict(_LOW_RANK_TOTALS),
    "apollo": dict(_LOW_RANK_TOTALS),
    "apollo-mini": {"60M": 0.12, "130M": 0.25, "350M": 0.69, "1B": 2.60},
}
"""APOLLO's Table 2 (PAPERS.md §B.2): weights + optimizer states in BF16, "GB" as printed,
optimizer -> model size -> total. The paper gives GaLore, Fira and APOLLO one shared figure."""

FRAME_COLUMNS = ("model", "optimizer", "params (M)", "weights GB", "state GB (formula)",
                 "state GB (measured)", "total GB", "total GiB", "paper total GB",
                 "formula == measured")


def full_rank_state_bytes(name: str, config: str, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(formula, measured) bytes of the state optimizer ``name`` keeps for the parameters of the
    LLaMA ``config`` **outside** the low-rank group: embeddings, lm_head and the norms.

    Measured as :func:`zoo.memory.state_table` measures: those parameters alone on the ``meta``
    device, in one group without a rank (a plain list for an optimizer that is not low-rank),
    two steps, then :func:`zoo.memory.state_bytes` and :func:`zoo.memory.expected_state_bytes`.
    For every low-rank optimizer this is AdamW's two moments of those parameters.
    """
    params = [torch.empty(shape, device="meta", dtype=dtype, requires_grad=True)
              for pname, shape in llama_shapes(config).items()
              if not is_llama_block_matrix(pname)]
    for p in params:
        p.grad = torch.empty_like(p)
    record = zoo.info(name)
    opt = record.cls([{"params": params, "rank": None}] if record.low_rank else params)
    for _ in range(2):
        opt.step()
    return expected_state_bytes(opt), state_bytes(opt)


def memory_frame(configs: Sequence[str] = CONFIGS, names: Sequence[str] = OPTIMIZERS,
                 dtype: torch.dtype = torch.bfloat16, include_full_rank_states: bool = True) -> pd.DataFrame:
    """One row per (model size, optimizer) from :func:`zoo.memory.state_table`, in GB (10⁹ bytes).

    Columns: model, optimizer, params (M) (millions), weights GB (the weights in ``dtype``),
    state GB (formula) (each optimizer's analytical state size, PAPERS.md §B.2), state GB
    (measured) (bytes of the tensors in ``optimizer.state`` after two steps), total GB and total
    GiB (weights + measured state, in 10⁹ and 2³⁰ bytes), paper total GB (:data:`PAPER_TABLE2`;
    NaN where the paper has no figure, and for any ``dtype`` but bfloat16, the paper's format),
    formula == measured (exact equality of the byte counts).

    ``include_full_rank_states=False`` subtracts, for each low-rank optimizer, the state it keeps
    for embeddings, lm_head and norms (:func:`full_rank_state_bytes`, from formula and
    measurement alike); AdamW's rows, which have no low-rank group, are unchanged.
    """
    paper = PAPER_TABLE2 if dtype == torch.bfloat16 else {}
    rows = []
    for row in state_table(names=tuple(names), configs=tuple(configs), dtype=dtype):
        formula, measured = row["state_bytes_formula"], row["state_bytes_measured"]
        if not include_full_rank_states and zoo.info(row["optimizer"]).low_rank:
            full_formula, full_measured = full_rank_state_bytes(row["optimizer"], row["model"], dtype)
            formula, measured = formula - full_formula, measured - full_measured
        total = row["weight_bytes"] + measured
        rows.append({
            "model": row["model"], "optimizer": row["optimizer"], "params (M)": row["params"] / 1e6,
            "weights GB": row["weight_bytes"] / GB, "state GB (formula)": formula / GB,
            "state GB (measured)": measured / GB, "total GB": total / GB, "total GiB": total / GIB,
            "paper total GB": paper.get(row["optimizer"], {}).get(row["model"], float("nan")),
            "formula == measured": formula == measured,
        })
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def paper_comparison(frame: pd.DataFrame, without_full_rank: pd.DataFrame) -> pd.DataFrame:
    """The paper's totals beside ours, indexed by (model, optimizer).

    ``frame`` and ``without_full_rank`` are :func:`memory_frame` for the same sizes and
    optimizers, with ``include_full_rank_states`` True and False. Columns: paper total GB, total
    GB and total GiB (all states), and the same two without the states of embeddings, lm_head and
    norms ("no full-rank states").
    """
    keys = ["model", "optimizer"]
    ours = frame.set_index(keys)
    lean = without_full_rank.set_index(keys).reindex(ours.index)
    return pd.DataFrame({
        "paper total GB": ours["paper total GB"],
        "total GB": ours["total GB"],
        "total GiB": ours["total GiB"],
        "total GB, no full-rank states": lean["total GB"],
        "total GiB, no full-rank states": lean["total GiB"],
    })


def plot_state_memory(frame: pd.DataFrame, *, paper: bool = True, log: bool = True):
    """Two seaborn bar charts of :func:`memory_frame`, one group of bars per model size and one
    bar (hue) per optimizer: left, the optimizer state as measured; right, the total (weights +
    state), with the paper's Table 2 totals as black diamonds on the bars when ``paper``.

    Both in GB (10⁹ bytes), on a log scale when ``log`` (the sizes span two orders of magnitude).
    Returns the figure.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    models = list(dict.fromkeys(frame["model"]))
    optimizers = list(dict.fromkeys(frame["optimizer"]))
    fig, axes = plt.subplots(1, 2, figsize=(7 + 1.6 * len(models), 4.5), sharey=log)
    panels = [("state GB (measured)", "optimizer state (measured)"),
              ("total GB", "weights + optimizer state")]
    for ax, (column, title) in zip(axes, panels):
        sns.barplot(data=frame, x="model", y=column, hue="optimizer", order=models,
                    hue_order=optimizers, ax=ax)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("model size")
        ax.set_ylabel("GB (10⁹ bytes)")
        ax.set_title(title)
    if paper:
        values = frame.set_index(["model", "optimizer"])["paper total GB"]
        first = True
        for optimizer, bars in zip(optimizers, axes[1].containers):
            for model, bar in zip(models, bars):
                value = values.get((model, optimizer), float("nan"))
                if pd.notna(value):
                    axes[1].plot(bar.get_x() + bar.get_width() / 2, value, marker="D", color="black",
                                 markersize=5, linestyle="none",
                                 label="paper, Table 2" if first else None)
                    first = False
    axes[0].get_legend().remove()
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
