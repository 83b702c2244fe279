"""What every zoo optimizer shares: torch.optim conventions, validation, the caution options,
state dicts that are checked when loaded and exchanged with torch.optim, and one policy for
non-finite gradients.

A subclass states its hyper-parameters' ranges in ``_validate`` (called for every param group,
so a bad value in any group is refused), says why caution would be a no-op in
``_caution_noop_reason`` where that can happen, and in ``_update_group`` calls, through
:meth:`ZooOptimizer._run`, its per-tensor step function built from :mod:`zoo.optimizers.blocks`
(compiled with ``compile=True``). For :meth:`ZooOptimizer.load_state_dict` it
names the settings that say which optimizer a state belongs to (``defining_settings``), the
settings torch.optim's counterpart writes (``torch_settings``) and the keys of a parameter's
state (``state_keys`` or ``_state_keys``).

**INT8 weights** (:mod:`zoo.quantized`): a quantized weight is updated through a dequantized
working copy holding its gradient, one weight at a time, and rounded back; a subclass looks a
parameter's state up with ``self._state(p)`` (never ``self.state[p]``), which maps the working copy
to the weight, so the state stays keyed by the weight.

**Non-finite gradients** (every optimizer, tested): as in torch.optim, a NaN or infinite gradient
entry reaches the weight, which becomes non-finite at that step, visibly; no optimizer raises on
it part-way through a step, and none freezes a coordinate silently (a sign of NaN is 0 in torch:
the signed and clipped updates add ``0 * g`` to carry it,
:func:`zoo.optimizers.blocks.carry_nonfinite`).
"""
from __future__ import annotations

import inspect
import math
import sys
import types
import warnings
from contextlib import contextmanager
from numbers import Real

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import lowbit
from . import blocks
from ..caution import check_norm
from ..quantized import ROUNDING_KEY, QuantizedWeight, round_stochastically, rounding_noise, working_copy
from ..sharding import global_sum, is_dtensor

COMPILE = (False, True, "auto")
"""Values of ``compile``: eager steps, compiled steps (an error where compiling fails), or
compiled steps that fall back to eager with a warning where compiling fails."""

__all__ = ["ZooOptimizer", "check_range", "check_betas", "check_bool", "unwrap", "STATE_MARKER", "COMPILE"]

STATE_MARKER = "zoo_optimizer"
"""Key that :meth:`ZooOptimizer.state_dict` adds to each saved param group: the class that saved it."""


def check_range(name: str, value, low: float = 0.0, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a real number in the interval."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor {name} must have one element, got shape {tuple(value.shape)}")
        value = value.item()
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"Invalid {name}: {value!r}; allowed range {interval}")


def check_bool(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r}; expected a bool")


def check_betas(name: str, betas, count: int = 2) -> None:
    """Raise ``ValueError`` unless ``betas`` is a tuple of ``count`` numbers in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid {name}: {betas!r}; expected a tuple of {count} numbers in [0, 1)")
    for i, beta in enumerate(betas):
        check_range(f"{name}[{i}]", beta, 0.0, 1.0, high_open=True)


def _known_settings() -> set[str]:
    """Hyper-parameter names of every torch.optim optimizer and every registered zoo class: a
    saved group holding one that this optimizer does not have belongs to another optimizer."""
    from ..registry import _REGISTRY
    classes = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, Optimizer)]
    classes += [rec.cls for rec in _REGISTRY.values()]
    return {name for cls in classes for name in inspect.signature(cls.__init__).parameters} - {"self", "params"}


def implementation(cls: type) -> type:
    """The class that implements ``cls``'s algorithm: ``cls`` itself, or for the class of a
    registered name (:func:`zoo.register`'s ``CAdamW``, ``ApolloMini``...) the class it was made
    from. A state dict names it (:data:`STATE_MARKER`), so that the states of a name and of its
    twin differ only in their settings (``caution``)."""
    return next(c for c in cls.__mro__ if "registry_name" not in c.__dict__)


def unwrap(optimizer) -> Optimizer:
    """The optimizer inside the wrappers training clients put around it: accelerate's
    ``AcceleratedOptimizer`` (``.optimizer``, HF Trainer's too), Lightning's ``LightningOptimizer``
    (``._optimizer``), torch's ``ZeroRedundancyOptimizer`` (``.optim``, this rank's shard); a zoo
    optimizer or any other optimizer is returned as it is."""
    seen = set()
    while not isinstance(optimizer, ZooOptimizer) and id(optimizer) not in seen:
        seen.add(id(optimizer))
        inner = next((getattr(optimizer, name) for name in ("optimizer", "_optimizer", "optim")
                      if isinstance(getattr(optimizer, name, None), Optimizer)), None)
        if inner is None:
            break
        optimizer = inner
    return optimizer


def as_float(value) -> float:
    """A learning rate or other scalar given as a float or a one-element tensor, as a float."""
    return value.item() if isinstance(value, Tensor) else float(value)


class ZooOptimizer(Optimizer):
    """Base class: ``step(closure)``, grads that are None skipped, per-group validation, caution,
    checked state dicts that torch.optim's counterparts read and write."""

    defining_settings: tuple[str, ...] = ("caution",)
    """Group settings that say which optimizer a state belongs to (``caution``: a ``c-`` twin or
    its base); a loaded state must agree with this optimizer on each it holds."""
    torch_settings: dict = {}
    """Settings torch.optim's counterpart writes into its groups that this class lacks, each with
    the values it accepts (None: any), so that a torch.optim state loads."""
    state_keys: tuple[str, ...] | None = None
    """Keys of a parameter's state after a step (None: not checked at load); classes whose keys
    depend on the parameter override :meth:`_state_keys`."""
    scalar_state: dict = {"step": int}
    """State entries kept as Python numbers; a torch.optim state's tensor (its ``step``) is read
    back as one."""
    per_layer = None
    """The :class:`zoo.layerwise.PerLayer` hooks when the parameters are updated inside backward."""
    group_may_unset: tuple[str, ...] = ()
    """Settings a param group may set to None even where a registered name fixes them."""
    supports_complex = False
    """Whether complex parameters are optimized (as their real view, ``torch.view_as_real``), as
    torch.optim's counterpart does; where False they are refused when added."""
    supports_sparse = False
    """Whether sparse gradients are taken (as torch.optim.SGD does); where False a step with one
    raises ``RuntimeError``, as torch.optim's other optimizers."""

    low_bit_states: dict = {}
    """State keys kept in ``state_bits`` bits when asked (:mod:`zoo.lowbit`), each with whether
    its values change sign (a moment: the signed map) or not (a second moment: the unsigned map)."""
    full_precision_states: dict = {}
    """Full-size state keys kept in full precision whatever ``state_bits`` says, each with why."""

    def __init__(self, params, defaults: dict, caution: bool = False, caution_norm="mean", compile=False, *,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        if not any(compile is value for value in COMPILE):
            raise ValueError(f"Invalid compile: {compile!r}; allowed False, True, 'auto'")
        self.compile = compile
        """Whether each tensor's step runs through torch.compile (not a group setting: a state
        dict saved by a compiled optimizer loads into an eager one and back)."""
        self._group: dict | None = None   # the group being stepped
        self._seeds: dict = {}   # parameter -> the seed of its stochastic rounding
        super().__init__(params, dict(defaults, caution=caution, caution_norm=caution_norm, state_bits=state_bits,
                                      stochastic_round=stochastic_round, kahan=kahan))
        self._aligned_counts: list = []
        self._working: dict = {}   # working tensor -> (the parameter it stands for, its state), during a step

    def __getstate__(self) -> dict:   # torch.optim keeps defaults, state and groups; compile is ours
        return {**super().__getstate__(), "compile": self.compile}

    def __setstate__(self, state: dict) -> None:   # unpickling, copy.deepcopy, load_state_dict
        super().__setstate__(state)
        self.__dict__.setdefault("_aligned_counts", [])
        self.__dict__.setdefault("_working", {})
        self.__dict__.setdefault("compile", False)
        self.__dict__.setdefault("_group", None)
        self.__dict__.setdefault("_seeds", {})
        for group in self.param_groups:   # an optimizer pickled before these settings existed
            for key, value in (("state_bits", 32), ("stochastic_round", False), ("kahan", False)):
                group.setdefault(key, value)

    # -- validation -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """torch.optim's, plus validation of the group (a group refused is not added); a group
        without ``param_names`` added to an optimizer whose groups have them (:func:`zoo.create`'s)
        gets names ``param<i>``."""
        if not isinstance(param_group, dict):
            return super().add_param_group(param_group)   # torch's TypeError
        params = param_group.get("params")
        if params is not None and not isinstance(params, set):   # torch refuses sets itself
            params = [params] if isinstance(params, Tensor) else list(params)
            param_group = {**param_group, "params": params}
            if (any("param_names" in g for g in self.param_groups) and "param_names" not in param_group
                    and all(isinstance(p, Tensor) for p in params)):
                start = sum(len(g["params"]) for g in self.param_groups)
                param_group["param_names"] = [f"param{start + j}" for j in range(len(params))]
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
            self._check_params(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise
        if self.per_layer is not None:
            self.per_layer.hook(len(self.param_groups) - 1)

    def _check_params(self, group: dict) -> None:
        """Raise ``ValueError`` for a parameter this optimizer cannot update: a complex one where
        :attr:`supports_complex` is False."""
        if not self.supports_complex and any(torch.is_complex(p) for p in group["params"]):
            raise ValueError(f"{type(self).__name__} does not support complex parameters: its step is defined on real "
                             "tensors, and unlike torch.optim's Adam, AdamW, NAdam, RAdam, RMSprop and SGD (the zoo's "
                             "adam, adamw, nadamw, radam, rmsprop, sgdm, nesterov and their twins, which optimize a "
                             "complex parameter as its real view) it has no complex form to follow")
        if group["state_bits"] != 32 and any(torch.is_complex(p) for p in group["params"]):
            raise ValueError(f"Invalid state_bits: {group['state_bits']} with complex parameters: the blockwise codes "
                             "are kept for real tensors; pass state_bits=32")
        rounding = [k for k in ("stochastic_round", "kahan") if group[k]]
        if rounding and any(isinstance(p, QuantizedWeight) for p in group["params"]):
            raise ValueError(f"Invalid {rounding[0]}: True with INT8 weights (zoo.quantized), which round every "
                             "update stochastically already; it is for bfloat16 or float16 weights")
        if group["stochastic_round"] and any(is_dtensor(p) for p in group["params"]):
            raise ValueError("Invalid stochastic_round: True with parameters sharded by FSDP2 (DTensors): the rounding "
                             "noise is drawn per whole tensor; use kahan=True there")
        if group["state_bits"] != 32 and any(is_dtensor(p) for p in group["params"]):
            raise ValueError(f"Invalid state_bits: {group['state_bits']} with parameters sharded by FSDP2 (DTensors): "
                             "a block of 256 or 128 state values would straddle the shards, so the sharded step "
                             "would not be the one-process step; use state_bits with DDP or ZeroRedundancyOptimizer "
                             "(whole parameters per rank), or state_bits=32 under FSDP2")

    def _check_group(self, group: dict) -> None:
        """Raise ``ValueError`` naming the first setting of ``group`` out of its range."""
        if "compile" in group:
            raise ValueError("Invalid compile in a param group: compile is the optimizer's setting (its constructor's "
                             "or zoo.create's argument), not a group's")
        check_range("lr", group["lr"])
        check_range("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])
        if "foreach" in group and group["foreach"] is not None:
            check_bool("foreach", group["foreach"])
            if group["foreach"] and self.compile:
                raise ValueError("Invalid foreach: compile compiles the per-tensor step; pass foreach=None (or "
                                 "compile=False for the multi-tensor kernels)")
        check_bool("caution", group["caution"])
        check_norm(group["caution_norm"])
        self._check_precision(group)
        self._validate(group)
        if group["caution"]:
            reason = self._caution_noop_reason(group)
            if reason:
                raise ValueError(
                    f"caution=True is meaningless for {type(self).__name__} with these settings: "
                    f"{reason}, so the update always agrees in sign with the gradient and the "
                    "cautious mask would never act")

    def _validate(self, group: dict) -> None:
        """Check the family's own hyper-parameters; raise ``ValueError`` naming the argument."""

    def _check_precision(self, group: dict) -> None:
        """``state_bits`` (:mod:`zoo.lowbit`), ``stochastic_round`` and ``kahan``: valid, and
        meaningful for this optimizer and group."""
        bits = group["state_bits"]
        if isinstance(bits, bool) or bits not in lowbit.BITS:
            raise ValueError(f"Invalid state_bits: {bits!r}; allowed 32 (states in the parameter's dtype), 8 or 4")
        check_bool("stochastic_round", group["stochastic_round"])
        check_bool("kahan", group["kahan"])
        if group["stochastic_round"] and group["kahan"]:
            raise ValueError("Invalid kahan: stochastic_round=True and kahan=True cannot both be set (each is a way "
                             "to keep the updates a bfloat16 or float16 weight would round away; choose one)")
        if bits != 32:
            reason = self._low_bit_noop_reason(group)
            if reason:
                raise ValueError(f"Invalid state_bits: {bits}; {type(self).__name__} {reason}, so there is nothing "
                                 "to keep in fewer bits")
        asked = [f"state_bits={bits}"] * (bits != 32) + [k + "=True" for k in ("stochastic_round", "kahan") if group[k]]
        if asked and (group.get("foreach") or group.get("fused")):
            raise ValueError(f"Invalid {'fused' if group.get('fused') else 'foreach'}: {' and '.join(asked)} steps one "
                             "tensor at a time and torch's multi-tensor and fused kernels take full-precision states "
                             "and weights; pass foreach=None and fused=False")

    def _low_bit_noop_reason(self, group: dict) -> str | None:
        """Why this group keeps no state that ``state_bits`` could shrink, or None."""
        if self.low_bit_states:
            return None
        kept = "; ".join(f"{key} {why}" for key, why in self.full_precision_states.items())
        return "keeps no full-size state that can be quantized" + (f" ({kept})" if kept else "")

    # -- state dicts --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch.optim's state dict; each param group also names the class that saved it
        (:data:`STATE_MARKER`, :func:`implementation`), which torch.optim ignores."""
        state = super().state_dict()
        for group in state["param_groups"]:
            group[STATE_MARKER] = implementation(type(self)).__name__
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim's, in torch.optim's order: the ``load_state_dict`` pre-hooks (each may return
        a new state dict), then the check that the state is one of this optimizer's, from this class
        or from torch.optim's counterpart (:meth:`check_state_dict`; nothing is changed when it
        fails), the load, this optimizer's normalisation of what was loaded, then the post-hooks.
        The normalisation: settings the state does not hold (a torch.optim state has no
        ``caution``) keep this optimizer's values, a torch.optim tensor ``step`` becomes an int, and
        a family's own adjustments (:meth:`_loaded`)."""
        state_dict = state_dict.copy()   # as torch.optim: the hooks may change it, not the caller's dict
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups = state_dict["param_groups"]
        if len(groups) == len(self.param_groups) and all(
                len(a["params"]) == len(b["params"]) for a, b in zip(groups, self.param_groups)):
            self.check_state_dict(state_dict)   # otherwise torch's load names the mismatch
        before = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        groups = [{k: v for k, v in g.items() if k != STATE_MARKER} for g in groups]
        hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}
        coded = {pid: {k: s[k] for k in self._coded_keys(s)} for pid, s in state_dict["state"].items()}
        states = {pid: {k: v for k, v in s.items() if k not in coded[pid]} for pid, s in state_dict["state"].items()}
        try:   # torch.optim's load, without running the hooks a second time; codes and absmax not cast by it
            super().load_state_dict({**state_dict, "state": states, "param_groups": groups})
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = hooks
        for group, old in zip(self.param_groups, before):
            for key, value in old.items():
                group.setdefault(key, value)
        for param in (p for group in self.param_groups for p in group["params"]):
            state = self.state.get(param, {})
            for key, kind in self.scalar_state.items():
                if isinstance(state.get(key), Tensor):
                    state[key] = kind(state[key].item())
        saved_ids = (pid for group in state_dict["param_groups"] for pid in group["params"])
        for pid, param in zip(saved_ids, (p for group in self.param_groups for p in group["params"])):
            for key, value in coded.get(pid, {}).items():   # uint8 codes and float32 absmax, as saved
                self.state[param][key] = value.to(device=param.device, copy=True)
        self._loaded(state_dict)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _coded_keys(self, state: dict) -> set:
        """The keys of a saved parameter state that hold quantized states: codes and their absmax."""
        keys = {k for k, v in state.items() if k in self.low_bit_states and lowbit.is_codes(v)}
        return keys | {lowbit.absmax_key(k) for k in keys if lowbit.absmax_key(k) in state}

    def _loaded(self, state_dict: dict) -> None:
        """A family's adjustment of the state just loaded from ``state_dict`` (torch.optim casts
        every state tensor to its parameter's dtype and device; a family that keeps some in another
        dtype restores them here)."""

    def _loaded_states(self, state_dict: dict):
        """(parameter, its saved state, its loaded state) of each parameter with a state, for
        :meth:`_loaded`."""
        saved = (pid for group in state_dict["param_groups"] for pid in group["params"])
        params = (p for group in self.param_groups for p in group["params"])
        for pid, param in zip(saved, params):
            if pid in state_dict["state"] and param in self.state:
                yield param, state_dict["state"][pid], self.state[param]

    def check_state_dict(self, state_dict: dict) -> None:
        """Raise ``ValueError`` naming the mismatch when ``state_dict`` is not a state of this
        optimizer: saved by another class (:data:`STATE_MARKER`), holding settings of another
        optimizer, disagreeing on a defining setting (caution, Nesterov, decoupled decay, APOLLO's
        rank...), a torch.optim setting this class does not implement (``amsgrad=True``), a
        setting out of its range (validated as a new group's), or a parameter state without the
        keys this optimizer keeps (or with others)."""
        who, known = implementation(type(self)).__name__, _known_settings()
        saved_groups = state_dict["param_groups"]
        for i, (ours, saved) in enumerate(zip(self.param_groups, saved_groups)):
            where = f"param group {i}" + (f" ({ours['name']})" if "name" in ours else "")
            marker = saved.get(STATE_MARKER, who)
            if marker != who:
                raise ValueError(f"the state was saved by a {marker} optimizer ({where}), not {who}; load it into "
                                 f"a {marker} or start this {who} afresh")
            foreign = sorted(k for k in saved if k in known and k not in ours and k not in self.torch_settings)
            if foreign:
                raise ValueError(f"the state's {where} has settings {foreign} that {who} does not have: it is "
                                 f"the state of another optimizer")
            for key, allowed in self.torch_settings.items():
                if key in saved and allowed is not None and saved[key] not in allowed:
                    raise ValueError(f"the state's {where} has {key}={saved[key]!r}, which {who} does not "
                                     f"implement (allowed: {', '.join(map(repr, allowed))})")
            bits = saved.get("state_bits", 32)
            if bits != ours["state_bits"]:
                raise ValueError(f"the state's {where} holds " + (f"{bits}-bit states" if bits != 32 else
                                 "full-precision states") + f" but this {who} has state_bits={ours['state_bits']}: "
                                 f"a state loads into an optimizer with its own state_bits (build the {who} with "
                                 f"state_bits={bits}, or convert the state with zoo.lowbit.convert_state_dict)")
            for key in self.defining_settings:
                if key in saved and key in ours and saved[key] != ours[key]:
                    raise ValueError(f"the state's {where} has {key}={saved[key]!r} but this {who} has "
                                     f"{key}={ours[key]!r}: it is the state of another optimizer (build the "
                                     f"one with {key}={saved[key]!r} to load it)")
        merged_groups = [{**ours, **{k: v for k, v in saved.items() if k not in ("params", STATE_MARKER)}}
                         for ours, saved in zip(self.param_groups, saved_groups)]
        for merged in merged_groups:
            self._check_group(merged)
        for i, (ours, saved, merged) in enumerate(zip(self.param_groups, saved_groups, merged_groups)):
            names = ours.get("param_names") or [f"{j}" for j in range(len(ours["params"]))]
            for param, name, pid in zip(ours["params"], names, saved["params"]):
                state = state_dict["state"].get(pid)
                keys = self._state_keys(param, merged) if state else None
                if keys is None:
                    continue
                required, optional = keys
                optional = optional | self._precision_keys(param, merged, required)
                if isinstance(param, QuantizedWeight):
                    optional = optional | {ROUNDING_KEY}
                missing, unknown = sorted(required - set(state)), sorted(set(state) - required - optional)
                if missing or unknown:
                    raise ValueError(f"the state of parameter {name} (param group {i}) "
                                     + (f"lacks {missing}" if missing else "")
                                     + (" and " if missing and unknown else "")
                                     + (f"has {unknown}, which {who} does not keep" if unknown else "")
                                     + f": {who} keeps {sorted(required)} for it; it is the state of another "
                                     "optimizer or of other settings")

    def _buffers(self, param: Tensor, group: dict) -> tuple[str, ...] | None:
        """Names of ``param``'s state tensors of its size, for families where they depend on the
        settings (its state keys are then these and ``step``, its bytes their sizes); None: the
        family says :attr:`state_keys` and :attr:`full_size_states` instead."""
        return None

    def _state_keys(self, param: Tensor, group: dict) -> tuple[set, set] | None:
        """(required, optional) keys of ``param``'s state after a step in ``group``; None: not checked."""
        buffers = self._buffers(param, group)
        if buffers is not None:
            return {"step", *buffers}, set()
        return None if self.state_keys is None else (set(self.state_keys), set())

    def _precision_keys(self, param: Tensor, group: dict, keys: set) -> set:
        """The keys a state with keys ``keys`` may hold besides them under ``group``'s precision
        settings: the absmax of each quantized state, the Kahan compensation, the rounding count."""
        extra = {lowbit.absmax_key(key) for key in self._state_shapes(param, group)} if group["state_bits"] != 32 else set()
        if group["kahan"]:
            extra.add(KAHAN_KEY)
        if group["stochastic_round"]:
            extra.add(ROUNDING_KEY)
        return extra

    full_size_states = 0
    """How many tensors of the parameter's size its state holds (classes with other states
    override :meth:`_formula_bytes`)."""

    def expected_state_bytes(self, param: Tensor, group: dict) -> int:
        """Bytes of ``param``'s state after a step, by the optimizer's analytical formula: the
        family's in full precision, with each state kept in ``state_bits`` bits at its codes' and
        absmaxes' size (:func:`zoo.lowbit.state_bytes`), and a Kahan compensation the size of a
        bfloat16 or float16 parameter."""
        total = self._formula_bytes(param, group)
        bits = group["state_bits"]
        for shape in self._quantized_shapes(param, group).values():
            numel = math.prod(shape)
            total += lowbit.state_bytes(numel, bits) - numel * param.element_size()
        if group["kahan"] and _low_precision(param):
            total += param.numel() * param.element_size()
        return total

    def _formula_bytes(self, param: Tensor, group: dict) -> int:
        """Bytes of ``param``'s state after a step in full precision."""
        buffers = self._buffers(param, group)
        return (self.full_size_states if buffers is None else len(buffers)) * param.numel() * param.element_size()

    def _state_shapes(self, param: Tensor, group: dict) -> dict:
        """{key: shape} of ``param``'s state tensors that ``state_bits`` may quantize (those of
        :attr:`low_bit_states` its state holds after a step; of ``param``'s shape unless a family
        says otherwise)."""
        keys = self._state_keys(param, group)
        return {} if keys is None else {k: param.shape for k in keys[0] if k in self.low_bit_states}

    def _quantized_shapes(self, param: Tensor, group: dict) -> dict:
        """{key: shape} of ``param``'s state tensors kept in ``state_bits`` bits."""
        bits = group["state_bits"]
        return {k: shape for k, shape in self._state_shapes(param, group).items() if lowbit.eligible(shape, bits)}

    def _caution_noop_reason(self, group: dict) -> str | None:
        """Why caution cannot change the update for this group, or None when it can."""
        return None

    # -- stepping ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch.optim's; with per-layer updates the spent gradients (:class:`zoo.layerwise.SpentGradient`)
        become None whatever ``set_to_none`` says (there is nothing to zero)."""
        if self.per_layer is not None:
            self.per_layer.clear()
        super().zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss.
        With per-layer updates (:mod:`zoo.layerwise`) the parameters were updated inside
        ``backward`` already, and this runs the closure and ends the optimizer step
        (:meth:`zoo.layerwise.PerLayer.catch_up`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.per_layer is not None:
            self.per_layer.catch_up()   # parameters unfrozen since the hooks were made
            return loss
        self._aligned_counts = []
        with blocks.workspace():
            for group in self.param_groups:
                self._step_group(group, group["params"])
        return loss

    def _step_group(self, group: dict, params: list[Tensor]) -> None:
        """Update those of ``params`` (of ``group``) that have a gradient."""
        # a zero-size tensor has nothing to update (and no RMS or norm to take); a parameter
        # listed twice in a group (torch warns) is updated once
        params = [p for p in dict.fromkeys(params) if p.grad is not None and p.numel() > 0]
        for p in params:
            if p.grad.is_sparse and not self.supports_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (as torch.optim's "
                                   "optimizers other than SGD, SparseAdam and Adagrad)")
        if group["state_bits"] != 32 and any(p.grad.is_sparse for p in params):
            raise RuntimeError(f"state_bits={group['state_bits']} does not take sparse gradients: the blockwise "
                               "codes are dense; pass state_bits=32")
        self._group = group
        with blocks.workspace():   # the eager steps' temporaries, reused from tensor to tensor
            plain = [p for p in params if not isinstance(p, QuantizedWeight)]
            if plain:
                with real_views(self.state, plain) as (tensors, working):
                    self._working = working
                    try:
                        self._update_group(group, tensors)
                    finally:
                        self._working = {}
            for weight in params:   # INT8 weights (zoo.quantized), one working copy at a time
                if isinstance(weight, QuantizedWeight):
                    with working_copy(self.state, weight) as copy:
                        self._working = {copy: (weight, self.state[weight])}
                        try:
                            self._update_group(group, [copy])
                        finally:
                            self._working = {}

    def _state(self, param: Tensor) -> dict:
        """The state of ``param``, or of the parameter whose working tensor it is (a quantized
        weight's dequantized copy, a complex parameter's real view)."""
        return self._working[param][1] if param in self._working else self.state[param]

    def _quantized(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is the working copy of an INT8 weight (:func:`zoo.quantized.working_copy`)."""
        return isinstance(self._parameter(tensor), QuantizedWeight)

    def _state_dtype(self, tensor: Tensor) -> torch.dtype:
        """The dtype of the full-size states of ``tensor``: its own, or for the working copy of an INT8
        weight (float32 at least) the weight's compute dtype, as a float weight of that dtype."""
        return self._parameter(tensor).dtype if self._quantized(tensor) else tensor.dtype

    def _parameter(self, tensor: Tensor) -> Tensor:
        """The parameter that ``tensor`` (a parameter or a working tensor) stands for."""
        return self._working[tensor][0] if tensor in self._working else tensor

    def _update_group(self, group: dict, params: list[Tensor]) -> None:
        raise NotImplementedError

    def _states(self, params: list[Tensor], *buffers: str, init=None) -> list[dict]:
        """Each param's state, advanced by one step. On first use the state gets ``step = 0``,
        zero tensors named ``buffers`` (their codes and absmax where kept in ``state_bits``
        bits) and whatever ``init(param, state)`` adds."""
        states = []
        bits = self._group["state_bits"] if self._group is not None else 32
        for p in params:
            state = self._state(p)
            if not state:
                state["step"] = 0
                for name in buffers:
                    self._zeros(state, name, p, bits)
                if init is not None:
                    init(p, state)
            state["step"] += 1
            states.append(state)
        return states

    def _zeros(self, state: dict, key: str, like: Tensor, bits: int, shape=None, zeros=None) -> None:
        """``state[key]``: zeros of ``shape`` (default ``like``'s) on ``like``'s device, or their codes
        and absmax where ``state_bits`` keeps ``key`` in ``bits`` bits (never a full-precision tensor
        first: the first step's peak is the low-bit one). ``zeros``: how a full-precision one is made
        (default ``zeros_like(like)``)."""
        shape = like.shape if shape is None else shape
        if key in self.low_bit_states and lowbit.eligible(shape, bits):
            state[key], state[lowbit.absmax_key(key)] = lowbit.zeros(shape, bits, like.device)
        else:
            state[key] = zeros() if zeros is not None else torch.zeros_like(like, dtype=self._state_dtype(like),
                                                                            memory_format=torch.preserve_format)

    @staticmethod
    def _foreach(group: dict, params: list[Tensor]) -> bool:
        """Whether to use the multi-tensor path: as asked, or by default on CUDA (as torch.optim)."""
        if group["foreach"] is None:
            return all(p.is_cuda for p in params) and not _rounded(group, params) and group["state_bits"] == 32
        return group["foreach"]

    def _grads(self, group: dict, params: list[Tensor]) -> list[Tensor]:
        """The gradients of ``params``, negated when the group maximizes."""
        grads = [self._parameter(p).grad if self._quantized(p) else p.grad for p in params]
        return [-g for g in grads] if group["maximize"] else grads

    def _run(self, fn, param: Tensor, *tensors, scalars: dict, **settings) -> None:
        """``fn(param, *tensors, **scalars, **settings)``, one tensor's step built from
        :mod:`zoo.optimizers.blocks`, and its cautious count recorded. With ``compile`` the
        compiled ``fn`` (shared by all optimizers, see :func:`compiled`) gets the
        ``scalars`` (learning rate, bias corrections: what changes between steps) as 0-d float64
        tensors on the parameter's device, so it never recompiles for them; ``settings`` are
        constants of the group.

        The group's precision settings act here, for every family alike. States kept in
        ``state_bits`` bits are dequantized, updated by ``fn`` and requantized in one step
        (:func:`zoo.lowbit.quantized_step`, compiled as one); a state ``fn``'s family made in full
        precision outside :meth:`_states` is quantized after its first step. A bfloat16 or float16
        parameter with ``stochastic_round`` or ``kahan`` is updated as a float32 copy, which is
        rounded back stochastically (:func:`zoo.quantized.round_stochastically`, seeded by the
        parameter's position in the optimizer and its count of roundings, kept in its state as
        INT8 weights do) or with a Kahan compensation kept in its state (``kahan_comp``, in the
        parameter's dtype, as optimi's Kahan summation)."""
        group = self._group
        bits = group["state_bits"]
        slots, extra, fresh = self._low_bit_slots(param, tensors, bits) if bits != 32 else ((), (), ())
        rounded = (group["stochastic_round"] or group["kahan"]) and _low_precision(param)
        target = param.float() if rounded else param
        if slots:
            fn, tensors = lowbit.quantized_step(fn, slots, bits, self._state_dtype(param)), (*tensors, *extra)
        count = self._call(fn, target, tensors, scalars, settings)
        if count is not None:
            self._aligned_counts.append((count, param.numel()))
        if fresh:
            state = self._state(param)
            for key in fresh:
                state[key], state[lowbit.absmax_key(key)] = lowbit.quantize(state[key], bits, self.low_bit_states[key])
        if rounded:
            self._round(param, target, group)

    def _low_bit_slots(self, param: Tensor, tensors: tuple, bits: int) -> tuple[tuple, tuple, tuple]:
        """(slots of :func:`zoo.lowbit.quantized_step`, its absmax and code map per slot, keys of
        states made in full precision to be quantized after this step) of ``tensors``."""
        state = self._state(param)
        keys = {id(value): key for key, value in state.items() if isinstance(value, Tensor)}
        slots, extra, fresh = [], [], []
        for i, tensor in enumerate(tensors):
            key = keys.get(id(tensor)) if isinstance(tensor, Tensor) else None
            if key not in self.low_bit_states:
                continue
            signed = self.low_bit_states[key]
            if lowbit.is_codes(tensor):
                slots.append((i, signed))
                extra += [state[lowbit.absmax_key(key)], *lowbit.tables(bits, signed, tensor.device)]
            elif tensor.is_floating_point() and lowbit.eligible(tensor.shape, bits):
                fresh.append(key)
        return tuple(slots), tuple(extra), tuple(fresh)

    def _round(self, param: Tensor, target: Tensor, group: dict) -> None:
        """``param`` (bfloat16 or float16) takes the float32 ``target`` back, stochastically or with
        the Kahan compensation (see :meth:`_run`)."""
        state = self._state(param)
        if group["kahan"]:
            if KAHAN_KEY not in state:
                state[KAHAN_KEY] = torch.zeros_like(param, memory_format=torch.preserve_format)
            compensation = state[KAHAN_KEY]
            target.add_(compensation)
            param.copy_(target)
            compensation.copy_(target.sub_(param))
            return
        count = state.get(ROUNDING_KEY, 0) + 1
        noise = rounding_noise(param.shape, self._seed(self._parameter(param)), count, param.device)
        param.copy_(round_stochastically(target, param.dtype, noise))
        state[ROUNDING_KEY] = count

    def _seed(self, param: Tensor) -> int:
        """The seed of ``param``'s stochastic rounding: its 1-based position in the optimizer."""
        if param not in self._seeds:
            self._seeds = {p: i + 1 for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return self._seeds[param]

    def _call(self, fn, param: Tensor, tensors: tuple, scalars: dict, settings: dict):
        """``fn``'s step on ``param``, compiled or eager (see :meth:`_run`); returns its count."""
        if self.compile:
            try:
                count = _compiled_run(fn, param, tensors, scalars, settings)
            except _CompileFailure as failure:
                if self.compile != "auto":
                    raise RuntimeError(f"compile=True: {type(self).__name__}'s step ({fn.__name__}) could not be "
                                       f"compiled: {failure.reason}. Pass compile='auto' to run it eagerly with a "
                                       "warning where compiling fails, or compile=False") from failure.__cause__
                warnings.warn(f"compile='auto': {type(self).__name__}'s step ({fn.__name__}) could not be compiled "
                              f"({failure.reason}); this optimizer now runs its steps eagerly", stacklevel=3)
                self.compile = False
                count = fn(param, *tensors, **scalars, **settings)
        else:
            count = fn(param, *tensors, **scalars, **settings)
        return count

    @staticmethod
    def _caution_settings(group: dict) -> dict:
        """The group's caution settings, as a step function takes them."""
        return {"caution": group["caution"], "caution_norm": group["caution_norm"]}

    def aligned_fraction(self) -> float:
        """Fraction of coordinates the cautious mask kept at the last step (nan if none masked),
        over whole tensors: under FSDP2 (DTensor parameters) the shards' counts are summed over
        the ranks, in one all-reduce for the step; on one device, one synchronisation."""
        if not self._aligned_counts:
            return math.nan
        numel = sum(n for _, n in self._aligned_counts)
        counts = [c for c, _ in self._aligned_counts]
        plain = [c.double() for c in counts if not is_dtensor(c)]
        nnz = torch.stack(plain).sum().item() if plain else 0.0
        sharded = [c for c in counts if is_dtensor(c)]
        if sharded:
            nnz += global_sum(sharded)
        return nnz / numel if numel else math.nan


@contextmanager
def real_views(state: dict, params: list[Tensor]):
    """For a step over ``params``: yields (the tensors to update, {working tensor: (parameter,
    its state)}): a real parameter itself; a complex one as its real view (``torch.view_as_real``,
    shape + (2,), sharing its storage), holding its gradient's real view, with a state whose
    complex tensors are real views too. On leaving, state tensors of the view's shape made during
    the step are stored as complex views, so the state of a complex parameter is complex, as in
    torch.optim (whose Adam, AdamW, NAdam, RAdam and RMSprop step the same real views)."""
    complex_params = [p for p in params if torch.is_complex(p)]
    if not complex_params:
        yield params, {}
        return
    working = {}
    for p in complex_params:
        view = torch.view_as_real(p)
        view.grad = torch.view_as_real(p.grad)
        working[view] = (p, {k: torch.view_as_real(v) if isinstance(v, Tensor) and v.is_complex() else v
                             for k, v in state[p].items()})
    views = iter(working)
    try:
        yield [next(views) if torch.is_complex(p) else p for p in params], working
    finally:
        for view, (p, real_state) in working.items():
            view.grad = None
            state[p] = {k: torch.view_as_complex(v) if isinstance(v, Tensor) and v.shape == view.shape else v
                        for k, v in real_state.items()}


KAHAN_KEY = "kahan_comp"
"""Key of a bfloat16 or float16 parameter's Kahan compensation in its optimizer state (``kahan=True``)."""


def _low_precision(param: Tensor) -> bool:
    return param.dtype in (torch.bfloat16, torch.float16)


def _rounded(group: dict, params: list[Tensor]) -> bool:
    """Whether ``group`` rounds some of ``params`` stochastically or with a Kahan compensation."""
    return (group["stochastic_round"] or group["kahan"]) and any(_low_precision(p) for p in params)


class _CompileFailure(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_COMPILED: dict = {}


def compiled(fn, settings: dict):
    """``torch.compile(fn, fullgraph=True)`` for one combination of group ``settings``, made once
    and shared by every optimizer with ``compile``. Each combination compiles a copy of ``fn``'s
    code, so it has dynamo's whole recompile budget to itself: its graphs are one per dtype,
    device and number of dimensions, and one more for sizes (dynamic after the second size)."""
    key = (fn, tuple(sorted(settings.items())))
    if key not in _COMPILED:
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        _COMPILED[key] = torch.compile(copy, fullgraph=True, options=getattr(fn, "compile_options", None))
    return _COMPILED[key]


def _compiled_run(fn, param: Tensor, tensors: tuple, scalars: dict, settings: dict):
    if is_dtensor(param):
        raise _CompileFailure("parameters sharded by FSDP2 (DTensors) are not supported by the compiled steps")
    mode = _get_current_dispatch_mode()
    if mode is not None:
        raise _CompileFailure(f"a TorchDispatchMode ({type(mode).__name__}, e.g. a memory tracker) is active, which "
                              "torch.compile does not support")
    if sys.platform == "win32" and param.device.type == "cpu":
        raise _CompileFailure("inductor's CPU code generation is not supported on Windows")
    values = {k: None if v is None else torch.tensor(v, dtype=torch.float64, device=param.device)
              for k, v in scalars.items()}
    try:
        # a Parameter's sizes are static in dynamo; its plain alias lets sizes go dynamic. Every 0-d
        # tensor (the parameter too, so that shapes stay alike) goes in as a 1-element view: torch
        # 2.13's compiled code drops in-place writes to a 0-d float64 CPU input (APOLLO's limiter
        # norm would never be recorded)
        param, *tensors = (t.view(1) if isinstance(t, Tensor) and t.dim() == 0 else t
                           for t in (param.detach(), *tensors))
        return compiled(fn, settings)(param, *tensors, **values, **settings)
    except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.BackendCompilerFailed) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _CompileFailure(reason) from error
