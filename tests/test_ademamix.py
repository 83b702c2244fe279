"""AdEMAMix (Pagliardini et al. 2024) against a plain reference written from Algorithm 1 and the
paper's warm-up schedulers, as the authors' code applies them (apple/ml-ademamix)."""
import math

import pytest
import torch
from torch._dynamo.utils import counters

import zoo
from conftest import assert_trajectories_equal, loss_fn, make_params, tensorwise
from zoo.optimizers.ademamix import alpha_schedule, beta3_schedule

STEPS = 25


def half_life(beta):
    """Steps for an EMA with factor ``beta`` to halve a weight, minus one (the code's 1e-8 in the log)."""
    return math.log(0.5) / math.log(beta + 1e-8) - 1


def ref_ademamix(p, g, s, t, hp, norm=None, phi=None):
    """One step for one tensor; ``phi(u, g, norm)`` is the cautious mask (test_cautious_twins')."""
    b1, b2, b3 = hp.get("betas", (0.9, 0.999, 0.9999))
    alpha, lr, wd, eps = hp.get("alpha", 2.0), hp["lr"], hp.get("weight_decay", 0.0), hp.get("eps", 1e-8)
    if hp.get("alpha_warmup") is not None and t < hp["alpha_warmup"]:
        alpha = alpha * t / hp["alpha_warmup"]   # linear from 0
    if hp.get("beta3_warmup") is not None and t < hp["beta3_warmup"]:
        a = t / hp["beta3_warmup"]   # half-life linear from b1's to b3's
        b3 = 0.5 ** (1 / ((1 - a) * half_life(b1) + a * half_life(b3) + 1))
    zeros = torch.zeros_like(p)
    s["m1"] = b1 * s.get("m1", zeros) + (1 - b1) * g
    s["m2"] = b3 * s.get("m2", zeros) + (1 - b3) * g
    s["v"] = b2 * s.get("v", zeros) + (1 - b2) * g * g
    u = s["m1"] / (1 - b1**t) + alpha * s["m2"]
    if phi is not None:
        u = phi(u, g, norm)
    u = u / (torch.sqrt(s["v"] / (1 - b2**t)) + eps)
    return p - lr * (u + wd * p)


SETTINGS = {
    "defaults": dict(lr=0.01),
    "warmups": dict(lr=0.02, betas=(0.8, 0.95, 0.99), alpha=5.0, alpha_warmup=10, beta3_warmup=15, eps=1e-6,
                    weight_decay=0.1),
    "no-fast-ema": dict(lr=0.02, betas=(0.0, 0.95, 0.98), alpha=3.0, beta3_warmup=40, weight_decay=0.02,
                        maximize=True),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_matches_reference(float64, setting):
    hp = SETTINGS[setting]
    params = make_params()
    opt = zoo.get("ademamix")(params, **hp)
    ours, ref, _ = tensorwise(opt, params, lambda p, g, s, t: ref_ademamix(p, g, s, t, hp), loss_fn, STEPS,
                              maximize=hp.get("maximize", False))
    assert_trajectories_equal(ours, ref, rtol=1e-12, atol=1e-13)


def test_warmups_change_the_trajectory(float64):
    """The schedulers act: with them the run leaves the one without."""
    ends = []
    for warm in ({}, {"alpha_warmup": 10}, {"beta3_warmup": 15}):
        params = make_params()
        opt = zoo.get("ademamix")(params, lr=0.02, betas=(0.8, 0.95, 0.99), **warm)
        for t in range(1, 6):
            opt.zero_grad()
            loss_fn(params, t).backward()
            opt.step()
        ends.append(torch.cat([p.detach().flatten() for p in params]))
    assert not torch.allclose(ends[0], ends[1]) and not torch.allclose(ends[0], ends[2])


def test_schedules():
    """alpha rises linearly from 0; beta3 starts at beta1 (plus the 1e-8 of the code's logarithm) and
    reaches beta3, its half-life linear in t."""
    assert alpha_schedule(0, 8.0, 100) == 0.0
    assert alpha_schedule(25, 8.0, 100) == pytest.approx(2.0, rel=1e-15)
    assert alpha_schedule(100, 8.0, 100) == alpha_schedule(7, 8.0, None) == 8.0
    assert beta3_schedule(0, 0.9999, 0.9, 100) == pytest.approx(0.9 + 1e-8, rel=1e-12)   # the code's 1e-8
    assert beta3_schedule(100, 0.9999, 0.9, 100) == beta3_schedule(3, 0.9999, 0.9, None) == 0.9999
    for t in (10, 20, 30):   # the exact inverse of h -> 0.5^(1 / (h + 1))
        life = math.log(0.5) / math.log(beta3_schedule(t, 0.9999, 0.9, 100)) - 1
        assert life == pytest.approx((1 - t / 100) * half_life(0.9) + t / 100 * half_life(0.9999), rel=1e-9)


def test_without_a_fast_ema_the_state_has_none():
    """betas[0] = 0 keeps no exp_avg_fast (as the reference, to save memory)."""
    params = make_params(dtype=torch.float32)
    opt = zoo.get("ademamix")(params, lr=0.01, betas=(0.0, 0.999, 0.9999))
    loss_fn(params, 0).backward()
    opt.step()
    for p in params:
        assert set(opt.state[p]) == {"step", "exp_avg_slow", "exp_avg_sq"}
        assert opt.expected_state_bytes(p, opt.param_groups[0]) == 2 * p.numel() * 4


def test_compiled_schedules_never_recompile():
    """alpha and beta3 change every step of their warm-ups: scalars of the compiled step, so the
    graphs made by step 3 serve every later step, and the result is the eager one's."""
    eager, compiled = (make_params(((6, 4),), dtype=torch.float32) for _ in range(2))
    hp = dict(lr=0.01, alpha_warmup=8, beta3_warmup=8)
    a = zoo.get("c-ademamix")(eager, **hp)
    b = zoo.get("c-ademamix")(compiled, **hp, compile=True)
    counters.clear()
    for t in range(12):
        for opt, params in ((a, eager), (b, compiled)):
            opt.zero_grad()
            loss_fn(params, t).backward()
            opt.step()
        if t == 2:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs > 0
    for x, y in zip(compiled, eager):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(betas=(0.9, 0.999)), "betas"),
    (dict(betas=(0.9, 0.999, 1.0)), r"betas\[2\]"),
    (dict(betas=(-0.1, 0.999, 0.9999)), r"betas\[0\]"),
    (dict(alpha=-1.0), "alpha"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(lr=-1e-3), "lr"),
    (dict(alpha_warmup=0), "alpha_warmup.*None"),
    (dict(alpha_warmup=10.5), "alpha_warmup"),
    (dict(beta3_warmup=True), "beta3_warmup"),
    (dict(beta3_warmup=-3), "beta3_warmup"),
])
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=f"Invalid {match}"):
        zoo.get("ademamix")(make_params(), **kwargs)


def test_caution_is_refused_when_the_update_is_the_gradient():
    with pytest.raises(ValueError, match="never act"):
        zoo.get("c-ademamix")(make_params(), betas=(0.0, 0.999, 0.9999), alpha=0.0)
