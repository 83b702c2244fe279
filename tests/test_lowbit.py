"""Optimizer states in 8 and 4 bits (``state_bits``, zoo.lowbit), for every registered name: the
code maps and blockwise quantization equal torchao's; each step equals the full-precision step
with the states rounded through their codes after every step (a loop written here); state dicts
resume bit for bit and refuse another ``state_bits``; measured bytes equal the formula; per-layer
updates and INT8 weights compose; compiled steps agree with eager ones."""
import copy
import io

import itertools

import pytest
import torch
from torch import nn

import zoo
from zoo import lowbit

ALL = zoo.names()
SHAPES = ((64, 96), (96, 63), (300,))   # quantized; quantized at 8 bits only (odd last dimension); too small


def hparams(name):
    rec = zoo.info(name)
    extra = {"rank": 48} if rec.low_rank and "rank" not in rec.fixed else {}   # moments of 48 x 96
    if rec.family == "adafactor":
        extra["beta1"] = 0.9   # without a first moment Adafactor keeps nothing of the parameter's size
    return extra


def make_params(name="", seed=0):
    """The parameters of SHAPES; for apollo-mini (rank 1) one more, whose moments of 1 x 4096 are quantized."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in SHAPES + ((2, 4096),) * (name == "apollo-mini")]


def loss(params, step):
    return sum((torch.sin(p * 1.3 + 0.3 * step + i) * p).sum() + 0.05 * (p**4).sum() for i, p in enumerate(params))


def step(opt, params, t):
    opt.zero_grad()
    loss(params, t).backward()
    opt.step()


def through_codes(opt, bits):
    """The test's reference rounding: every state of ``opt`` that ``state_bits`` keeps in ``bits``
    bits replaced by what its codes stand for."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, shape in opt._state_shapes(p, group).items():
                if key in state and lowbit.eligible(shape, bits):
                    signed = type(opt).low_bit_states[key]
                    codes, absmax = lowbit.quantize(state[key], bits, signed)
                    state[key] = lowbit.dequantize(codes, absmax, bits, signed, state[key].dtype)


# -- the maps and the quantization, against torchao's ------------------------------------------
@pytest.mark.parametrize("bits, signed", [(8, True), (8, False), (4, True), (4, False)])
def test_code_maps_and_blockwise_quantization_equal_torchaos(bits, signed):
    quant_utils = pytest.importorskip("torchao.optim.quant_utils")   # a dev dependency: installed by CI
    from torchao.optim import subclass_4bit, subclass_8bit
    peer = subclass_8bit if bits == 8 else subclass_4bit
    qmap = torch.tensor(peer.get_qmap_signed() if signed else peer.get_qmap_unsigned())
    assert torch.equal(lowbit.code_map(bits, signed), qmap)
    assert len(qmap) == 2**bits
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(96, 512, generator=gen) * torch.rand(96, 1, generator=gen)
    values = values if signed else values**2 + 1e-4   # none below the smallest code (see the next test)
    codes, absmax = lowbit.quantize(values, bits, signed)
    assert codes.dtype == torch.uint8 and codes.shape == ((96, 512) if bits == 8 else (96, 256))
    normalised, scale = quant_utils.scale_tensor(values, lowbit.BLOCK[bits])
    quantize = quant_utils.quantize_8bit_with_qmap if bits == 8 else quant_utils.quantize_4bit_with_qmap
    expected = quant_utils.dequant_with_qmap(quantize(normalised, qmap), qmap, scale)
    assert torch.equal(absmax, scale)
    assert torch.equal(lowbit.dequantize(codes, absmax, bits, signed), expected)


def test_where_the_quantization_differs_from_the_peers():
    block = torch.zeros(512)
    block[:256] = 1.0
    block[1] = 1e-8   # a positive second moment below the smallest code: not rounded to 0
    codes, absmax = lowbit.quantize(block, 8, signed=False)
    back = lowbit.dequantize(codes, absmax, 8, signed=False)
    assert back[1] == lowbit.code_map(8, False)[1] > 0
    assert torch.equal(absmax[1:], torch.zeros(1)) and torch.equal(back[256:], torch.zeros(256))   # zero block: 0
    block[300] = float("nan")   # a non-finite value: its block dequantizes to NaN, the others are kept
    back = lowbit.dequantize(*lowbit.quantize(block, 8, signed=True), 8, signed=True)
    assert back[256:].isnan().all() and back[:256].isfinite().all()
    odd = torch.randn(10, 1001)   # a partial last block
    back = lowbit.dequantize(*lowbit.quantize(odd, 8, signed=True), 8, signed=True)
    assert back.shape == odd.shape and (back - odd).abs().max() < 0.02 * odd.abs().max()


# -- every name: the step, the bytes, the state dict -------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ALL)
def test_each_step_is_the_full_precision_step_through_the_codes(name, bits):
    """Bit for bit, 6 steps: the name at ``state_bits=bits`` against the name in full precision
    whose states the test rounds through their codes after each step."""
    ours, theirs = make_params(name), make_params(name)
    opt = zoo.get(name)(ours, state_bits=bits, **hparams(name))
    ref = zoo.get(name)(theirs, **hparams(name))
    for t in range(6):
        step(opt, ours, t)
        step(ref, theirs, t)
        through_codes(ref, bits)
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), (t, name)
        if t == 0:   # made in codes from the start: no full-precision moment, even at the first step
            assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt), name
    group = opt.param_groups[0]
    kept = {(i, k): lowbit.is_codes(opt.state[p][k]) for i, p in enumerate(ours) for k in opt._state_shapes(p, group)}
    assert kept == {(i, k): lowbit.eligible(shape, bits)   # 4,096 values or more (and an even last dimension at 4)
                    for i, p in enumerate(ours) for k, shape in opt._state_shapes(p, group).items()}
    assert any(kept.values()), f"{name} kept nothing in {bits} bits"
    assert not any(lowbit.is_codes(v) for v in opt.state[ours[2]].values())   # (300,): too small
    assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt) < zoo.expected_state_bytes(ref)


@pytest.mark.parametrize("name", ALL)
def test_state_dicts_resume_bit_for_bit_and_refuse_other_state_bits(name):
    params = make_params(name)
    opt = zoo.get(name)(params, state_bits=8, **hparams(name))
    for t in range(3):
        step(opt, params, t)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = zoo.get(name)(resumed_params, state_bits=8, **hparams(name))
    resumed.load_state_dict(saved)
    for key, value in opt.state[params[0]].items():   # codes stay uint8, absmax float32
        if isinstance(value, torch.Tensor):
            assert resumed.state[resumed_params[0]][key].dtype == value.dtype, key
    for t in range(3, 6):
        step(opt, params, t)
        step(resumed, resumed_params, t)
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)
    for bits in (32, 4):
        other = zoo.get(name)(make_params(name), state_bits=bits, **hparams(name))
        with pytest.raises(ValueError, match=f"8-bit states but this .* has state_bits={bits}"):
            other.load_state_dict(saved)
    full = zoo.get(name)(make_params(name), **hparams(name))
    step(full, full.param_groups[0]["params"], 0)
    with pytest.raises(ValueError, match="full-precision states but this .* has state_bits=8"):
        zoo.get(name)(make_params(name), state_bits=8, **hparams(name)).load_state_dict(full.state_dict())


@pytest.mark.parametrize("name", ALL)
def test_a_full_precision_state_converted_to_8_bits_continues_as_the_loop_through_the_codes(name):
    """zoo.lowbit.convert_state_dict: a 32-bit state after 3 steps, converted and loaded into an
    8-bit optimizer, continues bit for bit as the full-precision run rounded through the codes;
    converted back to 32 bits, it loads into a full-precision optimizer."""
    params, theirs = make_params(name), make_params(name)
    full, ref = (zoo.get(name)(p, **hparams(name)) for p in (params, theirs))
    for t in range(3):
        step(full, params, t)
        step(ref, theirs, t)
    ours = [p.detach().clone().requires_grad_() for p in params]
    opt = zoo.get(name)(ours, state_bits=8, **hparams(name))
    opt.load_state_dict(lowbit.convert_state_dict(full.state_dict(), opt))
    through_codes(ref, 8)
    for t in range(3, 6):
        step(opt, ours, t)
        step(ref, theirs, t)
        through_codes(ref, 8)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    back = zoo.get(name)([p.detach().clone().requires_grad_() for p in ours], **hparams(name))
    back.load_state_dict(lowbit.convert_state_dict(opt.state_dict(), back))
    assert not any(lowbit.is_codes(v) for s in back.state.values() for v in s.values())


def test_a_torch_optim_state_does_not_load_into_an_8_bit_optimizer():
    params = make_params()
    torch_opt = torch.optim.AdamW(params)
    step(torch_opt, params, 0)
    with pytest.raises(ValueError, match="full-precision states but this AdamW has state_bits=8"):
        zoo.get("adamw")(make_params(), state_bits=8).load_state_dict(torch_opt.state_dict())


def test_bfloat16_parameters_keep_float32_absmax_through_a_state_dict():
    params = [p.detach().bfloat16().requires_grad_() for p in make_params()]
    opt = zoo.get("adamw")(params, state_bits=8)
    step(opt, params, 0)
    loaded = zoo.get("adamw")([p.detach().clone().requires_grad_() for p in params], state_bits=8)
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    state = next(iter(loaded.state.values()))
    assert state["exp_avg"].dtype == torch.uint8 and state["exp_avg_absmax"].dtype == torch.float32
    assert torch.equal(state["exp_avg_absmax"], opt.state[params[0]]["exp_avg_absmax"])


def test_what_is_refused_names_the_reason():
    with pytest.raises(ValueError, match="Invalid state_bits: 16; allowed 32"):
        zoo.get("adamw")(make_params(), state_bits=16)
    with pytest.raises(ValueError, match="momentum=0 and keeps no state"):
        zoo.get("sgdm")(make_params(), momentum=0.0, state_bits=8)
    with pytest.raises(ValueError, match="beta1=None"):
        zoo.get("adafactor")(make_params(), state_bits=8)
    with pytest.raises(ValueError, match="Invalid foreach: state_bits=8"):
        zoo.get("adamw")(make_params(), state_bits=8, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused: state_bits=4"):
        zoo.get("adamw")(make_params(), state_bits=4, fused=True)
    with pytest.raises(ValueError, match="complex parameters"):
        zoo.get("adamw")([torch.zeros(64, 64, dtype=torch.complex64, requires_grad=True)], state_bits=8)
    opt = zoo.get("sgdm")([torch.zeros(100, 64, requires_grad=True)], state_bits=8)
    opt.param_groups[0]["params"][0].grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 64), (100, 64))
    with pytest.raises(RuntimeError, match="does not take sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", ["adan", "mars", "sf-adamw", "soap", "galore"])
def test_buffers_kept_in_full_precision_are_named(name):
    """The buffers a family keeps in full precision whatever state_bits says, with why."""
    kept = zoo.get(name).full_precision_states
    assert kept and all(len(why) > 30 for why in kept.values())
    params = make_params(name)
    opt = zoo.get(name)(params, state_bits=8, **hparams(name))
    for t in range(3):
        step(opt, params, t)
    for key in kept:
        if key in opt.state[params[0]]:
            assert opt.state[params[0]][key].is_floating_point()


# -- composition --------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(64, 64), "mlp": nn.Linear(64, 128)})])
        self.head = nn.Linear(128, 8)

    def forward(self, x):
        block = self.layers[0]
        return self.head(torch.tanh(block["mlp"](torch.relu(block["attn"](x)))))


def train(model, opt, steps):
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(16, 64, generator=gen), torch.randn(16, 8, generator=gen)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", ["adamw", "c-adamw", "c-lion", "sgdm", "apollo", "muon"])
def test_per_layer_updates_with_8_bit_states_equal_the_ordinary_step(name):
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    kw = {"rank": 32} if name == "apollo" else {}
    ordinary = zoo.create(a, name, state_bits=8, **kw)
    layerwise = zoo.create(b, name, state_bits=8, layerwise=True, **kw)
    train(a, ordinary, 4)
    train(b, layerwise, 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert any(lowbit.is_codes(v) for s in layerwise.state.values() for v in s.values())


@pytest.mark.parametrize("name", ["adamw", "c-adamw", "apollo-mini"])
def test_int8_weights_with_8_bit_states(name):
    """INT8 weights (zoo.quantized) with 8-bit states: the state of a weight is kept in codes, and
    the per-layer update equals the ordinary step."""
    torch.manual_seed(0)
    a = Net()
    zoo.quantize_weights(a)
    b = copy.deepcopy(a)
    ordinary = zoo.create(a, name, state_bits=8)
    layerwise = zoo.create(b, name, state_bits=8, layerwise=True)
    train(a, ordinary, 3)
    train(b, layerwise, 3)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    weight = a.layers[0]["mlp"].weight
    assert lowbit.is_codes(ordinary.state[weight]["exp_avg" if name != "apollo-mini" else "exp_avg"]) or \
        name == "apollo-mini"   # APOLLO-Mini's rank-1 moments are too small for codes
    assert zoo.state_bytes(ordinary) == zoo.expected_state_bytes(ordinary)


@pytest.mark.parametrize("name", ["adamw", "c-lion", "sgdm"])
def test_compiled_steps_with_8_bit_states_agree_with_eager_ones(name):
    """One compiled step (dequantize, update, requantize together) against the eager one: the
    same codes but where float rounding lands a value on the other side of a midpoint."""
    eager_params, compiled_params = make_params(name), make_params(name)
    eager = zoo.get(name)(eager_params, state_bits=8)
    compiled = zoo.get(name)(compiled_params, state_bits=8, compile=True)
    for t in range(3):
        step(eager, eager_params, t)
        step(compiled, compiled_params, t)
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for key, value in eager.state[eager_params[0]].items():
        if lowbit.is_codes(value):
            other = compiled.state[compiled_params[0]][key]
            assert (value != other).float().mean() < 1e-3, key


def test_eager_steps_quantize_a_large_tensor_in_chunks_with_the_same_codes(monkeypatch):
    """Eager quantization goes CHUNK values at a time (bounded temporaries): the same codes and
    absmax as the whole tensor at once, partial last chunk and block included."""
    gen = torch.Generator().manual_seed(2)
    for values, bits, signed in itertools.product([torch.randn(37, 1000, generator=gen), torch.randn(8, 2048, generator=gen)],
                                                  [8, 4], [True, False]):   # blocks across rows, and along them
        x = values if signed else values**2
        whole = lowbit.quantize(x, bits, signed)
        monkeypatch.setattr(lowbit, "CHUNK", 2**12)
        chunked = lowbit.quantize(x, bits, signed)
        assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
        assert torch.equal(lowbit.dequantize(*whole, bits, signed), lowbit.dequantize(*chunked, bits, signed))
        monkeypatch.undo()


@pytest.mark.parametrize("shape", [(8, 2048), (37, 1000)])
def test_compiled_quantization_equals_the_eager_one(shape):
    """The compiled lookups (gathers without bounds checks; blocks along the last dimension where
    it holds whole blocks) give the eager codes, absmax and values to the bit."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, generator=gen)
    for bits, signed in [(8, True), (8, False), (4, True), (4, False)]:
        x = values if signed else values**2
        step = lowbit.quantized_step(_roundtrip, ((0, signed),), bits, torch.float32)
        codes, absmax = lowbit.quantize(x, bits, signed)
        half = lowbit.dequantize(codes, absmax, bits, signed) * 0.5
        expected = lowbit.quantize(half, bits, signed)
        compiled = torch.compile(step, fullgraph=True, options=step.compile_options)
        out = torch.empty(shape)
        compiled(out, codes, absmax, *lowbit.tables(bits, signed, "cpu"))
        assert torch.equal(codes, expected[0]) and torch.equal(absmax, expected[1])
        assert torch.equal(out, half)


def _roundtrip(out, state):
    state.mul_(0.5)
    out.copy_(state)
