"""analysis.lowrank: APOLLO's factors against AdamW's (PAPERS.md §B.1, §B.3)."""
import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

import zoo
from analysis import lowrank
from zoo.projection import gaussian, project, rows_kept

from conftest import TinyLlama, train_with_capture

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(12, 7), (6, 15)]   # rows kept (channels = rows), columns kept (channels = columns)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def channel_axis_norms(x, shape):
    """Norms of each channel over the compressed axis, flattened (written here from the definition)."""
    return x.norm(dim=1 if rows_kept(shape) else 0)


SIGN = dict(betas=(0.0, 0.0), eps=0.0, scale_eps=0.0)   # Adam's direction is sign(.)


# ----------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("shape", SHAPES)
def test_sign_limit_ratio_is_norm_distortion_of_the_zoo_projection(shape):
    """β1 = β2 = 0, eps = 0: s_j = √n/‖g_j‖ and s^R_j = √r/‖P g_j‖, so
    √(n/r)·s^R_j/s_j = ‖g_j‖/‖P g_j‖ (‖G‖/‖PG‖ for the tensor), whatever the earlier steps were."""
    grads, rank, seed = randn(4, *shape), 3, 11
    n = min(shape)
    full = lowrank.full_factors(grads, **SIGN)
    channel, tensor = lowrank.lowrank_factors(grads, [rank], seed=seed, **SIGN)
    proj = gaussian(shape, rank, seed, "cpu", torch.float64)
    last, low = grads[-1], project(grads[-1], proj)
    expected = channel_axis_norms(last, shape) / channel_axis_norms(low, shape)
    torch.testing.assert_close(math.sqrt(n / rank) * channel[0] / full.channel, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(math.sqrt(n / rank) * tensor[0] / full.tensor, last.norm() / low.norm(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_sign_limit_holds_for_any_fixed_projection(shape):
    """The same identity for a non-Gaussian P given as a tensor."""
    grads, rank = randn(3, *shape, seed=1), 4
    proj = torch.rand(rank, min(shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.3
    full = lowrank.full_factors(grads, **SIGN)
    channel, _ = lowrank.lowrank_factors(grads, [rank], proj, **SIGN)
    expected = channel_axis_norms(grads[-1], shape) / channel_axis_norms(project(grads[-1], proj), shape)
    torch.testing.assert_close(math.sqrt(min(shape) / rank) * channel[0] / full.channel, expected,
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_sign_limit_square_orthogonal_projection_is_exact(shape):
    """A square orthogonal P (QR, or the full SVD) preserves every norm: the ratio is 1."""
    grads, n = randn(3, *shape, seed=3), min(shape)
    orthogonal, _ = torch.linalg.qr(randn(n, n, seed=4))
    for proj in (orthogonal, "svd"):
        frame = lowrank.sweep(grads, [n], proj, **SIGN)
        for column in ("ratio", "ratio_q05", "ratio_q95", "raw_ratio"):
            np.testing.assert_allclose(frame[column], 1.0, rtol=1e-12)
        np.testing.assert_allclose(frame["inside_band"].fillna(1.0), 1.0)
        np.testing.assert_allclose(frame["spearman"].iloc[0], 1.0)
        np.testing.assert_allclose(frame["cosine"], frame["cosine_exact"], rtol=1e-12)


# ----------------------------------------------------------------------------- zoo agreement

@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("proj,gap", [("random", None), ("random", 3), ("svd", 3)])
@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
@pytest.mark.parametrize("shape", SHAPES)
def test_zoo_apollo_applies_these_factors(shape, scale_type, proj, gap, dtype, rtol):
    """Feed the zoo's APOLLO a gradient sequence; at every step the factor it multiplies G by is
    this module's s^R for the sequence so far (raw moments: bias_correction=False), with the same
    projection: the zoo's seed for a lone parameter is its group seed + 1, advanced per refresh."""
    steps, rank, seed, betas, eps = 7, 3, 5, (0.8, 0.95), 1e-6
    grads = randn(steps, *shape, seed=6).to(dtype)
    param = torch.zeros(shape, dtype=dtype, requires_grad=True)
    opt = zoo.get("apollo")([param], lr=1.0, betas=betas, eps=eps, rank=rank, update_proj_gap=gap or steps,
                            scale_type=scale_type, proj=proj, norm_growth_limit=None, seed=seed)
    for t in range(1, steps + 1):
        with torch.no_grad():
            param.zero_()
        param.grad = grads[t - 1].clone()
        opt.step()
        step_size = math.sqrt(1 - betas[1]**t) / (1 - betas[0]**t)
        applied = -param.detach() / (step_size * grads[t - 1])
        channel, tensor = lowrank.lowrank_factors(grads[:t], [rank], proj, seed=seed + 1, gap=gap, betas=betas,
                                                  eps=eps, bias_correction=False)
        if scale_type == "tensor":
            expected = tensor[0].expand(shape)
        else:
            expected = (channel[0][:, None] if rows_kept(shape) else channel[0][None, :]).expand(shape)
        torch.testing.assert_close(applied, expected.to(dtype), rtol=rtol, atol=0, msg=lambda m: f"step {t}: {m}")


def test_bias_correction_only_changes_the_weight_of_eps():
    """With eps = 0 the bias correction is one scalar for both spaces and cancels."""
    grads = randn(5, 9, 6, seed=7)
    raw, corrected = (lowrank.sweep(grads, [2, 6], eps=0.0, bias_correction=b) for b in (False, True))
    for column in ("raw_ratio", "ratio", "rel_error", "cosine", "spearman"):
        np.testing.assert_allclose(raw[column], corrected[column], rtol=1e-10)
    tiny = grads * 1e-7   # per-element gradients near eps: now it matters
    raw, corrected = (lowrank.sweep(tiny, [2, 6], bias_correction=b) for b in (False, True))
    assert not np.allclose(raw["ratio"], corrected["ratio"], rtol=1e-3)


# ----------------------------------------------------------------------------- vectorisation

def test_ranks_in_one_product_equal_ranks_one_by_one():
    grads, ranks = randn(4, 20, 16, seed=8), [1, 2, 4, 8, 16]
    channel, tensor = lowrank.lowrank_factors(grads, ranks, seed=3)
    assert channel.shape == (len(ranks), 20) and tensor.shape == (len(ranks),)
    for k, rank in enumerate(ranks):
        one_channel, one_tensor = lowrank.lowrank_factors(grads, [rank], seed=3)
        torch.testing.assert_close(channel[k], one_channel[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(tensor[k], one_tensor[0], rtol=1e-12, atol=0)
    svd_channel, _ = lowrank.lowrank_factors(grads, ranks, "svd")
    for k, rank in enumerate(ranks):
        torch.testing.assert_close(svd_channel[k], lowrank.lowrank_factors(grads, [rank], "svd")[0][0],
                                   rtol=1e-12, atol=0)


def test_one_projection_product_per_step_for_all_ranks(monkeypatch):
    calls = []
    monkeypatch.setattr(lowrank.factors, "project", lambda g, p: calls.append(p.shape) or project(g, p))
    grads = randn(5, 32, 24, seed=9)
    lowrank.lowrank_factors(grads, lowrank.rank_sweep(24), seed=1)
    assert calls == [(1 + 2 + 4 + 8 + 16 + 24, 24)] * 5
    calls.clear()
    lowrank.lowrank_factors(grads, [4, 8], seed=1, gap=2)
    assert calls == [(12, 24)] * 5


def reference_sweep_row(grads, rank, seed, delta):
    """The channel-wise statistics of one rank, written plainly from the definitions."""
    shape = grads.shape[1:]
    n = min(shape)

    def scales(xs):
        m = v = 0
        for x in xs:
            m, v = 0.9 * m + 0.1 * x, 0.999 * v + 0.001 * x * x
        t = len(xs)
        normed = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-6)
        return channel_axis_norms(normed, shape) / (channel_axis_norms(xs[-1], shape) + 1e-8), normed

    proj = gaussian(shape, rank, seed, "cpu", torch.float64)
    s, adam = scales(list(grads))
    s_r, _ = scales([project(g, proj) for g in grads])
    ratio = (math.sqrt(n / rank) * s_r / s).numpy()
    e = math.sqrt(8 * math.log(2 * len(grads) / delta) / rank)
    inside = (np.mean((ratio >= math.sqrt(1 - e) / (1 + e)) & (ratio <= math.sqrt(1 + e) / (1 - e)))
              if e < 1 else math.nan)
    update = grads[-1] * (s_r[:, None] if rows_kept(shape) else s_r[None, :])
    return {"ratio": ratio.mean(), "ratio_q05": np.quantile(ratio, 0.05), "ratio_q95": np.quantile(ratio, 0.95),
            "rel_error": np.abs(ratio - 1).mean(), "spearman": stats.spearmanr(s_r, s).statistic,
            "inside_band": inside,
            "cosine": float((update * adam).sum() / (update.norm() * adam.norm()))}


@pytest.mark.parametrize("shape", [(300, 128), (128, 300)])
def test_sweep_statistics_match_a_plain_reference(shape):
    grads, ranks = randn(6, *shape, seed=10), [4, 64, 128]
    frame = lowrank.sweep(grads, ranks, seed=2, delta=0.2)
    channel = frame[frame["scale"] == "channel"].set_index("rank")
    assert list(frame.columns) == list(lowrank.SWEEP_COLUMNS)
    assert len(frame) == 2 * len(ranks) and (channel["channels"] == max(shape)).all()
    for rank in ranks:
        expected = reference_sweep_row(grads, rank, 2, 0.2)
        for column, value in expected.items():
            got = channel.loc[rank, column]
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (rank, column)
    assert math.isnan(channel.loc[4, "inside_band"])   # ε >= 1 at r = 4: the theorem has no band


def test_rank_one_channel_wise_breaks_and_tensor_wise_does_not():
    """The failure the instrument must show: at r = 1 a channel's ‖P g_j‖ is |N(0, 1)|·‖g_j‖, so
    the channel ratios spread over orders of magnitude; the tensor's averages over channels."""
    frame = lowrank.sweep(lowrank.synthetic_gradients("gaussian", (512, 256), 4), [1, 64]).set_index(["scale", "rank"])
    assert frame.loc[("channel", 1), "ratio_q95"] > 5 * frame.loc[("channel", 1), "ratio_q05"]
    assert frame.loc[("channel", 1), "rel_error"] > 1.0
    assert frame.loc[("tensor", 1), "rel_error"] < 0.1
    assert frame.loc[("channel", 64), "rel_error"] < 0.15 and frame.loc[("channel", 64), "inside_band"] == 1.0


def test_study_paper_comparison_and_rank_sweep():
    assert lowrank.rank_sweep(8) == [1, 2, 4, 8] and lowrank.rank_sweep(12) == [1, 2, 4, 8, 12]
    records = lowrank.synthetic_records(("gaussian", "lowrank"), shapes=((64, 32), (16, 48)), steps=3)
    frame = lowrank.study(records, ranks=[4, 8, 32], projs=("random", "svd"), gaps=(None, 1))
    assert set(frame["rank"][frame["n"] == 16]) == {4, 8}   # ranks above n are left out
    assert len(frame) == 2 * 2 * 2 * 2 * (3 + 2)            # kinds x projs x gaps x scales x (3 + 2 ranks)
    table = lowrank.paper_comparison(frame[(frame["proj"] == "random") & (frame["gap"] == 3)], by="kind")
    assert set(table["r_over_n"]) == set(lowrank.PAPER_RATIOS)
    assert (table["paper"] == table["r_over_n"].map(lowrank.PAPER_RATIOS)).all()


def test_paper_comparison_quantiles_wide_table_and_kind_order():
    records = [lowrank.GradientRecord(f"layers.{layer}.{kind}", layer, kind, 0, randn(3, 16, 8, seed=layer))
               for kind in ("down", "q", "up", "k") for layer in (0, 1)]
    frame = lowrank.study(records, ranks=[1, 2, 4])            # n = 8: r = n/8 and n/4 are 1 and 2
    table = lowrank.paper_comparison(frame, by="kind")
    assert list(table["kind"]) == ["q", "k", "up", "down"] * 2 and list(table["r_over_n"]) == [0.125] * 4 + [0.25] * 4
    rows = frame[(frame["scale"] == "channel") & (frame["kind"] == "up") & (frame["rank"] == 2)]
    got = table[(table["kind"] == "up") & (table["r_over_n"] == 0.25)].iloc[0]
    assert got["ours"] == pytest.approx(rows["raw_ratio"].mean())
    assert got["ours_q05"] == pytest.approx((rows["ratio_q05"] * 0.5).mean())
    assert got["ours_q95"] == pytest.approx((rows["ratio_q95"] * 0.5).mean())
    assert (got["ours_min"], got["ours_max"], got["records"]) == (rows["raw_ratio"].min(), rows["raw_ratio"].max(), 2)
    wide = lowrank.paper_comparison(frame, by="kind", wide=True)
    assert list(wide.index) == ["q", "k", "up", "down"]
    assert list(wide.columns) == [(f"r = n/{d} (paper {p})", s) for d, p in ((8, 0.35), (4, 0.5))
                                  for s in ("mean", "5%", "95%", "min", "max")]
    assert wide.loc["up", ("r = n/4 (paper 0.5)", "5%")] == pytest.approx(got["ours_q05"])
    tensor = lowrank.paper_comparison(frame, by=["layer", "kind"], scale="tensor", wide=True)
    assert tensor.shape == (8, 10)
    np.testing.assert_allclose(tensor.xs("5%", axis=1, level=1), tensor.xs("mean", axis=1, level=1), rtol=1e-12)
    assert lowrank.paper_comparison(frame[frame["rank"] == 4], by="kind", wide=True).empty   # r = n/2: not the paper's


def test_draws_and_draw_noise():
    records = lowrank.synthetic_records(("gaussian", "lowrank"), shapes=((40, 16),), steps=3)
    frame = lowrank.study(records, ranks=[2, 4], projs=("random", "svd"), draws=3)
    assert frame.groupby("proj")["draw"].unique().map(list).to_dict() == {"random": [0, 1, 2], "svd": [0]}
    one = lowrank.study(records, ranks=[2, 4])
    pd.testing.assert_frame_equal(frame[(frame["proj"] == "random") & (frame["draw"] == 0)].reset_index(drop=True), one)
    noise = lowrank.draw_noise(frame)
    assert list(noise["rank"]) == [2, 4] and (noise["draws"] == 3).all() and (noise["records"] == 2).all()
    per_record = frame[(frame["proj"] == "random") & (frame["scale"] == "channel") & (frame["rank"] == 4)].groupby(
        "name")["raw_ratio"]
    row = noise.iloc[1]
    assert row["within"] == pytest.approx(per_record.std().mean()) and row["within"] > 0
    assert row["between"] == pytest.approx(per_record.mean().std())
    assert row["noise_floor"] == pytest.approx(row["within"] / math.sqrt(3))
    assert row["mean"] == pytest.approx(per_record.mean().mean())
    assert len(lowrank.draw_noise(frame, by="kind")) == 2 * 2
    with pytest.raises(ValueError, match="draws >= 2"):
        lowrank.draw_noise(one)


# ----------------------------------------------------------------------------- command line

def test_cli_synthetic_smoke(tmp_path, capsys):
    frame = lowrank.main(["--source", "synthetic", "--ranks", "1,2,4", "--shape", "24x16", "--steps", "3",
                          "--proj", "random,svd", "--gaps", "1,3", "--out", str(tmp_path)])
    for name in ("lowrank.csv", "ratio_vs_rank.png", "heatmap.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(frame) == 3 * 2 * 2 * 3 * 2   # kinds x projs x gaps x ranks x scales
    assert "paper" in capsys.readouterr().out


def test_cli_run_source(tmp_path):
    model = TinyLlama(layers=2)
    capture = lowrank.GradientCapture(model, at_steps=[0], window=2)
    train_with_capture(model, capture, steps=2)
    capture.save(tmp_path / "run.pt", {"config": "tiny"})
    frame = lowrank.main(["--source", f"run:{tmp_path / 'run.pt'}", "--out", str(tmp_path / "out")])
    assert set(frame["kind"]) == set(lowrank.LAYER_KINDS) and (tmp_path / "out" / "heatmap.png").exists()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,match", [
    (lambda: lowrank.load_source("runs/x.pt"), "allowed 'synthetic' or 'run:PATH'"),
    (lambda: lowrank.synthetic_gradients("cauchy"), "allowed 'gaussian', 'lowrank', 'heavy_rows'"),
    (lambda: lowrank.lowrank_factors(randn(2, 6, 4), [2], "qr"), "allowed 'random', 'svd'"),
    (lambda: lowrank.study([], projs=("qr",)), "allowed 'random', 'svd'"),
    (lambda: lowrank.study(lowrank.synthetic_records(shapes=((6, 4),), steps=2), draws=0),
     "draws.*allowed an int >= 1"),
    (lambda: lowrank.study(lowrank.synthetic_records(shapes=((6, 4),)), ranks=[8]), "compressed dimension"),
    (lambda: lowrank.capture_run("x", steps=10, at_steps=[5], window=8), r"s \+ window <= steps"),
    (lambda: lowrank.capture_run("x", at_steps=[]), "at_steps.*non-empty"),
    (lambda: lowrank.capture_run("x", window=0), "window.*allowed an int >= 1"),
    (lambda: lowrank.lowrank_factors(randn(2, 6, 4), [5]), r"allowed ints in \[1, 4\]"),
    (lambda: lowrank.lowrank_factors(randn(2, 6, 4), [0]), r"allowed ints in \[1, 4\]"),
    (lambda: lowrank.lowrank_factors(randn(2, 6, 4), [2], gap=0), "gap.*allowed an int >= 1"),
    (lambda: lowrank.lowrank_factors(randn(2, 6, 4), [2], randn(3, 4)), r"shape \(r, 4\)"),
    (lambda: lowrank.full_factors(randn(6, 4)), r"grads must be a tensor \[steps, m, n\]"),
])
def test_bad_input_is_refused_with_what_is_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- the real runner

def test_pretraining_runner_captures_real_gradients_for_the_analysis(tmp_path, monkeypatch):
    """analysis.pretrain with capture on (tiny LLaMA, 4 steps): the file holds windows of the
    first, middle and last layer's seven weights at the asked start steps, with the tiny model's
    shapes and the gradients before clipping; a present file is loaded, not retrained; the
    command line analyses every recorded weight."""
    from analysis import pretrain
    from analysis.models import llama

    settings = dict(batch_size=4, seq_len=16, eval_batches=1, dtype="fp32")   # the reference below is fp32
    path = lowrank.capture_run(tmp_path, steps=4, at_steps=(2, 0), window=2, **settings)
    assert path == tmp_path / "grads" / "adamw_seed0.pt" and (tmp_path / "runs" / "adamw_seed0.csv").exists()
    assert lowrank.load_meta(path) == dict(task="llama", model="tiny", optimizer="adamw", seed=0, steps=4, window=2,
                                           starts=[0, 2])
    records = lowrank.load_gradients(path)
    tiny = llama.CONFIGS["tiny"]
    d, hidden, layers = tiny.dim, tiny.mlp_hidden, tiny.n_layers
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "gate": (hidden, d), "up": (hidden, d),
              "down": (d, hidden)}
    depths = (0, layers // 2, layers - 1)   # first, middle, last
    assert sorted((r.step, r.layer, r.kind) for r in records) == sorted(
        (step, layer, kind) for step in (0, 2) for layer in depths for kind in lowrank.LAYER_KINDS)
    for rec in records:
        assert rec.grads.shape == (2, *shapes[rec.kind]) and rec.grads.dtype == torch.bfloat16, rec.label
        assert torch.isfinite(rec.grads).all() and (rec.grads.float().norm(dim=(1, 2)) > 0).all(), rec.label
    # step 0 is the gradient of the seed's initial weights on its first batch, before clipping
    cfg = pretrain.Config(**settings, optimizers=("adamw",), seeds=(0,), steps=4, out=str(tmp_path), progress=False)
    task = pretrain.LlamaTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    task.loss(model, task.batch(torch.Generator().manual_seed(0))).backward()
    grads = dict(model.named_parameters())
    for rec in records[:7]:
        assert torch.equal(rec.grads[0], grads[rec.name].grad.to(torch.bfloat16)), rec.name

    def no_training(cfg):
        raise AssertionError("a matching capture file must be loaded, not retrained")
    monkeypatch.setattr(pretrain, "compare", no_training)
    assert lowrank.capture_run(tmp_path, steps=4, at_steps=[0, 2], window=2, **settings) == path
    asked = []
    monkeypatch.setattr(pretrain, "compare", asked.append)
    lowrank.capture_run(tmp_path, steps=4, at_steps=[1], window=2, **settings)   # other start steps: trains
    assert [(c.capture_grads, c.capture_window, c.batch_size, c.progress) for c in asked] == [((1,), 2, 4, False)]

    frame = lowrank.main(["--source", f"run:{path}", "--ranks", "16,32", "--out", str(tmp_path / "lowrank")])
    assert frame.groupby("label").size().to_dict() == {rec.label: 2 * 2 for rec in records}   # ranks x scales
    assert frame["raw_ratio"].notna().all() and (tmp_path / "lowrank" / "lowrank.csv").exists()
    table = lowrank.paper_comparison(frame, by=["step", "layer"], wide=True)
    assert table.shape == (2 * 3, 2 * 5) and table.notna().all().all()
