"""``python -m analysis.memory``: the memory of a LLaMA training step, planned or measured.

    python -m analysis.memory plan --model 7B,13B --optimizers adamw,adamw+8bit,galore,galore+8bit,apollo \\
        --dtype bf16 --batch-size 1 --seq-len 256 [--layerwise] [--checkpointing] [--state-bits 8] \\
        [--weights int8 | --weights bf16 [--kahan | --stochastic-round]] [--gpu-memory 80] --out DIR
    python -m analysis.memory measure --model 1B --optimizers adamw,apollo-mini,apollo-mini+layerwise \\
        [--dtype auto] --batch-size 1 --seq-len 256 [--weights int8] --out DIR
    python -m analysis.memory demo [--model 7B] [--optimizer apollo-mini] [--steps 3] [--compile] --out DIR

``plan`` runs each step under FakeTensorMode (no memory used) and writes ``DIR/plan.csv``
(:data:`analysis.memory.plan.PLAN_COLUMNS`; with ``--gpu-memory`` GiB, ``max_batch``, the largest
batch that fits). ``measure`` trains for real on this machine's CPU, one process per optimizer,
and writes ``DIR/measure.csv``: the tracked bytes by category, the process's maximum resident
memory, seconds per step and the losses, beside the plan of the same step. An optimizer written
``name+layerwise`` updates inside backward (``--layerwise``: all of them), ``name+8bit`` or
``name+4bit`` keeps its states in blockwise codes (:mod:`zoo.lowbit`; ``--state-bits``: all of
them); the suffixes combine (``galore+8bit+layerwise``). ``--weights int8`` stores the attention
and MLP weights as INT8 (:mod:`zoo.quantized`); ``--weights bf16`` keeps every weight, gradient
and state in bfloat16 (no float32 master copy), with ``--kahan`` a compensation buffer per
weight, with ``--stochastic-round`` none. GB = 10⁹ bytes.

``demo`` trains the papers' smallest-memory setting for real on this machine: LLaMA-7B built on
the meta device and materialised and quantized one module at a time, INT8 weights, bf16 compute
where this CPU runs bf16 faster than fp32, else fp32 (``--dtype``, :func:`zoo.precision.resolve`),
per-layer updates, batch 1 of 256 tokens, on one repeated batch; ``--compile``: the INT8
weights' dequantization and requantization as compiled kernels (the same values). It writes
``DIR/demo.csv``: the measured step (tracked peak by category, maximum resident memory, also as
it stood after building the model, the first step, the tracked step and the timed steps, and the
resident memory at the end; seconds per step, the loss of every step) and the planner's rows for
the same setting, for float weights and for AdamW (which cannot run here).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..cli import ArgumentParser, choice_list, float_range, integer, make_folder, usage_errors
from zoo.precision import host, resolve

from ..models.llama import CONFIGS
from .plan import DTYPES, WEIGHTS, Setting, measured_row, plan

__all__ = ["main"]

PAPER_SIZES = tuple(size for size in CONFIGS if size != "tiny")   # the papers' LLaMA sizes, and 13B


def _parser() -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    parser = ArgumentParser(prog="python -m analysis.memory", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands, subs = parser.add_subparsers(dest="command", required=True), {}
    for name, text in (("plan", "plan steps under FakeTensorMode (no memory used)"),
                       ("measure", "measure real steps on this machine's CPU")):
        sub = subs[name] = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--model", type=choice_list(PAPER_SIZES), default=("7B",), help="comma-separated LLaMA sizes")
        sub.add_argument("--optimizers", default="adamw,galore,apollo,apollo-mini",
                         help="comma-separated registry names, each optionally +layerwise")
        if name == "plan":
            sub.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                             help="weights, gradients and optimizer states")
        else:
            sub.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                             help="weights, gradients and optimizer states (auto: bf16 where this CPU runs it faster "
                                  "than fp32, zoo.precision)")
        sub.add_argument("--batch-size", type=integer(1), default=1)
        sub.add_argument("--seq-len", type=integer(1), default=256)
        sub.add_argument("--weights", choices=WEIGHTS, default="float",
                         help="int8: attention and MLP weights stored as INT8 (groups of 128); bf16: every weight, "
                              "gradient and state in bfloat16")
        sub.add_argument("--state-bits", type=int, choices=(32, 8, 4), default=32,
                         help="8 or 4: every optimizer's states in blockwise codes (zoo.lowbit)")
        rounding = sub.add_mutually_exclusive_group()
        rounding.add_argument("--kahan", action="store_true", help="with --weights bf16: a Kahan compensation buffer")
        rounding.add_argument("--stochastic-round", action="store_true",
                              help="with --weights bf16: stochastic rounding of each update")
        sub.add_argument("--layerwise", action="store_true", help="every optimizer updates inside backward")
        sub.add_argument("--checkpointing", action="store_true", help="recompute activations in backward")
        sub.add_argument("--rank", type=integer(1), default=None, help="low-rank optimizers' rank "
                         "(default: zoo.memory.LOW_RANK_RANKS of the size)")
        sub.add_argument("--lr", type=float_range(0, open_low=True), default=None,
                         help="learning rate (default: each optimizer's; the memory does not depend on it)")
        sub.add_argument("--out", type=Path, required=True, help="output folder")
        if name == "plan":
            sub.add_argument("--gpu-memory", type=float_range(0, open_low=True), default=None,
                             help="a card's memory in GiB (80 for an 80 GB A100): adds max_batch")
        else:
            sub.add_argument("--steps", type=integer(1), default=2, help="timed steps after the measured one")
    text = "train a LLaMA (default 7B) with INT8 weights and per-layer updates on this machine's CPU, beside the plans"
    demo = subs["demo"] = commands.add_parser("demo", help=text, description=text)
    demo.add_argument("--model", choices=PAPER_SIZES, default="7B")
    demo.add_argument("--optimizer", default="apollo-mini", help="a registry name")
    demo.add_argument("--batch-size", type=integer(1), default=1)
    demo.add_argument("--seq-len", type=integer(1), default=256)
    demo.add_argument("--steps", type=integer(1), default=3, help="timed steps after the first and the tracked one")
    demo.add_argument("--lr", type=float_range(0, open_low=True), default=1e-3, help="learning rate, no warm-up")
    demo.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                      help="compute precision (auto: bf16 where this CPU runs it faster than fp32, zoo.precision)")
    demo.add_argument("--compile", action="store_true", help="the INT8 weights' dequantization and requantization "
                      "as compiled kernels (zoo.quantize_weights(compile=True); the tracked step runs the eager ones)")
    demo.add_argument("--out", type=Path, required=True, help="output folder")
    return parser, subs


def _settings(args) -> list[Setting]:
    dtype = resolve(args.dtype) if args.command == "measure" else args.dtype   # a plan runs nothing: as asked
    settings = []
    for model in args.model:
        for entry in (e.strip() for e in args.optimizers.split(",") if e.strip()):
            name, *suffixes = entry.split("+")
            if not set(suffixes) <= {"layerwise", "8bit", "4bit"} or len(set(suffixes)) < len(suffixes) \
                    or {"8bit", "4bit"} <= set(suffixes):
                raise ValueError(f"--optimizers entry {entry!r}: allowed a registry name, optionally followed by "
                                 "+layerwise and one of +8bit, +4bit")
            bits = next((int(s[0]) for s in suffixes if s.endswith("bit")), args.state_bits)
            rounding = "kahan" if args.kahan else "stochastic" if args.stochastic_round else "nearest"
            settings.append(Setting(model, name, dtype, args.batch_size, args.seq_len,
                                    args.layerwise or "layerwise" in suffixes, args.checkpointing, args.rank, args.lr,
                                    args.weights, bits, rounding))
    if not settings:
        raise ValueError("--optimizers names no optimizer")
    return settings


def _demo_settings(args) -> list[Setting]:
    """The measured setting, then those planned beside it: float weights, AdamW."""
    measured = Setting(args.model, args.optimizer, resolve(args.dtype), args.batch_size, args.seq_len, layerwise=True,
                       lr=args.lr, weights="int8", compile=args.compile)
    floats = replace(measured, weights="float", compile=False)
    return [measured, floats, replace(floats, optimizer="adamw"), replace(floats, optimizer="adamw", layerwise=False)]


def demo(settings: list[Setting], steps: int) -> pd.DataFrame:
    """The first of ``settings`` measured (:func:`measured_row`, reported as it goes), then all of
    them planned; one frame, ``how`` saying which."""
    first = settings[0]
    kernels = "compiled" if first.compile else "eager"
    print(f"{host()}\nmeasuring {first.model} {first.optimizer}, INT8 weights ({kernels} kernels), {first.dtype}, "
          "per-layer updates, "
          f"batch {first.batch_size} x {first.seq_len} tokens, {steps + 2} steps on this machine's CPU ...", flush=True)
    measured = measured_row(first, steps)
    print(f"peak {measured['peak_gb']:.2f} GB tracked (planned {measured['planned_peak_gb']:.2f}), maximum resident "
          f"{measured['max_resident_gb']:.2f} GB; first step {measured['first_step_s']:.1f} s, then "
          f"{measured['seconds_per_step']:.1f} s/step; losses {measured['losses']}", flush=True)
    phases = [c for c in measured if c.startswith("max_resident_") and c != "max_resident_gb"]
    print("maximum resident so far, GB: " + ", ".join(
        f"{c.removeprefix('max_resident_').removesuffix('_gb').replace('_', ' ')} {measured[c]:.2f}" for c in phases)
        + f"; resident at the end {measured['resident_at_end_gb']:.2f}\n", flush=True)
    planned = plan(settings, progress=True)
    return pd.concat([pd.DataFrame([measured]).assign(how="measured"), planned.assign(how="planned")],
                     ignore_index=True)


def _show(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(frame.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser, subs = _parser()
    args = parser.parse_args(argv)
    with usage_errors(subs[args.command]):
        settings = _demo_settings(args) if args.command == "demo" else _settings(args)
        make_folder(args.out)
    if args.command == "demo":
        frame = demo(settings, args.steps)
        path = args.out / "demo.csv"
    elif args.command == "plan":
        frame = plan(settings, gpu_memory_gib=args.gpu_memory, progress=True)
        path = args.out / "plan.csv"
    else:
        print(host(), flush=True)
        rows = []
        for setting in settings:
            rows.append(measured_row(setting, args.steps))
            print(f"measured {setting.model} {setting.optimizer}{' layerwise' if setting.layerwise else ''}: "
                  f"peak {rows[-1]['peak_gb']:.2f} GB (planned {rows[-1]['planned_peak_gb']:.2f}), resident "
                  f"{rows[-1]['max_resident_gb']:.2f} GB, {rows[-1]['seconds_per_step']:.1f} s/step", flush=True)
        frame = pd.DataFrame(rows)
        path = args.out / "measure.csv"
    frame.to_csv(path, index=False)
    _show(frame)
    print(f"\nwritten: {path}")
    return frame
