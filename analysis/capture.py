"""Windows of real gradients recorded during training, for the low-rank error study.

The pretraining runner (:mod:`analysis.pretrain`, ``--capture-grads``) calls a
:class:`GradientCapture` after backward (and the data-parallel all-reduce), before clipping; its
:meth:`GradientCapture.save` writes one ``torch.save`` file (format :data:`FORMAT`), which
:func:`load_gradients` and :func:`load_meta` read back as :class:`GradientRecord` windows for
:mod:`analysis.lowrank`. Both modules import this one; it imports neither.
"""
from __future__ import annotations

import json
import numbers
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["LAYER_KINDS", "FORMAT", "GradientRecord", "parse_name", "default_select", "check_window",
           "GradientCapture", "load_gradients", "load_meta", "capture_path"]

LAYER_KINDS = ("q", "k", "v", "o", "gate", "up", "down")
FORMAT = "analysis.lowrank/gradients-v1"   # the tag of the files (kept since the first files were written)


@dataclass(frozen=True)
class GradientRecord:
    """A window of consecutive gradients of one weight: ``grads`` [window, m, n].

    ``kind`` is q/k/v/o/gate/up/down for captured gradients (None for a weight the default
    names do not describe), or the synthetic kind; ``layer`` the block index (None if unknown);
    ``step`` the first step of the window; ``name`` the parameter's (or a synthetic label)."""
    name: str
    layer: int | None
    kind: str | None
    step: int
    grads: Tensor

    @property
    def label(self) -> str:
        if self.layer is None or self.kind is None:
            return self.name
        return f"L{self.layer}.{self.kind}@{self.step}"


_WEIGHT_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")


def parse_name(name: str) -> tuple[int | None, str | None]:
    """(layer index, kind) of an HF-style LLaMA weight name, (None, None) for any other name."""
    match = _WEIGHT_NAME.search(name)
    return (int(match[1]), match[2]) if match else (None, None)


def default_select(name: str, param: Tensor) -> bool:
    """The 2-D attention q/k/v/o and MLP gate/up/down weights (HF LLaMA names such as
    ``layers.3.self_attn.q_proj.weight``, any prefix). Which depths are kept is
    :class:`GradientCapture`'s ``depths``: first, middle and last layer by default."""
    return param.dim() == 2 and parse_name(name)[0] is not None


def check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"Invalid window: {window!r}; allowed an int >= 1")


class GradientCapture:
    """Records windows of consecutive gradients of selected weights during training.

    ``capture(step)`` records ``p.grad`` of every selected parameter when ``step`` lies in
    [s, s + window) for some s in ``at_steps`` (windows may overlap; a step then goes to each).
    The runner calls it after backward and after the data-parallel all-reduce, before clipping,
    once per optimizer step; the gradients are then the same on every rank and one rank saves.
    Gradients are copied to the CPU in ``dtype`` at once; a parameter whose grad is None is
    skipped (its window is then shorter: the record keeps the steps actually recorded).

    ``select(name, param)`` picks the weights; ``depths`` keeps, of the selected weights that have
    a layer index, those of the first, middle (L // 2) and last layer (``"first-middle-last"``),
    the given indices (negative count from the end), or all (None). File size:
    ``2 bytes x window x Σ m·n`` per start step in bfloat16.
    """

    def __init__(self, model: torch.nn.Module, *, at_steps: Sequence[int], window: int = 8,
                 select: Callable[[str, Tensor], bool] = default_select, dtype=torch.bfloat16,
                 depths: str | Sequence[int] | None = "first-middle-last"):
        check_window(window)
        at_steps = list(at_steps)
        if not at_steps or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in at_steps):
            raise ValueError(f"Invalid at_steps: {at_steps!r}; allowed a non-empty sequence of ints >= 0")
        self.at_steps, self.window, self.dtype = sorted({int(s) for s in at_steps}), window, dtype
        chosen = [(name, p) for name, p in model.named_parameters() if select(name, p)]
        keep = self._layers_kept([parse_name(name)[0] for name, _ in chosen], depths)
        self.params = {name: p for name, p in chosen if parse_name(name)[0] in keep}
        self._grads: dict[tuple[int, str], list[Tensor]] = {}
        self._steps: dict[tuple[int, str], list[int]] = {}

    @staticmethod
    def _layers_kept(layers: list[int | None], depths) -> set:
        if isinstance(depths, str) and depths != "first-middle-last":
            raise ValueError(f"Invalid depths: {depths!r}; allowed 'first-middle-last', a sequence "
                             "of layer indices, or None (all)")
        indexed = {layer for layer in layers if layer is not None}
        if depths is None or not indexed:
            return set(layers)
        count = max(indexed) + 1
        wanted = {0, count // 2, count - 1} if isinstance(depths, str) else {d % count for d in depths}
        return {None} | (wanted & indexed)

    def __call__(self, step: int) -> None:
        starts = [s for s in self.at_steps if s <= step < s + self.window]
        for name, p in self.params.items():
            if not starts or p.grad is None:
                continue
            grad = p.grad.detach().to(device="cpu", dtype=self.dtype, copy=True)
            for start in starts:
                self._grads.setdefault((start, name), []).append(grad)
                self._steps.setdefault((start, name), []).append(int(step))

    def save(self, path, meta: dict) -> None:
        """One ``torch.save`` file (its folder is made if missing): ``meta`` (JSON-serialisable:
        model config name, optimizer, seed, ...), the window, and one record per (start step,
        parameter) with its name, layer, kind, the steps recorded and the gradients [k, m, n]."""
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except TypeError as err:
            raise ValueError(f"meta must be JSON-serialisable (str, numbers, lists, dicts): {err}") from None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = []
        for (start, name), grads in sorted(self._grads.items()):
            layer, kind = parse_name(name)
            records.append({"name": name, "layer": layer, "kind": kind, "start": start,
                            "steps": self._steps[(start, name)], "grads": torch.stack(grads)})
        torch.save({"format": FORMAT, "meta": meta, "window": self.window, "records": records}, path)


def _load(path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError):   # not a torch.save file of tensors at all
        raise ValueError(f"{path}: not a gradient file written by GradientCapture.save ({FORMAT})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gradient file written by GradientCapture.save ({FORMAT})")
    return data


def load_gradients(path) -> list[GradientRecord]:
    """The records of a :meth:`GradientCapture.save` file, in the order saved (start step, name).
    ``step`` is the first step actually recorded."""
    return [GradientRecord(rec["name"], rec["layer"], rec["kind"], rec["steps"][0], rec["grads"])
            for rec in _load(path)["records"]]


def load_meta(path) -> dict:
    """The ``meta`` dict of a :meth:`GradientCapture.save` file, with its ``window`` and the
    sorted start steps of its windows (``starts``) added."""
    data = _load(path)
    return dict(data["meta"], window=data["window"], starts=sorted({rec["start"] for rec in data["records"]}))


def capture_path(out, optimizer: str, seed: int) -> Path:
    """Where the pretraining runner writing into ``out`` saves the gradients of one run."""
    return Path(out) / "grads" / f"{optimizer}_seed{seed}.pt"
