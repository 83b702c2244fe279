"""INT8 weights: linear weights stored as 8-bit codes with a scale and an offset per group of
values, dequantized one weight at a time in forward and backward, and updated by any zoo
optimizer with stochastic rounding (Q-APOLLO, Zhu et al. 2025; Q-GaLore, Zhang et al. 2024).

    zoo.quantize_weights(model)                  # attention and MLP weights -> INT8, groups of 128
    opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True)
    ...train as usual...

**Storage** (:class:`QuantizedWeight`). A weight of shape (m, n) is split into groups of
``group_size`` consecutive values (row-major, as the reference). Each group keeps its minimum
``low`` and ``scale = (max - min) / 255`` in float32 and each value a code ``q`` in [0, 255]
(uint8)::

    w = low + scale * q          (dequantize)
    q = round((w - low) / scale)  (quantize; a constant group has scale 0 and codes 0)

That is asymmetric quantization with the zero point kept as a float (``-low / scale``): the
group's minimum and maximum are exact and every code lies in [0, 255]. The reference rounds the
zero point to an integer, which can put a group's extremes up to half a step outside the code
range, where stochastic rounding is clipped and biased; here it never is. Nothing else of the
weight is kept: 1 byte per value plus 8 bytes per group (:func:`quantized_bytes`).

**Forward and backward.** The weight is a tensor subclass that reports the shape and the compute
dtype of the float weight it stands for, and is an ``nn.Parameter`` of its module. ``F.linear``
(every ``nn.Linear``) dequantizes it inside a custom autograd function, which saves the codes,
not a float copy, and dequantizes again in backward; autocast is honoured. The gradient reaches
the optimizer as an ordinary tensor in the compute dtype. Any other operation on the weight sees
its dequantized value (and keeps a float copy for backward if it needs one); writing into it is
refused: only a zoo optimizer updates it.

**Updates.** A zoo optimizer's step (ordinary or per-layer) dequantizes each quantized weight into
a working tensor in float32 (at least), applies its ordinary update to it (caution, APOLLO's
scaling, weight decay, the same state as a float weight of the compute dtype: the state stays
keyed by the weight), and quantizes the result again, stochastically by default:
``q = floor(x + u)``, ``u ~ U[0, 1)``, x = (w - low) / scale, so that the expected dequantized
value is the updated float value. The reference updates a working tensor in the compute dtype;
in bfloat16 that rounds an update smaller than half a unit in the last place of the weight away
before the stochastic rounding sees it, and biases the rest, so here it is float32.

**Compiled kernels** (``compile=True`` in :func:`quantize_weights`, :func:`materialize_quantized`,
:func:`quantize`). Dequantizing (forward, backward, the working tensor) and requantizing with
the rounding noise are memory passes over every weight: eagerly four and about twelve. With
``compile`` each is one ``torch.compile`` kernel, with the same values (the same noise from the
weight's generator; tested equal to the eager kernels). Under a ``TorchDispatchMode`` (a memory
tracker, ``FakeTensorMode``), inside a compiled region and on Windows the eager kernels run.

**Randomness.** The noise of a weight's k-th update comes from a generator seeded with the
weight's ``seed`` (``quantize_weights``' seed plus the weight's 1-based index) and k, which the
optimizer keeps in the weight's state (``"rounding"``, a Python int: no tensor bytes). So the
rounding is deterministic, independent of the order in which weights are updated (per-layer and
ordinary steps draw the same noise), and the optimizer's ``state_dict`` holds the generator's
position: a resumed run is bit for bit the uninterrupted one.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from numbers import Integral
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils._pytree import tree_map_only

from .filters import default_filter
from .precision import slow_input_gradient


__all__ = ["QuantizedWeight", "quantize_weights", "materialize_quantized", "quantize", "quantized_bytes",
           "working_copy", "encode", "decode", "BITS", "rounding_noise", "rounding_bits", "noise_of",
           "round_stochastically"]

aten = torch.ops.aten
BITS = (8,)
LEVELS = 255   # codes 0..255
HF_METHOD = "zoo-int8"
"""The quantization method an HF model's config names for these weights."""
ROUNDING_KEY = "rounding"
"""Key of a quantized weight's optimizer state that counts its stochastic roundings (a Python int)."""


def _check_settings(bits, group_size) -> None:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"Invalid bits: {bits!r}; allowed {', '.join(map(str, BITS))} (uint8 codes; 4-bit "
                         "packing is not implemented)")
    if isinstance(group_size, bool) or not isinstance(group_size, Integral) or group_size < 1:
        raise ValueError(f"Invalid group_size: {group_size!r}; allowed an int >= 1 (values per scale and offset)")


def rounding_bits(numel: int, seed: int, count: int, device) -> Tensor:
    """The 16 random bits per value (int16, ``numel`` of them) of a weight's ``count``-th rounding,
    from its own generator (a quarter of the generator's draws of ``torch.rand``, which is the
    slow part of a CPU step). The CPU generator keeps 32 bits of its seed: ``seed * 2^20 + count``
    modulo 2^32 differs for every update of 4096 consecutive weight seeds over their first 2^20
    updates."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 2**20 + count) % 2**32)
    bits = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None, generator=generator)
    return bits.view(torch.int16)[:numel]


def noise_of(bits: Tensor) -> Tensor:
    """:func:`rounding_bits` k as noise in (0, 1): (k + 2^15 + 1/2) / 2^16, exact in float32."""
    return bits.float().add_(2**15 + 0.5).mul_(2**-16)


def rounding_noise(shape, seed: int, count: int, device) -> Tensor:
    """Noise in (0, 1) for a weight's ``count``-th rounding (:func:`rounding_bits`,
    :func:`noise_of`), of ``shape``."""
    return noise_of(rounding_bits(math.prod(shape), seed, count, device)).reshape(shape)


def round_stochastically(values: Tensor, dtype: torch.dtype, noise: Tensor) -> Tensor:
    """``values`` (float32) in ``dtype`` (bfloat16 or float16), each rounded to one of the two
    ``dtype`` numbers around it, the upper with probability equal to its distance from the lower
    (over their gap), where ``noise`` (in (0, 1), of ``values``' shape) is below that: unbiased,
    E[rounded] = value. A value ``dtype`` holds exactly is kept; a non-finite one is rounded to
    nearest (it stays non-finite)."""
    nearest = values.to(dtype)
    above = nearest.float() > values
    low = torch.where(above, torch.nextafter(nearest, nearest.new_full((), -math.inf)), nearest)
    high = torch.nextafter(low, low.new_full((), math.inf))
    low32 = low.float()
    up = (values - low32) > noise * (high.float() - low32)
    return torch.where(up & torch.isfinite(values), high, low).where(torch.isfinite(values), nearest)


def encode(values: Tensor, group_size: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(codes uint8 of ``values``' shape, scale, low float32 per group) of ``values``; rounding to
    nearest, or ``floor(x + noise)`` with ``noise`` in [0, 1) of ``values``' shape (stochastic). A
    group holding a non-finite value gets a NaN scale, so the whole group dequantizes to NaN."""
    x = values.detach().reshape(-1, group_size).to(torch.float32, copy=True)   # a fresh copy, changed in place
    low, high = x.amin(1), x.amax(1)
    scale = (high - low) / LEVELS
    scale = torch.where(torch.isfinite(scale), scale, torch.nan)
    x.sub_(low[:, None]).mul_(torch.where(scale > 0, 1 / scale, 0.0)[:, None])
    x = x.add_(noise.reshape(x.shape)).floor_() if noise is not None else x.round_()
    codes = x.clamp_(0, LEVELS).nan_to_num_(0).to(torch.uint8).reshape(values.shape)
    return codes, scale, low


def decode(codes: Tensor, scale: Tensor, low: Tensor, dtype: torch.dtype) -> Tensor:
    """The float values of ``codes`` (``low + scale * q`` per group, in float32) in ``dtype``."""
    groups = codes.reshape(scale.shape[0], -1).float().mul_(scale[:, None]).add_(low[:, None])
    return groups.to(dtype).reshape(codes.shape)


def _encode_bits(values: Tensor, group_size: int, bits: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`encode` with the noise of :func:`rounding_bits` ``bits`` (None: to nearest)."""
    return encode(values, group_size, None if bits is None else noise_of(bits).reshape(values.shape))


_KERNELS: dict = {}


def _run_kernel(fn, compiled: bool, *args):
    """``fn(*args)``, compiled (made once, shared) where ``compiled`` asks for it and compiling is
    possible here (see the module docstring). Its tensors come as (groups, group_size) views: the
    number of groups is dynamic (one kernel for every weight shape), the group size static, so
    that the inner loop is vectorized."""
    if not compiled or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None \
            or sys.platform == "win32":
        return fn(*args)
    if fn not in _KERNELS:
        _KERNELS[fn] = torch.compile(fn)
    for tensor in args:
        if isinstance(tensor, Tensor):
            torch._dynamo.mark_dynamic(tensor, 0)
    return _KERNELS[fn](*args)


class QuantizedWeight(Tensor):
    """A weight held as uint8 ``codes`` with float32 ``scale`` and ``low`` per group (module
    docstring); it reports the float weight's shape and compute ``dtype``. ``stochastic_round``:
    how an optimizer writes updates back; ``seed``: its rounding noise; ``compile``: whether its
    dequantization and requantization run compiled (module docstring)."""

    codes: Tensor
    scale: Tensor
    low: Tensor

    @staticmethod
    def __new__(cls, codes: Tensor, scale: Tensor, low: Tensor, dtype: torch.dtype, group_size: int,
                stochastic_round: bool = True, seed: int = 0, requires_grad: bool = False, compile: bool = False):
        return Tensor._make_wrapper_subclass(cls, codes.shape, dtype=dtype, device=codes.device,
                                             requires_grad=requires_grad)

    def __init__(self, codes, scale, low, dtype, group_size, stochastic_round=True, seed=0, requires_grad=False,
                 compile=False):
        self.codes, self.scale, self.low = codes, scale, low
        self.group_size, self.stochastic_round, self.seed = int(group_size), bool(stochastic_round), int(seed)
        self.compile = bool(compile)

    def _meta(self) -> tuple:
        return (self.dtype, self.group_size, self.stochastic_round, self.seed)

    def _like(self, codes: Tensor, scale: Tensor, low: Tensor, dtype: torch.dtype | None = None) -> QuantizedWeight:
        """A weight of these codes with this one's settings."""
        return QuantizedWeight(codes, scale, low, dtype or self.dtype, self.group_size, self.stochastic_round,
                               self.seed, compile=self.compile)

    def __tensor_flatten__(self):
        return ["codes", "scale", "low"], (*self._meta(), self.compile)

    @staticmethod
    def __tensor_unflatten__(inner: dict, meta: tuple, outer_size, outer_stride):
        *meta, compile = meta
        return QuantizedWeight(inner["codes"], inner["scale"], inner["low"], *meta, compile=compile)

    def __reduce_ex__(self, protocol):
        return _rebuild, (self.codes, self.scale, self.low, self._meta(), self.requires_grad, self.compile)

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"QuantizedWeight(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, int8 codes, "
                f"group_size={self.group_size}, stochastic_round={self.stochastic_round}"
                f"{', compile=True' if self.compile else ''}"
                f"{', requires_grad=True' if self.requires_grad else ''})")

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The float weight, in ``dtype`` (default its compute dtype): a new ordinary tensor."""
        groups = self.codes.view(self.scale.shape[0], -1)
        return _run_kernel(decode, self.compile, groups, self.scale, self.low, dtype or self.dtype).view(self.shape)

    @torch.no_grad()
    def requantize_(self, values: Tensor, count: int = 0) -> None:
        """Store ``values`` (the updated float weight): stochastically rounded with the noise of
        update ``count`` when ``stochastic_round``, else to nearest."""
        bits = rounding_bits(values.numel(), self.seed, count, values.device) if self.stochastic_round else None
        shape = (-1, self.group_size)
        codes, scale, low = _run_kernel(_encode_bits, self.compile, values.reshape(shape), self.group_size,
                                        None if bits is None else bits.view(shape))
        self.codes.copy_(codes.view(self.codes.shape))
        self.scale.copy_(scale)
        self.low.copy_(low)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(weight, QuantizedWeight):
                x = args[0] if args else kwargs["input"]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return _QuantizedLinear.apply(x, weight, bias)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.detach.default, aten.alias.default):
            (self,) = args
            return self._like(self.codes, self.scale, self.low)
        if func in (aten.clone.default, aten._to_copy.default):
            self = args[0]
            device, dtype = kwargs.get("device") or self.device, kwargs.get("dtype") or self.dtype
            inner = [t.to(device, copy=True) for t in (self.codes, self.scale, self.low)]
            return self._like(*inner, dtype)
        if func is aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(dst, QuantizedWeight):
                if isinstance(src, QuantizedWeight) and src.group_size == dst.group_size:
                    parts = (src.codes, src.scale, src.low)
                    dst.seed = src.seed   # the rounding stream belongs to the values (a resumed run)
                else:   # a float weight (a float checkpoint) loaded into a quantized one
                    parts = encode(src.dequantize() if isinstance(src, QuantizedWeight) else src, dst.group_size)
                for mine, theirs in zip((dst.codes, dst.scale, dst.low), parts):
                    mine.copy_(theirs)
                return dst
        if func._schema.is_mutable and any(
                isinstance(a, QuantizedWeight) and a_info.alias_info is not None and a_info.alias_info.is_write
                for a, a_info in zip(args, func._schema.arguments)):
            raise RuntimeError(f"{func} would write into an INT8 quantized weight; only a zoo optimizer updates one "
                               "(it dequantizes, updates and rounds back), and weight.dequantize() gives its value")
        args, kwargs = tree_map_only(QuantizedWeight, lambda t: t.dequantize(), (args, kwargs))
        return func(*args, **kwargs)


def _rebuild(codes, scale, low, meta, requires_grad, compile=False):
    return QuantizedWeight(codes, scale, low, *meta, requires_grad=requires_grad, compile=compile)


torch.serialization.add_safe_globals([_rebuild])   # torch.load(..., weights_only=True) reads quantized weights


class _QuantizedLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with ``weight`` dequantized in forward and again in
    backward: only the codes are saved. Under autocast the matmuls run in the autocast dtype. The
    input gradient ``g @ W`` is taken from a transposed copy of ``W`` where that layout is slow in the
    gradient's precision (bf16 on AVX2-only CPUs, :func:`zoo.precision.slow_input_gradient`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: QuantizedWeight, bias: Tensor | None):
        out = F.linear(x, weight.dequantize(), bias)   # autocast, when on, casts as for a float weight
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        ctx.save_for_backward(x.to(out.dtype), weight)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dense = weight.dequantize(grad.dtype)
            if slow_input_gradient(grad.dtype, grad.device):   # g @ W as g @ (W.T).T, the layout F.linear takes
                grad_x = F.linear(grad, dense.t().contiguous())
            else:
                grad_x = grad @ dense
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b


def quantize(weight: Tensor, *, group_size: int = 128, stochastic_round: bool = True, seed: int = 0,
             bits: int = 8, compile: bool = False) -> QuantizedWeight:
    """``weight`` quantized (round to nearest) as a :class:`QuantizedWeight`, in its own dtype and
    on its device; ``compile``: its kernels compiled (module docstring)."""
    _check_settings(bits, group_size)
    if weight.numel() % group_size:
        raise ValueError(f"a weight of shape {tuple(weight.shape)} ({weight.numel()} values) does not split "
                         f"into groups of {group_size}; choose a group_size that divides its size")
    if not weight.is_floating_point():
        raise ValueError(f"only floating-point weights are quantized, got dtype {weight.dtype}")
    return QuantizedWeight(*encode(weight, group_size), weight.dtype, group_size, stochastic_round, seed,
                           compile=bool(compile))


STATE_SUFFIXES = ("_codes", "_scale", "_low", "_seed")
"""A quantized weight ``W`` is ``W_codes`` (uint8), ``W_scale``, ``W_low`` (float32 per group) and
``W_seed`` (int64) in its module's state dict: plain tensors, which safetensors, HF's
``save_pretrained`` and ``torch.load(weights_only=True)`` take, sharing the weight's storage (a
state dict of an INT8 model holds no float copy)."""


def _save_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """State dict hook of a module holding quantized weights: each as its plain tensors."""
    for pname, param in module._parameters.items():
        if isinstance(param, QuantizedWeight) and prefix + pname in state_dict:
            del state_dict[prefix + pname]
            for suffix, tensor in zip(STATE_SUFFIXES, (param.codes, param.scale, param.low,
                                                       torch.tensor(param.seed, dtype=torch.int64))):
                state_dict[prefix + pname + suffix] = tensor


def _load_state(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load pre-hook of a module holding quantized weights: a weight saved as its plain tensors
    (:data:`STATE_SUFFIXES`) is given back as a :class:`QuantizedWeight`, which the load copies
    exactly (codes, scales, offsets and rounding seed); a float weight is quantized to nearest."""
    for pname, param in module._parameters.items():
        key = prefix + pname
        if isinstance(param, QuantizedWeight) and key + "_codes" in state_dict:
            codes, scale, low, seed = (state_dict.pop(key + suffix) for suffix in STATE_SUFFIXES)
            state_dict[key] = QuantizedWeight(codes, scale, low, param.dtype, codes.numel() // scale.numel(),
                                              param.stochastic_round, int(seed), compile=param.compile)


def _hook_state(module: nn.Module) -> None:
    """Make ``module``'s state dict hold its quantized weights as plain tensors (once per module)."""
    if not getattr(module, "_int8_state_hooks", False):
        module._register_state_dict_hook(_save_state)
        module._register_load_state_dict_pre_hook(_load_state, with_module=True)
        module._int8_state_hooks = True


def _parameter(param: Tensor, group_size: int, stochastic_round: bool, seed: int, compile: bool) -> nn.Parameter:
    """``param`` quantized, as a parameter that wants a gradient when ``param`` does."""
    return nn.Parameter(quantize(param.detach(), group_size=group_size, stochastic_round=stochastic_round, seed=seed,
                                 compile=compile), requires_grad=param.requires_grad)


def _chosen(model: nn.Module, filter, group_size: int) -> list[tuple[nn.Module, str, str, Tensor]]:
    """(module, parameter name, qualified name, parameter) of each weight ``filter`` chooses, in
    ``named_modules`` order; refusals as :func:`quantize_weights`."""
    if filter is None:
        filter = default_filter(model, "quantize_weights")
    chosen = []
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if filter(full, param):
                if isinstance(param, QuantizedWeight):
                    raise ValueError(f"{full} is quantized already")
                if param.numel() % group_size:
                    raise ValueError(f"{full} of shape {tuple(param.shape)} ({param.numel()} values) does not split "
                                     f"into groups of {group_size}; choose a group_size that divides it, or leave it "
                                     "out with filter")
                chosen.append((module, pname, full, param))
    if not chosen:
        raise ValueError(f"no parameter of {type(model).__name__} matched the filter (default: the linear weights "
                         "inside its blocks, zoo.filters); pass filter=(name, param) -> bool")
    return chosen


def _seeds(chosen, seed: int) -> dict:
    """Parameter -> the rounding seed of its quantized weight: ``seed`` plus its 1-based index
    (a weight shared by several modules counted once)."""
    seeds: dict = {}
    for *_, param in chosen:
        seeds.setdefault(param, seed + len(seeds) + 1)
    return seeds


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; allowed an int >= 0")


def quantize_weights(model: nn.Module, bits: int = 8, group_size: int = 128, stochastic_round: bool = True,
                     filter: Callable[[str, Tensor], bool] | None = None, seed: int = 0, *,
                     compile: bool = False) -> list[str]:
    """Replace ``model``'s chosen weights by INT8 :class:`QuantizedWeight` parameters, in place;
    returns their names. ``filter(name, param)`` chooses (default the linear weights inside the
    model's blocks, :func:`zoo.filters.select_matrices`: the set ``zoo.create`` gives the low-rank
    group). Each weight's groups of ``group_size`` values get a
    scale and an offset; ``stochastic_round`` is how optimizers write updates back; the i-th
    quantized weight's rounding noise is seeded with ``seed + i``; ``compile``: their kernels
    compiled (module docstring). A weight shared by several modules is quantized once. Refused:
    bits other than 8, a weight whose size is not a multiple of ``group_size``, a filter that
    matches nothing, a weight that is quantized already."""
    _check_settings(bits, group_size)
    _check_seed(seed)
    chosen = _chosen(model, filter, group_size)
    seeds, done = _seeds(chosen, seed), {}
    for module, pname, _, param in chosen:
        if param not in done:
            done[param] = _parameter(param, group_size, stochastic_round, seeds[param], compile)
        module._parameters[pname] = done[param]
        _hook_state(module)
    _mark_quantized(model, group_size, stochastic_round)
    return [full for _, _, full, _ in chosen]


def materialize_quantized(model: nn.Module, init: Callable[[nn.Module], None], device="cpu", *, bits: int = 8,
                          group_size: int = 128, stochastic_round: bool = True,
                          filter: Callable[[str, Tensor], bool] | None = None, seed: int = 0,
                          compile: bool = False) -> list[str]:
    """Give a model built on the ``meta`` device its weights one module at a time: each module
    that holds parameters or buffers is allocated on ``device``, initialised by ``init(module)``
    (in the order ``model.apply(init)`` calls it, so the random draws are the same) and its chosen
    weights are quantized at once, so the float weights of the whole model never exist together.
    The result equals materialising the whole model (``model.to_empty(device=device)``,
    ``model.apply(init)``) and then :func:`quantize_weights` with the same settings. Returns the
    quantized weights' names. ``init`` must fill every parameter and buffer it is given (they
    start uninitialised)."""
    _check_settings(bits, group_size)
    _check_seed(seed)
    owners: dict = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.is_meta:
                raise ValueError(f"{name + '.' if name else ''}{pname} is not on the meta device; build the model "
                                 "under torch.device('meta') (or use quantize_weights on a built model)")
            if param in owners:
                raise ValueError(f"{name + '.' if name else ''}{pname} is shared with {owners[param]} (tied weights); "
                                 "materialising module by module would untie them")
            owners[param] = name + "." + pname
    chosen = _chosen(model, filter, group_size)
    seeds = _seeds(chosen, seed)
    by_module: dict = {}
    for module, pname, _, param in chosen:
        by_module.setdefault(module, []).append((pname, seeds[param]))

    def post_order(module: nn.Module):
        for child in module.children():
            yield from post_order(child)
        yield module

    for module in post_order(model):
        if not module._parameters and not module._buffers:
            continue
        for pname, param in module._parameters.items():   # as to_empty(recurse=False), without swapping
            if param is not None:
                module._parameters[pname] = nn.Parameter(torch.empty_like(param, device=device),
                                                         requires_grad=param.requires_grad)
        for bname, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[bname] = torch.empty_like(buffer, device=device)
        init(module)
        for pname, weight_seed in by_module.get(module, ()):
            module._parameters[pname] = _parameter(module._parameters[pname], group_size, stochastic_round,
                                                   weight_seed, compile)
            _hook_state(module)
    _mark_quantized(model, group_size, stochastic_round)
    return [full for _, _, full, _ in chosen]


def _mark_quantized(model: nn.Module, group_size: int, stochastic_round: bool) -> None:
    """An HF transformers model records its INT8 weights in its config (``quantization_config``,
    method ``zoo-int8``, which :mod:`zoo.integrations.transformers` registers), so that
    ``from_pretrained`` rebuilds them."""
    if hasattr(model, "config") and any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
                                        for c in type(model).__mro__):
        model.config.quantization_config = {"quant_method": HF_METHOD, "bits": 8, "group_size": group_size,
                                            "stochastic_round": stochastic_round}


def quantized_bytes(numel: int, group_size: int = 128) -> int:
    """Bytes of a quantized weight of ``numel`` values: 1 per code, 4 + 4 per group."""
    return numel + 8 * (numel // group_size)


@contextmanager
def working_copy(state: dict, weight: QuantizedWeight):
    """For an optimizer's update of ``weight``: yields its dequantized working tensor, in float32
    at least (a bfloat16 weight's update is not rounded to bfloat16 on its way to the codes: that
    rounding would lose the updates below half a bfloat16 gap, and bias the rest); on leaving,
    the weight takes the updated value back, rounded with the noise of its next rounding (counted
    in ``state[weight]``, the optimizer's state of the weight). The gradient stays on ``weight``."""
    copy = weight.dequantize(torch.promote_types(weight.dtype, torch.float32))
    yield copy
    entry = state[weight]
    count = entry.get(ROUNDING_KEY, 0) + 1
    weight.requantize_(copy, count)
    entry[ROUNDING_KEY] = count
