"""The zoo inside Lightning: :class:`ZooCallback`.

    from zoo.integrations.lightning import ZooCallback
    trainer = lightning.Trainer(..., callbacks=[ZooCallback()])   # configure_optimizers returns a zoo optimizer

- **Schedule-Free** (``sf-adamw``): ``eval()`` before validation and before a checkpoint is
  written, ``train()`` before the next training batch, ``eval()`` when fitting ends. A checkpoint
  holds the average x and the optimizer's state in eval mode, the weights to evaluate; a run
  resumed from it moves back to y as the uninterrupted run did, so it continues bit for bit (each
  switch rounds, so the run switches once per checkpoint or validation, never back and forth).
- **Logs** every training step (``LightningModule.log``): ``cautious_fraction``,
  ``optimizer_state_bytes`` and, with per-layer updates, ``per_layer_grad_norm``.
- **Per-layer updates**: at the start of fitting it raises when ``accumulate_grad_batches`` is not
  the optimizer's ``accumulate`` and warns when ``gradient_clip_val`` is set (Lightning clips after
  the gradients were applied; pass ``clip_grad_norm=`` to ``zoo.create(..., layerwise=True)``).
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from ..optimizers.base import ZooOptimizer, unwrap
from . import check_per_layer, figures, switch

__all__ = ["ZooCallback"]


def _zoo_optimizers(trainer) -> list[ZooOptimizer]:
    return [inner for inner in map(unwrap, trainer.optimizers) if isinstance(inner, ZooOptimizer)]


def _switch(trainer, mode: str) -> None:
    for optimizer in trainer.optimizers:
        switch(optimizer, mode)


class ZooCallback(Callback):
    """Schedule-Free's average for validation and checkpoints, the zoo's figures in the logs, and the
    checks of per-layer updates against the Trainer's settings (module docstring)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            check_per_layer(optimizer, accumulation="Trainer(accumulate_grad_batches",
                            steps=trainer.accumulate_grad_batches, clipping="Trainer(gradient_clip_val",
                            clip=trainer.gradient_clip_val, off="gradient_clip_val=None", client="Lightning")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _switch(trainer, "train")   # after validation or a checkpoint (and a resumed checkpoint's eval mode)

    def on_validation_start(self, trainer, pl_module) -> None:
        _switch(trainer, "eval")

    def on_train_end(self, trainer, pl_module) -> None:
        _switch(trainer, "eval")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        schedule_free = [o for o in _zoo_optimizers(trainer) if callable(getattr(o, "eval", None))
                         and any(group.get("train_mode") for group in o.param_groups)]
        if not schedule_free:
            return
        for optimizer in schedule_free:   # the weights and the optimizer's state at x (training goes on from
            optimizer.eval()              # there at the next batch, as a run resumed from this checkpoint)
        checkpoint["state_dict"] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                    for k, v in trainer.strategy.lightning_module_state_dict().items()}
        if "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state(o) for o in trainer.optimizers]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for i, optimizer in enumerate(trainer.optimizers):
            suffix = f"_{i}" if len(trainer.optimizers) > 1 else ""
            for key, value in figures(optimizer).items():
                pl_module.log(key + suffix, float(value), on_step=True, on_epoch=False)
