"""Numerics every optimizer shares: an all-zero gradient never freezes APOLLO's limiter; a
non-finite gradient behaves the same under every name; and the smaller contract items (copies,
added groups, duplicated parameters, the meta device)."""
from __future__ import annotations

import copy
import math
import pickle
import warnings

import pytest
import torch

import zoo
from conftest import loss_fn, make_params

ALL = zoo.names()
LIMITED = ["apollo", "apollo-mini", "apollo-svd", "fira", "c-fira"]   # the norm-growth limiter


def build(name, params, **hp):
    if zoo.info(name).low_rank:
        hp = {"update_proj_gap": 1, **({} if "rank" in zoo.info(name).fixed else {"rank": 2}), **hp}
    return zoo.get(name)(params, **hp)


def step_with(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


# ---------------------------------------------------------------- APOLLO's limiter after a zero norm

@pytest.mark.parametrize("name", LIMITED)
def test_a_zero_gradient_does_not_freeze_the_limited_update(name):
    """Step 1 gets an all-zero gradient (a layer that got none, zero_grad(set_to_none=False)),
    then real ones: the step after it is the first the limiter has a norm for, so it equals the
    unlimited step, and the weight keeps moving as with real gradients from the start."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.zeros(8, 6)] + [torch.randn(8, 6, generator=gen) for _ in range(30)]
    limited, unlimited = make_params(((8, 6),), torch.float32), make_params(((8, 6),), torch.float32)
    a, b = build(name, limited), build(name, unlimited, norm_growth_limit=None)
    start = limited[0].detach().clone()
    for t, g in enumerate(grads):
        step_with(a, limited, [g])
        step_with(b, unlimited, [g])
        if t == 1:
            torch.testing.assert_close(limited[0], unlimited[0], rtol=0, atol=0)
            assert not torch.equal(limited[0], start)
    assert (limited[0] - start).norm() > 0.2 * (unlimited[0] - start).norm()


def test_a_zero_initialised_adapter_trains_under_apollo():
    """A LoRA-style product A @ B with B = 0 at the start: A's first gradient is zero, and A must
    train anyway (such a matrix moved 1e-6 in 200 steps before, 2.5 with AdamW)."""
    moved = {}
    for name in ("adamw", "apollo"):
        torch.manual_seed(0)
        a = torch.randn(8, 4, requires_grad=True)
        b = torch.zeros(4, 8, requires_grad=True)
        start = a.detach().clone()
        opt = build(name, [a, b], lr=1e-2, weight_decay=0.0)
        target = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(100):
            opt.zero_grad(set_to_none=False)
            ((a @ b - target) ** 2).mean().backward()
            opt.step()
        moved[name] = (a - start).norm().item()
    assert moved["apollo"] > 0.05 * moved["adamw"] > 0, moved   # APOLLO steps are smaller by its scale


# ---------------------------------------------------------------- non-finite gradients

@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("at_step", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_a_non_finite_gradient_shows_in_the_weight(name, at_step, bad):
    """The policy, under every name: one non-finite gradient entry at step ``at_step`` (the first,
    or a later one; low-rank projections refresh at every step here, so SVDs see it) makes that
    weight non-finite at that step, nothing raises, and the other parameter steps as usual."""
    gen = torch.Generator().manual_seed(0)
    params = make_params(((6, 4), (5,)), torch.float32)
    opt = build(name, params)
    for t in range(1, at_step + 1):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        if t == at_step:
            grads[0][1, 2] = bad
            before = params[1].detach().clone()
        step_with(opt, params, grads)
    assert not torch.isfinite(params[0][1, 2]), f"{name}: the non-finite gradient did not reach the weight"
    assert torch.isfinite(params[1]).all()
    if not (name.endswith(("adopt", "soap")) and at_step == 1):   # a first step setting up state only
        assert not torch.equal(params[1], before)


# ---------------------------------------------------------------- copies, groups, duplicates, meta

@pytest.mark.parametrize("name", ALL)
def test_copies_report_the_aligned_fraction(name):
    params = make_params(((6, 4),), torch.float32)
    opt = build(name, params)
    step_with(opt, params, [torch.randn(6, 4)])
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert math.isnan(other.aligned_fraction())   # no step of its own yet
        step_with(other, other.param_groups[0]["params"], [torch.randn(6, 4)])
        fraction = other.aligned_fraction()
        assert (0 <= fraction <= 1) if zoo.info(name).cautious else math.isnan(fraction)


@pytest.mark.parametrize("name", ALL)
def test_add_param_group_on_an_optimizer_from_create(name):
    """torch's "all groups with or without names" rule: the added group gets names."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    extra = {"rank": 2} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed else {}
    filters = ({"low_rank_filter": lambda n, p: p.dim() == 2} if zoo.info(name).low_rank else
               {"muon_filter": lambda n, p: p.dim() == 2} if "use_muon" in zoo.info(name).defaults else {})
    opt = zoo.create(model, name, lr=1e-2, **extra, **filters)
    head = torch.nn.Linear(2, 3)
    opt.add_param_group({"params": head.parameters(), "weight_decay": 0.0, **({"rank": None} if extra or filters.get(
        "low_rank_filter") else {}), **({"use_muon": False} if "muon_filter" in filters else {})})
    assert opt.param_groups[-1]["param_names"] == ["param4", "param5"]
    before = head.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        head(model(torch.randn(5, 4))).sum().backward()
        opt.step()
    assert not torch.equal(head.weight, before)
    assert f"param4 {tuple(head.weight.shape)}" in zoo.describe(opt)


@pytest.mark.parametrize("name", ALL)
def test_a_parameter_listed_twice_is_updated_once(name):
    """torch warns about a duplicated parameter in a group; the zoo steps it once (as if listed once)."""
    once, twice = make_params(((6, 4),), torch.float32), make_params(((6, 4),), torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        duplicated = build(name, [twice[0], twice[0]])
    assert any("duplicate parameters" in str(w.message) for w in caught)
    single = build(name, once)
    for t in range(3):
        for opt, params in ((single, once), (duplicated, twice)):
            opt.zero_grad()
            loss_fn(params, t).backward()
            opt.step()
    torch.testing.assert_close(twice[0], once[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_every_optimizer_steps_on_the_meta_device(name):
    """Shapes only, no memory and no device synchronisation (no .item() in a step)."""
    params = [torch.empty(6, 4, device="meta", requires_grad=True), torch.empty(4, device="meta", requires_grad=True)]
    opt = build(name, params)
    for _ in range(2):
        for p in params:
            p.grad = torch.empty_like(p)
        opt.step()
    assert all(t.device.type == "meta" for s in opt.state.values() for k, t in s.items()
               if isinstance(t, torch.Tensor) and k != "seed")   # APOLLO's seed stays on the CPU by design
