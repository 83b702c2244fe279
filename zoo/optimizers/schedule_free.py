"""Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled", arXiv 2405.15682), step for
step as ``AdamWScheduleFree`` of facebookresearch/schedule_free (``schedulefree/adamw_schedulefree.py``,
release 1.4, its per-tensor loop), with its defaults: lr 0.0025, betas (0.9, 0.999), eps 1e-8,
weight_decay 0, warmup_steps 0, r 0, weight_lr_power 2.

Three sequences: z (the SGD-like iterate), x (the weighted average of the z's, where the model is
evaluated) and y = (1 - b1) z + b1 x (where the gradient is taken). The parameters hold y while
training; the state holds z and Adam's second moment, and x is implied by y and z. Step t
(1-based), with the linear warm-up inside the optimizer::

    lr_t  = lr * min(t / warmup_steps, 1)                  (lr when warmup_steps = 0)
    lr_max = max(lr_max, lr_t);   w_t = t^r * lr_max^weight_lr_power
    W_t = W_{t-1} + w_t;          c = w_t / W_t            (c = 0 while W_t = 0)
    v <- b2 * v + (1 - b2) * g^2;   d = sqrt(v / (1 - b2^t)) + eps
    u  = g / d + wd * y                                    (weight decay at y)
    y <- y + c * (z - y) + lr_t * (b1 * (1 - c) - 1) * u  (= (1 - b1) z_new + b1 x_new)
    z <- z - lr_t * u
    x  = (y - (1 - b1) z) / b1,   so x_new = (1 - c) x + c z_new

``eval()`` moves the parameters to x (``y + (1 - 1/b1)(z - y)``) and ``train()`` back to y
(``x + (1 - b1)(z - x)``), as the reference; each group records its mode in ``train_mode``, so a
state dict says which point the saved weights are: loaded with those weights it continues
exactly (call ``train()`` before the next step). ``step()`` in eval mode raises. The reference's
recommendation holds: evaluate and save checkpoints in eval mode.

**Choices.** The optimizer starts in train mode, as pytorch_optimizer's ``ScheduleFreeAdamW``
(the reference starts in eval mode and asserts until ``train()`` is called): before the first
step x = y = z, so nothing would move, and the optimizer works in any loop; a loop must still
call ``eval()`` to evaluate at x. The step counter, ``W`` and ``lr_max`` are kept per parameter
(the reference keeps ``k``, ``weight_sum`` and ``lr_max`` in the group): per-layer updates
(:mod:`zoo.layerwise`) step one parameter at a time, and a parameter that skipped a step (no
gradient) averages its own iterates; with every gradient present the two agree. The gradient is
not divided in place (the reference reuses ``p.grad``). b1 must be positive, since x is recovered
as above. Not implemented: ``inner_momentum`` (ScheduleFree+, added to the reference in
2026) and the ``foreach`` path (``compile=True`` fuses the per-tensor step instead). With INT8
weights (:mod:`zoo.quantized`), ``eval()`` and ``train()`` round the moved weight again, with
the weight's own stochastic rounding, so ``train()`` after ``eval()`` returns y up to that
(unbiased) rounding.

**The cautious twin** (PAPERS.md §A.1: only the applied update of the parameter is masked, never
the state, and decoupled decay is not masked). The parameter is y; its move, apart from the decay
term, is ``y <- y - U`` with::

    U = lr_t * (1 - b1 * (1 - c)) * g / d + c * (y - z)

``U`` is masked against g (``y <- y * (1 - lr_t * (1 - b1 * (1 - c)) * wd) - phi(U, g) U``),
while z steps unmasked (its step ``g / d``, apart from the decay, always agrees with g).
The average x = (y - (1 - b1) z) / b1 takes the masked move: x_new = x + (y_new - y - (1 - b1)
(z_new - z)) / b1. heavyball (``_compilable_schedule_free_``, ``caution=True``) masks ``u`` (decay
included) against g instead and applies the masked ``u`` to y and z alike: that masks the state,
and with the decay left out of the mask, as §A.1 says, it would never act (g / d agrees with g).
pytorch_optimizer has no cautious schedule-free optimizer.
"""
from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

from ..quantized import QuantizedWeight, working_copy
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import add_, apply_, bias_correction, decay_, ema_sq_, into

__all__ = ["AdamWScheduleFree", "schedule_free_adamw_step"]


def schedule_free_adamw_step(param: Tensor, grad: Tensor, z: Tensor, exp_avg_sq: Tensor, *, lr, ckp1,
                             bias_correction2, beta1: float, beta2: float, eps: float, weight_decay: float,
                             caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step; ``param`` holds y, ``lr`` is the warmed-up rate, ``ckp1`` the weight c."""
    ema_sq_(exp_avg_sq, grad, beta2)
    denom = torch.div(exp_avg_sq, bias_correction2, **into(exp_avg_sq, "denom")).sqrt_().add_(eps)
    normalized = torch.div(grad, denom, **into(grad, "update", denom))
    if not caution:   # the reference's kernels
        if weight_decay != 0:
            normalized.add_(param, alpha=weight_decay)
        param.lerp_(z.to(param.dtype), ckp1)   # z is in the parameter's dtype: a bf16 one with a float32 working param
        add_(param, normalized, lr * (beta1 * (1 - ckp1) - 1))
        add_(z, normalized, -lr)
        return None
    rate = lr * (1 - beta1 * (1 - ckp1))   # y's step size along g / d (and the decay)
    update = add_(torch.sub(param, z, **into(z, "diff", param)).mul_(ckp1), normalized, rate)
    if weight_decay != 0:
        normalized.add_(param, alpha=weight_decay)
    add_(z, normalized, -lr)
    decay_(param, rate, weight_decay)
    return apply_(param, update, grad, -1.0, caution, caution_norm)


class AdamWScheduleFree(ZooOptimizer):
    """Schedule-Free AdamW: no learning-rate schedule, the model evaluated at the average x;
    call ``eval()`` before evaluating or saving and ``train()`` before training."""

    state_keys = ("step", "z", "exp_avg_sq", "weight_sum", "lr_max")
    low_bit_states = {"exp_avg_sq": False}
    full_precision_states = {"z": "is the iterate itself (the weights' copy that the gradient steps move), whose "
                                  "change in a step is far below an 8-bit code's gap: rounding to the nearest code "
                                  "would drop it (a float32 master copy for bfloat16 or float16 weights with "
                                  "stochastic_round or kahan)"}
    scalar_state = {"step": int, "weight_sum": float, "lr_max": float}

    def __init__(self, params, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, *,
                 maximize: bool = False, caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps, r=r,
                        weight_lr_power=weight_lr_power, maximize=maximize, train_mode=True)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def add_param_group(self, param_group: dict) -> None:
        """torch.optim's; a group added later is in the mode of the others."""
        if self.param_groups and isinstance(param_group, dict) and "train_mode" not in param_group:
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
        super().add_param_group(param_group)

    def _validate(self, group):
        check_betas("betas", group["betas"])
        if group["betas"][0] == 0:
            raise ValueError("Invalid betas[0]: 0; allowed range (0, 1): eval() recovers the average x from y and "
                             "z as (y - (1 - beta1) z) / beta1")
        check_range("eps", group["eps"])
        warmup = group["warmup_steps"]
        if isinstance(warmup, bool) or not isinstance(warmup, Integral) or warmup < 0:
            raise ValueError(f"Invalid warmup_steps: {warmup!r}; allowed an int >= 0")
        check_range("r", group["r"])
        check_range("weight_lr_power", group["weight_lr_power"])
        check_bool("train_mode", group["train_mode"])

    # -- the two points: y to train at, x to evaluate at ---------------------------------------
    @torch.no_grad()
    def eval(self) -> None:
        """Move the parameters to the average x, for evaluating and saving (no-op in eval mode)."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Move the parameters back to y, for training (no-op in train mode)."""
        self._switch(train=True)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta1 = group["betas"][0]
            weight = 1 - beta1 if train else 1 - 1 / beta1
            for param in dict.fromkeys(group["params"]):
                z = self.state[param].get("z") if param in self.state else None
                if z is None:   # never stepped: x = y = z
                    continue
                if isinstance(param, QuantizedWeight):
                    with working_copy(self.state, param) as copy:
                        copy.lerp_(z.to(copy.dtype), weight)
                else:
                    param.lerp_(z.to(param.dtype), weight)
            group["train_mode"] = train

    def _check_train_mode(self, group: dict) -> None:
        if not group["train_mode"]:
            raise RuntimeError(f"{type(self).__name__} is in eval mode (its parameters hold the average x, not the "
                               "training point y): call optimizer.train() before training steps, and "
                               "optimizer.eval() before evaluating")

    def step(self, closure=None):
        """Perform one optimization step (in train mode; ``closure`` as torch.optim's)."""
        for group in self.param_groups:
            self._check_train_mode(group)
        return super().step(closure)

    def _step_group(self, group, params):
        self._check_train_mode(group)   # per-layer updates step here, inside backward
        super()._step_group(group, params)

    # -- the step -----------------------------------------------------------------------------
    @staticmethod
    def _master_z(param: Tensor, group: dict) -> bool:
        """Whether z is kept in float32: for a bfloat16 or float16 weight rounded stochastically or
        with a Kahan compensation, or an INT8 weight of such a compute dtype (rounded stochastically
        to its codes), z (the iterate the steps move) is the weights' master copy."""
        rounded = group["stochastic_round"] or group["kahan"] or isinstance(param, QuantizedWeight)
        return rounded and param.dtype in (torch.bfloat16, torch.float16)

    def _init(self, param: Tensor, state: dict, group: dict) -> None:
        dtype = torch.float32 if self._master_z(self._parameter(param), group) else self._state_dtype(param)
        state["z"] = param.to(dtype, copy=True, memory_format=torch.preserve_format)
        state["weight_sum"], state["lr_max"] = 0.0, 0.0

    def _formula_bytes(self, param, group):
        z = 4 if self._master_z(param, group) else param.element_size()
        return param.numel() * (z + param.element_size())

    def _loaded(self, state_dict):   # torch.optim cast a float32 z to its bfloat16 parameter's dtype
        for _, saved, state in self._loaded_states(state_dict):
            if "z" in saved and saved["z"].dtype != state["z"].dtype:
                state["z"] = saved["z"].to(device=state["z"].device, copy=True)

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg_sq", init=lambda p, state: self._init(p, state, group))
        beta1, beta2 = group["betas"]
        warmup, peak = group["warmup_steps"], as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            lr = peak * (step / warmup if step - 1 < warmup else 1.0)
            state["lr_max"] = lr_max = max(lr, state["lr_max"])
            weight = step ** group["r"] * lr_max ** group["weight_lr_power"]
            state["weight_sum"] = weight_sum = state["weight_sum"] + weight
            self._run(schedule_free_adamw_step, param, grad, state["z"], state["exp_avg_sq"],
                      scalars=dict(lr=lr, ckp1=weight / weight_sum if weight_sum > 0 else 0.0,
                                   bias_correction2=bias_correction(beta2, step)),
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      **self._caution_settings(group))
