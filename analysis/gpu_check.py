"""The checks that need a GPU, in one command and one Markdown report::

    python -m analysis.gpu_check --out gpu-report          # on a machine with CUDA, under 8 minutes
    python -m analysis.gpu_check --out /tmp/g --device cpu --quick   # the same plumbing, tiny, on the CPU

1. The step benchmark (``python -m analysis.bench step --compile``) in fp32 and bf16: the zoo's
   eager, foreach and compiled steps, cautious twins and APOLLO-Mini, against torch's AdamW (for-loop,
   foreach, fused).
2. A 300-step comparison of adamw, c-adamw and apollo-mini on the 60M LLaMA (its 32,000-token
   vocabulary) in bf16 autocast, compiled (``python -m analysis.pretrain --compile``), on the Python
   sources of the installed packages (``--corpus site-packages``) in byte-level BPE tokens trained
   on their training half (``python -m analysis.data tokenizer`` and ``prepare``): tokens per
   second, peak memory and validation loss of each run.
3. Distributed training on nccl with 2 processes where there are 2 GPUs: DDP and ``--fsdp``
   against one process (``tests/test_pretrain.py``'s comparisons); with one GPU, a line saying so.

Each part runs as its own command (its output, exit status and seconds go into the report) so
that one failing part does not hide the others. Without CUDA (and without ``--device cpu``) it
prints why and exits 0, having done nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from .cli import ArgumentParser, make_folder, usage_errors

STEP_NAMES = "adamw,c-adamw,lion,c-lion,apollo-mini"
LLAMA_NAMES = "adamw,c-adamw,apollo-mini"


def parts(out: Path, device: str, quick: bool) -> list[tuple[str, list[str]]]:
    """(title, command) of every part of the check."""
    python = [sys.executable, "-m"]
    small = ["--shape", "64x128", "--count", "2", "--rounds", "1", "--steps", "2"] if quick else []
    steps = [(f"Step benchmark, {dtype}",
              [*python, "analysis.bench", "step", "--device", device, "--dtype", dtype, "--compile",
               "--only", STEP_NAMES, "--refresh-steps", "0", "--copy-mb", "16" if quick else "256", *small])
             for dtype in ("fp32", "bf16")]
    corpus, vocab = ("shakespeare", "512") if quick else ("site-packages", "32000")
    tokenizer, tokens = out / "tokenizer.json", out / "tokens"
    text = [(f"Byte-level BPE of {vocab} tokens on the {corpus} corpus",
             [*python, "analysis.data", "tokenizer", "--corpus", corpus, "--vocab-size", vocab, "--out", str(tokenizer)]),
            (f"The {corpus} corpus as token files",
             [*python, "analysis.data", "prepare", "--corpus", corpus, "--tokenizer", str(tokenizer), "--out",
              str(tokens)])]
    run = (["--model", "tiny", "--steps", "4", "--eval-interval", "2"] if quick else
           ["--model", "60M", "--steps", "300", "--batch-size", "64", "--seq-len", "256", "--eval-interval", "50"])
    llama = (("LLaMA tiny, 4 steps (not compiled: seconds, not minutes)" if quick else
              "LLaMA 60M, 300 steps of 64 x 256 tokens, compiled") + f", {corpus} in BPE tokens, bf16 autocast",
             [*python, "analysis.pretrain", "llama", *run, "--data", str(tokens), "--optimizers", LLAMA_NAMES,
              "--seeds", "0", "--device", device, "--dtype", "bf16", *([] if quick else ["--compile"]),
              "--no-progress", "--out", str(out / "llama")])
    found = [*steps, *text, llama]
    if device == "cuda" and torch.cuda.device_count() >= 2:
        tests = Path(__file__).parents[1] / "tests" / "test_pretrain.py"
        found.append(("Distributed on nccl, 2 processes (DDP, FSDP2) against one process",
                      [*python, "pytest", "-q", "-p", "no:cacheprovider", str(tests), "-k", "two_ranks or fsdp"]))
    return found


def run_part(title: str, command: list[str], env: dict) -> str:
    """The report's section for one part."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    output = (done.stdout + ("\n" + done.stderr if done.returncode else "")).strip()
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    return (f"## {title}\n\n`{' '.join(command[1:])}`: {status}, {seconds:.0f} s\n\n```\n"
            + "\n".join(output.splitlines()[-60:]) + "\n```\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.gpu_check", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of report.md and the runs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: the same commands on the CPU (to test the check itself)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds, not minutes)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("python -m analysis.gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check; "
              "run it on a machine with a GPU")
        return 0
    with usage_errors(parser):
        out = make_folder(args.out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    sections = [f"# GPU check\n\ntorch {torch.__version__}, {where}, {torch.cuda.device_count()} CUDA devices"
                f"{', quick sizes' if args.quick else ''}\n"]
    found = parts(out, args.device, args.quick)
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sections.append("## Distributed on nccl\n\nNot run: one GPU; the nccl comparisons need two.\n")
    for title, command in found:
        print(f"{title} ...", flush=True)
        sections.append(run_part(title, command, env))
    report = out / "report.md"
    report.write_text("\n".join(sections))
    print(f"written: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
