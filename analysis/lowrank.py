"""How well does a rank-r projection approximate AdamW's scaling? APOLLO's central claim,
measured (PAPERS.md §B.1, §B.3).

**The quantities.** For a window G_1..G_t of gradients of one weight (m, n), Adam moments

    M <- β1 M + (1-β1) X;   V <- β2 V + (1-β2) X²;   X̃ = M̂ / (√V̂ + eps)

run over X_i = G_i (full rank, what AdamW sees) and over X_i = R_i = project(G_i, P)
(:func:`zoo.projection.project`, what APOLLO sees). Per channel j (a row when rows are kept, a
column otherwise: the zoo's convention, :func:`zoo.projection.rows_kept`) and for the tensor:

    s_j   = ‖G̃_j‖ / (‖G_{t,j}‖ + 1e-8)        s   = ‖G̃‖ / (‖G_t‖ + 1e-8)      (AdamW)
    s^R_j = ‖R̃_j‖ / (‖R_{t,j}‖ + 1e-8)        s^R = ‖R̃‖ / (‖R_t‖ + 1e-8)      (APOLLO)

Theorem A.4: √(n/r)·s^R_j/s_j lies in [√(1-ε)/(1+ε), √(1+ε)/(1-ε)] for every channel with
probability >= 1-δ when r >= (8/ε²)·log(2t/δ), n the compressed dimension; so s^R ≈ √(r/n)·s
("the ratio", ≈ 0.35 at r = n/8 and 0.5 at r = n/4 in the paper, :data:`PAPER_RATIOS`).
:func:`sweep` reports per rank the ratio over channels (mean, quantiles), its relative error
|√(n/r)·s^R/s - 1|, the fraction of channels inside the band, the Spearman correlation of s^R
and s, and the cosine between APOLLO's direction G_t·s^R and AdamW's element-wise G̃.

**Conventions.** The projection is the zoo's own: :func:`zoo.projection.gaussian` drawn from a
seed (the seed of the first period; the zoo's APOLLO uses its group ``seed`` plus the parameter's
1-based index), advanced by :func:`zoo.projection.next_seed` at every refresh, or
:func:`zoo.projection.top_singular` of the gradient at the refresh step; norms by
:func:`zoo.projection.channel_norm`. ``gap`` T refreshes P at window steps 0, T, 2T, ...
(moments kept, as the zoo); ``gap=None`` keeps one P for the whole window. All ranks of a sweep
go through one matrix product per step: their projections are stacked along the rank axis.

**Bias correction.** With ``bias_correction=True`` (the default) both spaces use
M̂ = M/(1-β1^t), V̂ = V/(1-β2^t): a window starts from zero moments, and the corrected moments
have the magnitude the moments of a long run have, so ``eps`` weighs as it does in training.
The correction is one scalar for both spaces: with eps = 0 it cancels in every ratio and cosine.
``bias_correction=False`` is the zoo's own computation (raw moments, eps outside), which
reproduces the factor its APOLLO applies (a test).

**A window is a stand-in for the full history**: the moments of a real run have seen every step
since the start; here they see the ``window`` captured steps, from zero.

**Gradient sources.** :func:`synthetic_records` (i.i.d. Gaussian, low rank plus noise,
heavy-tailed rows) and real gradients: :class:`GradientCapture` is the hook the pretraining runner
calls after backward (and the data-parallel all-reduce), before clipping; :meth:`GradientCapture.save`
writes one ``torch.save`` file; :func:`load_gradients` reads its records back; :func:`capture_run`
trains a LLaMA run with capture on (``python -m analysis.pretrain llama --capture-grads 0,100,190
--capture-window 8``), or returns its file when it is already there.

**On real gradients** (tiny LLaMA, 200 AdamW steps; README "Low-rank error", notebook 06), the
paper's ratios reproduce: 0.370 at r = n/8 and 0.518 at n/4 over q, k, v, o, gate, up, down at
three depths and three training points, each kind and depth within 0.36-0.38 and 0.50-0.53.

Entry points: :func:`full_factors`, :func:`lowrank_factors`, :func:`sweep`, :func:`study`,
:func:`paper_comparison`, :func:`draw_noise`, :func:`pivot`, :func:`plot_ratio_vs_rank`, :func:`plot_heatmap`,
:func:`capture_run`, and the command line
``python -m analysis.lowrank --source synthetic|run:PATH --ranks 1,2,4 --out DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from theory.apollo_bound import compressed_dim, gradient_sequence, interval, theorem_eps
from zoo.optimizers.lowrank import SCALE_EPS
from zoo.projection import channel_norm, gaussian, next_seed, project, rows_kept, top_singular

__all__ = ["BETAS", "EPS", "PAPER_RATIOS", "SYNTHETIC_KINDS", "LAYER_KINDS", "FORMAT",
           "GradientRecord", "synthetic_gradients", "synthetic_records",
           "default_select", "GradientCapture", "load_gradients", "load_meta", "capture_run",
           "rank_sweep", "AdamFactors", "full_factors", "lowrank_factors", "sweep", "study", "draw_noise",
           "paper_comparison", "pivot", "plot_ratio_vs_rank", "plot_heatmap", "main"]

BETAS = (0.9, 0.999)
EPS = 1e-6
"""The zoo's APOLLO defaults (betas, eps)."""

PAPER_RATIOS = {1 / 8: 0.35, 1 / 4: 0.5}
"""r/n -> the ratio s^R/s the APOLLO paper measures on LLaMA (Fig. 4/8, PAPERS.md §B.3), the same
across layer types and depths."""

SYNTHETIC_KINDS = ("gaussian", "lowrank", "heavy_rows")
LAYER_KINDS = ("q", "k", "v", "o", "gate", "up", "down")
FORMAT = "analysis.lowrank/gradients-v1"
QUANTILES = (0.05, 0.5, 0.95)


# ----------------------------------------------------------------------------- gradient sources

@dataclass(frozen=True)
class GradientRecord:
    """A window of consecutive gradients of one weight: ``grads`` [window, m, n].

    ``kind`` is q/k/v/o/gate/up/down for captured gradients (None for a weight the default
    names do not describe), or the synthetic kind; ``layer`` the block index (None if unknown);
    ``step`` the first step of the window; ``name`` the parameter's (or a synthetic label)."""
    name: str
    layer: int | None
    kind: str | None
    step: int
    grads: Tensor

    @property
    def label(self) -> str:
        if self.layer is None or self.kind is None:
            return self.name
        return f"L{self.layer}.{self.kind}@{self.step}"


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


_WEIGHT_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")


def _parse_name(name: str) -> tuple[int | None, str | None]:
    """(layer index, kind) of an HF-style LLaMA weight name, (None, None) for any other name."""
    match = _WEIGHT_NAME.search(name)
    return (int(match[1]), match[2]) if match else (None, None)


def default_select(name: str, param: Tensor) -> bool:
    """The 2-D attention q/k/v/o and MLP gate/up/down weights (HF LLaMA names such as
    ``layers.3.self_attn.q_proj.weight``, any prefix). Which depths are kept is
    :class:`GradientCapture`'s ``depths``: first, middle and last layer by default."""
    return param.dim() == 2 and _parse_name(name)[0] is not None


def _check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"Invalid window: {window!r}; allowed an int >= 1")


class GradientCapture:
    """Records windows of consecutive gradients of selected weights during training.

    ``capture(step)`` records ``p.grad`` of every selected parameter when ``step`` lies in
    [s, s + window) for some s in ``at_steps`` (windows may overlap; a step then goes to each).
    The runner calls it after backward and after the data-parallel all-reduce, before clipping,
    once per optimizer step; the gradients are then the same on every rank and one rank saves.
    Gradients are copied to the CPU in ``dtype`` at once; a parameter whose grad is None is
    skipped (its window is then shorter: the record keeps the steps actually recorded).

    ``select(name, param)`` picks the weights; ``depths`` keeps, of the selected weights that have
    a layer index, those of the first, middle (L // 2) and last layer (``"first-middle-last"``),
    the given indices (negative count from the end), or all (None). File size:
    ``2 bytes x window x Σ m·n`` per start step in bfloat16.
    """

    def __init__(self, model: torch.nn.Module, *, at_steps: Sequence[int], window: int = 8,
                 select: Callable[[str, Tensor], bool] = default_select, dtype=torch.bfloat16,
                 depths: str | Sequence[int] | None = "first-middle-last"):
        _check_window(window)
        at_steps = list(at_steps)
        if not at_steps or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in at_steps):
            raise ValueError(f"Invalid at_steps: {at_steps!r}; allowed a non-empty sequence of ints >= 0")
        self.at_steps, self.window, self.dtype = sorted({int(s) for s in at_steps}), window, dtype
        chosen = [(name, p) for name, p in model.named_parameters() if select(name, p)]
        keep = self._layers_kept([_parse_name(name)[0] for name, _ in chosen], depths)
        self.params = {name: p for name, p in chosen if _parse_name(name)[0] in keep}
        self._grads: dict[tuple[int, str], list[Tensor]] = {}
        self._steps: dict[tuple[int, str], list[int]] = {}

    @staticmethod
    def _layers_kept(layers: list[int | None], depths) -> set:
        if isinstance(depths, str) and depths != "first-middle-last":
            raise ValueError(f"Invalid depths: {depths!r}; allowed 'first-middle-last', a sequence "
                             "of layer indices, or None (all)")
        indexed = {layer for layer in layers if layer is not None}
        if depths is None or not indexed:
            return set(layers)
        count = max(indexed) + 1
        wanted = {0, count // 2, count - 1} if isinstance(depths, str) else {d % count for d in depths}
        return {None} | (wanted & indexed)

    def __call__(self, step: int) -> None:
        starts = [s for s in self.at_steps if s <= step < s + self.window]
        for name, p in self.params.items():
            if not starts or p.grad is None:
                continue
            grad = p.grad.detach().to(device="cpu", dtype=self.dtype, copy=True)
            for start in starts:
                self._grads.setdefault((start, name), []).append(grad)
                self._steps.setdefault((start, name), []).append(int(step))

    def save(self, path, meta: dict) -> None:
        """One ``torch.save`` file (its folder is made if missing): ``meta`` (JSON-serialisable:
        model config name, optimizer, seed, ...), the window, and one record per (start step,
        parameter) with its name, layer, kind, the steps recorded and the gradients [k, m, n]."""
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except TypeError as err:
            raise ValueError(f"meta must be JSON-serialisable (str, numbers, lists, dicts): {err}") from None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = []
        for (start, name), grads in sorted(self._grads.items()):
            layer, kind = _parse_name(name)
            records.append({"name": name, "layer": layer, "kind": kind, "start": start,
                            "steps": self._steps[(start, name)], "grads": torch.stack(grads)})
        torch.save({"format": FORMAT, "meta": meta, "window": self.window, "records": records}, path)


def _load(path) -> dict:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gradient file written by GradientCapture.save ({FORMAT})")
    return data


def load_gradients(path) -> list[GradientRecord]:
    """The records of a :meth:`GradientCapture.save` file, in the order saved (start step, name).
    ``step`` is the first step actually recorded."""
    return [GradientRecord(rec["name"], rec["layer"], rec["kind"], rec["steps"][0], rec["grads"])
            for rec in _load(path)["records"]]


def _meta(data: dict) -> dict:
    return dict(data["meta"], window=data["window"])


def load_meta(path) -> dict:
    """The ``meta`` dict of a :meth:`GradientCapture.save` file, with its ``window`` added."""
    return _meta(_load(path))


def capture_path(out, optimizer: str, seed: int) -> Path:
    """Where the pretraining runner writing into ``out`` saves the gradients of one run."""
    return Path(out) / "grads" / f"{optimizer}_seed{seed}.pt"


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
    _check_window(window)
    if not at_steps or at_steps[0] < 0 or at_steps[-1] + window > steps:
        raise ValueError(f"Invalid at_steps: {at_steps!r}; allowed a non-empty sequence of ints s >= 0 "
                         f"with s + window <= steps ({window} + s <= {steps})")
    path = capture_path(out, optimizer, seed)
    wanted = dict(task="llama", model=model, optimizer=optimizer, seed=seed, steps=steps, window=window)
    if path.exists() and not rerun:
        data = _load(path)
        meta = _meta(data)
        starts = sorted({rec["start"] for rec in data["records"]})
        if all(meta.get(k) == v for k, v in wanted.items()) and starts == at_steps:
            return path
    from .pretrain import Config, compare   # here: the runner imports this module

    compare(Config(**{"progress": False, **settings, "task": "llama", "model": model, "optimizers": (optimizer,),
                      "seeds": (seed,), "steps": steps, "capture_grads": tuple(at_steps),
                      "capture_window": window, "out": str(out)}))
    return path


# ----------------------------------------------------------------------------- the factors

def rank_sweep(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ranks = [2**k for k in range(n.bit_length()) if 2**k <= n]
    return ranks if ranks[-1] == n else ranks + [n]


def _check_grads(grads: Tensor) -> Tensor:
    if not isinstance(grads, Tensor) or grads.dim() != 3 or grads.shape[0] < 1:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise ValueError(f"grads must be a tensor [steps, m, n] with steps >= 1, got {shape}")
    return grads.to(torch.promote_types(grads.dtype, torch.float32))


def _adam_normalised(xs: Iterable[Tensor], betas, eps: float, bias_correction: bool) -> tuple[Tensor, Tensor]:
    """(X̃ after the sequence, its last X), in the zoo's operation order."""
    beta1, beta2 = betas
    m = v = last = None
    count = 0
    for last in xs:
        m = torch.zeros_like(last) if m is None else m
        v = torch.zeros_like(last) if v is None else v
        m.mul_(beta1).add_(last, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(last, last, value=1 - beta2)
        count += 1
    if bias_correction:
        m.div_(1 - beta1**count)
        v.div_(1 - beta2**count)
    return m / v.sqrt_().add_(eps), last


@dataclass(frozen=True)
class AdamFactors:
    """AdamW's factors after a window, and what the direction cosines need.

    ``channel`` s_j (C,), ``tensor`` s; ``inner`` ⟨G_{t,j}, G̃_j⟩ and ``grad_sq`` ‖G_{t,j}‖² per
    channel (C,); ``update_norm`` ‖G̃‖."""
    channel: Tensor
    tensor: Tensor
    inner: Tensor
    grad_sq: Tensor
    update_norm: Tensor

    def cosine(self, factors: Tensor) -> Tensor:
        """cos(G_t·s', G̃) for channel factors ``factors`` (..., C)."""
        factors = factors.to(self.inner.dtype)
        return (factors @ self.inner) / ((factors.square() @ self.grad_sq).sqrt() * self.update_norm)


def full_factors(grads: Tensor, betas=BETAS, eps: float = EPS, *, bias_correction: bool = True,
                 scale_eps: float = SCALE_EPS) -> AdamFactors:
    """AdamW's channel-wise and tensor-wise factors for ``grads`` [steps, m, n] (module docstring)."""
    grads = _check_grads(grads)
    shape = grads.shape[1:]
    normed, last = _adam_normalised(grads, betas, eps, bias_correction)
    grad_norm = channel_norm(last, shape)
    channel = channel_norm(normed, shape) / (grad_norm + scale_eps)
    inner = (normed * last).sum(dim=1 if rows_kept(shape) else 0)
    grad_sq = grad_norm.square().flatten()
    update_norm = normed.square().sum().sqrt()
    tensor = update_norm / (grad_sq.sum().sqrt() + scale_eps)
    return AdamFactors(channel.flatten(), tensor, inner, grad_sq, update_norm)


def _check_ranks(ranks, n: int) -> list[int]:
    ranks = list(ranks)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 1 <= r <= n for r in ranks):
        raise ValueError(f"Invalid ranks: {ranks!r}; allowed ints in [1, {n}] (n = the compressed dimension)")
    return [int(r) for r in ranks]


def _periods(steps: int, gap: int | None) -> list[range]:
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, numbers.Integral) or gap < 1):
        raise ValueError(f"Invalid gap: {gap!r}; allowed an int >= 1, or None (one projection per window)")
    gap = gap or steps
    return [range(start, min(start + gap, steps)) for start in range(0, steps, gap)]


def _projections(proj, grads: Tensor, ranks: list[int], period: range, seed: int) -> Tensor:
    """The projections of all ``ranks`` for one period, stacked along the rank axis (Σr, n)."""
    shape = grads.shape[1:]
    if isinstance(proj, Tensor):
        return proj.to(grads.dtype)
    if proj == "svd":   # one SVD: its first r rows are top_singular(grad, r) for every r
        full = top_singular(grads[period.start], max(ranks))
        return torch.cat([full[:r] for r in ranks])
    return torch.cat([gaussian(shape, r, seed, grads.device, grads.dtype) for r in ranks])


def lowrank_factors(grads: Tensor, ranks: Sequence[int], proj="random", *, seed: int = 0,
                    gap: int | None = None, betas=BETAS, eps: float = EPS, bias_correction: bool = True,
                    scale_eps: float = SCALE_EPS) -> tuple[Tensor, Tensor]:
    """APOLLO's estimates for every rank: (s^R_j as [len(ranks), C], s^R as [len(ranks)]).

    ``proj``: ``"random"`` (:func:`zoo.projection.gaussian`, ``seed`` for the first period, then
    :func:`zoo.projection.next_seed`), ``"svd"`` (:func:`zoo.projection.top_singular` of the
    gradient at each refresh) or a fixed tensor P of shape (r, n) (then ``ranks`` must be [r]).
    ``gap``: refresh every ``gap`` steps of the window (None: one projection for the window).
    """
    grads = _check_grads(grads)
    shape = grads.shape[1:]
    ranks = _check_ranks(ranks, compressed_dim(shape))
    if isinstance(proj, Tensor):
        if proj.dim() != 2 or proj.shape[1] != compressed_dim(shape) or ranks != [proj.shape[0]]:
            raise ValueError(f"a fixed projection must have shape (r, {compressed_dim(shape)}) with "
                             f"ranks == [r]; got {tuple(proj.shape)} and ranks {ranks}")
    elif proj not in ("random", "svd"):
        raise ValueError(f"Invalid proj: {proj!r}; allowed 'random', 'svd' or a tensor (r, n)")

    def projected():
        period_seed = seed
        for k, period in enumerate(_periods(len(grads), gap)):
            period_seed = next_seed(period_seed) if k else period_seed
            stacked = _projections(proj, grads, ranks, period, period_seed)
            for i in period:
                yield project(grads[i], stacked)

    normed, last = _adam_normalised(projected(), betas, eps, bias_correction)
    axis = 1 if rows_kept(shape) else 0
    normed_sq = torch.stack([channel_norm(x, shape).flatten() for x in normed.split(ranks, dim=axis)]).square()
    last_sq = torch.stack([channel_norm(x, shape).flatten() for x in last.split(ranks, dim=axis)]).square()
    channel = normed_sq.sqrt() / (last_sq.sqrt() + scale_eps)
    tensor = normed_sq.sum(dim=1).sqrt() / (last_sq.sum(dim=1).sqrt() + scale_eps)
    return channel, tensor


# ----------------------------------------------------------------------------- statistics

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


# ----------------------------------------------------------------------------- figures

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


# ----------------------------------------------------------------------------- command line

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _shapes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(d) for d in s.lower().split("x")) for s in text.split(",") if s]


def load_source(source: str, *, kinds=SYNTHETIC_KINDS, shapes=((1024, 512),), steps: int = 8,
                seed: int = 0) -> list[GradientRecord]:
    """``"synthetic"`` (:func:`synthetic_records`) or ``"run:PATH"`` (:func:`load_gradients`)."""
    if source == "synthetic":
        return synthetic_records(kinds, shapes, steps, seed)
    if source.startswith("run:") and len(source) > 4:
        return load_gradients(source[4:])
    raise ValueError(f"Invalid source: {source!r}; allowed 'synthetic' or 'run:PATH' (a GradientCapture file)")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """``python -m analysis.lowrank``: writes DIR/lowrank.csv, DIR/ratio_vs_rank.png and
    DIR/heatmap.png, and prints the comparison with the paper (:func:`paper_comparison`, one
    table per projection, refresh gap and ``--by`` column)."""
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(prog="python -m analysis.lowrank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic", help="'synthetic' or 'run:PATH' (GradientCapture file)")
    parser.add_argument("--ranks", type=_ints, help="comma-separated ranks (default 1, 2, 4, ..., n per weight)")
    parser.add_argument("--proj", default="random", help="comma-separated: random, svd")
    parser.add_argument("--gaps", default="", help="comma-separated refresh gaps T (default: one P per window)")
    parser.add_argument("--draws", type=int, default=1, help="independent draws of the random projection")
    parser.add_argument("--delta", type=float, default=0.1, help="Theorem A.4's δ for the band")
    parser.add_argument("--eps", type=float, default=EPS, help="Adam's eps")
    parser.add_argument("--seed", type=int, default=0, help="projection (and synthetic data) seed")
    parser.add_argument("--kinds", default=",".join(SYNTHETIC_KINDS), help="synthetic kinds")
    parser.add_argument("--shape", type=_shapes, default=[(1024, 512)], help="synthetic shapes, e.g. 1024x512,512x1024")
    parser.add_argument("--steps", type=int, default=8, help="synthetic window length")
    parser.add_argument("--by", default=None, help="comma-separated columns to group the comparison with the paper "
                        "by (default: name for synthetic, kind,layer,step for a run)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    args = parser.parse_args(argv)
    records = load_source(args.source, kinds=args.kinds.split(","), shapes=args.shape, steps=args.steps,
                          seed=args.seed)
    gaps = _ints(args.gaps) or [None]
    frame = study(records, args.ranks, args.proj.split(","), gaps, seed=args.seed, draws=args.draws,
                  delta=args.delta, eps=args.eps)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "lowrank.csv", index=False)
    named = frame["kind"].notna().all() and frame["layer"].notna().all()
    hue = "name" if args.source == "synthetic" else "kind" if named else "label"
    by = args.by.split(",") if args.by else ["name"] if args.source == "synthetic" else \
        ["kind", "layer", "step"] if named else ["label"]
    first = frame[(frame["proj"] == frame["proj"].iloc[0]) & (frame["gap"] == frame["gap"].iloc[0])]
    for name, fig in (("ratio_vs_rank.png", plot_ratio_vs_rank(first, hue=hue)), ("heatmap.png", plot_heatmap(first))):
        fig.savefig(args.out / name, dpi=120)
        plt.close(fig)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for (proj, gap), part in frame.groupby(["proj", "gap"], sort=False):
            for column in by:
                table = paper_comparison(part, by=column, wide=True)
                if len(table):
                    print(f"\n{proj} projection, refresh gap T = {gap}, eps = {args.eps:g}: channel-wise s^R/s "
                          f"by {column} (mean and 5-95% over channels; min-max of the records' means), "
                          f"beside the paper")
                    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"\nwritten: {args.out / 'lowrank.csv'}, {args.out / 'ratio_vs_rank.png'}, {args.out / 'heatmap.png'}")
    return frame


if __name__ == "__main__":
    main()
