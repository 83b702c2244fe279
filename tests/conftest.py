"""Shared test helpers: a deterministic small problem and trajectory runners."""
from __future__ import annotations

import gzip
import struct
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture
def float64():
    """Run the test with float64 as torch's default dtype (torch.optim keeps scalar state in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: elementwise float64 work on 2 shared cores runs far faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_params(shapes=((6, 4), (4,), (3, 5)), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def loss_fn(params, step: int):
    """A non-quadratic loss whose gradients change sign over the trajectory (so masks matter)."""
    total = 0.0
    for i, p in enumerate(params):
        phase = 0.3 * step + i
        total = total + (torch.sin(p * 1.3 + phase) * p).sum() + 0.05 * (p**4).sum()
    return total


def trajectory(make_opt, steps=30, shapes=((6, 4), (4,), (3, 5)), sign=1.0, seed=0, first_step=0):
    """Parameters after each of ``steps`` steps of ``make_opt(params)`` on ``sign * loss_fn``."""
    params = make_params(shapes, seed=seed)
    opt = make_opt(params)
    out = []
    for t in range(first_step, first_step + steps):
        opt.zero_grad()
        (sign * loss_fn(params, t)).backward()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def side_by_side(opt, params, reference_step, loss, steps):
    """Parameters after each of ``steps`` steps (t = 1, 2, ...) of ``opt`` on ``params`` and of
    ``reference_step(ref_params, grads, t) -> new ref_params`` from the same start, both on
    ``loss(params, t)``."""
    ref = [p.detach().clone() for p in params]
    ours, theirs = [], []
    for t in range(1, steps + 1):
        opt.zero_grad()
        loss(params, t).backward()
        opt.step()
        ours.append([p.detach().clone() for p in params])
        q = [r.clone().requires_grad_() for r in ref]
        ref = reference_step(ref, torch.autograd.grad(loss(q, t), q), t)
        theirs.append(ref)
    return ours, theirs


def tensorwise(opt, params, reference, loss, steps, maximize=False):
    """:func:`side_by_side` against ``reference(p, g, state, t) -> new p``, a plain step of one
    tensor with its own state dict; returns (ours, the reference's, the reference's states). With
    ``maximize`` the optimizer climbs ``-loss`` and the reference descends ``loss`` (it gets ``-g``)."""
    sign = -1.0 if maximize else 1.0
    states = [{} for _ in params]
    ours, ref = side_by_side(opt, params, lambda ps, grads, t: [reference(p, sign * g, s, t) for p, g, s in
                                                                zip(ps, grads, states)],
                             lambda ps, t: sign * loss(ps, t), steps)
    return ours, ref, states


def two_groups(params, lr, **extra):
    """Two param groups with different learning rates."""
    return [{"params": params[:2], "lr": lr, **extra}, {"params": params[2:], "lr": lr * 0.37, **extra}]


def assert_trajectories_equal(ours, ref, rtol=1e-13, atol=1e-13):
    for t, (a, b) in enumerate(zip(ours, ref)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol,
                                       msg=lambda m: f"step {t + 1}, param {i}: {m}")


# ---------------------------------------------------------------- data

def write_idx(path, array: np.ndarray, compress: bool) -> None:
    """Write ``array`` as an IDX file of unsigned bytes (gzip-compressed if ``compress``)."""
    raw = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_idx_set(folder, n_train=12, n_test=5, size=8, compress=True):
    """A small random IDX image set (train + t10k images and labels) in ``folder``."""
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size))
        labels = rng.integers(0, 10, n)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = images, labels
    return arrays


# ---------------------------------------------------------------- gradient capture

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        linear = partial(nn.Linear, bias=False)
        self.self_attn = nn.ModuleDict({k: linear(d, d) for k in ("q_proj", "k_proj", "v_proj", "o_proj")})
        self.mlp = nn.ModuleDict({"gate_proj": linear(d, 2 * d), "up_proj": linear(d, 2 * d),
                                  "down_proj": linear(2 * d, d)})
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        a = self.self_attn
        x = x + a["o_proj"](a["q_proj"](x) * torch.tanh(a["k_proj"](x)) + a["v_proj"](x))
        m = self.mlp
        return self.norm(x + m["down_proj"](torch.nn.functional.silu(m["gate_proj"](x)) * m["up_proj"](x)))


class TinyLlama(nn.Module):
    """The HF-style names of a LLaMA (layers.{i}.self_attn.q_proj.weight, ...), nothing else of it."""

    def __init__(self, layers=5, d=8):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(layers))

    def forward(self, x):
        x = self.embed(x)
        for block in self.layers:
            x = block(x)
        return x.square().mean()


def train_with_capture(model, capture, steps):
    """A training loop calling the hook as the runner does; returns every step's grads by name."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = {}
    for step in range(steps):
        opt.zero_grad()
        model(torch.randn(3, 4, generator=torch.Generator().manual_seed(step))).backward()
        capture(step)
        seen[step] = {name: p.grad.clone() for name, p in model.named_parameters()}
        opt.step()
    return seen
