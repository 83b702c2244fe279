"""Every c- twin against a plain per-tensor reference of PAPERS.md §A.1 over its base formula.

The references below are written from the formulas (PAPERS.md and each module's docstring), one
tensor at a time, with the mask applied to the explicit update direction u:
    phi(u, g) = u * 1[u g > 0] / max(mean, 1e-3)          "mean"
              = u * 1[u g > 0] * numel / (nnz + 1)         "paper"
              = u * (1[u g > 0] - c 1[u g <= 0])           soft, float c
"""
import math

import pytest
import torch

import zoo
from conftest import assert_trajectories_equal, loss_fn, make_params, tensorwise, trajectory
from test_ademamix import ref_ademamix
from test_adan import ref_adan
from test_lowrank import ref_lowrank
from test_mars import ref_mars
from test_schedule_free import ref_sf_adamw
from test_soap import ref_soap

NORMS = ["mean", "paper", 0.1]
STEPS = 25


def phi(u, g, norm, sign_of=None):
    if norm is None:   # the base optimizer: no mask
        return u
    mask = ((u if sign_of is None else sign_of) * g > 0).to(u.dtype)
    if norm == "mean":
        return u * mask / max(mask.mean().item(), 1e-3)
    if norm == "paper":
        return u * mask * (mask.numel() / (mask.sum().item() + 1))
    return u * (mask - norm * (1 - mask))


def zeros(p):
    return torch.zeros_like(p)


def ref_sgd(p, g, s, t, hp, norm):
    g = g + hp["weight_decay"] * p
    s["b"] = g.clone() if t == 1 else hp["momentum"] * s["b"] + (1 - hp.get("dampening", 0)) * g
    u = g + hp["momentum"] * s["b"] if hp.get("nesterov") else s["b"]
    return p - hp["lr"] * phi(u, g, norm)


def ref_adam(p, g, s, t, hp, norm, decoupled):
    b1, b2 = hp["betas"]
    if decoupled:
        p = p * (1 - hp["lr"] * hp["weight_decay"])
    else:
        g = g + hp["weight_decay"] * p
    s["m"] = b1 * s.get("m", zeros(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", zeros(p)) + (1 - b2) * g * g
    u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"] / (1 - b2**t)) + hp["eps"])
    return p - hp["lr"] * phi(u, g, norm)


def ref_rmsprop(p, g, s, t, hp, norm):
    g = g + hp["weight_decay"] * p
    alpha = hp["alpha"]
    s["v"] = alpha * s.get("v", zeros(p)) + (1 - alpha) * g * g
    variance = s["v"]
    if hp.get("centered"):
        s["a"] = alpha * s.get("a", zeros(p)) + (1 - alpha) * g
        variance = s["v"] - s["a"] ** 2
    s["b"] = hp["momentum"] * s.get("b", zeros(p)) + g / (torch.sqrt(variance) + hp["eps"])
    return p - hp["lr"] * phi(s["b"], g, norm)


def ref_radam(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    g = g + hp["weight_decay"] * p
    s["m"] = b1 * s.get("m", zeros(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", zeros(p)) + (1 - b2) * g * g
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    u = s["m"] / (1 - b1**t)
    if rho > 5:   # the adaptive, rectified step; before it, momentum SGD
        rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        u = u * math.sqrt(1 - b2**t) / (torch.sqrt(s["v"]) + hp["eps"]) * rect
    return p - hp["lr"] * phi(u, g, norm)


def ref_lamb(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    s["m"] = b1 * s.get("m", zeros(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", zeros(p)) + (1 - b2) * g * g
    u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"]) / math.sqrt(1 - b2**t) + hp["eps"])
    u = phi(u, g, norm) + hp["weight_decay"] * p   # the mask acts before the decay and the trust ratio
    w, n = p.norm(), u.norm()
    trust = w / n if w > 0 and n > 0 else 1.0
    return p - hp["lr"] * trust * u


def ref_nadamw(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    psi = 4e-3
    p = p * (1 - hp["lr"] * hp["weight_decay"])
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    s["prod"] = s.get("prod", 1.0) * mu
    s["m"] = b1 * s.get("m", zeros(p)) + (1 - b1) * g
    s["v"] = b2 * s.get("v", zeros(p)) + (1 - b2) * g * g
    d = torch.sqrt(s["v"] / (1 - b2**t)) + hp["eps"]
    u = ((1 - mu) / (1 - s["prod"]) * g + mu_next / (1 - s["prod"] * mu_next) * s["m"]) / d
    return p - hp["lr"] * phi(u, g, norm)


def ref_lion(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    m = s.get("m", zeros(p))
    p = p * (1 - hp["lr"] * hp["weight_decay"])
    u = torch.sign(b1 * m + (1 - b1) * g)
    s["m"] = b2 * m + (1 - b2) * g
    return p - hp["lr"] * phi(u, g, norm)


def ref_signum(p, g, s, t, hp, norm):
    mu = hp["momentum"]
    s["m"] = mu * s.get("m", zeros(p)) + (1 - mu) * g
    p = p * (1 - hp["lr"] * hp["weight_decay"])
    return p - hp["lr"] * phi(torch.sign(s["m"]), g, norm)


def ref_adafactor(p, g, s, t, hp, norm):
    eps1, eps2 = torch.finfo(p.dtype).eps, 1e-3
    one_minus_b2 = t ** -0.8
    alpha = max(eps2, p.norm().item() / math.sqrt(p.numel())) * min(hp["lr"], 1 / math.sqrt(t))
    p = p * (1 - hp["lr"] * hp["weight_decay"])
    if p.dim() > 1:
        s["r"] = (1 - one_minus_b2) * s.get("r", zeros(p[:, :1])) + one_minus_b2 * (g * g).mean(1, keepdim=True)
        s["c"] = (1 - one_minus_b2) * s.get("c", zeros(p[:1])) + one_minus_b2 * (g * g).mean(0, keepdim=True)
        var = s["r"] * s["c"] / max(s["r"].mean().item(), eps1)
    else:
        s["v"] = (1 - one_minus_b2) * s.get("v", zeros(p)) + one_minus_b2 * g * g
        var = s["v"]
    u = g / torch.sqrt(torch.clamp(var, min=eps1 * eps1))
    u = u / max(1.0, u.norm().item() / math.sqrt(u.numel()))
    s["m"] = hp["beta1"] * s.get("m", zeros(p)) + (1 - hp["beta1"]) * alpha * u
    return p - phi(s["m"], g, norm)


def ref_laprop(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    lr = hp["lr"]
    p = p * (1 - lr * hp["weight_decay"])
    s["v"] = b2 * s.get("v", zeros(p)) + (1 - b2) * g * g
    d = torch.sqrt(s["v"] / (1 - b2**t)) + hp["eps"]
    s["m"] = b1 * s.get("m", zeros(p)) + (1 - b1) * lr * g / d
    return p - phi(s["m"], g, norm) / (1 - b1**t)   # constant lr: lr / a1 = 1 / (1 - b1^t)


def ref_adopt(p, g, s, t, hp, norm):
    b1, b2 = hp["betas"]
    g = g + hp["weight_decay"] * p
    if t == 1:
        s["v"], s["m"] = g * g, zeros(p)
        return p
    c = (t - 1) ** 0.25
    n = torch.clamp(g / torch.clamp(torch.sqrt(s["v"]), min=hp["eps"]), -c, c)
    s["m"] = b1 * s["m"] + (1 - b1) * n
    p = p - hp["lr"] * phi(s["m"], g, norm)
    s["v"] = b2 * s["v"] + (1 - b2) * g * g
    return p


def ns_float64(x, steps=5, a=3.4445, b=-4.7750, c=2.0315):
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(x.norm().item(), 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def ref_muon(p, g, s, t, hp, norm):
    lr, mu, wd = hp["lr"], hp["momentum"], hp["weight_decay"]
    if p.dim() < 2:   # AdamW fallback for non-matrices
        return ref_adam(p, g, s, t, dict(lr=lr, betas=hp["adamw_betas"], eps=1e-8, weight_decay=wd),
                        norm, decoupled=True)
    s["b"] = mu * s.get("b", zeros(p)) + (1 - mu) * g
    u = (1 - mu) * g + mu * s["b"]
    o = ns_float64(phi(u, g, norm, sign_of=s["b"]))
    p = p * (1 - lr * wd)
    return p - lr * math.sqrt(max(1, p.shape[0] / p.shape[1])) * o


def lowrank_reference(method):
    def reference(p, g, s, t, hp, norm):
        return ref_lowrank(p, g, s, t, hp, lambda u, g_: phi(u, g_, norm), method)
    return reference


# name: (reference, hyper-parameters)
TWINS = {
    "c-sgdm": (ref_sgd, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.02)),
    "c-nesterov": (ref_sgd, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)),
    "c-adam": (lambda *a: ref_adam(*a, decoupled=False), dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.02)),
    "c-adamw": (lambda *a: ref_adam(*a, decoupled=True), dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)),
    "c-nadamw": (ref_nadamw, dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)),
    "c-lion": (ref_lion, dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)),
    "c-signum": (ref_signum, dict(lr=0.01, momentum=0.9, weight_decay=0.1)),
    "c-adafactor": (ref_adafactor, dict(lr=0.05, beta1=0.9, weight_decay=0.1)),
    "c-laprop": (ref_laprop, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-15, weight_decay=0.1)),
    "c-adopt": (ref_adopt, dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.02)),
    "c-galore": (lowrank_reference("galore"), dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                                   rank=2, update_proj_gap=4, scale=0.25)),
    "c-fira": (lowrank_reference("fira"), dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                               rank=2, update_proj_gap=4, scale=1.0, norm_growth_limit=1.01)),
    "c-rmsprop": (ref_rmsprop, dict(lr=0.01, alpha=0.9, eps=1e-8, momentum=0.8, centered=True, weight_decay=0.02)),
    "c-lamb": (ref_lamb, dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
    "c-radam": (ref_radam, dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.02)),
    "c-muon": (ref_muon, dict(lr=0.02, momentum=0.9, weight_decay=0.1, adamw_betas=(0.9, 0.95),
                              ns_dtype=torch.float64)),
    "c-ademamix": (lambda *a: ref_ademamix(*a, phi=phi), dict(lr=0.02, betas=(0.8, 0.95, 0.99), alpha=5.0,
                                                             alpha_warmup=10, beta3_warmup=15, weight_decay=0.1)),
    "c-adan": (lambda *a: ref_adan(*a, phi=phi), dict(lr=0.02, betas=(0.8, 0.9, 0.95), eps=1e-6, weight_decay=0.1)),
    "c-sf-adamw": (lambda *a: ref_sf_adamw(*a, phi=phi), dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1,
                                                              warmup_steps=5, r=0.5)),
    "c-soap": (lambda *a: ref_soap(*a, phi=phi), dict(lr=0.02, betas=(0.8, 0.95), weight_decay=0.1,
                                                     precondition_frequency=4, max_precond_dim=4)),
    "c-mars": (lambda *a: ref_mars(*a, phi=phi), dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1,
                                                     gamma=0.1)),
}


def test_every_cautious_name_has_a_reference():
    assert sorted(TWINS) == zoo.names(cautious=True)


@pytest.mark.parametrize("norm", NORMS, ids=str)
@pytest.mark.parametrize("name", sorted(TWINS))
def test_cautious_twin_matches_reference(float64, name, norm):
    reference, hp = TWINS[name]
    params = make_params()
    opt = zoo.get(name)(params, caution_norm=norm, **hp)
    ours, ref, _ = tensorwise(opt, params, lambda p, g, s, t: reference(p, g, s, t, hp, norm), loss_fn, STEPS)
    assert_trajectories_equal(ours, ref, rtol=1e-11, atol=1e-12)
    # the mask acted on this problem: the twin left its base optimizer's trajectory
    base = trajectory(lambda q: zoo.get(zoo.info(name).base)(q, **hp), STEPS, first_step=1)
    assert any(not torch.allclose(a, b) for a, b in zip(ours[-1], base[-1]))


BASES = {"lamb": (ref_lamb, dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)),
         "ademamix": (lambda *a: ref_ademamix(*a, phi=phi), dict(lr=0.02, betas=(0.8, 0.95, 0.99), alpha=5.0,
                                                                alpha_warmup=10, beta3_warmup=15, weight_decay=0.1)),
         "adan": (ref_adan, dict(lr=0.02, betas=(0.8, 0.9, 0.95), eps=1e-6, weight_decay=0.1, no_prox=True)),
         "sf-adamw": (ref_sf_adamw, dict(lr=0.05, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1, warmup_steps=5,
                                         r=0.5)),
         "soap": (ref_soap, dict(lr=0.02, betas=(0.8, 0.95), weight_decay=0.1, precondition_frequency=4,
                                 max_precond_dim=4)),
         "mars": (ref_mars, dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, gamma=0.1))}
"""Bases without a torch.optim counterpart, against the same plain references without the mask."""


@pytest.mark.parametrize("name", sorted(BASES))
def test_base_matches_reference(float64, name):
    reference, hp = BASES[name]
    params = make_params()
    opt = zoo.get(name)(params, **hp)
    ours, ref, _ = tensorwise(opt, params, lambda p, g, s, t: reference(p, g, s, t, hp, None), loss_fn, STEPS)
    assert_trajectories_equal(ours, ref, rtol=1e-11, atol=1e-12)


def test_lamb_global_clip_divides_every_gradient_by_one_factor(float64):
    """max_grad_norm: every gradient divided by max(||all gradients|| / max_grad_norm, 1) before the
    step, the same as the unclipped LAMB given the divided gradients."""
    clipped, plain = make_params(), make_params()
    a = zoo.get("lamb")(clipped, lr=0.02, max_grad_norm=0.5)
    b = zoo.get("lamb")(plain, lr=0.02)
    for t in range(1, 6):
        for params in (clipped, plain):
            for p in params:
                p.grad = None
            loss_fn(params, t).backward()
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clipped]))
        assert total > 0.5   # the clip acts
        for p in plain:
            p.grad = p.grad / (total / 0.5)
        a.step()
        b.step()
    for x, y in zip(clipped, plain):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)
