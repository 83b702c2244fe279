"""The registry: one frozen record per optimizer name drives lookup, construction and tests.

Names are case-insensitive and ``-``, ``_`` or nothing between parts are the same:
``"C_AdamW"``, ``"cadamw"`` and ``"c-adamw"`` all name ``"c-adamw"``. An unknown name raises
:class:`UnknownOptimizerError` listing the closest names; nothing falls back to another optimizer.
"""
from __future__ import annotations

import difflib
import inspect
import re
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

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

    ``cls`` is the optimizer class of the name (what :func:`get` returns). ``fixed`` are the
    keyword arguments that define the name (``caution=True`` for a ``c-`` twin, ``nesterov=True``
    for ``nesterov``); the class refuses other values of them, as arguments and in param groups.
    ``defaults`` are all hyper-parameters the name is built with unless given (its signature's).
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


def _fixed_error(name: str, fixed: Mapping, clash: dict, base: str | None) -> ValueError:
    return ValueError(f"{name!r} is defined by {dict(fixed)}; it cannot be built with {clash}"
                      + (f" (use {base!r} for the non-cautious optimizer)" if "caution" in clash and base else ""))


def _named_class(parent: type, class_name: str, name: str, fixed: Mapping, defaults: Mapping,
                 base: str | None) -> type:
    """The class of the registered name ``name``: a subclass of ``parent`` whose constructor has
    ``defaults`` as its defaults and refuses values of ``fixed`` other than theirs, as arguments
    and in any param group (``None`` where the class allows a group to unset the setting, e.g. a
    low-rank optimizer's ``rank=None`` group, updated by AdamW). It lives in ``parent``'s module
    under ``class_name``, so that it pickles by reference, as a class written there would."""
    module = sys.modules[parent.__module__]
    existing = getattr(module, class_name, None)
    if existing is not None and getattr(existing, "registry_name", None) != name:
        raise ValueError(f"{parent.__module__}.{class_name} exists already; pass class_name= to name the class "
                         f"of {name!r}")
    signature = inspect.signature(parent.__init__)
    signature = signature.replace(parameters=[
        p.replace(default=defaults[p.name]) if p.name in defaults and p.default is not inspect.Parameter.empty
        else p for p in signature.parameters.values()])
    may_unset = getattr(parent, "group_may_unset", ())

    def __init__(self, params, *args, **kwargs):
        bound = signature.bind(self, params, *args, **kwargs)
        bound.apply_defaults()
        clash = {k: bound.arguments[k] for k in fixed if k in bound.arguments and bound.arguments[k] != fixed[k]}
        if clash:
            raise _fixed_error(name, fixed, clash, base)
        parent.__init__(*bound.args, **bound.kwargs)

    def add_param_group(self, param_group: dict) -> None:
        clash = {k: v for k, v in param_group.items()
                 if k in fixed and v != fixed[k] and not (v is None and k in may_unset)} \
            if isinstance(param_group, dict) else {}
        if clash:
            raise _fixed_error(name, fixed, clash, base)
        parent.add_param_group(self, param_group)

    __init__.__signature__ = signature
    settings = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    namespace = {"__init__": __init__, "add_param_group": add_param_group, "__module__": parent.__module__,
                 "__qualname__": class_name, "registry_name": name,
                 "__doc__": f"The registry's {name!r}: {parent.__name__}" + (f" with {settings}" if settings else "")
                            + " and its own defaults (``zoo.info({name!r}).defaults``)."}
    named = type(class_name, (parent,), namespace)
    for function in (__init__, add_param_group):
        function.__qualname__ = f"{class_name}.{function.__name__}"
    setattr(module, class_name, named)
    return named


def _class_name(name: str, parent: type, cautious: bool) -> str:
    if cautious:
        return "C" + parent.__name__
    return "".join(part.capitalize() for part in re.split(r"[-_\s]+", name))


def register(info_or_class, name: str | None = None, *, aliases=(), family: str | None = None,
             fixed: Mapping | None = None, defaults: Mapping | None = None, has_momentum: bool = True,
             low_rank: bool = False, state_formula: str = "", reference: str = "", base: str | None = None,
             class_name: str | None = None, replace: bool = False) -> OptimizerInfo:
    """Add an optimizer to the registry and return its record.

    Pass either a ready :class:`OptimizerInfo` or an optimizer class with ``name=``. ``fixed``
    are the keyword arguments that define the name (a class that accepts ``caution`` gets a
    cautious record with ``fixed={"caution": True}``); ``defaults`` override the class's defaults.
    Where either changes the class, the name gets a class of its own, a subclass (of ``base``'s
    class for a twin, so ``CAdamW`` is an ``AdamW``) named ``class_name`` (default ``"C"`` and the
    parent's name for a cautious twin, else the name in CamelCase), in the parent's module.
    """
    if isinstance(info_or_class, OptimizerInfo):
        rec = info_or_class
        _check_free(rec.name, rec.aliases, replace)
    elif isinstance(info_or_class, type) and issubclass(info_or_class, Optimizer):
        if name is None:
            raise ValueError("register(cls, name=...) needs a name for the optimizer class")
        name = name.lower()
        _check_free(name, aliases, replace)
        fixed = dict(fixed or {})
        defaults = {**_class_defaults(info_or_class), **(defaults or {}), **fixed}
        parent = info(base).cls if base is not None else info_or_class
        if not issubclass(parent, info_or_class):
            raise ValueError(f"{name!r} is a twin of {base!r} ({parent.__name__}), which is not a "
                             f"{info_or_class.__name__}")
        cautious = bool(fixed.get("caution", False))
        cls = parent
        if fixed or defaults != _class_defaults(parent):
            cls = _named_class(parent, class_name or _class_name(name, parent, cautious), name, fixed, defaults, base)
        rec = OptimizerInfo(
            name=name, cls=cls, family=family or name, cautious=cautious, base=base,
            fixed=MappingProxyType(fixed), defaults=MappingProxyType(defaults),
            has_momentum=has_momentum, low_rank=low_rank, state_formula=state_formula,
            reference=reference, aliases=tuple(aliases))
    else:
        raise TypeError(f"register() takes an OptimizerInfo or a torch.optim.Optimizer subclass, "
                        f"got {info_or_class!r}")
    _REGISTRY[rec.name] = rec
    for key in (rec.name, *rec.aliases):
        _KEYS[normalize(key)] = rec.name
    return rec


def _check_free(name: str, aliases, replace: bool) -> None:
    """Raise ``ValueError`` if ``name`` or an alias is taken (unless ``replace``)."""
    if replace:
        return
    for key in map(normalize, (name, *aliases)):
        owner = _KEYS.get(key)
        if owner is not None and owner != name:
            raise ValueError(f"name {key!r} of {name!r} is already taken by {owner!r}")
    if name in _REGISTRY:
        raise ValueError(f"{name!r} is already registered (pass replace=True to replace it)")


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


def get(name: str) -> type[Optimizer]:
    """The optimizer class of ``name`` (a ``torch.optim.Optimizer`` subclass): ``zoo.get("c-adamw")``
    is ``CAdamW``, a subclass of ``zoo.get("adamw")`` with ``caution=True`` fixed;
    ``zoo.get(name)(params, **hparams)`` builds the optimizer as ``torch.optim.AdamW(params, ...)`` does."""
    return info(name).cls


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
