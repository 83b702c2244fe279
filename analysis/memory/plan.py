"""What fits: the memory of a LLaMA training step, planned under ``FakeTensorMode`` (nothing is
allocated, so 7B and 13B plan on a laptop) or measured for real, with
:func:`analysis.memory.step.measure_step`.

The model is :class:`analysis.models.llama.Llama` at one of the papers' sizes (PAPERS.md §C, plus
13B; or "tiny", for quick checks) with the T5 vocabulary of 32000 tokens, its weights (and so its
gradients and optimizer states) in ``dtype``; with ``weights="int8"`` its attention and MLP weights
are INT8 (:mod:`zoo.quantized`, groups of 128, stochastic rounding), built on the meta device and
materialised and quantized one module at a time, so the float weights never exist together (their
gradients and states stay in ``dtype``). The optimizer comes from ``zoo.create`` (low-rank
optimizers at the size's rank, :data:`zoo.memory.LOW_RANK_RANKS`, unless ``rank`` is given);
``layerwise`` updates inside backward (:mod:`zoo.layerwise`), ``checkpointing`` recomputes each
block's activations.

Plans run the CPU's kernels on fake CPU tensors (a CPU-only torch cannot make fake CUDA
parameters): on a GPU, attention (flash) and matmul workspaces differ, the caching allocator
rounds each block up to 512 bytes and the CUDA context takes a few hundred MB more; at the sizes
planned here those are well under 1 % of the peak. :func:`max_batch` compares the peak with a
card's memory as sold: "80 GB" is 80 GiB (85.9·10⁹ bytes).
"""
from __future__ import annotations

import math
import multiprocessing
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import zoo
from zoo.memory import LOW_RANK_RANKS
from zoo.quantized import materialize_quantized

from ..cli import track
from ..models.llama import CONFIGS, Llama
from .state import GB, GIB
from .step import default_dtype, max_resident_bytes, measure_step, resident_bytes, train_step

__all__ = ["GB", "GIB", "DTYPES", "WEIGHTS", "Setting", "build", "llama_step", "row", "max_batch", "plan", "measure",
           "measured_row", "plot_plan", "PLAN_COLUMNS"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WEIGHTS = ("float", "int8", "bf16")
"""How the weights are stored: in ``dtype``, the attention and MLP weights as INT8
(:mod:`zoo.quantized`), or every weight in bfloat16 whatever ``dtype`` says (its gradients and
optimizer states then too: pure bf16 training, no float32 master copy)."""
ROUNDINGS = ("nearest", "stochastic", "kahan")
"""How bf16 weights take their updates: rounded to nearest, ``stochastic_round=True`` (no memory),
``kahan=True`` (a compensation buffer of the weight's size)."""
QUANT_GROUP = 128   # values per scale and offset, as the reference's 7B script
VOCAB = 32000

PLAN_COLUMNS = ("model", "optimizer", "layerwise", "checkpointing", "weights", "state_bits", "batch_size", "seq_len",
                "parameters_gb", "gradients_gb", "optimizer_gb", "activations_gb", "temporaries_gb", "peak_gb")
"""Columns of :func:`plan` (GB = 10⁹ bytes): the categories as they stand at the peak (they sum to
it with the small buffers/other), and with a card's memory ``gpu_memory_gib`` and ``max_batch``."""


@dataclass(frozen=True)
class Setting:
    """One training step to plan or measure."""
    model: str = "7B"
    optimizer: str = "adamw"
    dtype: str = "bf16"
    batch_size: int = 1
    seq_len: int = 256
    layerwise: bool = False
    checkpointing: bool = False
    rank: int | None = None
    lr: float | None = None            # None: the optimizer's default (memory does not depend on it)
    weights: str = "float"             # or "int8": the attention and MLP weights quantized; "bf16": pure bf16
    state_bits: int = 32               # 8 or 4: the optimizer states in blockwise codes (zoo.lowbit)
    rounding: str = "nearest"          # bf16 weights: or "stochastic", "kahan" (ROUNDINGS)
    compile: bool = False              # INT8 weights: their (de)quantization kernels compiled (not planned: the
                                       # plan and the tracked step run the eager kernels, zoo.quantized)

    def __post_init__(self):
        if self.model not in CONFIGS:
            raise ValueError(f"unknown model {self.model!r}; allowed: {', '.join(CONFIGS)}")
        zoo.info(self.optimizer)   # an unknown name raises, listing the known ones
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        for key in ("batch_size", "seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weights {self.weights!r}; allowed: {', '.join(WEIGHTS)}")
        if self.state_bits not in (32, 8, 4):
            raise ValueError(f"state_bits must be 32, 8 or 4, got {self.state_bits}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; allowed: {', '.join(ROUNDINGS)}")
        if self.rounding != "nearest" and self.weights != "bf16":
            raise ValueError(f"rounding {self.rounding!r} is for bf16 weights (weights='bf16'), not {self.weights!r}")
        if self.compile and self.weights != "int8":
            raise ValueError(f"compile is for the kernels of INT8 weights (weights='int8'), not {self.weights!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def optimizer_options(self) -> dict:
        record = zoo.info(self.optimizer)
        options = {} if self.lr is None else {"lr": self.lr}
        options.update(state_bits=self.state_bits, stochastic_round=self.rounding == "stochastic",
                       kahan=self.rounding == "kahan")
        if record.low_rank and "rank" not in record.fixed:
            options["rank"] = self.rank or LOW_RANK_RANKS.get(self.model, CONFIGS[self.model].dim // 4)
        return options


def build(setting: Setting):
    """(model, optimizer, batch) of ``setting``, made in the current mode (fake or real)."""
    torch.manual_seed(0)
    config = replace(CONFIGS[setting.model], vocab_size=VOCAB,
                     max_seq_len=max(setting.seq_len, CONFIGS[setting.model].max_seq_len))
    with default_dtype(DTYPES["bf16" if setting.weights == "bf16" else setting.dtype]):
        if setting.weights == "int8":
            with torch.device("meta"):
                model = Llama(config, checkpointing=setting.checkpointing)
            materialize_quantized(model, Llama._init_weights, "cpu", group_size=QUANT_GROUP, compile=setting.compile)
        else:
            model = Llama(config, checkpointing=setting.checkpointing)
    optimizer = zoo.create(model, setting.optimizer, layerwise=setting.layerwise, **setting.optimizer_options())
    tokens = torch.randint(0, VOCAB, (setting.batch_size, setting.seq_len))
    return model, optimizer, (tokens, tokens)


def llama_step(setting: Setting, *, fake: bool = True, warmup: int = 1) -> pd.DataFrame:
    """:func:`measure_step` of ``setting``: under ``FakeTensorMode`` (``fake``, no memory used) or
    with real tensors on the CPU."""
    with FakeTensorMode() if fake else nullcontext():
        return measure_step(*build(setting), warmup=warmup)


GB_COLUMNS = {"parameters": "parameters_gb", "gradients": "gradients_gb", "optimizer state": "optimizer_gb",
              "activations": "activations_gb", "temporaries": "temporaries_gb", "total": "peak_gb"}
"""Categories of :func:`measure_step` -> the columns that hold them, in GB, at the peak. The
optimizer's column holds its state plus what its ``step()`` allocates while it runs."""


def row(setting: Setting, frame: pd.DataFrame) -> dict:
    """One :data:`PLAN_COLUMNS` row from ``setting`` and its :func:`measure_step` frame."""
    return {"model": setting.model, "optimizer": setting.optimizer, "layerwise": setting.layerwise,
            "checkpointing": setting.checkpointing,
            "weights": {"int8": "int8", "bf16": "bf16" + ("" if setting.rounding == "nearest" else "+" + setting.rounding)
                        }.get(setting.weights, setting.dtype), "state_bits": setting.state_bits,
            "batch_size": setting.batch_size, "seq_len": setting.seq_len,
            **{column: frame.loc[category, "at_peak"] / GB for category, column in GB_COLUMNS.items()}}


def max_batch(setting: Setting, memory_bytes: float, *, limit: int = 4096, peaks: dict | None = None) -> int:
    """The largest batch size (at most ``limit``) whose planned peak fits in ``memory_bytes``; 0
    if not even one sequence does. Peaks grow about linearly with the batch once activations
    dominate, so the line through batch 1 and 8 gives a guess, which is planned with its
    neighbour; a bisection between the sizes that fit and those that do not settles the rest.
    ``peaks`` (batch size -> planned peak bytes) holds peaks already planned; it is filled in."""
    peaks = {} if peaks is None else peaks

    def fits(batch: int) -> bool:
        if batch not in peaks:
            peaks[batch] = int(llama_step(replace(setting, batch_size=batch))["at_peak"]["total"])
        return peaks[batch] <= memory_bytes

    if not fits(1):
        return 0
    probe = min(8, limit)
    fits(probe)
    slope = (peaks[probe] - peaks[1]) / (probe - 1) if probe > 1 else 0
    guess = limit if slope <= 0 else max(1, min(limit, 1 + math.floor((memory_bytes - peaks[1]) / slope)))
    low, high = 1, limit + 1                 # fits(low); high does not (or is past the limit)
    for batch in (probe, guess, guess + 1):
        if low < batch < high:
            low, high = (batch, high) if fits(batch) else (low, batch)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def plan(settings, *, gpu_memory_gib: float | None = None, progress: bool = False) -> pd.DataFrame:
    """One planned row (:data:`PLAN_COLUMNS`) per :class:`Setting`; with ``gpu_memory_gib``, the
    card's memory (``gpu_memory_gib``) and ``max_batch``, the largest batch that fits it.
    ``progress``: report each setting (:func:`analysis.cli.track`)."""
    rows = []
    for setting in track(settings, "plan", enabled=progress):
        frame = llama_step(setting)
        out = row(setting, frame)
        if gpu_memory_gib is not None:
            out["gpu_memory_gib"] = gpu_memory_gib
            out["max_batch"] = max_batch(setting, gpu_memory_gib * GIB,
                                         peaks={setting.batch_size: int(frame.loc["total", "at_peak"])})
        rows.append(out)
    return pd.DataFrame(rows)


def _measure(setting: Setting, steps: int) -> dict:
    """In a fresh process (:func:`measure`): one step, the tracked step, then ``steps`` timed steps;
    the maximum resident bytes so far after each phase (``resident``: started, built, first step,
    tracked step, timed steps) and the resident bytes at the end."""
    resident = {"started": max_resident_bytes()}
    model, optimizer, batch = build(setting)
    resident["built"] = max_resident_bytes()
    tick = time.perf_counter()
    losses = [train_step(model, optimizer, batch)]
    first = time.perf_counter() - tick
    resident["first step"] = max_resident_bytes()
    frame = measure_step(model, optimizer, batch, warmup=0, losses=losses)
    resident["tracked step"] = max_resident_bytes()
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        losses.append(train_step(model, optimizer, batch))
        times.append(time.perf_counter() - tick)
    resident["timed steps"] = max_resident_bytes()
    return {"frame": frame, "max_resident_bytes": max_resident_bytes(), "first_step_seconds": first,
            "seconds_per_step": sum(times) / steps if steps else math.nan,
            "losses": [loss.float().item() for loss in losses], "resident": resident,
            "resident_at_end_bytes": resident_bytes()}


def measure(setting: Setting, steps: int = 2) -> dict:
    """A real training step of ``setting`` on this machine's CPU, in a fresh process (so its
    maximum resident memory is its own): the :func:`measure_step` frame of the second step (the
    first allocates the optimizer state), the process's maximum resident bytes, the seconds of the
    first step and the mean seconds of ``steps`` further steps (the same batch every time), and
    the loss of every step (``steps + 2``)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (setting, steps))


def measured_row(setting: Setting, steps: int = 2) -> dict:
    """:func:`measure` of ``setting`` as a :data:`PLAN_COLUMNS` row, with the planner's peak for
    the same step (``planned_peak_gb``), the process's maximum resident memory, the seconds of the
    first step and per further step, and the loss of every step."""
    result = measure(setting, steps)
    return {**row(setting, result["frame"]), "planned_peak_gb": llama_step(setting)["at_peak"]["total"] / GB,
            "max_resident_gb": result["max_resident_bytes"] / GB, "first_step_s": result["first_step_seconds"],
            "seconds_per_step": result["seconds_per_step"],
            "losses": " ".join(f"{loss:.4f}" for loss in result["losses"]),
            **{f"max_resident_{phase.replace(' ', '_')}_gb": value / GB for phase, value in result["resident"].items()},
            "resident_at_end_gb": result["resident_at_end_bytes"] / GB}


def plot_plan(frame: pd.DataFrame, *, gpu_memory_gib: float | None = None, ax=None):
    """A seaborn stacked bar per row of a :func:`plan` (or measure) frame: the peak in GB split
    into parameters, gradients, optimizer, activations and temporaries, one group of bars per
    model; a dashed line at ``gpu_memory_gib`` (in GB). Returns the axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    parts = {"parameters_gb": "parameters", "gradients_gb": "gradients", "optimizer_gb": "optimizer",
             "activations_gb": "activations", "temporaries_gb": "temporaries"}
    labels = [f"{r.model} {r.optimizer}{' +layerwise' if r.layerwise else ''}"
              f"{f' +{r.state_bits}bit' if getattr(r, 'state_bits', 32) != 32 else ''}"
              f"{f' {r.weights}' if r.weights in ('int8', 'bf16+kahan', 'bf16+stochastic') else ''}"
              for r in frame.itertuples()]
    long = frame.assign(setting=labels).melt(id_vars="setting", value_vars=list(parts), var_name="category",
                                             value_name="GB")
    long["category"] = long["category"].map(parts)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 0.75 * len(frame), 4.5))
    sns.histplot(data=long, x="setting", weights="GB", hue="category", hue_order=list(parts.values()),
                 multiple="stack", discrete=True, shrink=0.8, ax=ax)
    legend = ax.get_legend()
    handles, names = list(legend.legend_handles), [text.get_text() for text in legend.get_texts()]
    if gpu_memory_gib is not None:
        handles.append(ax.axhline(gpu_memory_gib * GIB / GB, color="black", linestyle="--", linewidth=1))
        names.append(f"a {gpu_memory_gib:g} GiB card")
    ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set(xlabel="", ylabel="peak of a training step, GB (10⁹ bytes)")
    ax.tick_params(axis="x", rotation=60)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    return ax
