"""Adan (Xie et al. 2022) against a plain reference written from the formula of timm's ``Adan``
(Algorithm 1 with the bias corrections of the authors' code), one tensor at a time."""
import pytest
import torch

import zoo
from conftest import assert_trajectories_equal, loss_fn, make_params, tensorwise

STEPS = 25


def ref_adan(p, g, s, t, hp, norm=None, phi=None):
    """One step for one tensor; ``phi(u, g, norm)`` is the cautious mask (test_cautious_twins'),
    applied to the bias-corrected first moment only, as timm."""
    b1, b2, b3 = hp.get("betas", (0.98, 0.92, 0.99))
    lr, wd, eps = hp["lr"], hp.get("weight_decay", 0.0), hp.get("eps", 1e-8)
    zeros = torch.zeros_like(p)
    d = g - s.get("g_prev", g)   # 0 at the first step
    s["g_prev"] = g
    s["m"] = b1 * s.get("m", zeros) + (1 - b1) * g
    s["s"] = b2 * s.get("s", zeros) + (1 - b2) * d
    s["n"] = b3 * s.get("n", zeros) + (1 - b3) * (g + b2 * d) ** 2
    denom = torch.sqrt(s["n"] / (1 - b3**t)) + eps
    m = s["m"] / (1 - b1**t)
    if phi is not None:
        m = phi(m, g, norm)
    u = (m + b2 * s["s"] / (1 - b2**t)) / denom
    if hp.get("no_prox"):
        return p * (1 - lr * wd) - lr * u
    return (p - lr * u) / (1 + lr * wd)


SETTINGS = {
    "defaults": dict(lr=0.01),
    "prox": dict(lr=0.02, betas=(0.8, 0.9, 0.95), eps=1e-6, weight_decay=0.1),
    "no-prox-maximize": dict(lr=0.02, betas=(0.9, 0.85, 0.99), weight_decay=0.05, no_prox=True, maximize=True),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_matches_reference(float64, setting):
    hp = SETTINGS[setting]
    params = make_params()
    opt = zoo.get("adan")(params, **hp)
    ours, ref, _ = tensorwise(opt, params, lambda p, g, s, t: ref_adan(p, g, s, t, hp), loss_fn, STEPS,
                              maximize=hp.get("maximize", False))
    assert_trajectories_equal(ours, ref, rtol=1e-12, atol=1e-13)


def test_defaults_are_timms():
    group = zoo.get("adan")(make_params()).param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["no_prox"]) == (
        1e-3, (0.98, 0.92, 0.99), 1e-8, 0.0, False)


def test_first_step_has_no_gradient_difference(float64):
    """timm's first step takes g_prev = g: the difference moment stays 0, n gets (1 - b3) g^2, and
    the state keeps -g for the next difference."""
    params = make_params()
    opt = zoo.get("adan")(params, lr=0.01)
    loss_fn(params, 1).backward()
    opt.step()
    for p in params:
        state = opt.state[p]
        assert torch.equal(state["exp_avg_diff"], torch.zeros_like(p))
        assert torch.equal(state["neg_pre_grad"], -p.grad)
        torch.testing.assert_close(state["exp_avg_sq"], (1 - 0.99) * p.grad**2, rtol=1e-15, atol=0)


def test_step_count_is_per_parameter(float64):
    """A parameter whose first gradient comes late starts its own count (and its difference at 0)
    there, as a fresh optimizer would."""
    late, fresh = make_params(), make_params()
    opt = zoo.get("adan")(late, lr=0.02, weight_decay=0.1)
    for t in (1, 2):   # only the first two tensors have gradients
        opt.zero_grad()
        loss_fn(late[:2], t).backward()
        opt.step()
    alone = zoo.get("adan")(fresh[2:], lr=0.02, weight_decay=0.1)
    for t in (3, 4, 5):
        opt.zero_grad()
        loss_fn(late, t).backward()
        fresh[2].grad = late[2].grad.clone()
        opt.step()
        alone.step()
    assert opt.state[late[2]]["step"] == 3
    torch.testing.assert_close(late[2], fresh[2], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"),
    (dict(betas=(0.9, 0.9)), "betas"),
    (dict(betas=(0.9, 0.9, 1.0)), r"betas\[2\]"),
    (dict(betas=(-0.1, 0.9, 0.9)), r"betas\[0\]"),
    (dict(betas=(0.9, 1.5, 0.9)), r"betas\[1\]"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(no_prox=1), "no_prox"),
    (dict(caution=True, betas=(0.0, 0.92, 0.99)), r"meaningless.*betas\[0\] is 0"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo.get("adan")(make_params(), **kwargs)
