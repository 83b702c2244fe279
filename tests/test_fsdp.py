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


@pytest.mark.parametrize("name", ["adamw", "c-adamw", "lion", "sgdm", "adan", "soap"])
def test_zero_with_8_bit_states_equals_one_process(results, name):
    result = results[name]["zero_8bit"]
    assert result["quantized"] >= 1               # some state was kept in 8 bits, so the check means something
    assert result["difference"] == 0.0
    assert result["state_difference"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "c-adamw", "lion", "sgdm", "adan", "soap"])
def test_fsdp2_refuses_8_bit_states_with_the_reason(results, name):
    assert "FSDP2" in results["refused"][name] and "straddle the shards" in results["refused"][name]


def test_zero_without_parameter_indices_warns_and_draws_other_projections(results):
    """Each rank's optimizer holds a subset sorted by size: positions are not one process's."""
    result = results["apollo"]["zero_unindexed"]
    assert result["warned"] and result["difference"] > 1e-3 and result["state_difference"] > 1e-3


# Collectives of optimizer.step() (CommDebugMode), per step, on the worker's model: 2 weights,
# one sharded along the axis the low-rank methods keep and one along the axis they compress,
# and 2 biases. FSDP2's own all-gathers and reduce-scatters happen in forward and backward.
TENSORS, MATRICES = 4, 2


def collectives(results, name) -> list[dict]:
    comms = results[name]["collectives"]
    assert len(comms) == 4
    return comms


@pytest.mark.parametrize("name", [n for n in zoo.names(cautious=False) if not zoo.info(n).low_rank
                                  and n not in ("muon", "adafactor", "lamb", "mars", "soap")])
def test_element_wise_steps_communicate_nothing(results, name):
    assert collectives(results, name) == [{}] * 4


def test_lamb_reduces_its_two_norms_in_one_all_reduce_per_tensor(results):
    """The trust ratio ||p|| / ||u|| of a sharded tensor: both norms summed over the ranks at once."""
    assert collectives(results, "lamb") == [{"all_reduce": TENSORS}] * 4


def test_mars_reduces_the_clip_norm_in_one_all_reduce_per_matrix(results):
    """The clip of the corrected gradient by its norm, on the matrices from the second step on (the
    first takes the gradient unclipped, as timm); the biases take AdamW steps and communicate nothing."""
    assert collectives(results, "mars") == [{}] + [{"all_reduce": MATRICES}] * 3


@pytest.mark.parametrize("name", ["soap", "c-soap"])
def test_soap_gathers_each_matrix_gradient_and_direction_once_per_step(results, name):
    """Each matrix's gradient is gathered whole once (rotated into the eigenbasis and accumulated into
    Shampoo's statistics on every rank) and its Adam direction once (rotated back, each rank keeping its
    shard); the first step only sets the preconditioner up, from the gradient. The biases take plain Adam
    steps, and the bases refresh every 10 steps, after these 4. Caution adds its counts' all-reduces."""
    plain = [{"all_gather_into_tensor": MATRICES}] + [{"all_gather_into_tensor": 2 * MATRICES}] * 3
    cautious = plain[:1] + [{"all_gather_into_tensor": 2 * MATRICES, "all_reduce": TENSORS}] * 3
    assert collectives(results, name) == (cautious if name == "c-soap" else plain)


@pytest.mark.parametrize("name", [n for n in zoo.names(cautious=True) if not zoo.info(n).low_rank])
def test_caution_reduces_at_most_one_count_per_tensor(results, name):
    """The mask's count over the whole tensor is the only collective caution adds."""
    base = zoo.info(name).base
    for step, (comm, plain) in enumerate(zip(collectives(results, name), collectives(results, base))):
        added = {op: n - plain.get(op, 0) for op, n in comm.items() if n != plain.get(op, 0)}
        assert set(added) <= {"all_reduce"} and added.get("all_reduce", 0) <= TENSORS, (step, comm, plain)


@pytest.mark.parametrize("name", ["muon", "c-muon"])
def test_muon_gathers_each_matrix_once_per_step(results, name):
    """Newton-Schulz runs on the whole matrix, gathered once; each rank keeps its shard (before:
    DTensor gathered inside every iteration's matmuls, 15 all-gathers and 12 all-reduces)."""
    for comm in collectives(results, name):
        assert comm.get("all_gather_into_tensor") == MATRICES and set(comm) <= {"all_gather_into_tensor", "all_reduce"}
    assert "all_reduce" not in str(collectives(results, "muon"))


@pytest.mark.parametrize("name", ["apollo-svd", "galore", "c-galore", "fira", "c-fira"])
def test_svd_projections_are_taken_once_per_refresh_by_one_rank(results, name):
    """Refresh steps (1 and 3) gather each gradient once, one rank takes its SVD and broadcasts
    the projection; the other steps gather nothing."""
    for step, comm in enumerate(collectives(results, name), start=1):
        refresh = step in (1, 3)
        assert comm.get("all_gather_into_tensor", 0) == (MATRICES if refresh else 0), (step, comm)
        assert comm.get("broadcast", 0) == (MATRICES if refresh else 0), (step, comm)
    assert results[name]["svds"] == [2, 2]   # 2 refreshes of 2 matrices, one SVD of each on one rank


@pytest.mark.parametrize("name", ["apollo", "apollo-mini"])
def test_random_projections_gather_nothing(results, name):
    """The moments of the weight sharded along the kept axis are sharded as it is, so APOLLO
    only reduces: the projected gradient of the other weight and the limiter's norms."""
    for comm in collectives(results, name):
        assert set(comm) == {"all_reduce"} and comm["all_reduce"] <= TENSORS, comm
