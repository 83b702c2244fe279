"""Per-layer updates (zoo/layerwise.py): for every registered name, updates inside backward equal
the ordinary loop step for step, with gradient accumulation and a learning-rate schedule."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zoo
from zoo.layerwise import attach

ALL = zoo.names()


class Net(nn.Module):
    """Attention/MLP-named weights (so create routes low-rank and Muon groups), a head, a norm."""

    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8, bias=False)
        self.mlp = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.norm(torch.tanh(self.mlp(torch.relu(self.attn(x))))))


def hparams(name):
    rec = zoo.info(name)
    extra = {"update_proj_gap": 2} if rec.low_rank else {}   # projections refresh within the run
    if rec.low_rank and "rank" not in rec.fixed:
        extra["rank"] = 2
    return dict(lr=0.05 if rec.family in ("sgd", "muon") else 1e-2, **extra)


def batch(step, micro):
    gen = torch.Generator().manual_seed(100 * step + micro)
    return torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)


def train(opt, model, steps, accumulate, scheduler=None, first=0):
    """The ordinary loop: ``accumulate`` micro-batches per step, then step and the scheduler."""
    lrs, fractions = [], []
    for step in range(first, first + steps):
        opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
        for micro in range(accumulate):
            x, y = batch(step, micro)
            (nn.functional.mse_loss(model(x), y) / accumulate).backward()
        opt.step()
        fractions.append(opt.aligned_fraction())
        if scheduler is not None:
            scheduler.step()
    return lrs, fractions


def pair(name, accumulate=1):
    torch.manual_seed(0)
    ordinary_model = Net().double()
    layerwise_model = copy.deepcopy(ordinary_model)
    ordinary = zoo.create(ordinary_model, name, **hparams(name))
    layerwise = zoo.create(layerwise_model, name, layerwise=True, accumulate=accumulate, **hparams(name))
    return (ordinary, ordinary_model), (layerwise, layerwise_model)


def assert_same(model_a, model_b, opt_a, opt_b):
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for pid in state_a:
        for key, value in state_a[pid].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, state_b[pid][key], rtol=1e-12, atol=1e-12)
            else:
                assert value == state_b[pid][key], (pid, key)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("name", ALL)
def test_updates_in_backward_equal_the_ordinary_loop(name, accumulate):
    """5 steps (projection refreshes included) with a schedule stepped once per optimizer step,
    and ``accumulate`` micro-batches per step: the same weights, optimizer state, learning rates
    and cautious fractions as the ordinary loop."""
    (ordinary, model_a), (layerwise, model_b) = pair(name, accumulate)
    schedule = lambda step: 1.0 / (1 + step)   # noqa: E731
    sched_a = torch.optim.lr_scheduler.LambdaLR(ordinary, schedule)
    sched_b = torch.optim.lr_scheduler.LambdaLR(layerwise, schedule)
    lrs_a, fractions_a = train(ordinary, model_a, 5, accumulate, sched_a)
    lrs_b, fractions_b = train(layerwise, model_b, 5, accumulate, sched_b)
    assert lrs_a == lrs_b == [hparams(name)["lr"] * schedule(s) for s in range(5)]   # once per step
    torch.testing.assert_close(torch.tensor(fractions_b), torch.tensor(fractions_a), equal_nan=True)
    assert_same(model_a, model_b, ordinary, layerwise)


def test_gradients_are_freed_in_backward_and_kept_while_accumulating():
    (_, _), (opt, model) = pair("adamw", accumulate=2)
    x, y = batch(0, 0)
    nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters()) and not opt.state   # first of two passes
    nn.functional.mse_loss(model(x), y).backward()
    assert all(p.grad is None for p in model.parameters()) and len(opt.state) == len(list(model.parameters()))


def test_resume_is_bit_for_bit_and_hooks_can_be_removed():
    (_, _), (opt, model) = pair("c-adamw")
    train(opt, model, 2, 1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(opt, model, 2, 1, first=2)
    (_, _), (resumed, resumed_model) = pair("c-adamw")
    resumed_model.load_state_dict(saved_model)
    resumed.load_state_dict(saved_opt)
    train(resumed, resumed_model, 2, 1, first=2)
    assert_same(model, resumed_model, opt, resumed)
    resumed.per_layer.remove()
    x, y = batch(9, 0)
    before = [p.detach().clone() for p in resumed_model.parameters()]
    nn.functional.mse_loss(resumed_model(x), y).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, resumed_model.parameters()))   # no hook any more
    resumed.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, resumed_model.parameters()))


def test_plain_parameters_and_added_groups():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    opt = zoo.layerwise([w], "lion", lr=0.1)
    (w.sum() ** 2).backward()
    assert w.grad is None and opt.state[w]["step"] == 1
    extra = torch.randn(3, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    (w.sum() + extra.sum()).backward()
    assert opt.state[extra]["step"] == 1 and opt.state[w]["step"] == 2


def test_what_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="accumulate is for layerwise=True"):
        zoo.create(Net(), "adamw", accumulate=2)
    with pytest.raises(ValueError, match="Invalid accumulate: 0"):
        zoo.create(Net(), "adamw", layerwise=True, accumulate=0)
    opt = zoo.create(Net(), "adamw", layerwise=True)
    with pytest.raises(ValueError, match="already updates its parameters in backward"):
        attach(opt)
    with pytest.raises(TypeError, match="need a zoo optimizer"):
        attach(torch.optim.SGD(Net().parameters(), lr=0.1))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match="each rank's local gradient"):
        zoo.create(Net(), "adamw", layerwise=True)


@pytest.mark.parametrize("name", ["adamw", "c-lion", "apollo-mini", "muon"])
def test_a_layer_frozen_at_create_and_unfrozen_later(name):
    """The frozen parameter gets no hook (it cannot); once unfrozen, the loop's step() updates it
    from its first gradient and hooks it: the same trajectory as the ordinary loop."""
    torch.manual_seed(0)
    model_a = Net().double()
    model_b = copy.deepcopy(model_a)
    for model in (model_a, model_b):
        model.mlp.requires_grad_(False)
    ordinary = zoo.create(model_a, name, **hparams(name))
    layerwise = zoo.create(model_b, name, layerwise=True, **hparams(name))
    train(ordinary, model_a, 2, 1)
    train(layerwise, model_b, 2, 1)
    for model in (model_a, model_b):
        model.mlp.requires_grad_(True)
    train(ordinary, model_a, 3, 1, first=2)
    train(layerwise, model_b, 3, 1, first=2)
    assert_same(model_a, model_b, ordinary, layerwise)
    assert model_b.mlp.weight.grad is None and model_b.mlp.weight in layerwise.state
