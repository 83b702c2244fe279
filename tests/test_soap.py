"""SOAP against a plain float64 reference written from the formula (zoo/optimizers/soap.py's docstring, the
official nikhilvyas/SOAP soap.py): Shampoo's statistics per dimension, eigh at the first step, Adam in the
eigenbasis, one power iteration and a QR every ``precondition_frequency`` steps with v reordered.

Eigenvectors are defined up to their signs, to which the parameters are invariant (a test), so trajectories
are compared through the parameters. The test shapes give every statistic distinct eigenvalues at the first
step (no dimension larger than the product of the others), where eigh's basis is unique up to those signs.
"""
import io
import math

import pytest
import torch

import zoo
from conftest import assert_trajectories_equal, loss_fn, make_params, side_by_side, trajectory, two_groups

STEPS = 25
DEFAULTS = dict(lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
                precondition_frequency=10, max_precond_dim=10000, precondition_1d=False, normalize_grads=False,
                correct_bias=True)
"""The official SOAP's defaults."""


def along(x, a, i):
    """The matrix ``a`` applied to ``x`` along its dimension ``i``."""
    return torch.movedim(torch.tensordot(a, x, dims=([1], [i])), 0, i)


def ref_soap(p, g, s, t, hp, norm=None, phi=None):
    """One tensor's call ``t`` (1, 2, ...) of SOAP; ``phi(u, g, norm)`` masks the update (the c- twin)."""
    hp = {**DEFAULTS, **hp}
    b1, b2 = hp["betas"]
    beta = b2 if hp["shampoo_beta"] == -1 else hp["shampoo_beta"]
    vector = p.dim() == 1 and not hp["precondition_1d"]
    dims = [] if vector else [i for i, size in enumerate(p.shape) if size <= hp["max_precond_dim"]]

    def gram(i):   # G_(i) G_(i)^T: g unfolded along dimension i, times its transpose
        unfolded = torch.movedim(g, i, 0).reshape(g.shape[i], -1)
        return unfolded @ unfolded.T

    def rotate(x, back=False):
        for i in dims:
            x = along(x, s["Q"][i] if back else s["Q"][i].T, i)
        return x

    if t == 1:   # the preconditioner only
        s.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p), L={i: (1 - beta) * gram(i) for i in dims})
        s["Q"] = {i: torch.linalg.eigh(s["L"][i]).eigenvectors.flip(1) for i in dims}
        return p
    s["step"] += 1
    k = s["step"]
    projected = rotate(g)
    s["m"] = b1 * s["m"] + (1 - b1) * projected
    s["v"] = b2 * s["v"] + (1 - b2) * projected**2
    u = rotate(s["m"] / (torch.sqrt(s["v"]) + hp["eps"]), back=True)
    if hp["normalize_grads"]:
        u = u / (1e-30 + torch.sqrt(torch.mean(u**2)))
    if phi is not None:
        u = phi(u, g, norm)
    size = hp["lr"] * math.sqrt(1 - b2**k) / (1 - b1**k) if hp["correct_bias"] else hp["lr"]
    p = p - size * u
    p = p - hp["lr"] * hp["weight_decay"] * p
    for i in dims:
        s["L"][i] = beta * s["L"][i] + (1 - beta) * gram(i)
    if dims and k % hp["precondition_frequency"] == 0:
        m = rotate(s["m"], back=True)
        for i in dims:
            q, stat = s["Q"][i], s["L"][i]
            order = torch.argsort(torch.diag(q.T @ stat @ q), descending=True)
            s["v"] = s["v"].index_select(i, order)
            s["Q"][i] = torch.linalg.qr(stat @ q[:, order]).Q
        s["m"] = rotate(m)
    return p


CASES = {
    # bias-corrected Adam on every dimension, refreshed every 4 steps; a vector and a scalar on plain Adam
    "defaults": (((4, 4), (2, 3, 4), (5,), ()), dict(lr=0.02, weight_decay=0.05, precondition_frequency=4)),
    # vectors preconditioned, dimensions above 4 left alone, normalised updates, no bias correction
    "options": (((6, 4), (2,), (3, 5), (2, 3, 4)),
                dict(lr=0.01, betas=(0.9, 0.99), shampoo_beta=0.8, eps=1e-6, weight_decay=0.1,
                     precondition_frequency=3, max_precond_dim=4, precondition_1d=True, normalize_grads=True,
                     correct_bias=False)),
    # a refresh at every step, no decay, two groups with their own learning rates
    "every-step": (((3, 3), (4, 2, 2), (3,)),
                   dict(lr=0.05, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0, precondition_frequency=1)),
}


def reference_run(params, hp, lrs):
    states = [{} for _ in params]
    return lambda ps, grads, t: [ref_soap(p, g, s, t, {**hp, "lr": lr}) for p, g, s, lr
                                 in zip(ps, grads, states, lrs)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_the_plain_reference(float64, case):
    shapes, hp = CASES[case]
    params = make_params(shapes)
    if case == "every-step":
        opt = zoo.get("soap")(two_groups(params, **hp))
        lrs = [hp["lr"]] * 2 + [hp["lr"] * 0.37] * (len(params) - 2)
    else:
        opt = zoo.get("soap")(params, **hp)
        lrs = [hp["lr"]] * len(params)
    ours, ref = side_by_side(opt, params, reference_run(params, hp, lrs), loss_fn, STEPS)
    assert_trajectories_equal(ours, ref, rtol=1e-11, atol=1e-12)
    assert all(not torch.equal(a, b) for a, b in zip(ours[-1], make_params(shapes)) if a.numel())


def test_the_first_step_sets_up_the_preconditioner_and_moves_nothing(float64):
    params = make_params(((4, 3), (5,)))
    start = [p.detach().clone() for p in params]
    opt = zoo.get("soap")(params, lr=0.1)
    loss_fn(params, 0).backward()
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, start))
    state = opt.state[params[0]]
    assert state["step"] == 0 and set(state) == {"step", "exp_avg", "exp_avg_sq", "GG_0", "Q_0", "GG_1", "Q_1"}
    assert set(opt.state[params[1]]) == {"step", "exp_avg", "exp_avg_sq"}   # a vector: plain Adam
    g = params[0].grad
    torch.testing.assert_close(state["GG_0"], (1 - 0.95) * (g @ g.T), rtol=1e-15, atol=0)   # shampoo_beta: beta2
    for i in (0, 1):
        q = state[f"Q_{i}"]
        eigenvalues = torch.diagonal(q.T @ state[f"GG_{i}"] @ q)
        assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])   # by decreasing eigenvalue
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[0]), rtol=0, atol=1e-14)
    opt.step()
    assert state["step"] == 1 and not torch.equal(params[0], start[0])


def test_the_parameters_do_not_depend_on_the_eigenvectors_signs(float64):
    def run(flip):
        params = make_params(((4, 4), (2, 3, 4)))
        opt = zoo.get("soap")(params, lr=0.02, precondition_frequency=3)
        for t in range(12):
            opt.zero_grad()
            loss_fn(params, t).backward()
            opt.step()
            if flip and t == 0:
                for state in opt.state.values():
                    for key in [k for k in state if k.startswith("Q_")]:
                        state[key][:, ::2] *= -1
        return params

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_maximize_climbs_what_minimize_descends(float64):
    shapes, hp = CASES["options"]
    climbed = trajectory(lambda ps: zoo.get("c-soap")(ps, maximize=True, **hp), 8, shapes, sign=-1.0)
    descended = trajectory(lambda ps: zoo.get("c-soap")(ps, **hp), 8, shapes)
    for a, b in zip(climbed[-1], descended[-1]):
        assert torch.equal(a, b)


def test_bfloat16_weights_keep_float32_bases_through_a_checkpoint():
    def run(opt, params, first, count):
        for t in range(first, first + count):
            opt.zero_grad()
            loss_fn([p.float() for p in params], t).backward()
            opt.step()

    params = make_params(((4, 4), (3,)), dtype=torch.bfloat16)
    opt = zoo.get("soap")(params, lr=0.02, precondition_frequency=2)
    run(opt, params, 0, 3)
    state = opt.state[params[0]]
    assert state["Q_0"].dtype == state["GG_1"].dtype == torch.float32 and state["exp_avg"].dtype == torch.bfloat16
    assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt) == 2 * (16 + 3) * 2 + 2 * 2 * 16 * 4
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    copies = [p.detach().clone().requires_grad_() for p in params]
    resumed = zoo.get("soap")(copies, lr=0.02, precondition_frequency=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state[copies[0]]["Q_1"].dtype == torch.float32
    run(opt, params, 3, 3)
    run(resumed, copies, 3, 3)
    assert all(torch.equal(a, b) for a, b in zip(params, copies))


def test_caution_is_refused_only_where_the_update_is_the_gradient_over_a_denominator():
    vectors = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="betas\\[0\\] is 0 and no dimension is preconditioned"):
        zoo.get("c-soap")(vectors, betas=(0.0, 0.95))
    zoo.get("c-soap")(vectors + [torch.zeros(2, 2, requires_grad=True)], betas=(0.0, 0.95))   # a rotation
    zoo.get("c-soap")(vectors, betas=(0.0, 0.95), precondition_1d=True)


@pytest.mark.parametrize("key, bad, match", [
    ("lr", -1.0, "lr"), ("betas", (0.9, 1.0), "betas"), ("shampoo_beta", 1.0, "shampoo_beta"),
    ("shampoo_beta", -0.5, "shampoo_beta.*-1"), ("shampoo_beta", True, "shampoo_beta"), ("eps", -1e-8, "eps"),
    ("weight_decay", -0.1, "weight_decay"), ("precondition_frequency", 0, "precondition_frequency"),
    ("precondition_frequency", 2.0, "precondition_frequency"), ("max_precond_dim", -1, "max_precond_dim"),
    ("max_precond_dim", True, "max_precond_dim"), ("merge_dims", "no", "merge_dims"),
    ("merge_dims", True, "merge_dims: True .* not implemented"), ("precondition_1d", 1, "precondition_1d"),
    ("normalize_grads", None, "normalize_grads"), ("correct_bias", "yes", "correct_bias"),
    ("caution_norm", "median", "caution_norm"),
])
def test_invalid_settings_are_refused_naming_them(key, bad, match):
    params = make_params(((3, 2),))
    with pytest.raises(ValueError, match=match):
        zoo.get("soap")(params, **{key: bad})
    with pytest.raises(ValueError, match=match):   # in a second group too
        zoo.get("soap")([{"params": params}, {"params": [torch.zeros(2, requires_grad=True)], key: bad}])
