"""analysis.memory.step and .plan: the memory of a training step by category, measured with torch's
MemTracker on real tensors and under FakeTensorMode, and the plans built on it."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import _MemRefType

import zoo
from analysis import memory
from analysis.memory.plan import Setting, build, llama_step, max_batch, plan, row
from analysis.models import llama

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_step(name, *, layerwise=False, checkpointing=False, fake=False, batch=2, seq=32):
    """measure_step of the tiny byte-level LLaMA (float32) with optimizer ``name``."""
    def run():
        torch.manual_seed(0)
        model = llama.Llama(llama.CONFIGS["tiny"], checkpointing=checkpointing)
        extra = {"rank": 32} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed else {}
        opt = zoo.create(model, name, layerwise=layerwise, **extra)
        tokens = torch.randint(0, 256, (batch, seq))
        return model, opt, memory.measure_step(model, opt, (tokens, tokens))
    if fake:
        with FakeTensorMode():
            return run()
    return run()


def test_the_tracker_categories_are_the_ones_we_name():
    """MemTracker is private: pin the reference types this module maps."""
    assert {t.value for t in _MemRefType} == set(memory.CATEGORIES)


@pytest.mark.parametrize("name", ["adamw", "c-lion", "apollo-mini", "galore", "muon"])
def test_parameters_gradients_and_state_equal_the_formulas(name):
    model, opt, frame = tiny_step(name)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert frame.loc["parameters", "after"] == frame.loc["parameters", "max"] == param_bytes
    assert frame.loc["gradients", "max"] == param_bytes        # every gradient, before the step
    assert frame.loc["gradients", "after"] == 0                 # zero_grad(set_to_none=True)
    counts = sum(count.nbytes for count, _ in opt._aligned_counts)   # a cautious step's 0-d counts, kept
    assert frame.loc["optimizer state", "after"] - counts == zoo.expected_state_bytes(opt) == zoo.state_bytes(opt)
    assert (counts > 0) == zoo.info(name).cautious
    assert frame.loc["total", "max"] == frame.loc["total", "at_peak"] == frame["at_peak"].drop("total").sum()
    assert frame.loc["activations", "max"] > 0 and frame.loc["temporaries", "max"] > 0


@pytest.mark.parametrize("size", ["tiny", "60M"])
@pytest.mark.parametrize("name, layerwise", [("adamw", False), ("apollo-mini", False), ("apollo-mini", True)])
def test_fake_equals_real(size, name, layerwise):
    """The same step under FakeTensorMode (nothing allocated) and for real, within 1 %."""
    setting = Setting(size if size != "tiny" else "60M", name, "fp32", 1, 64, layerwise)
    if size == "tiny":
        real, fake = tiny_step(name, layerwise=layerwise)[2], tiny_step(name, layerwise=layerwise, fake=True)[2]
    else:
        real, fake = llama_step(setting, fake=False), llama_step(setting)
    for column in ("at_peak", "max", "after"):
        torch.testing.assert_close(torch.tensor(fake[column].to_numpy(), dtype=torch.float64),
                                   torch.tensor(real[column].to_numpy(), dtype=torch.float64), rtol=0.01, atol=0,
                                   msg=lambda m: f"{column}: {m}")


def test_per_layer_updates_remove_almost_all_gradients():
    model, _, ordinary = tiny_step("apollo-mini")
    _, _, per_layer = tiny_step("apollo-mini", layerwise=True)
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    norms = 4 * len(list(model.parameters()))   # the float32 norm each spent gradient keeps (SpentGradient)
    assert ordinary.loc["gradients", "max"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert per_layer.loc["gradients", "max"] <= largest + norms
    assert largest < 0.2 * ordinary.loc["gradients", "max"]
    assert per_layer.loc["total", "at_peak"] < ordinary.loc["total", "at_peak"]


def test_checkpointing_keeps_fewer_activations():
    plain = tiny_step("adamw", batch=4, seq=64)[2]
    recomputed = tiny_step("adamw", checkpointing=True, batch=4, seq=64)[2]
    assert recomputed.loc["activations", "max"] < 0.6 * plain.loc["activations", "max"]


def test_plan_rows_and_the_largest_batch_that_fits():
    setting = Setting("60M", "apollo-mini", "bf16", 1, 128)
    frame = plan([setting, replace(setting, optimizer="adamw")])
    assert list(frame.columns) == list(memory.PLAN_COLUMNS)
    assert frame.loc[0, "optimizer_gb"] < frame.loc[1, "optimizer_gb"]
    peak = {b: llama_step(replace(setting, batch_size=b))["at_peak"]["total"] for b in (3, 4)}
    capacity = (peak[3] + peak[4]) / 2
    assert max_batch(setting, capacity) == 3
    assert max_batch(setting, 1000) == 0


def test_the_13B_config_and_a_fake_plan_of_it():
    assert llama.CONFIGS["13B"] == replace(llama.CONFIGS["13B"], dim=5120, mlp_hidden=13824, n_heads=40, n_layers=40)
    with FakeTensorMode():
        model, _, _ = build(Setting("13B", "apollo-mini", "bf16", 1, 8))
        assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 13.0) < 0.1


def test_row_reads_the_frame_at_the_peak():
    setting = Setting("60M", "adamw", "fp32", 1, 16)
    frame = llama_step(setting)
    out = row(setting, frame)
    assert out["peak_gb"] == frame.loc["total", "at_peak"] / 1e9 and out["weights"] == "fp32"


def test_plans_with_low_bit_states_and_bf16_weights():
    """--state-bits and --weights bf16 --kahan in the planner: 8-bit states take about a quarter of
    float32's bytes, 4-bit about an eighth; the Kahan buffer is a weight's size more."""
    rows = plan([Setting("60M", "adamw", "fp32", 1, 64, state_bits=bits) for bits in (32, 8, 4)]
                + [Setting("60M", "adamw", "fp32", 1, 64, weights="bf16", rounding=r) for r in ("nearest", "kahan")])
    assert list(rows["state_bits"]) == [32, 8, 4, 32, 32]
    assert list(rows["weights"]) == ["fp32", "fp32", "fp32", "bf16", "bf16+kahan"]
    parameters = rows.loc[0, "parameters_gb"]
    assert rows.loc[3, "parameters_gb"] == pytest.approx(parameters / 2)
    # the compensation (a bf16 copy of the weights), and at the peak the float32 working copy that the
    # largest weight (the 32000 x 512 embedding) is updated in before it is rounded back
    working = 32000 * llama.CONFIGS["60M"].dim * 4 / 1e9
    assert rows.loc[4, "optimizer_gb"] - rows.loc[3, "optimizer_gb"] == pytest.approx(parameters / 2 + working, rel=0.01)
    with pytest.raises(ValueError, match="rounding 'kahan' is for bf16 weights"):
        Setting("60M", "adamw", rounding="kahan")


def test_plan_command_line_suffixes_and_usage_errors(tmp_path, capsys):
    from analysis.memory.cli import main
    frame = main(["plan", "--model", "60M", "--optimizers", "adamw,adamw+8bit,galore+4bit+layerwise", "--seq-len", "32",
                  "--out", str(tmp_path)])
    assert list(frame["state_bits"]) == [32, 8, 4] and list(frame["layerwise"]) == [False, False, True]
    with pytest.raises(SystemExit):
        main(["plan", "--model", "60M", "--optimizers", "adamw+8bit+4bit", "--out", str(tmp_path)])
    assert "one of +8bit, +4bit" in capsys.readouterr().err
