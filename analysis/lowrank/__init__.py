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

**Gradient sources** (:mod:`.sources`). :func:`synthetic_records` (i.i.d. Gaussian, low rank plus
noise, heavy-tailed rows) and real gradients: :class:`analysis.capture.GradientCapture` is the hook
the pretraining runner calls after backward (and the data-parallel all-reduce), before clipping;
it writes one ``torch.save`` file, which :func:`load_gradients` reads back; :func:`capture_run`
trains a LLaMA run with capture on (``python -m analysis.pretrain llama --capture-grads 0,100,190
--capture-window 8``), or returns its file when it is already there.

**On real gradients** (tiny LLaMA, 200 AdamW steps; README "Low-rank error", notebook 06), the
paper's ratios reproduce: 0.370 at r = n/8 and 0.518 at n/4 over q, k, v, o, gate, up, down at
three depths and three training points, each kind and depth within 0.36-0.38 and 0.50-0.53.

The package: :mod:`.factors` (the factors above), :mod:`.statistics` (:func:`sweep`,
:func:`study`, :func:`paper_comparison`, :func:`draw_noise`, :func:`pivot`), :mod:`.figures`
(:func:`plot_ratio_vs_rank`, :func:`plot_heatmap`), :mod:`.sources` (:func:`synthetic_records`,
:func:`capture_run`, :func:`load_source`) and :mod:`.cli`, the command line
``python -m analysis.lowrank --source synthetic|run:PATH --ranks 1,2,4 --out DIR``. Everything
is importable from ``analysis.lowrank``.
"""
from ..capture import (FORMAT, LAYER_KINDS, GradientCapture, GradientRecord, capture_path, default_select,
                       load_gradients, load_meta)
from .cli import main
from .factors import BETAS, EPS, AdamFactors, full_factors, lowrank_factors, rank_sweep
from .figures import plot_heatmap, plot_ratio_vs_rank
from .sources import SYNTHETIC_KINDS, capture_run, load_source, synthetic_gradients, synthetic_records
from .statistics import PAPER_RATIOS, SWEEP_COLUMNS, draw_noise, paper_comparison, pivot, study, sweep

__all__ = ["BETAS", "EPS", "PAPER_RATIOS", "SWEEP_COLUMNS", "SYNTHETIC_KINDS", "LAYER_KINDS", "FORMAT",
           "GradientRecord", "synthetic_gradients", "synthetic_records",
           "default_select", "GradientCapture", "load_gradients", "load_meta", "capture_path", "capture_run",
           "load_source", "rank_sweep", "AdamFactors", "full_factors", "lowrank_factors", "sweep", "study",
           "draw_noise", "paper_comparison", "pivot", "plot_ratio_vs_rank", "plot_heatmap", "main"]
