"""The non-cautious optimizers agree with torch.optim to float64 round-off (DESIGN.md contract)."""
import pytest
import torch

import zoo
from conftest import assert_trajectories_equal, trajectory, two_groups

LR = 0.05
# (zoo name, our hyper-parameters, torch.optim class name, torch hyper-parameters)
CASES = [
    ("sgdm", dict(momentum=0.9, dampening=0.1, weight_decay=0.02), "SGD",
     dict(momentum=0.9, dampening=0.1, weight_decay=0.02)),
    ("nesterov", dict(momentum=0.8, weight_decay=0.02), "SGD",
     dict(momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("adam", dict(betas=(0.8, 0.95), weight_decay=0.02), "Adam", dict(betas=(0.8, 0.95), weight_decay=0.02)),
    ("adamw", dict(betas=(0.8, 0.95), weight_decay=0.1), "AdamW", dict(betas=(0.8, 0.95), weight_decay=0.1)),
    ("nadamw", dict(betas=(0.8, 0.95), weight_decay=0.1), "NAdam",
     dict(betas=(0.8, 0.95), weight_decay=0.1, decoupled_weight_decay=True)),
    ("adafactor", dict(weight_decay=0.1), "Adafactor", dict(weight_decay=0.1)),
    ("rmsprop", dict(alpha=0.9, weight_decay=0.02), "RMSprop", dict(alpha=0.9, weight_decay=0.02)),
    ("rmsprop", dict(momentum=0.8, weight_decay=0.02), "RMSprop", dict(momentum=0.8, weight_decay=0.02)),
    ("rmsprop", dict(momentum=0.8, centered=True, alpha=0.95), "RMSprop",
     dict(momentum=0.8, centered=True, alpha=0.95)),
    ("radam", dict(betas=(0.8, 0.95), weight_decay=0.02), "RAdam", dict(betas=(0.8, 0.95), weight_decay=0.02)),
    ("radam", dict(betas=(0.8, 0.95), weight_decay=0.1, decoupled_weight_decay=True), "RAdam",
     dict(betas=(0.8, 0.95), weight_decay=0.1, decoupled_weight_decay=True)),
]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name,ours,torch_name,theirs", CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[1].items())}" for c in CASES])
def test_matches_torch_optim(float64, name, ours, torch_name, theirs, maximize):
    ref_cls = getattr(torch.optim, torch_name, None)
    if ref_cls is None:
        pytest.skip(f"torch {torch.__version__} has no torch.optim.{torch_name}")
    steps, sign = 30, -1.0 if maximize else 1.0   # maximize the negated loss: stays bounded
    a = trajectory(lambda p: zoo.get(name)(two_groups(p, LR), maximize=maximize, **ours), steps, sign=sign)
    b = trajectory(lambda p: ref_cls(two_groups(p, LR), maximize=maximize, foreach=False, **theirs),
                   steps, sign=sign)
    assert_trajectories_equal(a, b)


@pytest.mark.parametrize("name,torch_name", [("adam", "Adam"), ("adamw", "AdamW")])
def test_foreach_matches_torch_foreach(float64, name, torch_name):
    hp = dict(betas=(0.8, 0.95), weight_decay=0.05, foreach=True)
    a = trajectory(lambda p: zoo.get(name)(two_groups(p, LR), **hp))
    b = trajectory(lambda p: getattr(torch.optim, torch_name)(two_groups(p, LR), **hp))
    assert_trajectories_equal(a, b)


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("name,torch_name", [("adam", "Adam"), ("adamw", "AdamW")])
def test_fused_matches_torch_fused(float64, name, torch_name, maximize):
    hp = dict(betas=(0.8, 0.95), weight_decay=0.05, fused=True, maximize=maximize)
    sign = -1.0 if maximize else 1.0
    a = trajectory(lambda p: zoo.get(name)(two_groups(p, LR), **hp), sign=sign)
    b = trajectory(lambda p: getattr(torch.optim, torch_name)(two_groups(p, LR), **hp), sign=sign)
    assert_trajectories_equal(a, b)
    c = trajectory(lambda p: zoo.get(name)(two_groups(p, LR), **{**hp, "fused": False}), sign=sign)
    assert_trajectories_equal(a, c)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@pytest.mark.parametrize("maximize", [False, True])
def test_muon_matches_torch_muon(float64, adjust_lr_fn, maximize):
    if not hasattr(torch.optim, "Muon"):
        pytest.skip(f"torch {torch.__version__} has no torch.optim.Muon")
    shapes = ((6, 4), (4, 7), (5, 5))   # torch.optim.Muon takes matrices only
    hp = dict(weight_decay=0.1, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    # torch.optim.Muon has no maximize: ours ascends the negated loss, torch descends the loss
    a = trajectory(lambda p: zoo.get("muon")(two_groups(p, 0.02), maximize=maximize, **hp), 25, shapes,
                   sign=-1.0 if maximize else 1.0)
    b = trajectory(lambda p: torch.optim.Muon(two_groups(p, 0.02), **hp), 25, shapes)
    assert_trajectories_equal(a, b)


def test_signum_is_lion_with_equal_betas(float64):
    a = trajectory(lambda p: zoo.get("signum")(two_groups(p, 1e-2), momentum=0.9, weight_decay=0.1))
    b = trajectory(lambda p: zoo.get("lion")(two_groups(p, 1e-2), betas=(0.9, 0.9), weight_decay=0.1))
    assert_trajectories_equal(a, b, rtol=0, atol=0)
