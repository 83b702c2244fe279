"""INT8 weights (zoo.quantized): storage, stochastic rounding, the dequantizing linear, every
registered optimizer stepping quantized weights as it steps float ones, per-layer updates,
resume, memory and the refusals."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.layerwise import SpentGradient
from zoo.quantized import (QuantizedWeight, rounding_noise, decode, encode, materialize_quantized, quantize,
                           quantize_weights, quantized_bytes)
from analysis.memory.plan import Setting, llama_step
from analysis.models.llama import CONFIGS, Llama

GROUP = 32


def groups_of(t, size=GROUP):
    return t.reshape(-1, size)


# ---------------------------------------------------------------- storage

def test_round_trip_within_half_a_step_per_group():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.logspace(-3, 1, 64)[:, None]   # groups of very different ranges
    q = quantize(w, group_size=GROUP)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == w.shape and q.scale.shape == (64 * 96 // GROUP,)
    g = groups_of(w)
    step = (g.amax(1) - g.amin(1)) / 255
    assert torch.equal(q.scale, step) and torch.equal(q.low, g.amin(1))
    error = groups_of(q.dequantize() - w).abs()
    # half a step, plus the float32 rounding of (w - low) / scale and of low + scale * q
    assert (error <= step[:, None] / 2 + 4 * torch.finfo(torch.float32).eps * g.abs().amax(1, keepdim=True)).all()
    assert (error > step[:, None] / 4).any()    # the bound is not trivially loose


def test_hand_made_groups_have_exact_scale_offset_and_codes():
    ramp = 3.0 + 0.5 * torch.arange(256.0)          # low 3, step 0.5: codes 0..255
    constant = torch.full((256,), -1.25)            # scale 0, codes 0, exact
    two = torch.tensor([-2.0, -2.0 + 255 / 64]).repeat(128)   # only the extremes: codes 0 and 255
    q = quantize(torch.stack([ramp, constant, two]), group_size=256)
    assert q.low.tolist() == [3.0, -1.25, -2.0] and q.scale.tolist() == [0.5, 0.0, 1 / 64]
    assert q.codes[0].tolist() == list(range(256)) and q.codes[1].eq(0).all()
    assert q.codes[2].tolist() == [0, 255] * 128
    assert torch.equal(q.dequantize(), torch.stack([ramp, constant, two]))


def test_a_non_finite_value_makes_its_group_nan():
    w = torch.randn(4, GROUP)
    w[1, 3] = math.nan
    w[2, 0] = math.inf
    back = quantize(w, group_size=GROUP).dequantize()
    assert back[1].isnan().all() and back[2].isnan().all() and back[[0, 3]].isfinite().all()


def test_stochastic_rounding_is_unbiased_and_in_range_and_nearest_is_biased():
    torch.manual_seed(1)
    steps = torch.rand(16, GROUP) * 253 + 1      # code positions strictly inside (0, 255)
    steps[:, 0], steps[:, 1] = 0.0, 255.0        # each group's minimum and maximum: scale 0.01, low 0
    values = steps * 0.01
    q = quantize(values, group_size=GROUP)
    draws = 4000
    total = torch.zeros_like(values, dtype=torch.float64)
    for count in range(1, draws + 1):
        q.requantize_(values, count)
        assert q.codes[:, 0].eq(0).all() and q.codes[:, 1].eq(255).all()   # the extremes never leave the range
        total += q.dequantize().double()
    mean = total / draws
    fraction = steps - steps.floor()
    standard_error = 0.01 * (fraction * (1 - fraction) / draws).sqrt().double()
    z = ((mean - values.double()) / standard_error)[:, 2:]
    assert z.abs().max() < 5 and abs(z.mean()) < 5 / math.sqrt(z.numel())
    nearest = quantize(values, group_size=GROUP, stochastic_round=False)
    nearest.requantize_(values, 1)
    bias = (nearest.dequantize() - values)[:, 2:]
    off = torch.minimum(fraction, 1 - fraction)[:, 2:] > 0.2    # at least 0.2 of a step from a code
    assert (bias[off].abs() > 0.2 * 0.01 - 1e-6).all()   # that far off, the same way every time: biased
    assert bias[off].abs().div(standard_error[:, 2:][off].float()).min() > 20   # where the stochastic mean is < 5


def test_noise_is_seeded_by_weight_and_count():
    a = rounding_noise((3, 4), seed=5, count=2, device="cpu")
    assert torch.equal(a, rounding_noise((3, 4), seed=5, count=2, device="cpu"))
    assert not torch.equal(a, rounding_noise((3, 4), seed=5, count=3, device="cpu"))
    assert not torch.equal(a, rounding_noise((3, 4), seed=6, count=2, device="cpu"))


# ---------------------------------------------------------------- forward and backward

@pytest.mark.parametrize("autocast", [False, True])
def test_linear_equals_the_dequantized_float_linear_and_saves_no_float_weight(autocast):
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    quantize_weights(layer, group_size=GROUP, filter=lambda name, p: name == "weight")
    reference = nn.Linear(64, 32)
    with torch.no_grad():
        reference.weight.copy_(layer.weight.dequantize())
        reference.bias.copy_(layer.bias)
    x = torch.randn(5, 7, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out_ref = reference(x_ref)
    assert out.dtype == out_ref.dtype and torch.equal(out, out_ref)
    out.float().square().sum().backward()
    out_ref.float().square().sum().backward()
    assert type(layer.weight.grad) is torch.Tensor and layer.weight.grad.dtype == torch.float32
    assert torch.equal(x.grad, x_ref.grad)
    assert torch.equal(layer.weight.grad, reference.weight.grad) and torch.equal(layer.bias.grad, reference.bias.grad)
    assert not any(t.shape == (32, 64) and t.is_floating_point() and type(t) is torch.Tensor for t in saved)
    assert any(isinstance(t, QuantizedWeight) for t in saved)


def test_other_operations_see_the_dequantized_value_and_writes_are_refused():
    q = nn.Parameter(quantize(torch.randn(8, GROUP), group_size=GROUP))
    assert isinstance(q, nn.Parameter) and q.requires_grad
    assert torch.equal(q.detach() * 2, q.dequantize() * 2) and type(q.detach() * 2) is torch.Tensor
    with torch.no_grad(), pytest.raises(RuntimeError, match="would write into an INT8 quantized weight"):
        q.add_(1.0)
    with pytest.raises(RuntimeError, match="only a zoo optimizer updates one"):
        q.data.mul_(2.0)
    opt = torch.optim.AdamW([q])
    q.grad = torch.ones(8, GROUP)
    with pytest.raises(RuntimeError, match="INT8 quantized weight"):
        opt.step()


# ---------------------------------------------------------------- optimizers

def _pair(name: str):
    """A quantized weight and a float copy of its value, with the optimizer ``name`` on each."""
    torch.manual_seed(0)
    weight = nn.Parameter(quantize(torch.randn(16, 48) * 0.1, group_size=GROUP, seed=7))
    reference = nn.Parameter(weight.dequantize())
    options = {"lr": 1e-2}
    if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed:
        options["rank"] = 4
    return weight, reference, zoo.get(name)([weight], **options), zoo.get(name)([reference], **options)


@pytest.mark.parametrize("name", zoo.names())
def test_every_optimizer_updates_a_quantized_weight_as_a_float_one_then_rounds(name):
    weight, reference, opt, opt_ref = _pair(name)
    torch.manual_seed(1)
    for count in range(1, 5):
        grad = torch.randn(16, 48)
        with torch.no_grad():
            reference.copy_(weight.dequantize())   # the float weight the update starts from
        weight.grad, reference.grad = grad.clone(), grad.clone()
        opt.step()
        opt_ref.step()
        codes, scale, low = encode(reference.detach(), GROUP, rounding_noise(reference.shape, 7, count, "cpu"))
        assert torch.equal(weight.codes, codes) and torch.equal(weight.scale, scale) and torch.equal(weight.low, low)
        state, state_ref = opt.state[weight], opt_ref.state[reference]
        assert state.pop("rounding") == count and state.keys() == state_ref.keys()
        for key, value in state_ref.items():
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key
        state["rounding"] = count
        assert zoo.state_bytes(opt) == zoo.state_bytes(opt_ref)   # the same state as a float weight
        assert zoo.expected_state_bytes(opt) == zoo.expected_state_bytes(opt_ref)
        if zoo.info(name).cautious:
            fractions = torch.tensor([opt.aligned_fraction(), opt_ref.aligned_fraction()])
            assert fractions[0] == fractions[1] or fractions.isnan().all()   # nan: nothing masked yet


@pytest.mark.parametrize("state_bits", [32, 8])
@pytest.mark.parametrize("name", zoo.names())
def test_a_bfloat16_quantized_weight_is_updated_in_float32_and_keeps_small_updates(name, state_bits):
    """An INT8 weight of compute dtype bfloat16, near 1 (bf16 gap 2^-7, the INT8 step of its groups
    about 2e-4): its update is made in float32 and rounded once, to the codes. Over 30 steps of
    lr 1e-4 it moves as the float32 INT8 weight of the same codes and gradients (as far within 10 %,
    the same way within a cosine of 0.99: its states are bf16, so the two differ, most with Muon's
    orthogonalised 8-bit momentum, 10 % of the move; a bfloat16 working copy moved it 10-30 % of
    the way), and its states have the dtypes of a
    bfloat16 weight's rounded stochastically (Schedule-Free's z in float32: the master copy); also
    with 8-bit states (dequantized in the compute dtype, as a bf16 weight's)."""
    torch.manual_seed(0)
    start = 1 + 0.01 * torch.randn(16, 256)
    options = {"lr": 1e-4, "state_bits": state_bits}
    if state_bits == 8 and name == "adafactor":   # refused: nothing full-size (tests/test_lowbit.py)
        options["beta1"] = 0.9
    if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed:
        options["rank"] = 4
    moves, states = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        weight = nn.Parameter(quantize(start, group_size=GROUP, seed=7))
        weight = nn.Parameter(QuantizedWeight(weight.codes, weight.scale, weight.low, dtype, GROUP, seed=7))
        first = weight.dequantize(torch.float32)
        opt = zoo.get(name)([weight], **options)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            # mostly one way, the same values in both dtypes
            weight.grad = torch.randn(16, 256, generator=gen).add_(1).to(torch.bfloat16).to(dtype)
            opt.step()
        moves[dtype] = weight.dequantize(torch.float32) - first
        states[dtype] = {k: v.dtype for k, v in opt.state[weight].items() if torch.is_tensor(v) and v.dim() > 0}
    plain = nn.Parameter(start.to(torch.bfloat16))
    opt = zoo.get(name)([plain], **options, stochastic_round=True)
    plain.grad = torch.ones_like(plain)
    opt.step()
    assert states[torch.bfloat16] == {k: v.dtype for k, v in opt.state[plain].items()
                                      if torch.is_tensor(v) and v.dim() > 0}
    reference, move = moves[torch.float32].flatten(), moves[torch.bfloat16].flatten()
    assert reference.norm() > 0
    assert abs(move.norm() / reference.norm() - 1) < 0.1   # as far (a bf16 working copy: 10-30 % of it)
    assert torch.nn.functional.cosine_similarity(move, reference, dim=0) > 0.99   # the same way


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 32)
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(32, 64), "mlp": nn.Linear(64, 32, bias=False)})])
        self.head = nn.Linear(32, 16)

    @property
    def attn(self):
        return self.layers[0]["attn"]

    @property
    def mlp(self):
        return self.layers[0]["mlp"]

    def forward(self, idx):
        return self.head(self.mlp(torch.tanh(self.attn(self.embed(idx)))))


def _train(name, steps, *, layerwise=False, model=None, optimizer=None, seed=0):
    if model is None:
        torch.manual_seed(seed)
        model = Net()
        quantize_weights(model, group_size=GROUP)
        options = {"rank": 4} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed else {}
        optimizer = zoo.create(model, name, lr=1e-2, layerwise=layerwise, **options)
    data = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        idx = torch.randint(0, 16, (8, 5), generator=data)
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if isinstance(p, QuantizedWeight):
            if not (torch.equal(p.codes, q.codes) and torch.equal(p.scale, q.scale) and torch.equal(p.low, q.low)):
                return False
        elif not torch.equal(p, q):
            return False
    return True


def test_compiled_kernels_give_the_eager_values():
    """compile=True: dequantization (to bf16 and float32) and requantization (stochastic and to
    nearest) as compiled kernels, equal to the eager ones to the bit; a weight keeps the setting
    through detach, pickling and a copy; under a dispatch mode (FakeTensorMode) the eager ones run."""
    torch.manual_seed(0)
    value = torch.randn(96, 256) * 0.05
    for stochastic in (True, False):
        eager = quantize(value, group_size=GROUP, seed=3, stochastic_round=stochastic)
        compiled = quantize(value, group_size=GROUP, seed=3, stochastic_round=stochastic, compile=True)
        for dtype in (torch.bfloat16, torch.float32):
            assert torch.equal(compiled.dequantize(dtype), eager.dequantize(dtype))
        for count in (1, 2):
            update = eager.dequantize(torch.float32) - 1e-3 * torch.randn(96, 256)
            eager.requantize_(update, count)
            compiled.requantize_(update, count)
            assert torch.equal(compiled.codes, eager.codes)
            assert torch.equal(compiled.scale, eager.scale) and torch.equal(compiled.low, eager.low)
    assert compiled.compile and "compile=True" in repr(compiled)
    assert compiled.detach().compile and not eager.detach().compile
    buffer = io.BytesIO()
    torch.save(nn.Parameter(compiled), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).compile
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = quantize(torch.randn(8, 64), group_size=GROUP, compile=True)
        assert fake.dequantize(torch.float32).shape == (8, 64)


def test_a_model_with_compiled_kernels_trains_as_the_eager_one():
    models = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = Net()
        quantize_weights(model, group_size=GROUP, filter=lambda name, p: name.endswith("mlp.weight"), compile=compile)
        opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True)
        for step in range(3):
            idx = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(step))
            model(idx).square().mean().backward()
            opt.step()
            opt.zero_grad()
        models.append(model)
    assert models[1].mlp.weight.compile
    assert _same_weights(*models)


@pytest.mark.parametrize("name", zoo.names())
def test_per_layer_updates_equal_the_ordinary_step_on_quantized_weights(name):
    ordinary, _ = _train(name, 3)
    per_layer, _ = _train(name, 3, layerwise=True)
    assert _same_weights(ordinary, per_layer)


@pytest.mark.parametrize("name", ["apollo-mini", "c-adamw", "muon", "sgdm"])
def test_resume_is_bit_for_bit(name):
    straight, _ = _train(name, 6)
    model, optimizer = _train(name, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    torch.manual_seed(123)                      # a fresh model: other weights, quantized the same way
    fresh = Net()
    quantize_weights(fresh, group_size=GROUP)
    options = {"rank": 4} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed else {}
    fresh_opt = zoo.create(fresh, name, lr=1e-2, **options)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optimizer"])
    # the data stream continues where the first half stopped
    data = torch.Generator().manual_seed(100)
    for _ in range(3):
        torch.randint(0, 16, (8, 5), generator=data)
    for _ in range(3):
        idx = torch.randint(0, 16, (8, 5), generator=data)
        loss = F.cross_entropy(fresh(idx).flatten(0, 1), idx.flatten())
        fresh_opt.zero_grad()
        loss.backward()
        fresh_opt.step()
    assert _same_weights(straight, fresh)
    assert not _same_weights(straight, _train(name, 3)[0])


def test_a_quantized_state_dict_holds_plain_tensors_and_loads_exactly():
    """A quantized weight W is W_codes, W_scale, W_low, W_seed in the state dict: plain tensors
    sharing the weight's storage (no float copy), which torch.load(weights_only=True) and
    safetensors take; they load back into a quantized model exactly, seed included. A state dict
    of the earlier form (the QuantizedWeight itself) loads too."""
    from safetensors.torch import load, save
    model = Net()
    quantize_weights(model, group_size=GROUP, seed=3)
    state = model.state_dict()
    weight = model.attn.weight
    assert "layers.0.attn.weight" not in state and state["layers.0.attn.weight_codes"].dtype == torch.uint8
    assert state["layers.0.attn.weight_codes"].data_ptr() == weight.codes.data_ptr()
    assert int(state["layers.0.attn.weight_seed"]) == weight.seed == 1 + 3
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    for loaded in (torch.load(buffer), load(save(state))):   # weights_only=True, torch's default; safetensors
        torch.manual_seed(1)
        fresh = Net()
        quantize_weights(fresh, group_size=GROUP, seed=50)
        fresh.load_state_dict(loaded)
        for p, q in zip(fresh.parameters(), model.parameters()):
            if isinstance(p, QuantizedWeight):
                assert (p.seed, p.group_size) == (q.seed, q.group_size)
                assert all(torch.equal(a, b) for a, b in zip((p.codes, p.scale, p.low), (q.codes, q.scale, q.low)))
            else:
                assert torch.equal(p, q)
    earlier = {k: v for k, v in state.items() if not k.startswith("layers.0.attn.weight")}
    earlier["layers.0.attn.weight"] = weight.detach()
    fresh.load_state_dict(earlier)
    assert torch.equal(fresh.attn.weight.codes, weight.codes)


def test_a_float_checkpoint_loads_into_a_quantized_model_rounded_to_nearest():
    torch.manual_seed(0)
    float_model = Net()
    quantized = Net()
    quantize_weights(quantized, group_size=GROUP)
    quantized.load_state_dict(float_model.state_dict())
    expected = quantize(float_model.attn.weight.detach(), group_size=GROUP)
    assert torch.equal(quantized.attn.weight.codes, expected.codes)
    assert torch.equal(quantized.head.weight, float_model.head.weight)


# ---------------------------------------------------------------- building, memory, refusals

def test_materialising_layer_by_layer_equals_quantizing_the_whole_model():
    torch.manual_seed(0)
    with torch.device("meta"):
        whole = Llama(CONFIGS["tiny"])
    whole.to_empty(device="cpu")
    whole.apply(Llama._init_weights)
    names = quantize_weights(whole)
    torch.manual_seed(0)
    with torch.device("meta"):
        layered = Llama(CONFIGS["tiny"])
    assert materialize_quantized(layered, Llama._init_weights) == names
    assert len(names) == 7 * CONFIGS["tiny"].n_layers and _same_weights(whole, layered)
    assert [p.seed for p in layered.parameters() if isinstance(p, QuantizedWeight)] == list(range(1, len(names) + 1))
    with pytest.raises(ValueError, match="is not on the meta device"):
        materialize_quantized(Llama(CONFIGS["tiny"]), Llama._init_weights)


def test_tracked_parameter_bytes_equal_the_formula_planned_and_measured():
    frames = {fake: llama_step(Setting(model="tiny", optimizer="apollo-mini", layerwise=True, weights="int8"),
                               fake=fake) for fake in (True, False)}
    config = CONFIGS["tiny"]
    per_layer = 4 * config.dim * config.dim + 3 * config.dim * config.mlp_hidden
    quantized = config.n_layers * per_layer
    floats = 2 * 32000 * config.dim + (2 * config.n_layers + 1) * config.dim   # embedding, head, norms (bf16)
    for frame in frames.values():
        assert frame.loc["parameters", "after"] == quantized_bytes(quantized) + 2 * floats
    assert frames[True].equals(frames[False])   # the plan is the real step
    plain = llama_step(Setting(model="tiny", optimizer="apollo-mini", layerwise=True))
    assert plain.loc["parameters", "after"] == 2 * (quantized + floats)


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match="Invalid bits: 4; allowed 8"):
        quantize_weights(Net(), bits=4)
    with pytest.raises(ValueError, match=r"attn.weight of shape \(64, 32\) .* groups of 48"):
        quantize_weights(Net(), group_size=48)
    with pytest.raises(ValueError, match="no parameter of Net matched the filter"):
        quantize_weights(Net(), filter=lambda name, p: False)
    with pytest.raises(ValueError, match="Invalid group_size"):
        quantize_weights(Net(), group_size=0)
    model = Net()
    quantize_weights(model, group_size=GROUP)
    with pytest.raises(ValueError, match="attn.weight is quantized already"):
        quantize_weights(model, group_size=GROUP)
    with pytest.raises(ValueError, match="only floating-point"):
        quantize(torch.ones(4, GROUP, dtype=torch.int64), group_size=GROUP)


def test_per_layer_hooks_survive_moving_the_model():
    """module.to() swaps an INT8 weight for a new tensor (torch.utils.swap_tensors), which loses the
    autograd hooks it had (HF Trainer moves the model it is given): the hooks are registered
    again, and the weights are still updated inside backward from the first step, as the
    ordinary step."""
    ordinary, _ = _train("c-adamw", 3)
    torch.manual_seed(0)
    model = Net()
    quantize_weights(model, group_size=GROUP)
    optimizer = zoo.create(model, "c-adamw", lr=1e-2, layerwise=True)
    model.to("cpu")
    data = torch.Generator().manual_seed(100)
    for step in range(3):
        idx = torch.randint(0, 16, (8, 5), generator=data)
        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        optimizer.zero_grad()
        loss.backward()
        assert isinstance(model.attn.weight.grad, SpentGradient)   # applied inside backward
        optimizer.step()
    assert _same_weights(ordinary, model)
