"""MARS (Yuan et al. 2024) against a plain reference written from the formula of timm's ``Mars``,
one tensor at a time: both types, the clip of the corrected gradient, the AdamW tensors."""
import pytest
import torch

import zoo
from conftest import assert_trajectories_equal, loss_fn, make_params, tensorwise

STEPS = 25


def ref_mars(p, g, s, t, hp, norm=None, phi=None):
    """One step for one tensor; ``phi(u, g, norm)`` is the cautious mask (test_cautious_twins'),
    applied to the update direction u (Adam's, or sign(m)) before the decay is added. Records in
    ``s["clipped"]`` whether each clip acted."""
    b1, b2 = hp.get("betas", (0.9, 0.99))
    lr, wd, eps = hp["lr"], hp.get("weight_decay", 0.0), hp.get("eps", 1e-8)
    zeros = torch.zeros_like(p)
    if p.dim() >= 2 or hp.get("optimize_1d"):
        c = g
        if t > 1:   # timm: the first step takes g itself, unclipped
            c = g + hp.get("gamma", 0.025) * b1 / (1 - b1) * (g - s["g_prev"])
            n = c.norm()
            s.setdefault("clipped", []).append(bool(n > 1))
            if n > 1:
                c = c / n
        s["g_prev"] = g
        s["m"] = b1 * s.get("m", zeros) + (1 - b1) * c
        if hp.get("mars_type") == "lion":
            u = torch.sign(s["m"])
        else:
            s["v"] = b2 * s.get("v", zeros) + (1 - b2) * c * c
            u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"]) / (1 - b2**t) ** 0.5 + eps)
    else:   # AdamW on the raw gradient
        b1, b2 = hp.get("betas_1d") or (b1, b2)
        lr = lr * hp.get("lr_1d_factor", 1.0)
        s["m"] = b1 * s.get("m", zeros) + (1 - b1) * g
        s["v"] = b2 * s.get("v", zeros) + (1 - b2) * g * g
        u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"]) / (1 - b2**t) ** 0.5 + eps)
    if phi is not None:
        u = phi(u, g, norm)
    return p - lr * (wd * p + u)


# name: (hyper-parameters, scale of the loss: small gradients leave the clip inactive on some steps)
SETTINGS = {
    "defaults": (dict(lr=0.01), 1.0),
    "adamw-small-gradients": (dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, gamma=0.1,
                                   lr_1d_factor=0.5, betas_1d=(0.7, 0.9)), 0.02),
    "lion-maximize": (dict(lr=0.005, mars_type="lion", weight_decay=0.1, gamma=0.05, maximize=True), 0.3),
    "optimize-1d": (dict(lr=0.01, betas=(0.95, 0.98), optimize_1d=True, gamma=0.5, weight_decay=0.05), 1.0),
}


def compare(name, hp, scale=1.0, norm=None, phi=None):
    """Our trajectory and the reference's over STEPS steps, and the reference's states."""
    params = make_params()
    opt = zoo.get(name)(params, **hp, **({} if norm is None else {"caution_norm": norm}))
    ours, ref, states = tensorwise(opt, params, lambda p, g, s, t: ref_mars(p, g, s, t, hp, norm, phi),
                                   lambda ps, t: scale * loss_fn(ps, t), STEPS, maximize=hp.get("maximize", False))
    assert_trajectories_equal(ours, ref, rtol=1e-12, atol=1e-13)
    return states


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_matches_reference(float64, setting):
    hp, scale = SETTINGS[setting]
    compare("mars", hp, scale)


def test_the_clip_acts_and_stays_off_in_the_compared_settings(float64):
    clipped = [c for setting in ("defaults", "adamw-small-gradients")
               for s in compare("mars", *SETTINGS[setting]) for c in s.get("clipped", [])]
    assert any(clipped) and not all(clipped)


@pytest.mark.parametrize("norm", ["mean", "paper", 0.1], ids=str)
@pytest.mark.parametrize("setting", ["lion-maximize", "adamw-small-gradients"])
def test_cautious_twin_matches_reference(float64, setting, norm):
    """The lion type and the AdamW tensors' own betas under the mask (the default type is in
    test_cautious_twins)."""
    from test_cautious_twins import phi
    hp, scale = SETTINGS[setting]
    compare("c-mars", hp, scale, norm, phi)


def test_cautious_lion_type_with_the_plain_mask_is_timms(float64):
    """timm takes sign(mask * m): with caution_norm=0.0 (mask 0 or 1) that is mask * sign(m) (every
    tensor a MARS one here; timm's AdamW tensors rescale the mask by its mean)."""
    def timm_phi(u, g, norm):
        return torch.sign((u * g > 0).to(u.dtype) * u)

    compare("c-mars", dict(lr=0.005, mars_type="lion", weight_decay=0.1, optimize_1d=True), 0.3, 0.0, timm_phi)


def test_defaults_are_timms():
    group = zoo.get("mars")(make_params()).param_groups[0]
    assert {k: group[k] for k in ("lr", "betas", "eps", "weight_decay", "gamma", "mars_type", "optimize_1d",
                                  "lr_1d_factor", "betas_1d")} == dict(
        lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, gamma=0.025, mars_type="adamw", optimize_1d=False,
        lr_1d_factor=1.0, betas_1d=None)


def test_first_step_takes_the_gradient_unclipped(float64):
    params = make_params()
    opt = zoo.get("mars")(params, lr=0.01)
    (10 * loss_fn(params, 1)).backward()
    opt.step()
    matrix = opt.state[params[0]]
    assert params[0].grad.norm() > 1   # a clip would have acted
    torch.testing.assert_close(matrix["exp_avg"], 0.1 * params[0].grad, rtol=1e-15, atol=0)
    torch.testing.assert_close(matrix["exp_avg_sq"], 0.01 * params[0].grad**2, rtol=1e-14, atol=0)
    assert torch.equal(matrix["last_grad"], params[0].grad)


@pytest.mark.parametrize("mars_type, optimize_1d", [("adamw", False), ("lion", False), ("lion", True)])
def test_state_is_kept_where_it_is_used(float64, mars_type, optimize_1d):
    params = make_params()
    opt = zoo.get("mars")(params, lr=0.01, mars_type=mars_type, optimize_1d=optimize_1d)
    loss_fn(params, 1).backward()
    opt.step()
    mars = {"step", "exp_avg", "last_grad"} | ({"exp_avg_sq"} if mars_type == "adamw" else set())
    for p in params:
        state = opt.state[p]
        assert set(state) == (mars if p.dim() >= 2 or optimize_1d else {"step", "exp_avg", "exp_avg_sq"})
        tensors = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
        assert opt.expected_state_bytes(p, opt.param_groups[0]) == tensors


def test_gradients_zeroed_in_place_keep_the_previous_gradient(float64):
    """The previous gradient is a copy: zero_grad(set_to_none=False) and a backward into the same
    gradient tensor give the trajectory of fresh gradients."""
    fresh, in_place = make_params(), make_params()
    a, b = zoo.get("mars")(fresh, lr=0.01, gamma=0.5), zoo.get("mars")(in_place, lr=0.01, gamma=0.5)
    for t in range(1, 6):
        a.zero_grad()
        b.zero_grad(set_to_none=False)
        loss_fn(fresh, t).backward()
        loss_fn(in_place, t).backward()
        a.step()
        b.step()
    for x, y in zip(fresh, in_place):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_mars_type_is_not_loaded_into_the_other():
    params = make_params()
    lion = zoo.get("mars")(params, mars_type="lion")
    loss_fn(params, 1).backward()
    lion.step()
    with pytest.raises(ValueError, match="mars_type='lion' but this Mars has mars_type='adamw'"):
        zoo.get("mars")(make_params()).load_state_dict(lion.state_dict())


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"),
    (dict(betas=(0.9,)), "betas"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(gamma=-0.1), "gamma"),
    (dict(gamma=float("inf")), "gamma"),
    (dict(mars_type="sgd"), "mars_type.*'adamw', 'lion'"),
    (dict(optimize_1d=1), "optimize_1d"),
    (dict(lr_1d_factor=-1.0), "lr_1d_factor"),
    (dict(betas_1d=(1.5, 0.9)), r"betas_1d\[0\]"),
    (dict(betas_1d=0.9), "betas_1d"),
    (dict(caution=True, betas=(0.0, 0.99)), "meaningless.*first betas are 0"),
    (dict(caution=True, betas=(0.0, 0.99), betas_1d=(0.9, 0.99), optimize_1d=True), "meaningless"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo.get("mars")(make_params(), **kwargs)


def test_caution_acts_with_a_zero_beta1_on_the_adamw_tensors():
    zoo.get("mars")(make_params(), caution=True, betas=(0.0, 0.99), betas_1d=(0.9, 0.99))   # not refused
