"""bfloat16 and float16 weights that keep their small updates: ``stochastic_round=True`` (unbiased
rounding of the updated weight, seeded, its position in the optimizer state) and ``kahan=True``
(a compensation buffer, as optimi's Kahan summation), for every registered name."""
import copy
import io

import pytest
import torch
from torch import nn

import zoo
from zoo.quantized import round_stochastically, rounding_noise

ALL = zoo.names()


def hparams(name):
    rec = zoo.info(name)
    return {"rank": 4} if rec.low_rank and "rank" not in rec.fixed else {}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased(dtype):
    """The mean of 200,000 roundings of each value equals the value within 4 standard errors."""
    low = torch.tensor([1.0, -3.0, 0.0078125, 200.0], dtype=dtype)
    high = torch.nextafter(low, torch.full_like(low, torch.inf))
    fractions = torch.tensor([0.3, 0.71, 0.05, 0.5])
    values = low.float() + fractions * (high.float() - low.float())
    draws = 200_000
    noise = rounding_noise((draws, 4), seed=3, count=1, device="cpu")
    rounded = round_stochastically(values.expand(draws, 4), dtype, noise).float()
    assert set(rounded.unique().tolist()) <= set(low.float().tolist()) | set(high.float().tolist())
    gap = high.float() - low.float()
    standard_error = gap * (fractions * (1 - fractions)).sqrt() / draws**0.5
    assert ((rounded.mean(0) - values).abs() <= 4 * standard_error).all(), (rounded.mean(0) - values) / standard_error


def test_a_representable_value_is_kept_whatever_the_noise():
    values = torch.tensor([1.0, -0.5, 3.0, 0.0, float("inf")])
    for seed in range(5):
        noise = rounding_noise(values.shape, seed=seed, count=1, device="cpu")
        assert torch.equal(round_stochastically(values, torch.bfloat16, noise), values.bfloat16())


def bf16_sgd(**precision):
    """A bfloat16 weight of 100,000 ones under SGD with updates of 1e-4, far below half its gap (2^-8)."""
    weight = torch.ones(100_000, dtype=torch.bfloat16, requires_grad=True)
    opt = zoo.get("sgdm")([weight], lr=1e-4, momentum=0.0, **precision)
    return weight, opt


def sgd_steps(weight, opt, steps):
    for _ in range(steps):
        weight.grad = torch.ones_like(weight)
        opt.step()


def test_nearest_rounding_loses_small_updates_and_both_remedies_keep_them():
    weight, opt = bf16_sgd()
    sgd_steps(weight, opt, 20)
    assert torch.equal(weight, torch.ones_like(weight))   # the failure the remedies are for
    weight, opt = bf16_sgd(stochastic_round=True)
    sgd_steps(weight, opt, 20)
    gap, p = 2.0**-8, 20e-4 / 2.0**-8   # one step of 1e-4 below 1.0, whose gap below is 2^-8
    standard_error = gap * (p * (1 - p) / weight.numel()) ** 0.5 * 5   # loose: 20 correlated steps
    assert abs(weight.float().mean().item() - (1 - 20e-4)) < standard_error
    weight, opt = bf16_sgd(kahan=True)
    sgd_steps(weight, opt, 20)
    exact = 1 - 20e-4
    # the weight and what it still owes; the compensation is bfloat16 (as optimi's): its own rounding
    # errs by its 2^-9 or less, 20 times at most, against the 2e-3 nearest rounding lost entirely
    total = weight.float() + opt.state[weight]["kahan_comp"].float()
    assert (total - exact).abs().max() < 20 * 2.0**-9 * 2e-3
    assert (weight.float() - exact).abs().max() <= 2.0**-9   # within half a gap of the exact weight


def test_the_rounding_is_seeded_per_parameter_and_step():
    a, opt_a = bf16_sgd(stochastic_round=True)
    b, opt_b = bf16_sgd(stochastic_round=True)
    sgd_steps(a, opt_a, 3)
    sgd_steps(b, opt_b, 3)
    assert torch.equal(a, b) and opt_a.state[a]["rounding"] == 3


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(16, 16), "mlp": nn.Linear(16, 24)})])
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        block = self.layers[0]
        return self.head(torch.tanh(block["mlp"](torch.relu(block["attn"](x)))))


def train(model, opt, steps, first=0):
    for t in range(first, first + steps):
        gen = torch.Generator().manual_seed(t)
        x, y = torch.randn(16, 16, generator=gen), torch.randn(16, 4, generator=gen)
        dtype = next(model.parameters()).dtype
        opt.zero_grad()
        nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
        opt.step()


def bf16_pair(name, mode):
    torch.manual_seed(0)
    master = Net()
    model = copy.deepcopy(master).bfloat16()
    master.load_state_dict({k: v.float() for k, v in model.state_dict().items()})   # the same start
    return (model, zoo.create(model, name, **{mode: True}, **hparams(name))), (master, zoo.create(master, name, **hparams(name)))


@pytest.mark.parametrize("mode", ["stochastic_round", "kahan"])
@pytest.mark.parametrize("name", ALL)
def test_every_name_resumes_bit_for_bit_with_its_bytes_counted(name, mode):
    """6 steps of bfloat16 weights, saved after 3 (through torch.save, weights_only) and resumed:
    bit for bit the uninterrupted run; the measured state bytes are the formula's."""
    (model, opt), _ = bf16_pair(name, mode)
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, 3, first=3)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    (resumed, resumed_opt), _ = bf16_pair(name, mode)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed, resumed_opt, 3, first=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    key = "kahan_comp" if mode == "kahan" else "rounding"
    assert all(key in opt.state[p] for p in model.parameters())
    assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt)


# learning rates at which a step moves a weight by about 1e-4, below half the gap of most bfloat16
# weights of this net (2^-9 at 0.25), and 30 steps by about 1e-3, above it
SMALL_STEPS = {"adamw": 1e-4, "c-adamw": 1e-4, "lion": 1e-4, "sgdm": 5e-4, "apollo-mini": 2e-5, "muon": 3e-4,
               "sf-adamw": 2e-4}


@pytest.mark.parametrize("mode", ["stochastic_round", "kahan"])
@pytest.mark.parametrize("name", SMALL_STEPS)
def test_bf16_weights_move_as_float32_master_weights_where_nearest_rounding_stalls(name, mode):
    """30 small steps. How far the bfloat16 weights moved along the float32 run's move (their move
    projected on it, over its squared length): about 1 with either remedy, far less rounded to
    nearest (measured: 0.10-0.36 nearest, 0.88-1.01 with stochastic rounding or Kahan)."""
    def along(mode):
        (model, opt), (master, reference) = bf16_pair(name, mode or "kahan")
        if mode is None:
            opt = zoo.create(model, name, **hparams(name))
        start = [p.detach().float().clone() for p in master.parameters()]
        for o in (opt, reference):
            for g in o.param_groups:
                g["lr"] = SMALL_STEPS[name]
        train(model, opt, 30)
        train(master, reference, 30)
        ours = torch.cat([(p.float() - s).flatten() for p, s in zip(model.parameters(), start)])
        theirs = torch.cat([(p - s).flatten() for p, s in zip(master.parameters(), start)])
        return (ours @ theirs / (theirs @ theirs)).item()
    assert abs(along(mode) - 1) < 0.15
    assert along(None) < 0.4


@pytest.mark.parametrize("mode", ["stochastic_round", "kahan"])
@pytest.mark.parametrize("name", ["adamw", "c-lion", "apollo-mini"])
def test_per_layer_updates_round_as_the_ordinary_step(name, mode):
    (a, opt_a), _ = bf16_pair(name, mode)
    (b, _), _ = bf16_pair(name, mode)
    opt_b = zoo.create(b, name, layerwise=True, **{mode: True}, **hparams(name))
    train(a, opt_a, 4)
    train(b, opt_b, 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_what_is_refused():
    weight = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="cannot both be set"):
        zoo.get("adamw")([weight], stochastic_round=True, kahan=True)
    with pytest.raises(ValueError, match="Invalid foreach: kahan=True"):
        zoo.get("adamw")([weight], kahan=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid stochastic_round"):
        zoo.get("adamw")([weight], stochastic_round="yes")
    model = Net()
    zoo.quantize_weights(model)
    with pytest.raises(ValueError, match="Invalid kahan: True with INT8 weights"):
        zoo.create(model, "adamw", kahan=True)


def test_float32_parameters_are_not_touched_by_the_settings():
    """On float32 weights both settings change nothing (there is nothing to round)."""
    torch.manual_seed(0)
    a = Net()
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    for model, kw in ((a, {}), (b, {"stochastic_round": True}), (c, {"kahan": True})):
        train(model, zoo.create(model, "adamw", **kw), 3)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)
