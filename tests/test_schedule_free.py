"""Schedule-Free AdamW (sf-adamw, c-sf-adamw): against a plain reference written in the paper's
three sequences (z, the average x, y where the gradient is taken), the train()/eval() switch and
its state-dict modes, the refusals, INT8 weights, and the runner evaluating and checkpointing x."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import zoo
from analysis import pretrain
from analysis.pretrain import Config
from conftest import assert_trajectories_equal, loss_fn, make_params, side_by_side, two_groups
from zoo.layerwise import attach
from zoo.quantized import quantize

STEPS = 25


def ref_sf_adamw(y, g, s, t, hp, norm=None, phi=None):
    """Step ``t`` (1-based) of one tensor as AdamWScheduleFreeReference writes it (x, y and z
    kept apart, decay at y); returns the new y. With ``norm`` (the cautious twin) the move of y
    apart from the decay is masked against g by ``phi``, z is not, and x follows y."""
    b1, b2 = hp.get("betas", (0.9, 0.999))
    wd, warmup = hp.get("weight_decay", 0.0), hp.get("warmup_steps", 0)
    if t == 1:
        s.update(z=y.clone(), x=y.clone(), v=torch.zeros_like(y), weight_sum=0.0, lr_max=0.0)
    lr = hp["lr"] * (t / warmup if t <= warmup else 1.0)
    s["lr_max"] = max(s["lr_max"], lr)
    weight = t ** hp.get("r", 0.0) * s["lr_max"] ** hp.get("weight_lr_power", 2.0)
    s["weight_sum"] += weight
    c = weight / s["weight_sum"] if s["weight_sum"] > 0 else 0.0
    s["v"] = b2 * s["v"] + (1 - b2) * g * g
    u = g / (torch.sqrt(s["v"] / (1 - b2**t)) + hp.get("eps", 1e-8)) + wd * y
    s["z"] = s["z"] - lr * u
    s["x"] = (1 - c) * s["x"] + c * s["z"]
    new = (1 - b1) * s["z"] + b1 * s["x"]
    if norm is not None:
        decayed = y - lr * (1 - b1 * (1 - c)) * wd * y
        new = decayed - phi(decayed - new, g, norm)
        s["x"] = (new - (1 - b1) * s["z"]) / b1
    return new


SETTINGS = {
    "plain": dict(lr=0.05),
    "decay-warmup-weights": dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, warmup_steps=6, r=0.5,
                                 weight_lr_power=1.0),
    "two-groups-maximize": dict(lr=0.03, betas=(0.7, 0.99), weight_decay=0.02, warmup_steps=3, maximize=True),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_matches_the_plain_reference_and_eval_gives_its_average(float64, setting):
    hp = dict(SETTINGS[setting])
    sign = -1.0 if hp.pop("maximize", False) else 1.0
    params = make_params()
    groups = two_groups(params, hp["lr"]) if setting == "two-groups-maximize" else params
    opt = zoo.get("sf-adamw")(groups, maximize=sign < 0, **hp)
    lrs = [group["lr"] for group in opt.param_groups for _ in group["params"]]
    states = [{} for _ in params]

    def reference(ps, grads, t):
        return [ref_sf_adamw(p, sign * g, s, t, {**hp, "lr": lr}) for p, g, s, lr in zip(ps, grads, states, lrs)]

    ours, ref = side_by_side(opt, params, reference, lambda ps, t: sign * loss_fn(ps, t), STEPS)
    assert_trajectories_equal(ours, ref, rtol=1e-11, atol=1e-12)
    for p, s in zip(params, states):
        torch.testing.assert_close(opt.state[p]["z"], s["z"], rtol=1e-11, atol=1e-12)
    y = [p.detach().clone() for p in params]
    opt.eval()
    assert all(not g["train_mode"] for g in opt.param_groups)
    for p, s, q in zip(params, states, y):
        torch.testing.assert_close(p.detach(), s["x"], rtol=1e-11, atol=1e-12)
        assert (p - q).abs().max() > 1e-3   # x and y are apart, so the comparison means something
    opt.train()
    for p, q in zip(params, y):
        torch.testing.assert_close(p.detach(), q, rtol=1e-13, atol=1e-14)   # back to y, to round-off


def test_the_twin_masks_the_move_of_y_never_z(float64):
    """Gradients that do not depend on y (and no decay): z and v are the same under the base and
    the twin, y is not (the mask acted on some coordinates, not all)."""
    generator = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 4, generator=generator) for _ in range(12)]
    runs = {}
    for name in ("sf-adamw", "c-sf-adamw"):
        (w,) = make_params(((6, 4),))
        opt = zoo.get(name)([w], lr=0.05)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        runs[name] = (w.detach().clone(), opt.state[w], opt)
    (y0, s0, _), (y1, s1, twin) = runs["sf-adamw"], runs["c-sf-adamw"]
    assert torch.equal(s0["z"], s1["z"]) and torch.equal(s0["exp_avg_sq"], s1["exp_avg_sq"])
    assert not torch.allclose(y0, y1) and 0 < twin.aligned_fraction() < 1


# ---------------------------------------------------------------- modes and state dicts

def _problem():
    params = make_params(((6, 4), (5,)), torch.float32)
    return params, zoo.get("c-sf-adamw")(params, lr=0.02, weight_decay=0.01, warmup_steps=2)


def _steps(opt, params, first, count):
    for t in range(first, first + count):
        opt.zero_grad()
        loss_fn(params, t).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_state_saved_in_either_mode_loads_back_and_continues_exactly(mode):
    """Weights and optimizer saved together in ``mode``: the loaded optimizer is in that mode (its
    group's ``train_mode``), and after train() it continues as the uninterrupted one."""
    straight, opt = _problem()
    _steps(opt, straight, 0, 4)
    getattr(opt, mode)()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in straight], "optimizer": opt.state_dict()}, buffer)
    opt.train()
    _steps(opt, straight, 4, 4)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed, fresh = _problem()
    with torch.no_grad():
        for p, value in zip(resumed, saved["params"]):
            p.copy_(value)
    fresh.load_state_dict(saved["optimizer"])
    assert [g["train_mode"] for g in fresh.param_groups] == [mode == "train"]
    if mode == "eval":
        with pytest.raises(RuntimeError, match=r"eval mode .* call optimizer.train\(\)"):
            _steps(fresh, resumed, 4, 1)
    fresh.train()
    _steps(fresh, resumed, 4, 4)
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


def test_eval_and_train_are_idempotent_and_a_step_in_eval_mode_is_refused():
    params, opt = _problem()
    opt.eval()   # nothing stepped yet: x = y = z, nothing moves
    assert all(not g["train_mode"] for g in opt.param_groups)
    with pytest.raises(RuntimeError, match="is in eval mode"):
        opt.step()
    opt.train()
    _steps(opt, params, 0, 3)
    opt.eval()
    x = [p.detach().clone() for p in params]
    opt.eval()
    assert all(torch.equal(p, q) for p, q in zip(params, x))
    opt.train()
    y = [p.detach().clone() for p in params]
    opt.train()
    assert all(torch.equal(p, q) for p, q in zip(params, y))
    frozen = torch.zeros(3, requires_grad=True)   # a group added in eval mode joins it
    opt.eval()
    opt.add_param_group({"params": [frozen]})
    assert opt.param_groups[-1]["train_mode"] is False


def test_per_layer_updates_refuse_eval_mode_inside_backward():
    params, opt = _problem()
    attach(opt)
    loss_fn(params, 0).backward()
    opt.step()
    opt.eval()
    with pytest.raises(RuntimeError, match="is in eval mode"):
        loss_fn(params, 1).backward()


@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
def test_a_parameter_listed_twice_moves_once_between_modes():
    (w,) = make_params(((6, 4),), torch.float32)
    opt = zoo.get("sf-adamw")([w, w], lr=0.05)
    w.grad = torch.ones(6, 4)
    opt.step()
    w.grad = -torch.ones(6, 4)
    opt.step()
    expected = w.detach().lerp(opt.state[w]["z"], 1 - 1 / 0.9)
    opt.eval()
    assert torch.equal(w.detach(), expected)


def test_invalid_settings_are_refused_naming_them():
    params = make_params(((3,),), torch.float32)
    build = zoo.get("sf-adamw")
    for key, bad in [("lr", -1.0), ("betas", (1.0, 0.9)), ("betas", (0.9, -0.1)), ("eps", -1e-8),
                     ("weight_decay", -0.1), ("warmup_steps", -1), ("warmup_steps", 2.5), ("warmup_steps", True),
                     ("r", -1.0), ("weight_lr_power", -2.0), ("weight_lr_power", math.inf)]:
        with pytest.raises(ValueError, match=f"Invalid {key}"):
            build(params, **{key: bad})
    with pytest.raises(ValueError, match=r"Invalid betas\[0\]: 0; allowed range \(0, 1\)"):
        build(params, betas=(0.0, 0.999))
    with pytest.raises(ValueError, match="Invalid train_mode"):
        build([{"params": params, "train_mode": "yes"}])


def test_int8_weights_switch_through_their_stochastic_rounding():
    """eval() and train() on an INT8 weight move its dequantized value to x and back, rounded
    stochastically with the weight's own noise: within a quantization step, deterministic."""
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(quantize(torch.randn(16, 48) * 0.1, group_size=32, seed=7))
        opt = zoo.get("sf-adamw")([weight], lr=1e-2)
        for t in range(4):
            weight.grad = torch.randn(16, 48, generator=torch.Generator().manual_seed(t))
            opt.step()
        y = weight.dequantize()
        opt.eval()
        x = weight.dequantize()
        opt.train()
        step = weight.scale.max().item()
        expected = y.lerp(opt.state[weight]["z"], 1 - 1 / 0.9)
        assert (x - expected).abs().max() <= step and (x - y).abs().max() > step
        assert (weight.dequantize() - y).abs().max() <= 2 * step
        assert opt.state[weight]["rounding"] == 6   # 4 steps, eval and train
        results.append(weight.codes.clone())
    assert torch.equal(*results)


# ---------------------------------------------------------------- the runner

TINY = dict(task="llama", seeds=(0,), steps=4, batch_size=4, seq_len=16, eval_interval=2, eval_batches=1,
            progress=False, lr={"sf-adamw": 1e-2}, optimizers=("sf-adamw",))


@pytest.fixture
def tiny_run(one_thread):
    """A 4-step run of the runner (one torch thread: on 2 shared cores, far faster)."""
    def run(out, **more) -> pd.DataFrame:
        cfg = Config(**TINY, out=str(out), **more)
        return pretrain.train(cfg, pretrain.prepare(cfg), "sf-adamw", 0).drop(columns="wall_s")
    return run


def test_the_runner_evaluates_and_checkpoints_the_average(tmp_path, monkeypatch, tiny_run):
    """Each validation loss is taken in eval mode, at x = (y - (1 - b1) z) / b1 where y is the
    point train() restores; the checkpoint holds x with the optimizer saved in eval mode."""
    built, seen = [], []
    build, evaluate = pretrain._build_optimizer, pretrain._evaluate

    def build_and_keep(cfg, name, model):
        built.append(build(cfg, name, model))
        return built[-1]

    def evaluate_and_record(task, model, device, autocast):
        opt = built[-1]
        seen.append(([g["train_mode"] for g in opt.param_groups],
                     {p: (p.detach().clone(), opt.state[p]["z"].clone()) for p in model.parameters()
                      if p in opt.state}))
        return evaluate(task, model, device, autocast)

    monkeypatch.setattr(pretrain, "_build_optimizer", build_and_keep)
    monkeypatch.setattr(pretrain, "_evaluate", evaluate_and_record)
    frame = tiny_run(tmp_path)
    opt = built[-1]
    assert len(seen) == 3 and all(modes and not any(modes) for modes, _ in seen)   # steps 0, 2, 4
    assert all(g["train_mode"] for g in opt.param_groups)                            # back to y after
    _, last = seen[-1]
    assert last and all(not torch.equal(x, p.detach()) for p, (x, _) in last.items())
    for p, (x, z) in last.items():   # y now, x then: x = y + (1 - 1/b1)(z - y)
        torch.testing.assert_close(x, p.detach().lerp(z, 1 - 1 / 0.9), rtol=1e-5, atol=1e-6)
    saved = torch.load(Path(tmp_path, "checkpoints", "sf-adamw_seed0.pt"), weights_only=False)
    assert [g["train_mode"] for g in saved["optimizer"]["param_groups"]] == [False] * len(opt.param_groups)
    for group in opt.param_groups:
        for name, p in zip(group["param_names"], group["params"]):
            assert torch.equal(saved["model"][name], last[p][0]), name
    assert frame["val_loss"].notna().sum() == 3


@pytest.mark.parametrize("weights", ["float", "int8"])
def test_the_runner_resumes_from_an_eval_mode_checkpoint_bit_for_bit(tmp_path, monkeypatch, tiny_run, weights):
    """Stopped right after a checkpoint (weights at x, eval mode), resumed with train() first: the
    metrics of the uninterrupted run (INT8: the switches' roundings continue their count)."""
    full = tiny_run(tmp_path / "full", weights=weights)
    real_save = pretrain.save_checkpoint

    def interrupted(path, payload):   # stopped right after the first checkpoint (step 2)
        real_save(path, payload)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "cut", weights=weights)
    monkeypatch.setattr(pretrain, "save_checkpoint", real_save)
    pd.testing.assert_frame_equal(tiny_run(tmp_path / "cut", weights=weights, resume=True), full)
