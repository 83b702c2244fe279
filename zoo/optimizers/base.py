"""What every zoo optimizer shares: torch.optim conventions, validation and the caution options.

A subclass states its hyper-parameters' ranges in ``_validate`` (called for every param group,
so a bad value in any group is refused), says why caution would be a no-op in
``_caution_noop_reason`` where that can happen, and does the math of one group in
``_update_group`` by calling its functional core.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..caution import check_norm

__all__ = ["ZooOptimizer", "check_range", "check_betas", "check_bool"]


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


def as_float(value) -> float:
    """A learning rate or other scalar given as a float or a one-element tensor, as a float."""
    return value.item() if isinstance(value, Tensor) else float(value)


class ZooOptimizer(Optimizer):
    """Base class: ``step(closure)``, grads that are None skipped, per-group validation, caution."""

    def __init__(self, params, defaults: dict, caution: bool = False, caution_norm="mean"):
        super().__init__(params, dict(defaults, caution=caution, caution_norm=caution_norm))
        self._aligned_counts: list = []

    # -- validation -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_range("lr", group["lr"])
        check_range("weight_decay", group["weight_decay"])
        check_bool("maximize", group["maximize"])
        if "foreach" in group and group["foreach"] is not None:
            check_bool("foreach", group["foreach"])
        check_bool("caution", group["caution"])
        check_norm(group["caution_norm"])
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

    full_size_states = 0
    """How many tensors of the parameter's size its state holds (classes with other states
    override :meth:`expected_state_bytes`)."""

    def expected_state_bytes(self, param: Tensor, group: dict) -> int:
        """Bytes of ``param``'s state after a step, by the optimizer's analytical formula."""
        return self.full_size_states * param.numel() * param.element_size()

    def _caution_noop_reason(self, group: dict) -> str | None:
        """Why caution cannot change the update for this group, or None when it can."""
        return None

    # -- stepping ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._aligned_counts = []
        for group in self.param_groups:
            # a zero-size tensor has nothing to update (and no RMS or norm to take)
            params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if torch.is_complex(p):
                    raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list[Tensor]) -> None:
        raise NotImplementedError

    def _states(self, params: list[Tensor], *buffers: str, init=None) -> list[dict]:
        """Each param's state, advanced by one step. On first use the state gets ``step = 0``,
        zero tensors named ``buffers`` and whatever ``init(param, state)`` adds."""
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                for name in buffers:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if init is not None:
                    init(p, state)
            state["step"] += 1
            states.append(state)
        return states

    @staticmethod
    def _foreach(group: dict, params: list[Tensor]) -> bool:
        """Whether to use the multi-tensor path: as asked, or by default on CUDA (as torch.optim)."""
        if group["foreach"] is None:
            return all(p.is_cuda for p in params)
        return group["foreach"]

    def _grads(self, group: dict, params: list[Tensor]) -> list[Tensor]:
        """The gradients of ``params``, negated when the group maximizes."""
        if group["maximize"]:
            return [-p.grad for p in params]
        return [p.grad for p in params]

    def _caution_args(self, group: dict) -> dict:
        """Keyword arguments that pass the group's caution settings to a functional core."""
        return {"caution": group["caution"], "caution_norm": group["caution_norm"],
                "counts": self._aligned_counts if group["caution"] else None}

    def aligned_fraction(self) -> float:
        """Fraction of coordinates the cautious mask kept at the last step (nan if none masked)."""
        if not self._aligned_counts:
            return math.nan
        nnz = sum(float(c) for c, _ in self._aligned_counts)
        numel = sum(n for _, n in self._aligned_counts)
        return nnz / numel if numel else math.nan
