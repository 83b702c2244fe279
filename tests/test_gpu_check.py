"""analysis/gpu_check.py: it skips cleanly without CUDA, and its commands run (on the CPU, tiny)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from analysis import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.gpu_check", "--out", str(tmp_path / "report")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no CUDA device" in done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / "report").exists()


def test_every_part_runs_and_the_report_holds_them(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--quick"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert report.count("## ") == 5 and "FAILED" not in report, report
    assert "adamw+compile <= 1.20x torch-adamw-fused" in report          # the step benchmark's targets
    assert "| apollo-mini |" in report and "peak MB" in report           # the LLaMA comparison's summary
    assert f"tokenizer {tmp_path / 'tokenizer.json'}" in report        # trained on BPE tokens
