"""Benchmarks of the zoo's optimizers on this machine: ``python -m analysis.bench <command>``.

``train``: the time of a whole training step of a LLaMA (byte tokens, or ``--vocab-size``), per
optimizer, in the ordinary loop against per-layer updates (``zoo.layerwise``) and bf16 autocast (see
:func:`train_table`); with ``--hf``, the repository's model against HF transformers'
``LlamaForCausalLM`` of the same configuration, tokens/s side by side::

    python -m analysis.bench train --model 60M --optimizers adamw,apollo-mini
    python -m analysis.bench train --model 60M --vocab-size 32000 --optimizers adamw --variants fp32,bf16 --hf

``step``: the time of one ``optimizer.step()``, against ``torch.optim.AdamW`` and the memory roofline,
and for the low-rank optimizers the cost of the steps that refresh their projection::

    python -m analysis.bench step                        # every zoo optimizer, a few minutes on 2 cores
    python -m analysis.bench step --only adamw,c-adamw --rounds 3 --csv step.csv
    python -m analysis.bench step --compile --only adamw,c-adamw,lion,c-lion   # + compiled steps

Workload: ``--count`` matrices of ``--shape`` (default 12 of 512x2048, ``--dtype`` fp32, on the CPU
or ``--device cuda``), parameters and gradients drawn once (seed 0); every step reuses the same
gradients. Each zoo optimizer, built with
``zoo.get(name)(params, lr=1e-4)`` (so with its own defaults otherwise, e.g. Muon's weight decay), and
the baselines ``torch.optim.AdamW(foreach=False)`` / ``(foreach=True)`` / ``(fused=True)`` (and
the zoo's ``adamw`` with ``fused=True``, when ``adamw`` is measured) get their own copy of
parameters and gradients. All are built and stepped once (state allocated, allocator warm) before
any timing, so every state is resident while the others run. With ``--compile`` each name also
gets a row ``<name>+compile`` (``compile=True``), whose "first step s" column is its first step,
compilation included.

Timing is interleaved in one process, so that drift (other processes, frequency) hits all alike: in
each of ``--rounds`` rounds the optimizers go in a fresh random order, each doing ``--warmup``
untimed steps and then ``--steps`` steps timed with ``time.perf_counter``. The table reports the
median over rounds of the time per step, and its ratio to the faster torch AdamW and to each.

Allocator (``--allocator``, on Linux with glibc): by default the table is measured a second time
in a child process started with ``MALLOC_MMAP_THRESHOLD_`` set to 1 GiB (large blocks stay
mapped when freed instead of going back to the OS and being page-faulted in again), and its
times are joined as the column ``ms kept`` with ``default / kept``: how much of a step is the
allocator's. ``--allocator default`` measures only this process as started.

Roofline: one step must at least read parameters, gradients and every state tensor and write back
parameters and state, so ``moved = 2 * param bytes + grad bytes + 2 * state bytes``, the state
counted from the tensors in ``optimizer.state`` after a step. The machine's bandwidth is measured
in the same process and the same rounds (as more entries of the shuffled order) on a ``--copy-mb``
MiB fp32 pair: ``dst.copy_(src)`` moving 2 * nbytes and the in-place ``dst.add_(src)`` moving
3 * nbytes. The copy is printed but usually the lower: its destination is written without being
read, which costs the CPU an extra read (write-allocate), while an optimizer's in-place updates
write only what they read, like ``add_``. The roofline is the larger of the two, and
``% roofline = moved / time / roofline``. Compute-bound updates (Muon's Newton-Schulz iteration)
score low on it by nature.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import zoo
from zoo.precision import host, resolve

from .cli import ArgumentParser, choice_list, integer, shape, track, usage_errors
from .models import llama

BASELINES = {"torch-adamw-forloop": {"foreach": False}, "torch-adamw-foreach": {"foreach": True},
             "torch-adamw-fused": {"fused": True}}   # name -> torch.optim.AdamW options
VARIANTS = {"adamw-fused": ("adamw", {"fused": True})}   # name -> zoo name, options
PEERS = {"bnb-adamw8bit": ("bitsandbytes.optim", "AdamW8bit", 8), "torchao-adamw8bit": ("torchao.optim", "AdamW8bit", 8),
         "torchao-adamw4bit": ("torchao.optim", "AdamW4bit", 4)}
"""Low-bit AdamW of the peers: name -> (module, class, state bits), measured beside ``adamw+8bit``
and ``adamw+4bit`` where they import and step on this device."""
LR = 1e-4
KEPT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30)}
"""The environment of the second measurement of ``--allocator both``: glibc's malloc keeps blocks
of up to 1 GiB mapped when they are freed."""


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bandwidth_kernels(megabytes: int, device: str = "cpu") -> dict:
    """Streaming kernels on fp32 tensors of ``megabytes`` MiB, each with the bytes it must move:
    ``copy`` (``dst.copy_(src)``: read + write) and ``add`` (``dst.add_(src)``: 2 reads + write)."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = src.clone()
    return {"copy": (lambda: dst.copy_(src), 2 * src.nbytes), "add": (lambda: dst.add_(src), 3 * src.nbytes)}


COMPILED = "+compile"
BITS = {"+8bit": 8, "+4bit": 4}


def parse(name: str) -> tuple[str, dict]:
    """(zoo name, options) of a row name ``<zoo name>[+8bit|+4bit][+compile]``."""
    options = {}
    if name.endswith(COMPILED):
        name, options["compile"] = name.removesuffix(COMPILED), True
    for suffix, bits in BITS.items():
        if name.endswith(suffix):
            name, options["state_bits"] = name.removesuffix(suffix), bits
    return name, options


def peer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The peer optimizer ``name`` of :data:`PEERS` (ImportError where its package is missing)."""
    import importlib
    module, cls, _ = PEERS[name]
    return getattr(importlib.import_module(module), cls)(params, lr=LR)


def peers(bits: tuple[int, ...], device: str) -> tuple[list[str], list[str]]:
    """(the peers of :data:`PEERS` at ``bits`` that build and step here, one line per other peer
    saying why it is not measured)."""
    measured, missing = [], []
    for name, (_, _, peer_bits) in PEERS.items():
        if peer_bits not in bits:
            continue
        try:
            p = torch.zeros(4096, device=device, requires_grad=True)
            p.grad = torch.ones_like(p)
            peer(name, [p]).step()
            measured.append(name)
        except Exception as error:   # a missing package, or one without a kernel for this device
            missing.append(f"{name} not measured: {type(error).__name__}: {str(error).strip().splitlines()[0][:160]}")
    return measured, missing


def build(name: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer ``name`` (``<zoo name>+compile``: with ``compile=True``) over its own copies of
    ``params`` and ``grads``, stepped once; and the seconds of that first step."""
    params = [p.clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    if name in BASELINES:
        opt = torch.optim.AdamW(params, lr=LR, **BASELINES[name])
    elif name in VARIANTS:
        opt = zoo.get(VARIANTS[name][0])(params, lr=LR, **VARIANTS[name][1])
    elif name in PEERS:
        opt = peer(name, params)
    else:
        base, options = parse(name)
        opt = zoo.get(base)(params, lr=LR, **options)
    start = time.perf_counter()
    opt.step()
    return opt, time.perf_counter() - start


def state_nbytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``opt.state``; a tensor subclass (torchao's low-bit states) by the
    tensors it holds (its ``__tensor_flatten__``)."""
    total = 0
    for value in (v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)):
        if type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
            total += sum(getattr(value, inner).nbytes for inner in value.__tensor_flatten__()[0])
        else:
            total += value.nbytes
    return total


def bytes_moved(opt: torch.optim.Optimizer) -> int:
    """The least memory traffic of one step: params read and written, grads read, state read and written."""
    params = [p for group in opt.param_groups for p in group["params"]]
    return sum(2 * p.nbytes + p.grad.nbytes for p in params) + 2 * state_nbytes(opt)


def seconds_per_call(fn, warmup: int, steps: int) -> float:
    """Mean seconds of ``fn()`` over ``steps`` calls, after ``warmup`` untimed calls (CUDA work
    waited for on both sides of the timing)."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize()
    return (time.perf_counter() - start) / steps


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def step_table(names: list[str], shape: tuple[int, ...], count: int, rounds: int, warmup: int,
               steps: int, copy_mb: int, seed: int = 0, compiled: bool = False, device: str = "cpu",
               dtype: str = "fp32", state_bits: tuple[int, ...] = (), peer_names: tuple[str, ...] = ()
               ) -> tuple[pd.DataFrame, dict]:
    """One row per optimizer (``names`` plus the torch baselines; with ``state_bits`` each name
    also with its states in those bits, ``<name>+8bit``; with ``compiled`` each of these with
    ``compile=True``; and ``peer_names`` of :data:`PEERS`), indexed and sorted by name, and the
    bandwidth (bytes/s) of each of :func:`bandwidth_kernels`, timed in the same rounds; tensors
    of ``dtype`` on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=gen).to(device, DTYPES[dtype]) for _ in range(count)]
    grads = [torch.randn(shape, generator=gen).to(device, DTYPES[dtype]) for _ in range(count)]
    extra = [v for v, (base, _) in VARIANTS.items() if base in names]
    low_bit = [f"{name}+{bits}bit" for name in names for bits in state_bits]
    extra += low_bit + ([name + COMPILED for name in [*names, *low_bit]] if compiled else []) + list(peer_names)
    built = {name: build(name, params, grads) for name in track([*names, *extra, *BASELINES], "build")}
    opts = {name: opt for name, (opt, _) in built.items()}
    streams = bandwidth_kernels(copy_mb, device)
    kernels = {name: fn for name, (fn, _) in streams.items()} | {name: opt.step for name, opt in opts.items()}
    times: dict[str, list[float]] = {name: [] for name in kernels}
    order = list(kernels)
    shuffle = random.Random(seed).shuffle
    for _ in track(range(rounds), "rounds"):
        shuffle(order)
        for name in order:
            times[name].append(seconds_per_call(kernels[name], warmup, steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    bandwidths = {name: moved / median[name] for name, (_, moved) in streams.items()}
    roofline = max(bandwidths.values())
    loop, foreach, fused = (median[name] for name in BASELINES)
    rows = []
    for name, opt in opts.items():
        sec, moved = median[name], bytes_moved(opt)
        rows.append({"optimizer": name, "ms/step": 1e3 * sec, "x fastest torch": sec / min(loop, foreach),
                     "x torch loop": sec / loop, "x torch foreach": sec / foreach,
                     "x torch fused": sec / fused,
                     "state MB": state_nbytes(opt) / 1e6, "moved MB": moved / 1e6,
                     "GB/s": moved / sec / 1e9, "% roofline": 100 * moved / sec / roofline,
                     "first step s": built[name][1]})
    return pd.DataFrame(rows).set_index("optimizer").sort_index(), bandwidths


def refresh_table(names: list[str], shape: tuple[int, ...], count: int, gap: int, steps: int,
                  seed: int = 0) -> pd.DataFrame:
    """Low-rank optimizers with ``update_proj_gap=gap``: median time of the steps that refresh
    the projection (an SVD, or a new seed's draw) and of the other steps, each step timed alone."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in track(names, "refresh"):
        params = [torch.randn(shape, generator=gen) for _ in range(count)]
        for p in params:
            p.grad = torch.randn(shape, generator=gen)
        opt = zoo.get(name)(params, lr=LR, update_proj_gap=gap)
        refresh, other = [], []
        for t in range(steps):
            start = time.perf_counter()
            opt.step()
            (refresh if t % gap == 0 else other).append(time.perf_counter() - start)
        rows.append({"optimizer": name, "refresh ms": 1e3 * statistics.median(refresh),
                     "other ms": 1e3 * statistics.median(other),
                     "refresh / other": statistics.median(refresh) / statistics.median(other)})
    return pd.DataFrame(rows).set_index("optimizer")


def target_checks(table: pd.DataFrame) -> list[str]:
    """The speed targets, one line each (skipped when an optimizer was not measured)."""
    ms = table["ms/step"]
    fastest_torch = ms[["torch-adamw-forloop", "torch-adamw-foreach"]].min()
    lines = []
    for name, limit, ref_name, ref in [("adamw", 1.0, "faster torch AdamW (loop, foreach)", fastest_torch),
                                       ("adamw-fused", 1.0, "torch AdamW fused", ms["torch-adamw-fused"]),
                                       ("c-adamw", 1.1, "adamw", ms.get("adamw")),
                                       ("c-lion", 1.1, "lion", ms.get("lion")),
                                       ("apollo", 1.3, "adamw", ms.get("adamw")),
                                       ("apollo-mini", 1.3, "adamw", ms.get("adamw"))]:
        if name in ms and ref is not None:
            ratio = ms[name] / ref
            verdict = "OK" if ratio <= limit else "MISS"
            lines.append(f"{name} <= {limit:.2f}x {ref_name}: {ratio:.2f}x {verdict}")
    for name in ("adamw", "adamw-fused"):
        if name in ms:
            percent = table.loc[name, "% roofline"]
            lines.append(f"{name} >= 60% of roofline: {percent:.0f}% {'OK' if percent >= 60 else 'MISS'}")
    c = COMPILED
    for name, limit, ref_name in [("adamw" + c, 1.2, "torch-adamw-fused"), ("c-adamw" + c, 1.15, "adamw" + c),
                                  ("c-lion" + c, 1.15, "lion" + c)]:
        if name in ms and ref_name in ms:
            ratio = ms[name] / ms[ref_name]
            lines.append(f"{name} <= {limit:.2f}x {ref_name}: {ratio:.2f}x {'OK' if ratio <= limit else 'MISS'}")
    for bits in (8, 4):
        name = f"adamw+{bits}bit" + c
        if name not in ms:
            continue
        if bits == 8:
            ratio = ms[name] / ms["torch-adamw-fused"]
            lines.append(f"{name} <= 1.30x torch-adamw-fused (fp32 states): {ratio:.2f}x "
                         f"{'OK' if ratio <= 1.3 else 'MISS'}")
        for other in [n for n, (_, _, b) in PEERS.items() if b == bits and n in ms]:
            ratio = ms[name] / ms[other]
            lines.append(f"{name} faster than {other}: {ratio:.2f}x {'OK' if ratio < 1 else 'MISS'}")
    for name in [n for n in ms.index if n.endswith(c)]:
        eager = name.removesuffix(c)
        speedup, percent = ms[eager] / ms[name], table.loc[name, "% roofline"]
        verdict = "OK" if speedup >= 3 or percent >= 50 else "MISS"
        lines.append(f"{name}: {speedup:.1f}x faster than eager (>= 3) or {percent:.0f}% of roofline (>= 50): "
                     f"{verdict}")
        first = table.loc[name, "first step s"]
        lines.append(f"{name} first step (compiling) <= 20 s: {first:.1f} s {'OK' if first <= 20 else 'MISS'}")
    return lines


def step_command(args: argparse.Namespace, parser: ArgumentParser) -> pd.DataFrame:
    with usage_errors(parser):   # unknown names, a CSV that could not be written, before any timing
        names = [zoo.info(n).name for n in args.only.split(",") if n.strip()] if args.only else zoo.names()
        if not names:
            raise ValueError("--only names no optimizer; give comma-separated registry names")
        if 0 < args.refresh_steps <= args.refresh_gap:
            raise ValueError(f"--refresh-steps {args.refresh_steps} must exceed --refresh-gap {args.refresh_gap} "
                             "(or be 0: no refresh measurement), so that steps without a refresh are timed too")
        if args.csv and not Path(args.csv).resolve().parent.is_dir():
            raise ValueError(f"--csv {args.csv}: its folder does not exist")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False")
        if args.allocator is None:
            args.allocator = "both" if glibc() else "default"
        if args.allocator == "both" and not glibc():
            raise ValueError("--allocator both sets glibc's MALLOC_MMAP_THRESHOLD_, and this Python does not run "
                             "on glibc; pass --allocator default")
    args.dtype = resolve(args.dtype, args.device)
    bits = tuple(int(b) for b in args.state_bits)
    measured_peers, missing_peers = peers(bits, args.device) if "adamw" in names else ([], [])
    table, bandwidths = step_table(names, args.shape, args.count, args.rounds, args.warmup, args.steps,
                                   args.copy_mb, compiled=args.compile, device=args.device, dtype=args.dtype,
                                   state_bits=bits, peer_names=tuple(measured_peers))
    if args.allocator == "both":
        kept = kept_allocator_times(args.argv)
        table["ms kept"] = kept
        table["default / kept"] = table["ms/step"] / kept
    shape = "x".join(map(str, args.shape))
    where = f"{torch.cuda.get_device_name()}, torch {torch.__version__}" if args.device == "cuda" else host()
    print(f"{where}\n{args.count} x {shape} {args.dtype}, {args.rounds} rounds x {args.steps} steps "
          f"(+{args.warmup} warm-up), lr={LR}")
    copy, add = bandwidths["copy"] / 1e9, bandwidths["add"] / 1e9
    print(f"copy bandwidth: {copy:.1f} GB/s (dst.copy_(src), 2 x nbytes, {args.copy_mb} MiB fp32, same rounds)")
    print(f"add bandwidth:  {add:.1f} GB/s (dst.add_(src), 3 x nbytes); roofline = {max(copy, add):.1f} GB/s\n")
    print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    print("\n" + "\n".join([*missing_peers, *target_checks(table)]))
    low_rank = [n for n in names if zoo.info(n).low_rank and not zoo.info(n).cautious]
    if low_rank and args.refresh_steps:
        refresh = refresh_table(low_rank, args.shape, args.count, args.refresh_gap, args.refresh_steps)
        print(f"\nprojection refresh (update_proj_gap={args.refresh_gap}, each step timed alone):")
        print(refresh.to_string(float_format=lambda x: f"{x:.2f}"))
    if args.csv:
        table.to_csv(args.csv)
    return table


def glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def kept_allocator_times(argv: list[str]) -> pd.Series:
    """ms/step of the same ``step`` command (``argv``) in a child process whose malloc keeps large
    blocks mapped (:data:`KEPT`)."""
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "kept.csv"
        command = [sys.executable, "-m", "analysis.bench", *argv, "--allocator", "default", "--refresh-steps", "0",
                   "--csv", str(csv)]
        print(f"measuring again with {' '.join(f'{k}={v}' for k, v in KEPT.items())} (a child process)",
              file=sys.stderr, flush=True)
        done = subprocess.run(command, env=os.environ | KEPT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the measurement with {KEPT} failed:\n{done.stderr[-2000:]}")
        return pd.read_csv(csv, index_col="optimizer")["ms/step"]


TRAIN_VARIANTS = {"fp32": (False, False), "bf16": (False, True), "layerwise": (True, False),
                  "layerwise-bf16": (True, True)}
"""Training-step variants: name -> (per-layer updates, bf16 autocast)."""
TRAIN_MODELS = ("ours", "hf")
"""The models of ``train``: ``ours`` is :class:`analysis.models.llama.Llama`, ``hf`` transformers'
``LlamaForCausalLM`` of the same configuration (:func:`analysis.models.hf.llama_config_for`)."""


def train_model(kind: str, config: llama.LlamaConfig, seed: int) -> torch.nn.Module:
    """The model ``kind`` of :data:`TRAIN_MODELS` for ``config``, both with the weights that
    ``Llama(config)`` draws after ``torch.manual_seed(seed)`` (copied into HF's by name); both take
    ``model(inputs, targets) -> (logits, loss)``."""
    torch.manual_seed(seed)
    ours = llama.Llama(config)
    if kind == "ours":
        return ours
    from .models import hf
    model = hf.causal_lm(hf.llama_config_for(config), config.vocab_size, config.max_seq_len)
    model.model.load_state_dict({(k if k.startswith("lm_head") else f"model.{k}"): v
                                 for k, v in ours.state_dict().items()})
    return model


def train_table(size: str, names: list[str], variants: list[str], batch_size: int, seq_len: int, rounds: int,
                steps: int, warmup: int, seed: int = 0, vocab_size: int = 256,
                models: tuple[str, ...] = ("ours",)) -> pd.DataFrame:
    """Seconds of one training step (forward, backward, optimizer; ``zero_grad``) of the LLaMA
    ``size`` with ``vocab_size`` tokens (256: bytes), for every model (:data:`TRAIN_MODELS`),
    optimizer and variant (:data:`TRAIN_VARIANTS`): each has its own model from the same initial
    weights and steps on the same batch by the same loop; they are timed in ``rounds`` rounds of
    ``steps`` steps, in a fresh random order each round (after ``warmup`` untimed steps each), and
    the median is reported as ms/step and tokens/s (batch_size * seq_len / seconds), with its ratio
    to the same model and optimizer's first variant and, with both models, ``ours / hf``: ours'
    tokens/s over HF's for the same optimizer and variant (on both rows). Low-rank optimizers get
    a quarter of the width as rank."""
    base = llama.CONFIGS[size]
    config = replace(base, vocab_size=vocab_size, max_seq_len=max(seq_len, base.max_seq_len))
    tokens = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    steps_of = {}
    for kind in models:
        for name in names:
            for variant in variants:
                per_layer, bf16 = TRAIN_VARIANTS[variant]
                model = train_model(kind, config, seed)
                rank = {"rank": config.dim // 4} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed \
                    else {}
                opt = zoo.create(model, name, layerwise=per_layer, **rank)

                def train_step(model=model, opt=opt, bf16=bf16):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        loss = model(tokens, tokens)[1]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                steps_of[(kind, name, variant)] = train_step
    times: dict = {key: [] for key in steps_of}
    order, shuffle = list(steps_of), random.Random(seed).shuffle
    for _ in track(range(rounds), "rounds"):
        shuffle(order)
        for key in order:
            times[key].append(seconds_per_call(steps_of[key], warmup, steps))
    rows = []
    for name in names:
        for variant in variants:
            for kind in models:
                sec = statistics.median(times[(kind, name, variant)])
                rows.append({"model": kind, "optimizer": name, "variant": variant, "ms/step": 1e3 * sec,
                             "tokens/s": batch_size * seq_len / sec})
    table = pd.DataFrame(rows)
    first = table.groupby(["model", "optimizer"])["ms/step"].transform("first")
    table[f"x {variants[0]}"] = table["ms/step"] / first
    if set(models) == set(TRAIN_MODELS):
        ours = table[table["model"] == "ours"].set_index(["optimizer", "variant"])["tokens/s"]
        theirs = table[table["model"] == "hf"].set_index(["optimizer", "variant"])["tokens/s"]
        table["ours / hf"] = (ours / theirs).loc[list(zip(table["optimizer"], table["variant"]))].to_numpy()
    return table


def train_command(args: argparse.Namespace, parser: ArgumentParser) -> pd.DataFrame:
    with usage_errors(parser):
        names = [zoo.info(n).name for n in args.optimizers.split(",") if n.strip()]
        if not names:
            raise ValueError("--optimizers names no optimizer; give comma-separated registry names")
    models = TRAIN_MODELS if args.hf else ("ours",)
    table = train_table(args.model, names, list(args.variants), args.batch_size, args.seq_len, args.rounds,
                        args.steps, args.warmup, vocab_size=args.vocab_size, models=models)
    tokens = "byte tokens" if args.vocab_size == 256 else f"vocabulary {args.vocab_size}"
    print(f"{host()}\nLLaMA {args.model} ({tokens}), batch {args.batch_size} x {args.seq_len}, fp32 weights, "
          f"{args.rounds} rounds x {args.steps} steps (+{args.warmup} warm-up), medians")
    if args.hf:
        import transformers
        print("ours: analysis.models.llama.Llama; hf: transformers " + transformers.__version__ +
              " LlamaForCausalLM of the same configuration and initial weights; ours / hf: tokens/s ratio")
    print()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = ArgumentParser(prog="python -m analysis.bench", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    step = commands.add_parser("step", help="time optimizer.step() against torch AdamW and the roofline")
    step.add_argument("--shape", type=shape, default=(512, 2048), help="parameter shape, e.g. 512x2048")
    step.add_argument("--count", type=integer(1), default=12, help="number of parameter tensors")
    step.add_argument("--only", help="comma-separated zoo names (default: all of zoo.names())")
    step.add_argument("--rounds", type=integer(1), default=7, help="interleaved rounds; the median is reported")
    step.add_argument("--steps", type=integer(1), default=10, help="timed steps per optimizer per round")
    step.add_argument("--warmup", type=integer(0), default=1, help="untimed steps before each timing")
    step.add_argument("--copy-mb", type=integer(1), default=256, help="MiB per tensor of the bandwidth kernels")
    step.add_argument("--refresh-gap", type=integer(1), default=4,
                      help="update_proj_gap of the low-rank refresh measurement")
    step.add_argument("--refresh-steps", type=integer(0), default=16,
                      help="steps of the low-rank refresh measurement (0: skip it)")
    step.add_argument("--csv", help="also save the table to this CSV file")
    step.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    step.add_argument("--dtype", choices=("auto", *DTYPES), default="fp32",
                      help="of parameters, gradients and state (auto: bf16 where this machine runs it faster than "
                           "fp32, zoo.precision)")
    step.add_argument("--state-bits", type=choice_list(("8", "4")), default=(),
                      help="also time every name with its states in these bits (8,4: rows <name>+8bit, <name>+4bit), "
                           "and beside adamw the peers' low-bit AdamW (bitsandbytes, torchao) that run here")
    step.add_argument("--compile", action="store_true", help="also time every name with compile=True "
                      "(its first step, compilation included, in the 'first step s' column)")
    step.add_argument("--allocator", choices=("both", "default"),
                      help="both (the default on glibc): also measure in a child process whose malloc keeps large "
                           "blocks mapped (MALLOC_MMAP_THRESHOLD_), columns 'ms kept' and 'default / kept'; "
                           "default: only this process as started")
    step.set_defaults(run=step_command)
    train = commands.add_parser("train", help="time training steps: ordinary, per-layer updates, bf16 autocast; "
                                "with --hf against HF transformers' LlamaForCausalLM")
    train.add_argument("--model", choices=("tiny", "60M", "130M"), default="60M", help="LLaMA size")
    train.add_argument("--vocab-size", type=integer(2), default=256,
                       help="vocabulary of the model and the random tokens (256: bytes, the default; 32000: the "
                            "papers' BPE)")
    train.add_argument("--hf", action="store_true",
                       help="also time HF transformers' LlamaForCausalLM of the same configuration and initial "
                            "weights (rows 'hf' beside 'ours', analysis.models.llama.Llama), same loop, optimizer, "
                            "batch and variants, and their tokens/s ratio (column 'ours / hf')")
    train.add_argument("--optimizers", default="adamw,apollo-mini", help="comma-separated zoo names")
    train.add_argument("--variants", type=choice_list(tuple(TRAIN_VARIANTS)), default=("fp32", "layerwise", "bf16"),
                       help=f"comma-separated, the first is the reference: {', '.join(TRAIN_VARIANTS)}")
    train.add_argument("--batch-size", type=integer(1), default=8)
    train.add_argument("--seq-len", type=integer(1), default=256)
    train.add_argument("--rounds", type=integer(1), default=5, help="interleaved rounds; the median is reported")
    train.add_argument("--steps", type=integer(1), default=2, help="timed steps per variant per round")
    train.add_argument("--warmup", type=integer(0), default=1, help="untimed steps before each timing")
    train.set_defaults(run=train_command)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return args.run(args, commands.choices[args.command])


if __name__ == "__main__":
    main()
