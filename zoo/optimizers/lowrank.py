"""Low-rank AdamW family: APOLLO, APOLLO-Mini, APOLLO-SVD (Zhu et al. 2025), GaLore (Zhao et al.
2024) and Fira (Chen et al. 2024), PAPERS.md §B. One step function, three thin classes.

For a 2-D weight W (m, n) with gradient G in a group with a ``rank``, step t (1, 2, ...)::

    P   refreshed at t = 1, 1 + T, 1 + 2T, ... (T = update_proj_gap); moments are not reset
        random: N(0, 1/r) drawn from the period's seed (kept in the state: the parameter's 1-based
        index plus the group's ``seed`` at first, advanced at each refresh as the reference
        code does; the index is the one zoo.index_parameters gave the tensor, which
        zoo.create does, else its position in the optimizer); regenerated at every step, stored
        only with store_projection=True
        svd: top-r singular vectors of the current G (stored)
    R   = G Pᵀ (m >= n) or P G (m < n)                               (zoo.projection)
    M  <- b1 M + (1 - b1) R;   V <- b2 V + (1 - b2) R²;   N = M / (sqrt(V) + eps)
    APOLLO:  s_j = ||N_j|| / (||R_j|| + 1e-8) per channel j (or one s for the tensor)
             U   = limit(G * s) * sqrt(scale)
    GaLore:  U   = scale * back(N)                   back(N) = N P  or  Pᵀ N
    Fira:    U   = scale * back(N) + (G - scale * back(R)) * s_j   (s_j as APOLLO, channel-wise;
             the reference's residual, which is G - P Pᵀ G at the default scale 1)
    limit (APOLLO, Fira; on G*s resp. the residual term; gamma = norm_growth_limit):
             f = max(||U_t|| / (||U_{t-1}|| + 1e-8), gamma) / gamma;  U_t <- U_t / f
             (the first step only records the norm; so does a step after one whose norm was 0,
             where the reference divides by about ||U_t|| / 1e-8 and the weight never moves
             again: an all-zero gradient, a zero-initialised layer. Where the reference's limit
             is defined, ||U_{t-1}|| > 0, the two agree)
    W  <- W - lr * sqrt(1 - b2^t) / (1 - b1^t) * U        (cautious twins: U masked against G)
    W  <- W - lr * wd * W                                  (decoupled, after the update)

Parameters of a group without a rank, and parameters that are not 2-D, take the same step with
R = G and U = N: AdamW in the reference's form (eps outside the bias correction, decay after).

A non-finite gradient reaches the weight as NaN (:mod:`zoo.optimizers.base`); the SVD of a
refresh step is taken of the gradient with its non-finite entries zeroed, so it never raises.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from ..projection import (channel_norm, effective_rank, gaussian, project, project_back,
                          next_seed, rows_kept, top_singular)
from ..sharding import computed_once, is_dtensor, parameter_index, placed_as, reduced, replicated, zeros_along
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import add_, addcmul_, apply_, float_norm

__all__ = ["Apollo", "GaLore", "Fira", "lowrank_step"]

SCALE_EPS = 1e-8   # in every ratio of norms, as the reference


def _norm_dtype(param: Tensor) -> torch.dtype:
    """The limiter keeps its norm in at least float32."""
    return torch.promote_types(param.dtype, torch.float32)


def _projection(grad: Tensor, state: dict, step: int, group: dict, turn: int) -> Tensor:
    refresh = (step - 1) % group["update_proj_gap"] == 0
    if group["proj"] == "svd":
        if refresh:   # sharded (FSDP2): one rank per matrix, the ranks in turn, takes the SVD
            r = effective_rank(grad.shape, group["rank"])
            shape = (r, grad.shape[1] if rows_kept(grad.shape) else grad.shape[0])
            state["projection"] = computed_once(lambda whole: top_singular(whole, group["rank"]), grad, turn,
                                                shape, grad.dtype)
        return state["projection"]
    if group["store_projection"] and not refresh:
        return state["projection"]
    if refresh and step > 1:   # a new period: advance the seed (the reference's sequence)
        state["seed"].fill_(next_seed(int(state["seed"])))
    proj = replicated(gaussian(grad.shape, group["rank"], int(state["seed"]), grad.device, grad.dtype), grad)
    if group["store_projection"]:
        state["projection"] = proj
    return proj


def _limit(norm: Tensor, update_norm: Tensor | None, first: bool, gamma: float | None):
    """The norm-growth limiter's divisor f >= 1 for an update of norm ``norm`` (1 on the first
    step); ``update_norm`` (the state) keeps the limited norm ``norm / f``."""
    if gamma is None:
        return 1.0
    norm = reduced(norm)   # sharded (FSDP2): the norm of the whole update, on every rank
    factor = 1.0
    if not first:
        factor = torch.clamp(norm / (update_norm + SCALE_EPS), min=gamma) / gamma
        # no previous norm to limit against: 1 (a tensor like factor, so that a DTensor stays one)
        factor = torch.where(update_norm > 0, factor, torch.ones_like(factor))
        norm = norm / factor
    update_norm.copy_(norm)
    return factor


def _norm(x: Tensor) -> Tensor:
    """The Frobenius norm, accumulated in at least float32 (no overflow for float16), without a
    float32 copy of a low-precision gradient (:func:`zoo.optimizers.blocks.float_norm`)."""
    return float_norm(x)


def _scaling(low: Tensor, proj_grad: Tensor, shape, channel: bool) -> Tensor:
    """||N_j|| / (||R_j|| + 1e-8) per channel, or one factor for the whole tensor."""
    if channel:
        return channel_norm(low, shape) / (channel_norm(proj_grad, shape) + SCALE_EPS)
    norms = reduced(torch.stack([_norm(low), _norm(proj_grad)]))   # sharded: both summed in one all-reduce
    return norms[0] / (norms[1] + SCALE_EPS)


def lowrank_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, proj: Tensor | None,
                 update_norm: Tensor | None, *, lr, step_size, method: str, first: bool, beta1: float, beta2: float,
                 eps: float, weight_decay: float, scale: float, channel: bool, gamma: float | None, caution: bool,
                 caution_norm) -> Tensor | None:
    """One tensor's step; ``method`` is "apollo", "galore" or "fira"; ``proj`` the period's
    projection (None: AdamW for this tensor); ``step_size`` lr * sqrt(1 - b2^t) / (1 - b1^t)."""
    # sharded along the compressed axis: the projected gradient summed once
    proj_grad = grad if proj is None else reduced(project(grad, proj))
    exp_avg.mul_(beta1).add_(proj_grad, alpha=1 - beta1)   # the reference's moments (not lerp)
    exp_avg_sq.mul_(beta2).addcmul_(proj_grad, proj_grad, value=1 - beta2)
    normed = exp_avg / exp_avg_sq.sqrt().add_(eps)
    count = None
    if proj is None:
        count = apply_(param, normed, grad, -step_size, caution, caution_norm)
    elif method == "apollo":   # G * s is never formed: its norm comes from channel norms of G
        scaling = _scaling(normed, proj_grad, grad.shape, channel)
        norm = (channel_norm(grad, grad.shape) * scaling).norm() if channel else _norm(grad) * scaling
        multiplier = scaling * math.sqrt(scale) / _limit(norm, update_norm, first, gamma)
        addcmul_(param, grad, multiplier, -step_size)   # W <- W - step_size * G * multiplier, one pass
    else:   # back-projections laid out as the gradient (sharded: each rank its slice, no gather)
        update = placed_as(project_back(normed, proj, grad.shape), grad).mul_(scale)
        if method == "fira":
            residual = grad - placed_as(project_back(proj_grad, proj, grad.shape), grad).mul_(scale)
            residual.mul_(_scaling(normed, proj_grad, grad.shape, channel=True))
            update.add_(residual.div_(_limit(_norm(residual), update_norm, first, gamma)))
        count = apply_(param, update, grad, -step_size, caution, caution_norm)
    if weight_decay != 0:   # decoupled, after the update, as the reference
        add_(param, param, -lr * weight_decay)
    return count


class _LowRankAdamW(ZooOptimizer):
    """Shared construction, validation, state and memory formula of the low-rank family."""

    group_may_unset = ("rank",)   # a group with rank=None is updated by AdamW, also under apollo-mini

    method = ""
    defining_settings = ("caution", "proj")
    low_bit_states = {"exp_avg": True, "exp_avg_sq": False}
    full_precision_states = {"projection": "is the projection (GaLore's and Fira's singular vectors): quantizing "
                                           "it would break its orthonormality"}

    def _state_keys(self, param, group):
        keys = {"step", "exp_avg", "exp_avg_sq"}
        if group["rank"] is not None and param.dim() == 2:
            keys |= {"seed"} if group["proj"] == "random" else set()
            keys |= {"projection"} if group["proj"] == "svd" or group["store_projection"] else set()
            keys |= {"update_norm"} if group["norm_growth_limit"] is not None and self.method != "galore" else set()
        return keys, set()

    _warned_position = False   # the warning of _index, once per optimizer

    def _validate(self, group):
        check_betas("betas", group["betas"])
        check_range("eps", group["eps"])
        rank = group["rank"]
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ValueError(f"Invalid rank: {rank!r}; allowed an int >= 1, or None for AdamW")
        gap = group["update_proj_gap"]
        if not isinstance(gap, int) or isinstance(gap, bool) or gap < 1:
            raise ValueError(f"Invalid update_proj_gap: {gap!r}; allowed an int >= 1")
        check_range("scale", group["scale"], 0.0, low_open=True)
        if group["scale_type"] not in ("channel", "tensor"):
            raise ValueError(f"Invalid scale_type: {group['scale_type']!r}; allowed 'channel', 'tensor'")
        if group["proj"] not in ("random", "svd"):
            raise ValueError(f"Invalid proj: {group['proj']!r}; allowed 'random', 'svd'")
        if group["norm_growth_limit"] is not None:
            check_range("norm_growth_limit", group["norm_growth_limit"], 1.0)
        check_bool("store_projection", group["store_projection"])
        if not isinstance(group["seed"], int) or group["seed"] < 0:
            raise ValueError(f"Invalid seed: {group['seed']!r}; allowed an int >= 0")

    @staticmethod
    def _moment_shape(p: Tensor, group: dict) -> tuple:
        """The shape of ``p``'s moments: projected for a matrix with a rank, else ``p``'s."""
        shape = p.shape
        if group["rank"] is not None and p.dim() == 2:
            r = effective_rank(shape, group["rank"])
            shape = (shape[0], r) if rows_kept(shape) else (r, shape[1])
        return tuple(shape)

    def _state_shapes(self, param, group):
        return dict.fromkeys(("exp_avg", "exp_avg_sq"), self._moment_shape(param, group))

    def _init_state(self, p: Tensor, state: dict, group: dict) -> None:
        shape = self._moment_shape(p, group)
        if group["rank"] is not None and p.dim() == 2:
            if group["proj"] == "random":
                state["seed"] = torch.tensor(group["seed"] + self._index(p), dtype=torch.int64)
            if group["norm_growth_limit"] is not None and self.method != "galore":
                state["update_norm"] = replicated(torch.zeros((), dtype=_norm_dtype(p), device=p.device), p)
        for key in ("exp_avg", "exp_avg_sq"):
            self._zeros(state, key, p, group["state_bits"], shape,
                        zeros=lambda: zeros_along(p, shape, self._state_dtype(p)))

    def _index(self, p: Tensor) -> int:
        """The 1-based index that seeds ``p``'s projection, as the reference: the one
        :func:`zoo.sharding.index_parameters` gave it, else its position in this optimizer."""
        weight = self._parameter(p)   # a quantized weight's working copy: the weight's index
        index = parameter_index(weight)
        if index is not None:
            return index
        if not self._warned_position and not is_dtensor(p) and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1:
            self._warned_position = True
            warnings.warn(f"{type(self).__name__} seeds each random projection with the parameter's position in "
                          "this optimizer; under ZeroRedundancyOptimizer a rank's optimizer holds a subset, so the "
                          "positions, and the projections, differ from one process: call "
                          "zoo.index_parameters(params) on the parameters first (zoo.create does)", stacklevel=4)
        everything = (q for g in self.param_groups for q in g["params"])
        return next(i for i, q in enumerate(everything, start=1) if q is weight)

    def _update_group(self, group, params):
        states = self._states(params, init=lambda p, state: self._init_state(p, state, group))
        lr = as_float(group["lr"])
        beta1, beta2 = group["betas"]
        matrices = 0   # low-rank matrices so far: sharded, their SVDs go to the ranks in turn
        for param, grad, state in zip(params, self._grads(group, params), states):
            step, proj = state["step"], None
            if group["rank"] is not None and param.dim() == 2:
                proj = _projection(grad, state, step, group, matrices)
                matrices += 1
            self._run(lowrank_step, param, grad, state["exp_avg"], state["exp_avg_sq"], proj, state.get("update_norm"),
                      scalars={"lr": lr, "step_size": lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)},
                      method=self.method, first=step == 1, beta1=beta1, beta2=beta2, eps=group["eps"],
                      weight_decay=group["weight_decay"], scale=group["scale"],
                      channel=group["scale_type"] == "channel", gamma=group["norm_growth_limit"],
                      **self._caution_settings(group))

    def _loaded(self, state_dict):
        # torch casts every loaded state tensor to its parameter's dtype; the int64 seed and the
        # limiter's float32 norm come back as they were saved (and the seed on the CPU, so that
        # reading it never syncs); the norm of a sharded parameter replicated, as it was made (a
        # whole state dict, torch.distributed.checkpoint's full_state_dict, holds it plain)
        for param, saved, state in self._loaded_states(state_dict):
            if "seed" in saved:
                state["seed"] = saved["seed"].clone().cpu()
            if "update_norm" in saved:
                norm = saved["update_norm"].clone().to(param.device)
                state["update_norm"] = norm if is_dtensor(norm) else replicated(norm, param)

    def _formula_bytes(self, param: Tensor, group: dict) -> int:
        """Bytes of this parameter's state after a step (PAPERS.md §B.2, Table 1)."""
        size = param.element_size()
        if group["rank"] is None or param.dim() != 2:
            return 2 * param.numel() * size
        rank = effective_rank(param.shape, group["rank"])
        kept, compressed = max(param.shape), min(param.shape)
        total = 2 * kept * rank * size                                   # M, V
        if group["proj"] == "svd" or group["store_projection"]:
            total += compressed * rank * size                            # P
        if group["proj"] == "random":
            total += 8                                                   # seed (int64)
        if group["norm_growth_limit"] is not None and self.method != "galore":
            total += _norm_dtype(param).itemsize                         # limiter norm
        return total


class Apollo(_LowRankAdamW):
    """APOLLO: AdamW's element-wise scaling replaced by channel-wise (or tensor-wise) factors
    estimated in a random rank-r space (Zhu et al. 2025). ``rank=1, scale_type="tensor",
    scale=128`` is APOLLO-Mini; ``proj="svd"`` is APOLLO-SVD.

    Caution is refused: the update is G times positive factors, so it always agrees in sign
    with the gradient and the cautious mask would never act.
    """

    method = "apollo"
    caution_refusal = "APOLLO's update is the gradient times positive channel- or tensor-wise factors"
    defining_settings = ("caution", "rank", "scale_type", "proj")   # apollo, apollo-mini, apollo-svd

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rank: int | None = 128,
                 update_proj_gap: int = 200, scale: float = 1.0, scale_type: str = "channel",
                 proj: str = "random", norm_growth_limit: float | None = 1.01,
                 store_projection: bool = False, seed: int = 0, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, scale_type=scale_type, proj=proj,
                        norm_growth_limit=norm_growth_limit, store_projection=store_projection,
                        seed=seed, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _caution_noop_reason(self, group):
        return self.caution_refusal


class GaLore(_LowRankAdamW):
    """GaLore: Adam in the span of the top-r singular vectors of the gradient, refreshed every
    ``update_proj_gap`` steps, back-projected and scaled by ``scale`` (Zhao et al. 2024)."""

    method = "galore"

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rank: int | None = 128,
                 update_proj_gap: int = 200, scale: float = 0.25, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, scale_type="channel", proj="svd",
                        norm_growth_limit=None, store_projection=True, seed=0, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)


class Fira(_LowRankAdamW):
    """Fira: GaLore plus the residual G - back(R), scaled channel-wise by ||N_j|| / ||R_j|| and
    passed through the norm-growth limiter (Chen et al. 2024)."""

    method = "fira"

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rank: int | None = 128,
                 update_proj_gap: int = 200, scale: float = 1.0,
                 norm_growth_limit: float | None = 1.01, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale, scale_type="channel", proj="svd",
                        norm_growth_limit=norm_growth_limit, store_projection=True, seed=0,
                        maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)
