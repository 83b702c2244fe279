"""Optimizer states in 8 or 4 bits (``state_bits=8`` or ``4`` on every registered name).

A full-size state tensor (a moment, a momentum) is kept as codes and one scale per block: the
tensor, flattened, is cut into blocks (256 values for 8 bits, 128 for 4), each block divided by its
largest absolute value (its ``absmax``) and each value replaced by the index of the nearest entry
of a code map (ties round up). Dequantized, a value is ``map[code] * absmax``.

- **8 bits** follows bitsandbytes' 8-bit optimizers and torchao's ``AdamW8bit``: block 256,
  Dettmers' dynamic map (signed for moments that change sign, unsigned for second moments);
  the codes keep the tensor's shape (uint8), the absmax is float32 of one value per block.
- **4 bits** follows torchao's ``AdamW4bit`` (after Li et al. 2023, "Memory Efficient Optimizers
  with 4-bit States"): block 128, the 4-bit dynamic map (three exponent levels) for signed states,
  and for non-negative ones the linear map ``1/16, 2/16, ..., 1`` without zero (a second moment
  rounded to zero would blow its update up). Two codes share a byte along the last dimension:
  the codes have the tensor's shape with the last dimension halved.

The maps equal the peers' (tested against torchao's). Where this differs from them: a block's
absmax may be 0 (every value 0; the peers store 1e-12), so a zero block dequantizes to exactly 0;
a block with a non-finite value gets a NaN absmax and dequantizes to NaN, so that a non-finite
gradient stays visible (the zoo's policy, :mod:`zoo.optimizers.base`); the last block may be
partial (torchao keeps such tensors in full precision, bitsandbytes pads); a positive value of a
non-negative state (a second moment) whose nearest 8-bit code is 0 takes the smallest positive
code instead (below 1.6e-7 of its block's absmax: rounded to 0, an RMSprop or Adam update there
would be the gradient over ``eps``, 1e8 times too large); Li et al.'s rank-1 normalisation of the
second moment is not used (nor by torchao).

**Which tensors.** A family names its quantizable state keys, signed or not
(``ZooOptimizer.low_bit_states``) and says why it keeps any other full-size buffer in full
precision (``full_precision_states``). A tensor with fewer than :data:`MIN_NUMEL` values stays in
full precision, as the peers' threshold (4,096); so does a 4-bit tensor with an odd last
dimension (its codes could not share bytes along it).

**One step per tensor.** :func:`quantized_step` wraps a family's per-tensor step: dequantize the
tensor's states, the family's own update (caution included), requantize into the same codes and
absmax. With ``compile=True`` the wrapped step is what is compiled, so the three are one kernel.
"""
from __future__ import annotations

import functools
import math
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

__all__ = ["BITS", "BLOCK", "MIN_NUMEL", "code_map", "tables", "quantize", "dequantize", "zeros", "eligible",
           "absmax_key", "quantized_step", "unpacked", "is_codes", "state_bytes", "convert_state_dict"]

BITS = (32, 8, 4)
"""Allowed ``state_bits``: 32 (full precision: the state in the parameter's dtype), 8, 4."""
BLOCK = {8: 256, 4: 128}
MIN_NUMEL = 4096


def absmax_key(key: str) -> str:
    """The state key of the scales of a quantized state ``key``."""
    return f"{key}_absmax"


@functools.cache
def _map_values(bits: int, signed: bool) -> tuple[float, ...]:
    with _disable_current_modes():   # real float32 arithmetic, also when first asked under a FakeTensorMode
        return _dynamic_map(bits, signed)


def _dynamic_map(bits: int, signed: bool) -> tuple[float, ...]:
    if bits == 4 and not signed:
        return tuple(torch.linspace(0, 1, 17)[1:].tolist())
    # Dettmers' dynamic map: for exponent level e = 0 .. bits - 2, the midpoints of a linear grid
    # over [0.1, 1] with 2^e intervals (2^(e+1) when unsigned: the sign bit is a fraction bit),
    # scaled by 10^(e - bits + 2), mirrored when signed; then 0 and 1
    levels = bits - 1
    values = [0.0, 1.0]
    for e in range(levels):
        edges = torch.linspace(0.1, 1, (2**e if signed else 2 ** (e + 1)) + 1)
        magnitudes = (10 ** (e - levels + 1) * (edges[:-1] + edges[1:]) / 2.0).tolist()
        values += magnitudes + ([-m for m in magnitudes] if signed else [])
    return tuple(sorted(values))


def code_map(bits: int, signed: bool, device=torch.device("cpu")) -> Tensor:
    """The ``2**bits`` sorted float32 values the codes of a ``bits``-bit state stand for."""
    return tables(bits, signed, device)[0]


@functools.cache
def _search_tables(bits: int, signed: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(code map, first code of each bucket, midpoints followed by +inf) on the CPU.

    Nearest-code search in two lookups instead of a binary search: a float32 value's upper 16 bits
    (its bfloat16 truncation, sign included) name a bucket of relative width 2^-8 to 2^-7; every
    bucket of the four maps holds at most one midpoint (checked here, bucket by bucket), so the
    code of ``x`` is the number of midpoints at or below its bucket's lowest value, plus one if
    ``x`` reaches the bucket's midpoint: exactly the count of midpoints <= x."""
    with _disable_current_modes():   # real tensors, also when first asked under a FakeTensorMode
        qmap = torch.tensor(_map_values(bits, signed), dtype=torch.float32)
        midpoints = (qmap[1:] + qmap[:-1]) / 2
        patterns = torch.arange(2**16, dtype=torch.int32).bitwise_left_shift(16)
        negative = patterns < 0
        lowest = torch.where(negative, patterns.bitwise_or(0xFFFF), patterns).view(torch.float32)
        highest = torch.where(negative, patterns, patterns.bitwise_or(0xFFFF)).view(torch.float32)
        first = torch.searchsorted(midpoints, lowest.nan_to_num(nan=-torch.inf), right=True)
        last = torch.searchsorted(midpoints, highest.nan_to_num(nan=-torch.inf), right=True)
        if int((last - first).max()) > 1:   # checked for every bucket, so the search is exact
            raise RuntimeError(f"a bucket of the {bits}-bit {'signed' if signed else 'unsigned'} map holds two "
                               "midpoints")
        return qmap, first.to(torch.int32), torch.cat((midpoints, torch.tensor([torch.inf])))


_DEVICE_TABLES: dict = {}


def tables(bits: int, signed: bool, device) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_search_tables` on ``device``; under a dispatch mode (a FakeTensorMode: the memory
    planner) fresh tensors made in that mode, which are not kept."""
    device = torch.device(device)
    if _get_current_dispatch_mode() is not None:
        return tuple(torch.tensor(t.tolist(), dtype=t.dtype, device=device) for t in _search_tables(bits, signed))
    key = (bits, signed, device)
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = tuple(t.to(device) for t in _search_tables(bits, signed))
    return _DEVICE_TABLES[key]


def is_codes(value) -> bool:
    """Whether a state entry is the codes of a quantized state."""
    return isinstance(value, Tensor) and value.dtype == torch.uint8


def eligible(shape, bits: int) -> bool:
    """Whether a floating-point state tensor of ``shape`` is kept in ``bits`` bits."""
    return bits != 32 and math.prod(shape) >= MIN_NUMEL and (bits == 8 or shape[-1] % 2 == 0)


def _codes_shape(shape, bits: int) -> tuple:
    return tuple(shape) if bits == 8 else (*shape[:-1], shape[-1] // 2)


def zeros(shape, bits: int, device) -> tuple[Tensor, Tensor]:
    """(codes, absmax) of a state of zeros of ``shape`` (an absmax of 0 dequantizes to 0)."""
    blocks = -(-math.prod(shape) // BLOCK[bits])
    return (torch.zeros(_codes_shape(shape, bits), dtype=torch.uint8, device=device),
            torch.zeros(blocks, dtype=torch.float32, device=device))


def _blocks(values: Tensor, block: int) -> Tensor:
    """``values`` (contiguous) as rows of ``block`` values, the last dimension the row: split along
    its own last dimension where that is a multiple of ``block`` (the same rows as the flattened
    tensor's, and compiled code then indexes the tensor directly instead of through a modulo),
    else flattened and zero-padded."""
    if values.dim() > 0 and values.shape[-1] % block == 0:
        return values.view(*values.shape[:-1], -1, block)
    flat = values.reshape(-1)
    pad = -flat.numel() % block
    return (torch.nn.functional.pad(flat, (0, pad)) if pad else flat).view(-1, block)


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-D ``table``, as a gather: compiled, it needs no wrap of negative
    indices (and no bounds check, see :func:`quantized_step`)."""
    return torch.gather(table, 0, index.reshape(-1).long()).view(index.shape)


def quantize(values: Tensor, bits: int, signed: bool) -> tuple[Tensor, Tensor]:
    """(codes, absmax) of ``values``: nearest code per value of its block's normalised value."""
    _, first, midpoints = tables(bits, signed, values.device)
    return _quantize(values, bits, first, midpoints, signed)


CHUNK = 2**22
"""Values quantized or dequantized at a time by the eager steps (a multiple of every block), so
that their temporaries (float32 values, int32 indices: about 20 bytes per value) stay near 80 MB
whatever the tensor's size; compiled steps fuse them away and take the tensor whole."""


def _chunks(numel: int) -> list[slice]:
    if torch.compiler.is_compiling() or numel <= CHUNK:
        return [slice(0, numel)]
    return [slice(i, min(i + CHUNK, numel)) for i in range(0, numel, CHUNK)]


def _quantize(values: Tensor, bits: int, first: Tensor, midpoints: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    values = values.detach()
    parts = _chunks(values.numel())
    if len(parts) == 1:
        codes, absmax = _quantize_whole(values, bits, first, midpoints, signed)
        return codes.view(_codes_shape(values.shape, bits)), absmax
    flat = values.reshape(-1)
    parts = [_quantize_whole(flat[part], bits, first, midpoints, signed) for part in parts]
    codes, absmax = torch.cat([c.reshape(-1) for c, _ in parts]), torch.cat([a for _, a in parts])
    return codes.view(_codes_shape(values.shape, bits)), absmax


def _quantize_whole(values: Tensor, bits: int, first: Tensor, midpoints: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(codes, absmax) of contiguous ``values`` whose blocks (:func:`_blocks`) are the rows."""
    x = _blocks(values.float(), BLOCK[bits])
    absmax = x.abs().amax(dim=-1, keepdim=True)   # NaN where the block holds one; infinite where it holds an inf
    absmax = torch.where(absmax == torch.inf, torch.nan, absmax)
    normalised = x / absmax.clamp(min=torch.finfo(torch.float32).tiny)
    below = _lookup(first, normalised.view(torch.int32).bitwise_right_shift(16).bitwise_and(0xFFFF))
    codes = below + (normalised >= _lookup(midpoints, below))
    codes = codes.clamp_(max=2**bits - 1)
    if not signed and bits == 8:   # a positive second moment never becomes 0 (its update would be g / eps)
        codes = torch.where((codes == 0) & (normalised > 0), 1, codes)
    codes = codes.reshape(-1)[: values.numel()].to(torch.uint8)
    if bits == 4:
        codes = codes.view(-1, 2)
        codes = codes[:, 0].bitwise_left_shift(4).bitwise_or_(codes[:, 1])
    return codes, absmax.reshape(-1)


def dequantize(codes: Tensor, absmax: Tensor, bits: int, signed: bool, dtype=torch.float32) -> Tensor:
    """The state that ``codes`` and ``absmax`` stand for, in ``dtype``."""
    return _dequantize(codes, absmax, bits, tables(bits, signed, codes.device)[0], dtype)


def _dequantize(codes: Tensor, absmax: Tensor, bits: int, qmap: Tensor, dtype) -> Tensor:
    shape = codes.shape if bits == 8 else (*codes.shape[:-1], 2 * codes.shape[-1])
    numel, per_byte, block = math.prod(shape), 8 // bits, BLOCK[bits]
    parts = _chunks(numel)
    if len(parts) == 1:
        return _dequantize_whole(codes, absmax, bits, qmap, dtype)
    flat = codes.reshape(-1)
    out = torch.empty(numel, dtype=dtype, device=codes.device)
    for part in parts:
        out[part] = _dequantize_whole(flat[part.start // per_byte: part.stop // per_byte],
                                      absmax[part.start // block: -(-part.stop // block)], bits, qmap, dtype)
    return out.view(shape)


def _dequantize_whole(codes: Tensor, absmax: Tensor, bits: int, qmap: Tensor, dtype) -> Tensor:
    """The values of contiguous ``codes`` (the whole state or a flat part of it) and their absmax."""
    if bits == 4:
        codes = torch.stack((codes.bitwise_right_shift(4), codes.bitwise_and(15)), dim=-1).flatten(-2)
    x = _blocks(_lookup(qmap, codes), BLOCK[bits])
    values = x * absmax.view(*x.shape[:-1], 1)
    if values.numel() != codes.numel():   # the padding of a partial last block
        values = values.view(-1)[: codes.numel()]
    return values.view(codes.shape).to(dtype)


def state_bytes(numel: int, bits: int) -> int:
    """Bytes of a quantized state of ``numel`` values: its codes and its float32 absmax."""
    return numel * bits // 8 + 4 * -(-numel // BLOCK[bits])


@functools.cache
def quantized_step(fn, slots: tuple[tuple[int, bool], ...], bits: int, dtype: torch.dtype):
    """``fn`` (a family's per-tensor step) over states of which those at the positions ``slots``
    (index among the tensors after the parameter, signed) are quantized. The returned step takes
    the codes at those positions and, after all tensors, per slot its absmax and :func:`tables`; it
    dequantizes them in ``dtype`` (the parameter's, as its full-precision states), runs ``fn`` and
    writes the requantized codes and absmax back in place. Made once per (fn, slots, bits, dtype),
    so that its compiled form is shared."""
    def step(param, *args, **kwargs):
        count = len(args) - 4 * len(slots)
        tensors, extra = list(args[:count]), args[count:]
        codes = [tensors[i] for i, _ in slots]
        for j, (i, _) in enumerate(slots):
            tensors[i] = _dequantize(codes[j], extra[4 * j], bits, extra[4 * j + 1], dtype)
        result = fn(param, *tensors, **kwargs)
        for j, (i, signed) in enumerate(slots):
            new_codes, new_absmax = _quantize(tensors[i], bits, extra[4 * j + 2], extra[4 * j + 3], signed)
            codes[j].copy_(new_codes)
            extra[4 * j].copy_(new_absmax)
        return result

    step.__name__ = step.__qualname__ = f"{fn.__name__}_{bits}bit"
    # every lookup's index is in range by construction (a code into its map, 16 bits into the
    # 2^16 buckets, a bucket's first code into the midpoints): compiled without bounds checks,
    # which took half of the compiled 8-bit AdamW step
    step.compile_options = {"assert_indirect_indexing": False}
    return step


@contextmanager
def unpacked(state: dict, keys: dict, bits: int, dtype):
    """For work on a state outside a step (SOAP's change of basis): yields {key: the tensor} for
    ``keys`` ({key: signed}), dequantized where quantized; on leaving, those are requantized."""
    tensors = {k: dequantize(state[k], state[absmax_key(k)], bits, signed, dtype) if is_codes(state[k]) else state[k]
               for k, signed in keys.items()}
    yield tensors
    for key, signed in keys.items():
        if is_codes(state[key]):
            codes, absmax = quantize(tensors[key], bits, signed)
            state[key].copy_(codes)
            state[absmax_key(key)].copy_(absmax)


def convert_state_dict(state_dict: dict, optimizer) -> dict:
    """``state_dict`` (a state of ``optimizer``'s optimizer at any ``state_bits``) with every state
    that ``optimizer`` keeps in fewer bits re-coded at ``optimizer``'s ``state_bits`` (quantized,
    dequantized or both), its groups saying so: what ``optimizer.load_state_dict`` then takes. A
    state dict of another optimizer is still refused by that load."""
    states, groups = {}, []
    low_bit = type(optimizer).low_bit_states
    for saved, group in zip(state_dict["param_groups"], optimizer.param_groups):
        old, new = saved.get("state_bits", 32), group["state_bits"]
        for pid, param in zip(saved["params"], group["params"]):
            if pid not in state_dict["state"]:
                continue
            state = states[pid] = dict(state_dict["state"][pid])
            for key, signed in low_bit.items():
                if key not in state:
                    continue
                value = state[key]
                if old == new and is_codes(value):   # already in these bits: kept as they are
                    continue
                if is_codes(value):
                    value = dequantize(value, state.pop(absmax_key(key)), old, signed, param.dtype)
                if eligible(value.shape, new):
                    state[key], state[absmax_key(key)] = quantize(value, new, signed)
                else:
                    state[key] = value
        groups.append({**saved, "state_bits": new})
    return {**state_dict, "state": states, "param_groups": groups}
