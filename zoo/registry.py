"""The registry: one frozen record per optimizer name drives lookup, construction and tests.

Names are case-insensitive and ``-``, ``_`` or nothing between parts are the same:
``"C_AdamW"``, ``"cadamw"`` and ``"c-adamw"`` all name ``"c-adamw"``. An unknown name raises
:class:`UnknownOptimizerError` listing the closest names; nothing falls back to another optimizer.
"""
from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

from torch.optim import Optimizer

__all__ = ["OptimizerInfo", "UnknownOptimizerError", "register", "names", "info", "get",
           "normalize", "markdown_table"]


class UnknownOptimizerError(KeyError):
    """Raised for a name that is not in the registry; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows about one optimizer name.

    ``fixed`` are the keyword arguments that define the name (``caution=True`` for a ``c-`` twin,
    ``nesterov=True`` for ``nesterov``); they cannot be overridden when building it. ``defaults``
    are all hyper-parameters the name is built with unless given.
    """

    name: str
    cls: type
    family: str
    cautious: bool
    base: str | None
    fixed: Mapping
    defaults: Mapping
    has_momentum: bool
    low_rank: bool
    state_formula: str
    reference: str
    aliases: tuple = ()

    def check_fixed(self, hparams: Mapping) -> None:
        """Raise ``ValueError`` if ``hparams`` contradict the arguments that define this name."""
        clash = {k: v for k, v in hparams.items() if k in self.fixed and v != self.fixed[k]}
        if clash:
            raise ValueError(
                f"{self.name!r} is defined by {dict(self.fixed)}; it cannot be built with {clash}"
                + (f" (use {self.base!r} for the non-cautious optimizer)" if "caution" in clash and self.base else ""))

    def build(self, params, **hparams) -> Optimizer:
        """Construct the optimizer over ``params`` (tensors or param-group dicts)."""
        self.check_fixed(hparams)
        params = list(params)
        for group in params:
            if isinstance(group, dict):   # rank=None marks a group updated by AdamW, not a clash
                self.check_fixed({k: v for k, v in group.items() if not (k == "rank" and v is None)})
        return self.cls(params, **{**self.defaults, **hparams})


def normalize(name: str) -> str:
    """The lookup key of a name: lower case with ``-``, ``_`` and spaces removed."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {type(name).__name__}")
    return re.sub(r"[-_\s]", "", name.lower())


_REGISTRY: dict[str, OptimizerInfo] = {}   # canonical name -> info
_KEYS: dict[str, str] = {}                 # normalised name or alias -> canonical name


def _class_defaults(cls: type) -> dict:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items()
            if k not in ("self", "params") and p.default is not inspect.Parameter.empty}


def register(info_or_class, name: str | None = None, *, aliases=(), family: str | None = None,
             fixed: Mapping | None = None, defaults: Mapping | None = None, has_momentum: bool = True,
             low_rank: bool = False,
             state_formula: str = "", reference: str = "", base: str | None = None,
             replace: bool = False) -> OptimizerInfo:
    """Add an optimizer to the registry and return its record.

    Pass either a ready :class:`OptimizerInfo` or an optimizer class with ``name=``. ``fixed``
    are the keyword arguments that define the name (a class that accepts ``caution`` gets a
    cautious record with ``fixed={"caution": True}``); ``defaults`` override the class's defaults.
    """
    if isinstance(info_or_class, OptimizerInfo):
        rec = info_or_class
    elif isinstance(info_or_class, type) and issubclass(info_or_class, Optimizer):
        if name is None:
            raise ValueError("register(cls, name=...) needs a name for the optimizer class")
        fixed = dict(fixed or {})
        defaults = {**_class_defaults(info_or_class), **(defaults or {}), **fixed}
        rec = OptimizerInfo(
            name=name.lower(), cls=info_or_class, family=family or name.lower(),
            cautious=bool(fixed.get("caution", False)), base=base,
            fixed=MappingProxyType(fixed), defaults=MappingProxyType(defaults),
            has_momentum=has_momentum, low_rank=low_rank, state_formula=state_formula,
            reference=reference, aliases=tuple(aliases))
    else:
        raise TypeError(f"register() takes an OptimizerInfo or a torch.optim.Optimizer subclass, "
                        f"got {info_or_class!r}")
    keys = [normalize(k) for k in (rec.name, *rec.aliases)]
    for key in keys:
        owner = _KEYS.get(key)
        if owner is not None and owner != rec.name and not replace:
            raise ValueError(f"name {key!r} of {rec.name!r} is already taken by {owner!r}")
    if rec.name in _REGISTRY and not replace:
        raise ValueError(f"{rec.name!r} is already registered (pass replace=True to replace it)")
    _REGISTRY[rec.name] = rec
    for key in keys:
        _KEYS[key] = rec.name
    return rec


def _canonical(name: str) -> str:
    key = normalize(name)
    if key in _KEYS:
        return _KEYS[key]
    if key.startswith("c") and key[1:] in _KEYS:   # a cautious twin that cannot exist
        base = _REGISTRY[_KEYS[key[1:]]]
        reason = getattr(base.cls, "caution_refusal", None)
        if reason:
            raise UnknownOptimizerError(
                f"there is no cautious {base.name!r} ({name!r}): {reason}, so its update always "
                "agrees in sign with the gradient and the cautious mask would never act")
    candidates = sorted(set(_KEYS) | set(_REGISTRY))
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
    close = sorted({_KEYS.get(c, c) for c in close})
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownOptimizerError(f"unknown optimizer {name!r}{hint}. Known: {', '.join(sorted(_REGISTRY))}")


def info(name: str) -> OptimizerInfo:
    """The registry record of ``name``."""
    return _REGISTRY[_canonical(name)]


def get(name: str) -> Callable[..., Optimizer]:
    """A callable ``f(params, **hparams) -> Optimizer`` building the named optimizer."""
    return info(name).build


def names(*, cautious: bool | None = None, family: str | None = None,
          low_rank: bool | None = None, base: str | None = None) -> list[str]:
    """Canonical names, sorted, optionally filtered by ``cautious``, ``family``, ``low_rank`` and
    ``base`` (``names(base="lion") == ["c-lion"]``: the cautious twins of an optimizer)."""
    base = None if base is None else _canonical(base)
    return sorted(n for n, rec in _REGISTRY.items()
                  if (cautious is None or rec.cautious == cautious)
                  and (family is None or rec.family == family)
                  and (low_rank is None or rec.low_rank == low_rank)
                  and (base is None or rec.base == base))


def markdown_table() -> str:
    """The registry as a Markdown table (the README's optimizer list is this text)."""
    rows = ["| name | family | cautious twin of | optimizer state per tensor | reference |",
            "|---|---|---|---|---|"]
    for name in names():
        rec = _REGISTRY[name]
        rows.append(f"| `{name}` | {rec.family} | {rec.base or ''} | {rec.state_formula} | {rec.reference} |")
    return "\n".join(rows)
