"""Every command line of the project: a bad setting is one line on stderr naming what was wrong,
exit status 2, no traceback (each case in its own process, as a user runs it); progress is a bar
on a terminal and a few lines in a log; the README's test command is what CI runs."""
from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from analysis import cli, pretrain

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--optimizers", "adamw", "--seeds", "0", "--batch-size", "2", "--seq-len", "8", "--eval-batches", "1",
        "--no-progress"]

BAD_INPUTS = {   # entry point -> (arguments, what the one line must say)
    "zoo": [
        (["--readme", "/no/such.md"], "--readme /no/such.md: No such file or directory"),
        (["--readme", "pyproject.toml"], "has no '<!-- optimizers:start -->'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
    "analysis.pretrain": [
        (["mae", "--data-dir", "/no/such/folder", "--steps", "2"], "no train-images-idx3-ubyte[.gz] in /no/such/folder"),
        (["bert"], "invalid choice: 'bert'"),
        (["llama", "--optimizers", "adamw,nosuch"], "unknown optimizer 'nosuch'"),
        (["llama", "--optimizers", "galore"], "pass --lr galore=VALUE"),
        (["llama", "--steps", "0"], "steps must be >= 1, got 0"),
        (["llama", "--lr", "adamw=fast"], "--lr takes a number for every optimizer"),
        (["llama", "--seeds", "0,x"], "--seeds: expected comma-separated integers, got 'x'"),
        (["llama", "--data-dir", "/tmp"], "data_dir (--data-dir) is the mae task's image folder"),
        (["llama", "--kahan"], "--kahan keeps the small updates of bfloat16 weights: pass --weights bf16"),
        (["llama", "--weights", "bf16", "--dtype", "fp32"], "--dtype fp32 contradicts it"),
        (["llama", "--capture-grads", "500"], "capture_grads steps [500] are outside the run's steps"),
        (["llama", "--layerwise"], "global norm of grad_clip cannot be computed: pass --grad-clip 0"),
        (["llama", "--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
        (["llama", *TINY, "--fsdp"], "--fsdp shards the model over the processes of torch.distributed: start the run "
                                     "with torchrun"),
        (["llama", "--fsdp", "--compile-optimizer"], "--compile-optimizer compiles steps of whole tensors; with "
                                                     "--fsdp the parameters are DTensors"),
        (["llama", "--fsdp", "--capture-grads", "1"], "capture_grads (--capture-grads) records whole gradients; with "
                                                      "--fsdp each rank holds a shard"),
        (["llama", "--weights", "int4"], "argument --weights: invalid choice: 'int4'"),
        (["llama", *TINY, "--steps", "1", "--out", "/proc/no/such"], "--out /proc/no/such: cannot make this folder"),
        *([] if torch.cuda.is_available() else
          [(["llama", *TINY, "--device", "cuda"], "device 'cuda' was asked for but torch.cuda.is_available()")]),
    ],
    "analysis.lowrank": [
        ([], "the following arguments are required: --out"),
        (["--out", "{tmp}", "--source", "run:/no/such.pt"], "/no/such.pt: No such file or directory"),
        (["--out", "{tmp}", "--source", "run:pyproject.toml"], "pyproject.toml: not a gradient file"),
        (["--out", "{tmp}", "--source", "grads.pt"], "allowed 'synthetic' or 'run:PATH'"),
        (["--out", "{tmp}", "--ranks", "0"], "--ranks: expected comma-separated integers >= 1, got 0"),
        (["--out", "{tmp}", "--proj", "qr"], "--proj: 'qr' given; allowed comma-separated values of random, svd"),
        (["--out", "{tmp}", "--shape", "12"], "--shape takes 2-D shapes"),
        (["--out", "{tmp}", "--shape", "8x8", "--ranks", "64"], "--ranks 64 is above every weight's compressed"),
        (["--out", "{tmp}", "--by", "colour"], "--by: 'colour' given"),
    ],
    "analysis.bench": [
        ([], "the following arguments are required: command"),
        (["step", "--only", "adamw,nosuch"], "unknown optimizer 'nosuch'"),
        (["step", "--shape", "5x"], "--shape: expected a shape of positive sizes"),
        (["step", "--count", "0"], "--count: expected an integer >= 1, got 0"),
        (["step", "--refresh-steps", "2"], "--refresh-steps 2 must exceed --refresh-gap 4"),
        (["step", "--csv", "/no/such/dir/x.csv"], "--csv /no/such/dir/x.csv: its folder does not exist"),
        (["step", "--state-bits", "16"], "--state-bits: '16' given"),
    ],
    "analysis.memory": [
        ([], "the following arguments are required: command"),
        (["plan", "--out", "{tmp}", "--model", "3B"], "--model: '3B' given; allowed comma-separated values of 60M"),
        (["plan", "--out", "{tmp}", "--optimizers", "adamw,nosuch"], "unknown optimizer 'nosuch'"),
        (["plan", "--out", "{tmp}", "--optimizers", "adamw+fused"], "allowed a registry name, optionally followed by +layerwise"),
        (["plan", "--out", "{tmp}", "--gpu-memory", "0"], "--gpu-memory: expected a number in (0, inf], got 0"),
        (["measure", "--out", "/proc/no/such"], "--out /proc/no/such: cannot make this folder"),
        (["plan", "--out", "{tmp}", "--weights", "int4"], "argument --weights: invalid choice: 'int4'"),
        (["plan", "--out", "{tmp}", "--kahan"], "rounding 'kahan' is for bf16 weights"),
        (["plan", "--out", "{tmp}", "--state-bits", "16"], "argument --state-bits: invalid choice: 16"),
        (["demo", "--out", "{tmp}", "--optimizer", "nosuch"], "unknown optimizer 'nosuch'"),
    ],
    "analysis.notebooks": [
        (["99"], "no notebook '99'; there are 01_zoo_tour"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
}


SUBCOMMANDS = {"analysis.bench": {"step"}, "analysis.memory": {"plan", "measure", "demo"}}


def run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def assert_usage_error(module: str, args: list[str], expected: str, result: subprocess.CompletedProcess):
    sub = args[0] if args and args[0] in SUBCOMMANDS.get(module, ()) else None
    prog = f"python -m {module}" + (f" {sub}" if sub else "")
    where = f"python -m {module} {' '.join(args)}"
    assert "Traceback" not in result.stderr, f"{where}:\n{result.stderr}"
    assert result.returncode == 2, f"{where}: exit {result.returncode}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"{where}: not one line:\n{result.stderr}"
    assert lines[0].startswith(f"{prog}: error: ") and expected in lines[0], f"{where}: {lines[0]}"
    assert lines[0].endswith(f"({prog} --help lists the options)")


@pytest.mark.parametrize("module", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_usage_error(module, tmp_path):
    cases = [([a.format(tmp=tmp_path / "out") for a in args], expected) for args, expected in BAD_INPUTS[module]]
    with ThreadPoolExecutor(max_workers=4) as pool:   # independent processes: run them side by side
        results = list(pool.map(lambda case: run(module, case[0], ROOT), cases))
    for (args, expected), result in zip(cases, results):
        assert_usage_error(module, args, expected, result)


def test_resume_with_other_settings_is_refused_before_anything_trains(tmp_path):
    """A checkpoint --resume cannot continue is found before any run trains, and named."""
    out = tmp_path / "run"
    pretrain.main(["llama", *TINY, "--steps", "2", "--eval-interval", "2", "--out", str(out)])
    args = ["llama", *TINY, "--optimizers", "c-adamw,adamw", "--steps", "3", "--resume", "--out", str(out)]
    result = run("analysis.pretrain", args, ROOT)
    assert_usage_error("analysis.pretrain", args, "--resume with settings that differ from the checkpoint", result)
    assert "'steps': (2, 3)" in result.stderr
    assert not (out / "checkpoints" / "c-adamw_seed0.pt").exists()   # c-adamw, first in line, did not train


# ---------------------------------------------------------------- progress

def test_progress_on_a_log_is_a_line_per_quarter(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with cli.Progress(200, "adamw seed 0") as progress:
        for step in range(200):
            progress.update(loss=1.0 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4
    assert [re.match(r"adamw seed 0: (\d+)/200 \((\d+)%\), [\d.]+ s, loss ", line).groups() for line in lines] == [
        ("50", "25"), ("100", "50"), ("150", "75"), ("200", "100")]
    assert lines[-1].endswith("loss 0.005")


def test_progress_resumed_disabled_and_short(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with cli.Progress(100, "resumed", initial=60) as progress:   # a resumed run reports what is left
        for _ in range(40):
            progress.update()
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == ["resumed: 75/100 (75%)",
                                                                              "resumed: 100/100 (100%)"]
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    list(cli.track(range(3), "three"))                         # fewer steps than lines: one line each
    with cli.Progress(10, "off", enabled=False) as progress:
        progress.update(10)
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "three: 1/3 (33%)", "three: 2/3 (66%)", "three: 3/3 (100%)"]


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    with cli.Progress(5, "bar") as progress:
        for _ in range(5):
            progress.update(loss=0.5)
    assert progress.bar is not None and "\r" in stream.getvalue() and "loss=0.5" in stream.getvalue()


def test_a_redirected_run_writes_a_short_log(tmp_path):
    """The runner's whole output into a file: the summary and a few progress lines per run."""
    args = ["llama", "--optimizers", "adamw,c-adamw", "--seeds", "0", "--steps", "40", "--batch-size", "2",
            "--seq-len", "8", "--eval-batches", "1", "--out", str(tmp_path)]
    with open(tmp_path / "run.log", "w") as log:
        subprocess.run([sys.executable, "-m", "analysis.pretrain", *args], cwd=ROOT, stdout=log,
                       stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, timeout=300)
    text = (tmp_path / "run.log").read_text()
    progress = [line for line in text.splitlines() if " seed 0: " in line]
    assert "\r" not in text and len(progress) == 2 * 4 and len(text.splitlines()) < 30
    assert "| optimizer | final val loss |" in text


# ---------------------------------------------------------------- argument types

@pytest.mark.parametrize("parse, text, expected", [
    (cli.int_list(0), "0, 100,190", (0, 100, 190)),
    (cli.int_list(), "", ()),
    (cli.integer(1), "3", 3),
    (cli.float_range(0, 1, open_low=True), "1", 1.0),
    (cli.choice_list(("random", "svd")), "svd,random", ("svd", "random")),
    (cli.shape, "512X2048", (512, 2048)),
    (cli.shape_list, "4x2,2x4", ((4, 2), (2, 4))),
])
def test_argument_types_parse(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("parse, text, match", [
    (cli.int_list(1), "1,0", ">= 1, got 0"),
    (cli.integer(), "1.5", "expected an integer, got '1.5'"),
    (cli.float_range(0, 1, open_low=True), "0", r"in \(0, 1\], got 0"),
    (cli.float_range(0), "nan", r"in \[0, inf\], got nan"),
    (cli.choice_list(("a",)), "", "nothing given"),
    (cli.shape, "4x0", "positive sizes"),
    (cli.shape_list, ",", "got nothing"),
])
def test_argument_types_refuse(parse, text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        parse(text)


# ---------------------------------------------------------------- README and CI

def readme_test_command() -> str:
    """The command of README.md's block marked ``<!-- test-command -->``, as .ci/run reads it."""
    out = subprocess.run(["bash", "-c", f"source <(sed -n '/^readme_test_command()/,/^}}/p' .ci/run) && "
                                        "readme_test_command"], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_ci_runs_the_readme_test_command_which_needs_no_sudo():
    command = readme_test_command()
    assert len(command.splitlines()) == 1 and command.endswith("python -m pytest")
    assert f"```bash\n{command}\n```" in (ROOT / "README.md").read_text()
    for part in re.split(r"&&|;|\|\|", command):   # as root without sudo, each part runs
        assert not part.strip().startswith("sudo "), part
    assert "apt-get install -y dataset-fashion-mnist" in command and 'pip install -e ".[dev]"' in command
