"""``python -m analysis.lowrank``: the low-rank study from the command line."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from theory.apollo_bound import compressed_dim

from ..cli import ArgumentParser, choice_list, make_folder, float_range, int_list, integer, shape_list, usage_errors
from .factors import EPS
from .figures import plot_heatmap, plot_ratio_vs_rank
from .sources import SYNTHETIC_KINDS, load_source
from .statistics import paper_comparison, study

__all__ = ["main"]

GROUPS = ("name", "label", "layer", "kind", "step", "m", "n_cols", "steps", "proj", "gap", "draw")
"""Columns of a study frame the comparison with the paper can be grouped ``--by``."""


def _parser() -> ArgumentParser:
    from . import __doc__ as description   # the package's docstring is the --help text

    parser = ArgumentParser(prog="python -m analysis.lowrank", description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="synthetic", help="'synthetic' or 'run:PATH' (GradientCapture file)")
    parser.add_argument("--ranks", type=int_list(1), help="comma-separated ranks (default 1, 2, 4, ..., n per weight)")
    parser.add_argument("--proj", type=choice_list(("random", "svd")), default=("random",),
                        help="comma-separated: random, svd")
    parser.add_argument("--gaps", type=int_list(1), default=(), help="comma-separated refresh gaps T "
                        "(default: one P per window)")
    parser.add_argument("--draws", type=integer(1), default=1, help="independent draws of the random projection")
    parser.add_argument("--delta", type=float_range(0, 1, open_low=True), default=0.1,
                        help="Theorem A.4's δ for the band")
    parser.add_argument("--eps", type=float_range(0), default=EPS, help="Adam's eps")
    parser.add_argument("--seed", type=integer(0), default=0, help="projection (and synthetic data) seed")
    parser.add_argument("--kinds", type=choice_list(SYNTHETIC_KINDS), default=SYNTHETIC_KINDS,
                        help="synthetic kinds")
    parser.add_argument("--shape", type=shape_list, default=((1024, 512),),
                        help="synthetic shapes, e.g. 1024x512,512x1024")
    parser.add_argument("--steps", type=integer(1), default=8, help="synthetic window length")
    parser.add_argument("--by", type=choice_list(GROUPS), default=None, help="comma-separated columns to group "
                        "the comparison with the paper by (default: name for synthetic, kind,layer,step for a run)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Writes DIR/lowrank.csv, DIR/ratio_vs_rank.png and DIR/heatmap.png, and prints the
    comparison with the paper (:func:`paper_comparison`, one table per projection, refresh gap
    and ``--by`` column). Returns the study frame."""
    import matplotlib.pyplot as plt

    parser = _parser()
    args = parser.parse_args(argv)
    with usage_errors(parser):   # everything a bad setting can break, before the study runs
        if any(len(shape) != 2 for shape in args.shape):
            shapes = ",".join("x".join(map(str, shape)) for shape in args.shape)
            raise ValueError(f"--shape takes 2-D shapes (rows x columns) such as 1024x512, got {shapes}")
        records = load_source(args.source, kinds=args.kinds, shapes=args.shape, steps=args.steps, seed=args.seed)
        largest = max(compressed_dim(rec.grads.shape[1:]) for rec in records)
        if args.ranks and min(args.ranks) > largest:
            raise ValueError(f"--ranks {min(args.ranks)} is above every weight's compressed dimension "
                             f"(at most {largest} in {args.source})")
        make_folder(args.out)
    frame = study(records, args.ranks, args.proj, list(args.gaps) or [None], seed=args.seed, draws=args.draws,
                  delta=args.delta, eps=args.eps)
    frame.to_csv(args.out / "lowrank.csv", index=False)
    named = frame["kind"].notna().all() and frame["layer"].notna().all()
    hue = "name" if args.source == "synthetic" else "kind" if named else "label"
    by = args.by or (["name"] if args.source == "synthetic" else ["kind", "layer", "step"] if named else ["label"])
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
