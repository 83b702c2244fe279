"""zoo.precision: which precision is fast on this machine, measured; --dtype auto follows it; the
INT8 linear never takes a layout that is slow here."""
from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch import nn

import zoo
from zoo import precision
from zoo.quantized import quantize_weights


def test_the_probe_times_the_three_layouts_and_names_the_host():
    for dtype in (torch.float32, torch.bfloat16):
        seconds = precision.matmul_seconds(dtype)
        assert set(seconds) == set(precision.LAYOUTS) and all(s > 0 for s in seconds.values())
    assert precision.speedup() > 0
    line = precision.host()
    assert "bf16 matmuls" in line and f"{torch.get_num_threads()} threads" in line
    assert any(feature in line for feature in ("AMX", "AVX512", "AVX2", torch.backends.cpu.get_cpu_capability()))


@pytest.mark.parametrize("measured, auto", [(0.1, "fp32"), (0.95, "fp32"), (1.1, "fp32"), (2.1, "bf16"),
                                            (6.0, "bf16")])
def test_auto_is_bf16_only_where_it_is_faster(monkeypatch, measured, auto):
    monkeypatch.setattr(precision, "speedup", lambda dtype=torch.bfloat16, device="cpu": measured)
    monkeypatch.setattr(precision, "_WARNED", set())
    assert precision.resolve("auto") == auto and precision.resolve("auto", torch.device("cpu")) == auto
    assert precision.resolve("fp32") == "fp32"
    assert precision.resolve("auto", "cuda") == "bf16" and precision.resolve("fp32", "cuda") == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve("bf16") == "bf16" and precision.resolve("bf16") == "bf16"   # runs as asked
    slower = [str(w.message) for w in caught]
    if measured < 1:   # said once, with the measured ratio
        assert len(slower) == 1 and f"{1 / measured:.1f}x slower than fp32" in slower[0]
    else:
        assert not slower
    with pytest.raises(ValueError, match="Invalid dtype: 'fp16'"):
        precision.resolve("fp16")


def _layer(dtype, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(1024, 1024).to(dtype)
    quantize_weights(nn.ModuleList([nn.ModuleDict({"layer": layer})]), filter=lambda name, p: name.endswith("weight"))
    return layer


def test_the_int8_input_gradient_is_the_same_in_the_transposed_layout(monkeypatch):
    results = []
    for slow in (False, True):
        monkeypatch.setattr(zoo.quantized, "slow_input_gradient", lambda dtype, device, slow=slow: slow)
        layer = _layer(torch.float64)
        x = torch.randn(64, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        layer(x).square().sum().backward()
        results.append((x.grad, layer.weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    assert torch.equal(results[0][1], results[1][1])


def _best(call, repeats=3) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def test_an_int8_bf16_backward_is_within_a_small_factor_of_its_forward():
    """On this host, whatever it is: the backward of an INT8 linear in bf16 (input and weight
    gradients, one dequantization) takes at most 6 forwards, where the layout g @ W would take
    hundreds on a CPU without fast bf16."""
    layer = _layer(torch.bfloat16)
    x = torch.randn(256, 1024, dtype=torch.bfloat16, requires_grad=True)
    forward = _best(lambda: layer(x))
    out = layer(x)
    backward = _best(lambda: torch.autograd.grad(out, (x, layer.weight), torch.ones_like(out), retain_graph=True))
    assert backward < 6 * forward, (backward, forward, precision.host())
