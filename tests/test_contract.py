"""The torch.optim contract, checked for every registered name (new optimizers are included
automatically: the parameters come from zoo.names())."""
import copy
import io

import pytest
import torch

import zoo

ALL = zoo.names()


def least_squares(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen)
    y = x @ torch.randn(8, 4, generator=gen) + 0.5 + 0.01 * torch.randn(64, 4, generator=gen)
    w = torch.zeros(8, 4, dtype=dtype, requires_grad=True)
    b = torch.zeros(4, dtype=dtype, requires_grad=True)
    return [w, b], lambda: ((x.to(dtype) @ w + b - y.to(dtype)) ** 2).mean()


def build(name, params, **hp):
    return zoo.get(name)(params, **hp)


def run(opt, loss, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


@pytest.mark.parametrize("name", ALL)
def test_loss_decreases_on_least_squares(name):
    params, loss = least_squares()
    start = loss().item()
    opt = build(name, params, lr=10 * zoo.info(name).defaults["lr"])
    run(opt, loss, 300)
    assert loss().item() < 0.8 * start


@pytest.mark.parametrize("name", ALL)
def test_closure_is_called_and_its_loss_returned(name):
    params, loss = least_squares()
    opt = build(name, params)
    calls = []

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        calls.append(value.item())
        return value

    before = [p.detach().clone() for p in params]
    returned = opt.step(closure)
    assert calls and returned.item() == calls[0]
    for _ in range(3):   # some optimizers (ADOPT) only move from their second step
        opt.step(closure)
    assert any(not torch.equal(p, q) for p, q in zip(params, before))


@pytest.mark.parametrize("name", ALL)
def test_params_without_grad_are_skipped(name):
    params, loss = least_squares()
    frozen = torch.randn(3, 3, requires_grad=True)
    opt = build(name, [*params, frozen])
    before = frozen.detach().clone()
    run(opt, loss, 3)
    assert frozen.grad is None and torch.equal(frozen, before) and frozen not in opt.state


@pytest.mark.parametrize("name", ALL)
def test_zero_size_and_non_contiguous_params(name):
    def problem(contiguous):
        gen = torch.Generator().manual_seed(1)
        base = torch.randn(6, 5, generator=gen)
        w = (base.clone() if contiguous else base.t().contiguous().t()).requires_grad_()
        empty = torch.zeros(0, 3, requires_grad=True)
        target = torch.randn(6, 5, generator=gen)
        return [w, empty], lambda: ((w - target) ** 2).sum() + empty.sum()

    results = []
    for contiguous in (True, False):
        params, loss = problem(contiguous)
        assert params[0].is_contiguous() == contiguous
        run(build(name, params), loss, 4)
        assert params[1].shape == (0, 3)
        results.append(params[0].detach())
    # equal up to float32 round-off: reductions (norms, means) may sum in another order
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_bf16_params_update(name):
    params, loss = least_squares(dtype=torch.bfloat16)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    before = [p.detach().clone() for p in params]
    run(build(name, params, lr=10 * zoo.info(name).defaults["lr"]), loss, 3)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, before))


# an invalid value for each hyper-parameter name the zoo uses
INVALID = {
    "lr": -1.0, "weight_decay": -0.1, "momentum": 1.5, "dampening": -1.0, "betas": (1.2, 0.9),
    "adamw_betas": (0.9, -0.1), "eps": -1e-8, "adamw_eps": -1.0, "momentum_decay": -1.0,
    "beta2_decay": 0.5, "d": 0.5, "beta1": 1.0, "clip_exp": -1.0, "ns_steps": -1,
    "adjust_lr_fn": "sqrt", "caution_norm": "median", "maximize": "yes", "nesterov": "no",
    "rank": 0, "update_proj_gap": 0, "scale": 0.0, "scale_type": "row", "proj": "qr",
    "norm_growth_limit": 0.5, "store_projection": "no", "seed": -1,
    "decoupled": "no", "use_muon": "auto", "fused": "yes", "foreach": "yes", "adamw_lr_ratio": -1.0,
    "ns_dtype": torch.int32,
    "compile": "yes", "caution": "yes", "ns_coefficients": (1.0, 2.0),
    # the second wave (RMSprop, RAdam, LAMB, MARS, Adan, AdEMAMix, Schedule-Free AdamW, SOAP)
    "alpha": -1.0, "centered": "yes", "decoupled_weight_decay": "yes", "always_adapt": "yes",
    "bias_correction": "yes", "grad_averaging": "yes", "max_grad_norm": -1.0, "trust_clip": "yes",
    "betas_1d": (1.5, 0.9), "gamma": -0.1, "lr_1d_factor": -1.0, "mars_type": "sgd", "optimize_1d": "yes",
    "no_prox": "yes", "alpha_warmup": 0, "beta3_warmup": -5, "r": -1.0, "warmup_steps": -1, "weight_lr_power": -1.0,
    "correct_bias": "yes", "max_precond_dim": -1, "merge_dims": True, "normalize_grads": "yes",
    "precondition_1d": "yes", "precondition_frequency": 0, "shampoo_beta": 1.5,
    "state_bits": 16, "stochastic_round": "yes", "kahan": 1,
}


@pytest.mark.parametrize("name", ALL)
def test_invalid_hyper_parameters_raise_value_error_naming_them(name):
    params, _ = least_squares()
    checked = 0
    for key, bad in INVALID.items():
        if key not in zoo.info(name).defaults:
            continue
        with pytest.raises(ValueError, match=key):
            build(name, params, **{key: bad})
        with pytest.raises(ValueError, match=key):   # a bad value in a second group is refused too
            build(name, [{"params": params[:1]}, {"params": params[1:], key: bad}])
        checked += 1
    assert checked >= 3


def test_every_setting_of_every_name_has_an_invalid_value_above():
    settings = {key for name in ALL for key in zoo.info(name).defaults}
    assert settings <= INVALID.keys(), f"add a refused value of {sorted(settings - INVALID.keys())} to INVALID"


@pytest.mark.parametrize("name", zoo.names(cautious=True))
def test_cautious_names_cannot_be_built_uncautious(name):
    params, _ = least_squares()
    with pytest.raises(ValueError, match=zoo.info(name).base):
        build(name, params, caution=False)


def test_caution_that_cannot_act_is_an_error():
    params, _ = least_squares()
    with pytest.raises(ValueError, match="beta1"):
        zoo.get("c-adafactor")(params, beta1=None)
    with pytest.raises(ValueError, match="momentum is 0"):
        zoo.get("c-sgdm")(params, momentum=0.0)
    with pytest.raises(ValueError, match="betas"):
        zoo.get("c-lion")(params, betas=(0.0, 0.99))


def test_fused_refuses_caution_and_foreach():
    params, _ = least_squares()
    with pytest.raises(ValueError, match="fused"):
        zoo.get("c-adamw")(params, fused=True)
    with pytest.raises(ValueError, match="fused"):
        zoo.get("adamw")(params, fused=True, foreach=True)


def test_lr_may_be_a_tensor():
    params, loss = least_squares()
    opt = zoo.get("c-adamw")(params, lr=torch.tensor(1e-2))
    run(opt, loss, 2)
    reference_params, reference_loss = least_squares()
    run(zoo.get("c-adamw")(reference_params, lr=1e-2), reference_loss, 2)
    assert all(torch.equal(p, q) for p, q in zip(params, reference_params))


def test_deepcopy_of_an_optimizer_continues_identically():
    params, loss = least_squares()
    opt = zoo.get("c-lion")(params, lr=1e-3)
    run(opt, loss, 2)
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["caution"] is True


@pytest.mark.parametrize("name", [n for n in ALL if "foreach" in zoo.info(n).defaults])
def test_foreach_path_matches_the_for_loop(name):
    results = []
    for foreach in (False, True):
        params, loss = least_squares()
        opt = build(name, params, foreach=foreach, weight_decay=0.1)
        run(opt, loss, 10)
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)   # float32 round-off


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_resume_is_bit_for_bit_across_projection_refreshes(name, dtype):
    """6 steps straight == 3 steps, state_dict through torch.save, 3 steps (refresh every 2 steps
    for the low-rank optimizers, so seeds have advanced and limiter norms are recorded)."""
    extra = {"update_proj_gap": 2} if zoo.info(name).low_rank else {}

    def problem():
        params, loss = least_squares(dtype=dtype)
        with torch.no_grad():
            for p in params:
                p.add_(0.1)
        return params, loss

    straight, loss = problem()
    run(build(name, straight, **extra), loss, 6)
    resumed, loss = problem()
    first = build(name, resumed, **extra)
    run(first, loss, 3)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = build(name, resumed, **extra)
    second.load_state_dict(torch.load(buffer, weights_only=False))
    run(second, loss, 3)
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ALL)
def test_infinite_values_are_refused(name):
    params, _ = least_squares()
    for key in ("lr", "weight_decay", "eps", "norm_growth_limit"):
        if key in zoo.info(name).defaults:
            with pytest.raises(ValueError, match=key):
                build(name, params, **{key: float("inf")})


def test_fixed_arguments_cannot_be_bypassed_through_groups():
    params, _ = least_squares()
    with pytest.raises(ValueError, match="caution"):
        zoo.get("c-adamw")([{"params": params, "caution": False}])
    with pytest.raises(ValueError, match="rank"):
        zoo.get("apollo-mini")([{"params": params[:1], "rank": 3}])
    zoo.get("apollo-mini")([{"params": params[:1]}, {"params": params[1:], "rank": None}])   # AdamW group


def test_muon_without_nesterov_keeps_its_momentum_buffer():
    w = torch.zeros(6, 4, requires_grad=True)
    w.grad = torch.randn(6, 4)
    opt = zoo.get("muon")([w], nesterov=False, momentum=0.9, ns_dtype=torch.float32)
    opt.step()
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], 0.1 * w.grad)


@pytest.mark.parametrize("name", ["apollo", "apollo-mini", "fira", "galore"])
def test_float16_low_rank_steps_stay_finite_with_large_gradients(name):
    w = torch.zeros(64, 256, dtype=torch.float16, requires_grad=True)
    w.grad = (torch.randn(64, 256) * 50).to(torch.float16)
    opt = zoo.get(name)([w], **({} if name == "apollo-mini" else {"rank": 8}))
    opt.step()
    assert torch.isfinite(w).all() and w.abs().max() > 0
