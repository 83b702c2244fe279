"""Per-layer updates (zoo/layerwise.py): for every registered name, updates inside backward equal
the ordinary loop step for step, with gradient accumulation and a learning-rate schedule."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zoo
from zoo.layerwise import SpentGradient, attach

ALL = zoo.names()


class Net(nn.Module):
    """A block of two linears in a ModuleList (so create routes low-rank and Muon groups), a head, a norm."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(8, 8, bias=False), "mlp": nn.Linear(8, 12)})])
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    @property
    def mlp(self):
        return self.layers[0]["mlp"]

    def forward(self, x):
        block = self.layers[0]
        return self.head(self.norm(torch.tanh(block["mlp"](torch.relu(block["attn"](x))))))


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
    assert all(type(p.grad) is torch.Tensor for p in model.parameters()) and not opt.state   # first of two passes
    nn.functional.mse_loss(model(x), y).backward()
    assert len(opt.state) == len(list(model.parameters()))
    for p in model.parameters():   # applied and freed: no storage, only the norm of what was applied
        assert isinstance(p.grad, SpentGradient) and p.grad.shape == p.shape and p.grad.norm.numel() == 1
        with pytest.raises(RuntimeError):   # a wrapper without data
            p.grad.untyped_storage().data_ptr()
        with pytest.raises(RuntimeError, match="applied and freed inside backward"):
            p.grad.sum()
    opt.zero_grad(set_to_none=False)   # nothing to zero: they become None
    assert all(p.grad is None for p in model.parameters())


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
    assert isinstance(w.grad, SpentGradient) and opt.state[w]["step"] == 1
    opt.step()
    extra = torch.randn(3, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    (w.sum() + extra.sum()).backward()   # into the spent gradient: it is dropped first, not added to
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
    assert isinstance(model_b.mlp.weight.grad, SpentGradient) and model_b.mlp.weight in layerwise.state


def test_accumulation_without_accumulate_k_is_an_error_naming_it():
    """HF Trainer's gradient_accumulation_steps=2 without accumulate=2: two backward passes per
    optimizer step would be two updates; refused at the second pass, naming accumulate=k."""
    (_, _), (opt, model) = pair("adamw")
    x, y = batch(0, 0)
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="accumulate=k"):
        nn.functional.mse_loss(model(x), y).backward()
    (_, _), (opt, model) = pair("adamw", accumulate=2)
    for _ in range(2):
        nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="accumulate=2"):
        for _ in range(2):
            nn.functional.mse_loss(model(x), y).backward()


@pytest.mark.parametrize("name", ["adamw", "c-lion", "apollo-mini"])
def test_a_short_accumulation_is_applied_at_step_as_the_ordinary_loop(name):
    """accumulate=3, but the loop steps after 3, 3 and then 1 backward passes (an epoch's last,
    short accumulation): step() applies what accumulated, as the ordinary step would."""
    (ordinary, model_a), (layerwise, model_b) = pair(name, accumulate=3)
    for opt, model in ((ordinary, model_a), (layerwise, model_b)):
        for step, passes in enumerate((3, 3, 1, 3)):
            opt.zero_grad()
            for micro in range(passes):
                x, y = batch(step, micro)
                (nn.functional.mse_loss(model(x), y) / passes).backward()
            opt.step()
    assert_same(model_a, model_b, ordinary, layerwise)


def clipped_loop(name, model, steps, max_norm, lagged):
    """The ordinary loop clipping every gradient: by the current global norm (``lagged=False``,
    torch's clip_grad_norm_), or as per-layer updates clip (``lagged=True``: by the previous
    step's global norm, the first step by each tensor's norm scaled to the whole); returns the
    global norms before clipping."""
    opt = zoo.create(model, name, **hparams(name))
    params = [p for p in model.parameters()]
    total = sum(p.numel() for p in params)
    norms, previous = [], None
    for step in range(steps):
        opt.zero_grad()
        x, y = batch(step, 0)
        nn.functional.mse_loss(model(x), y).backward()
        if lagged:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            for p in params:
                whole = torch.linalg.vector_norm(p.grad) * (total / p.numel()) ** 0.5 if previous is None else previous
                p.grad.mul_((max_norm / (whole + 1e-6)).clamp(max=1.0))
            previous = norm
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        norms.append(float(norm))
        opt.step()
    return norms


@pytest.mark.parametrize("name", ["adamw", "sgdm", "c-adamw", "apollo-mini"])
def test_clipping_by_the_previous_steps_norm_against_a_loop_that_does_so(name):
    torch.manual_seed(0)
    model_a = Net().double()
    model_b = copy.deepcopy(model_a)
    expected = clipped_loop(name, model_a, 5, 0.05, lagged=True)
    opt = zoo.create(model_b, name, layerwise=True, clip_grad_norm=0.05, **hparams(name))
    norms = []
    for step in range(5):
        opt.zero_grad()
        x, y = batch(step, 0)
        nn.functional.mse_loss(model_b(x), y).backward()
        opt.step()
        norms.append(opt.per_layer.grad_norm)
    assert min(expected) > 0.05   # every step clipped
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(expected), rtol=1e-12, atol=0)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_clipping_equals_global_clipping_where_they_coincide():
    """A linear loss with gradient entries of +-1: the global norm is the same every step and
    each tensor's share is its part of it, so per-layer clipping is global clipping at every step."""
    torch.manual_seed(0)
    params = [torch.randn(5, 4, dtype=torch.float64, requires_grad=True),
              torch.randn(7, dtype=torch.float64, requires_grad=True)]
    signs = [torch.randint(0, 2, p.shape, dtype=torch.float64) * 2 - 1 for p in params]
    copies = [p.detach().clone().requires_grad_() for p in params]
    ordinary = zoo.get("sgdm")(params, lr=0.1)
    layerwise = zoo.layerwise(copies, "sgdm", lr=0.1, clip_grad_norm=0.5)
    for _ in range(4):
        ordinary.zero_grad()
        sum((p * s).sum() for p, s in zip(params, signs)).backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        ordinary.step()
        layerwise.zero_grad()
        sum((p * s).sum() for p, s in zip(copies, signs)).backward()
        layerwise.step()
    for a, b in zip(params, copies):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    assert layerwise.per_layer.grad_norm == pytest.approx(27 ** 0.5)


def test_a_clients_clipping_after_backward_warns_and_reports_the_true_norm():
    """torch.nn.utils.clip_grad_norm_ after per-layer updates (what HF Trainer's max_grad_norm,
    Lightning's gradient_clip_val and accelerate do) cannot act: it warns, naming the settings,
    and returns the true global norm (the one the ordinary loop would log); a GradScaler's
    unscaling raises."""
    (ordinary, model_a), (layerwise, model_b) = pair("adamw")
    x, y = batch(0, 0)
    nn.functional.mse_loss(model_a(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(model_a.parameters(), float("inf"))
    nn.functional.mse_loss(model_b(x), y).backward()
    with pytest.warns(UserWarning, match="max_grad_norm=0.*gradient_clip_val=None.*clip_grad_norm=c"):
        norm = torch.nn.utils.clip_grad_norm_(model_b.parameters(), 1.0)
    torch.testing.assert_close(norm, expected, rtol=1e-12, atol=0)
    assert torch.nn.utils.get_total_norm([p.grad for p in model_b.parameters()]) == pytest.approx(float(expected))
    with pytest.raises(RuntimeError, match="GradScaler cannot unscale"):
        torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in model_b.parameters()],
                                                         torch.zeros(1, dtype=torch.float64), torch.ones(1))


def test_clip_grad_norm_is_refused_where_it_cannot_work():
    with pytest.raises(ValueError, match="clip_grad_norm is for layerwise=True"):
        zoo.create(Net(), "adamw", clip_grad_norm=1.0)
    with pytest.raises(ValueError, match="Invalid clip_grad_norm: 0"):
        zoo.create(Net(), "adamw", layerwise=True, clip_grad_norm=0)
