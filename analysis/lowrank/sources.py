"""Where the gradient windows of the low-rank study come from: synthetic sequences, or real
gradients recorded by the pretraining runner (:mod:`analysis.capture`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from theory.apollo_bound import gradient_sequence

from ..capture import GradientRecord, capture_path, check_window, load_gradients, load_meta
from .. import pretrain

__all__ = ["SYNTHETIC_KINDS", "synthetic_gradients", "synthetic_records", "capture_run", "load_source"]

SYNTHETIC_KINDS = ("gaussian", "lowrank", "heavy_rows")


def synthetic_gradients(kind: str = "gaussian", shape=(1024, 512), steps: int = 8, seed: int = 0,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """``steps`` gradients of ``shape`` ([steps, m, n]).

    ``"gaussian"`` and ``"lowrank"`` are :func:`theory.apollo_bound.gradient_sequence` (i.i.d.
    N(0, 1); a fixed rank-4 signal plus N(0, 0.3²) noise, times a per-step gain in [0.5, 1.5]).
    ``"heavy_rows"``: the same rank-4 signal plus noise whose scale is heavy-tailed across rows,
    0.3·(Pareto(α=1.5) draw) per row, fixed over the window: a few rows are almost pure noise of
    large size, the rest carry the signal (outlier features).
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; allowed {', '.join(map(repr, SYNTHETIC_KINDS))}")
    if kind != "heavy_rows":
        return gradient_sequence(kind, tuple(shape), steps, seed).to(dtype)
    signal = gradient_sequence("lowrank", tuple(shape), steps, seed, noise=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    row_scale = 0.3 * torch.rand(shape[0], 1, generator=gen, dtype=torch.float64).pow(-1 / 1.5)
    noise = torch.randn(steps, *shape, generator=gen, dtype=torch.float64)
    return (signal + row_scale * noise).to(dtype)


def synthetic_records(kinds: Sequence[str] = SYNTHETIC_KINDS, shapes=((1024, 512),), steps: int = 8,
                      seed: int = 0, dtype: torch.dtype = torch.float32) -> list[GradientRecord]:
    """One :class:`GradientRecord` per (kind, shape), named (and labelled) ``"kind mxn"``, no
    layer, step 0."""
    return [GradientRecord(f"{kind} {m}x{n}", None, kind, 0, synthetic_gradients(kind, (m, n), steps, seed, dtype))
            for kind in kinds for (m, n) in shapes]


def capture_run(out, *, model: str = "tiny", steps: int = 200, at_steps: Sequence[int] = (0, 100, 190),
                window: int = 8, optimizer: str = "adamw", seed: int = 0, rerun: bool = False,
                **settings) -> Path:
    """The gradient file of a LLaMA pretraining run with capture on, trained if need be.

    Returns ``out/grads/<optimizer>_seed<seed>.pt``. When that file exists and records the same
    model, optimizer, seed, total steps, window and start steps, it is loaded as it is (the
    analysis re-runs without retraining); otherwise (or with ``rerun=True``) the run is trained
    by :func:`analysis.pretrain.compare` into ``out``, which writes it. ``settings`` are further
    :class:`analysis.pretrain.Config` fields (``batch_size``, ``seq_len``, ``eval_batches``,
    ``lr``, ``device``, ...); the file does not record them, so a present file is not checked
    against them: pass ``rerun=True`` after changing one. Every window must end by ``steps``.

    The same as ``python -m analysis.pretrain llama --model MODEL --optimizers OPTIMIZER --seeds
    SEED --steps STEPS --capture-grads AT_STEPS --capture-window WINDOW --out OUT``."""
    at_steps = sorted({int(s) for s in at_steps})
    check_window(window)
    if not at_steps or at_steps[0] < 0 or at_steps[-1] + window > steps:
        raise ValueError(f"Invalid at_steps: {at_steps!r}; allowed a non-empty sequence of ints s >= 0 "
                         f"with s + window <= steps ({window} + s <= {steps})")
    path = capture_path(out, optimizer, seed)
    wanted = dict(task="llama", model=model, optimizer=optimizer, seed=seed, steps=steps, window=window,
                  starts=at_steps)
    if path.exists() and not rerun:
        meta = load_meta(path)
        if all(meta.get(k) == v for k, v in wanted.items()):
            return path
    pretrain.compare(pretrain.Config(**{
        "progress": False, **settings, "task": "llama", "model": model, "optimizers": (optimizer,), "seeds": (seed,),
        "steps": steps, "capture_grads": tuple(at_steps), "capture_window": window, "out": str(out)}))
    return path


def load_source(source: str, *, kinds=SYNTHETIC_KINDS, shapes=((1024, 512),), steps: int = 8,
                seed: int = 0) -> list[GradientRecord]:
    """``"synthetic"`` (:func:`synthetic_records`) or ``"run:PATH"`` (:func:`load_gradients`)."""
    if source == "synthetic":
        return synthetic_records(kinds, shapes, steps, seed)
    if source.startswith("run:") and len(source) > 4:
        return load_gradients(source[4:])
    raise ValueError(f"Invalid source: {source!r}; allowed 'synthetic' or 'run:PATH' (a GradientCapture file)")
