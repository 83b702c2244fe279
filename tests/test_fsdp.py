"""FSDP2 and ZeRO-1 (2 gloo processes on the CPU, tests/fsdp_worker.py). Every registered
optimizer on parameters sharded by ``fully_shard`` ends where it ends in one process, reports the
cautious mask's fraction over whole tensors, and resumes bit for bit from a
torch.distributed.checkpoint; as the local optimizer of ``ZeroRedundancyOptimizer`` it ends
where one process ends and its consolidated state is the one-process state."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(ROOT / "tests" / "fsdp_worker.py"), str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", zoo.names())
def test_sharded_equals_one_process(results, name):
    result = results[name]
    assert result["moved"] > 1e-3                 # the optimizer moved the weights, so equality means something
    assert result["difference"] <= 1e-12, result  # float64


@pytest.mark.parametrize("name", zoo.names(cautious=True))
def test_aligned_fraction_is_over_whole_tensors(results, name):
    fractions, expected = results[name]["fractions"], results[name]["expected_fractions"]
    assert len(fractions) == len(expected) > 0
    for got, want in zip(fractions, expected):
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) <= 1e-12, (fractions, expected)


@pytest.mark.parametrize("name", zoo.names())
def test_resume_from_a_distributed_checkpoint_is_bit_for_bit(results, name):
    assert results[name]["resumed"] == 0.0
    assert results[name]["without_optimizer_state"] > 1e-6   # so the loaded optimizer state mattered


@pytest.mark.parametrize("name", zoo.names())
def test_zero_redundancy_optimizer_equals_one_process(results, name):
    result = results[name]["zero"]
    assert result["difference"] == 0.0         # the same gradient on every rank: exactly one process
    assert result["state_difference"] == 0.0   # consolidated on rank 0: APOLLO's seeds included
    assert not result["warned"]


def test_zero_without_parameter_indices_warns_and_draws_other_projections(results):
    """Each rank's optimizer holds a subset sorted by size: positions are not one process's."""
    result = results["apollo"]["zero_unindexed"]
    assert result["warned"] and result["difference"] > 1e-3 and result["state_difference"] > 1e-3
