"""The low-rank family (PAPERS.md §B) against plain references written from the formulas."""
import math

import pytest
import torch

import zoo
from conftest import side_by_side
from zoo.projection import gaussian, next_seed

SHAPES = ((12, 5), (4, 10), (6,))    # tall, wide, and a vector (AdamW fallback)
HP = dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, rank=3, update_proj_gap=4)
STEPS = 13


def identity(u, g, norm):
    return u


def make(shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def loss_fn(params, t):
    return sum((torch.sin(1.1 * p + 0.2 * t + i) * p).sum() + 0.1 * (p**4).sum() for i, p in enumerate(params))


def ref_lowrank(p, g, s, t, hp, phi, method, index=0):
    """One step for one tensor; ``s`` is this tensor's reference state, ``t`` counts from 1."""
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    low_rank = p.dim() == 2 and hp.get("rank") is not None
    if low_rank:
        m, n = p.shape
        r = min(hp["rank"], m, n)
        if (t - 1) % hp["update_proj_gap"] == 0:
            if hp.get("proj", "svd" if method in ("galore", "fira") else "random") == "svd":
                u, _, vh = torch.linalg.svd(g, full_matrices=False)
                s["P"] = vh[:r] if m >= n else u[:, :r].T
            else:   # fed the same Gaussian matrix the optimizer draws from its seed
                s["seed"] = next_seed(s["seed"]) if "seed" in s else hp.get("seed", 0) + index + 1
                s["P"] = gaussian(p.shape, r, s["seed"], "cpu", p.dtype)
        P = s["P"]
        R = g @ P.T if m >= n else P @ g
    else:
        R = g
    s["M"] = b1 * s.get("M", torch.zeros_like(R)) + (1 - b1) * R
    s["V"] = b2 * s.get("V", torch.zeros_like(R)) + (1 - b2) * R * R
    N = s["M"] / (torch.sqrt(s["V"]) + eps)
    if not low_rank:
        U = N
    else:
        axis = 1 if m >= n else 0
        channel = N.norm(dim=axis, keepdim=True) / (R.norm(dim=axis, keepdim=True) + 1e-8)

        def limit(x):
            gamma = hp.get("norm_growth_limit", 1.01)
            if gamma is None:
                return x
            norm = x.norm().item()
            if t > 1:
                f = max(norm / (s["prev"] + 1e-8), gamma) / gamma
                x, norm = x / f, norm / f
            s["prev"] = norm
            return x

        def back(x):
            return x @ P if m >= n else P.T @ x

        if method == "apollo":
            factor = channel if hp.get("scale_type", "channel") == "channel" else N.norm() / (R.norm() + 1e-8)
            U = limit(g * factor) * math.sqrt(hp.get("scale", 1.0))
        elif method == "galore":
            U = hp.get("scale", 0.25) * back(N)
        else:
            scale = hp.get("scale", 1.0)
            U = scale * back(N) + limit((g - scale * back(R)) * channel)
    p = p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * phi(U, g)
    return p - lr * wd * p


def run_pair(name, hp, phi=identity, norm="mean", shapes=SHAPES, steps=STEPS):
    """Trajectories of ``zoo.get(name)`` and of the reference on the same problem."""
    method = zoo.info(name).cls.method
    fixed = dict(zoo.info(name).fixed)
    fixed.pop("caution", None)
    ref_hp = {**zoo.info(name).defaults, **fixed, **hp}
    params = make(shapes)
    extra = {"caution_norm": norm} if zoo.info(name).cautious else {}
    opt = zoo.get(name)(params, **hp, **extra)
    states = [{} for _ in params]

    def reference_step(ref, grads, t):
        return [ref_lowrank(x, g, s, t, ref_hp, lambda u, g_: phi(u, g_, norm), method, index=i)
                for i, (x, g, s) in enumerate(zip(ref, grads, states))]

    return side_by_side(opt, params, reference_step, loss_fn, steps)


def assert_close_all(ours, theirs):
    for t, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12, msg=lambda m: f"step {t + 1}: {m}")


@pytest.mark.parametrize("name", zoo.names(low_rank=True, cautious=False))
def test_matches_plain_reference(name):
    hp = dict(HP) if name != "apollo-mini" else {k: v for k, v in HP.items() if k != "rank"}
    assert_close_all(*run_pair(name, hp))


def test_apollo_tensor_factor_and_scale():
    assert_close_all(*run_pair("apollo", {**HP, "scale_type": "tensor", "scale": 4.0}))


def test_fira_residual_with_a_scale():
    assert_close_all(*run_pair("fira", {**HP, "scale": 0.25}))


def test_rank_at_least_the_smaller_dimension_uses_the_whole_dimension():
    assert_close_all(*run_pair("galore", {**HP, "rank": 50}))
    params = make()
    opt = zoo.get("apollo")(params, rank=50)
    loss_fn(params, 0).backward()
    opt.step()
    assert [tuple(opt.state[p]["exp_avg"].shape) for p in params] == [(12, 5), (4, 10), (6,)]


def test_store_projection_gives_the_same_steps():
    a, _ = run_pair("apollo", HP)
    b, _ = run_pair("apollo", {**HP, "store_projection": True})
    for x, y in zip(a[-1], b[-1]):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name", ["apollo", "apollo-svd", "galore", "fira"])
def test_projection_is_redrawn_exactly_every_gap_steps(name, monkeypatch):
    from zoo.optimizers import lowrank
    draws = []
    for fn in ("gaussian", "top_singular"):
        original = getattr(lowrank, fn)
        monkeypatch.setattr(lowrank, fn, lambda *a, _f=original, **k: draws.append(step[0]) or _f(*a, **k))
    params = make(shapes=((8, 6),))
    opt = zoo.get(name)(params, rank=2, update_proj_gap=5)
    step = [0]
    seen = []
    for t in range(12):
        step[0] = t
        opt.zero_grad()
        loss_fn(params, t).backward()
        opt.step()
        seen.append(opt.state[params[0]].get("projection"))
    if name == "apollo":   # regenerated from the seed at every step, the same matrix within a period
        assert draws == list(range(12))
    else:
        assert draws == [0, 5, 10]
        assert seen[0] is seen[4] and seen[5] is not seen[4]


def test_moments_are_not_reset_on_refresh():
    params = make(shapes=((8, 6),))
    opt = zoo.get("galore")(params, rank=2, update_proj_gap=3, betas=(0.5, 0.5))
    for t in range(4):
        opt.zero_grad()
        loss_fn(params, t).backward()
        before = opt.state[params[0]]["exp_avg"].clone() if t == 3 else None
        opt.step()
    state = opt.state[params[0]]
    from zoo.projection import project
    fresh = project(params[0].grad, state["projection"])
    torch.testing.assert_close(state["exp_avg"], 0.5 * before + 0.5 * fresh)


def test_limiter_caps_norm_growth_at_gamma():
    from zoo.optimizers.lowrank import _limit
    state = {"update_norm": torch.zeros((), dtype=torch.float64)}
    out = []
    for t, norm in enumerate([1.0, 3.0, 9.0, 1.0, 1.0], start=1):
        out.append(norm / float(_limit(torch.tensor(norm, dtype=torch.float64), state["update_norm"], t == 1, 1.01)))
    # first step records; growth is capped at 1.01x the previous (limited) norm; shrinking passes
    expected = [1.0, 1.01, 1.01**2, 1.0, 1.0]
    assert out == pytest.approx(expected, rel=1e-7)
    assert state["update_norm"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("shape,channel_shape", [((12, 5), (12, 1)), ((4, 10), (1, 10))])
def test_channel_factors_follow_the_kept_dimension(shape, channel_shape):
    from zoo.optimizers.lowrank import _scaling
    from zoo.projection import project
    g = torch.randn(shape)
    proj = gaussian(shape, 2, 0, "cpu", torch.float32)
    low = project(g, proj)
    assert tuple(_scaling(low, low, shape, channel=True).shape) == channel_shape
    assert _scaling(low, low, shape, channel=False).dim() == 0


def test_index_parameters_seeds_the_projections_by_the_tensors_own_number():
    """zoo.index_parameters numbers tensors in optimizer order; an optimizer that holds a subset
    (as ZeroRedundancyOptimizer's per-rank optimizers do) then draws the whole optimizer's seeds."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(8, 12)) for _ in range(3)]
    for w in weights:
        w.grad = torch.randn_like(w)
    whole = zoo.get("apollo")(weights, rank=2)
    whole.step()
    subset = zoo.get("apollo")([weights[2]], rank=2)
    subset.step()
    assert int(subset.state[weights[2]]["seed"]) == 1 != int(whole.state[weights[2]]["seed"]) == 3
    zoo.index_parameters([{"params": weights[:2]}, {"params": weights[2]}])
    assert [w.zoo_index for w in weights] == [1, 2, 3]
    subset = zoo.get("apollo")([weights[2]], rank=2)
    subset.step()
    assert int(subset.state[weights[2]]["seed"]) == 3


def test_create_numbers_its_groups_in_its_own_order():
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Linear(12, 8))
    opt = zoo.create(model, "apollo", rank=2, low_rank_filter=lambda name, p: p.dim() == 2)
    everything = [p for g in opt.param_groups for p in g["params"]]
    assert [p.zoo_index for p in everything] == list(range(1, len(everything) + 1))
