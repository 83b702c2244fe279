"""analysis/scaling.py: the width study's driver on a minimal setting (two tiny widths, 4 steps)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

import zoo
from analysis import pretrain, scaling
from analysis.models.llama import CONFIGS as LLAMA_CONFIGS, Llama

TINY = ["--widths", "32,64", "--tokens", "512", "--batch-size", "4", "--seq-len", "32", "--seeds", "0,1",
        "--no-progress"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    calls = []
    train = pretrain.train

    def recording(cfg, task, name, seed):
        calls.append((task.model_config.dim, name, cfg.lr[name], seed, dict(cfg.options)))
        return train(cfg, task, name, seed)

    pretrain.train = recording
    try:
        scaling.main([*TINY, "--optimizers", "adamw,c-adamw,apollo-mini-sqrt", "--out", str(out)])
    finally:
        pretrain.train = train
    return out, calls


def test_shapes_widen_at_fixed_depth():
    assert scaling.llama_shape(128) == dict(dim=128, n_heads=4, mlp_hidden=344)   # tiny's
    assert scaling.llama_shape(512) == dict(dim=512, n_heads=16, mlp_hidden=1368)
    with pytest.raises(ValueError, match="multiples of 32"):
        scaling.llama_shape(100)


def test_sweep_then_seeds_at_the_chosen_rate(tiny_study):
    out, calls = tiny_study
    runs = pd.read_csv(out / "scaling.csv")
    assert len(calls) == len(runs) == 2 * 3 * (3 + 1)   # widths x optimizers x (3 rates at seed 0 + seed 1)
    for (width, label), group in runs.groupby(["width", "optimizer"]):
        sweep = group[group["seed"] == 0]
        assert len(sweep) == 3
        best = sweep.loc[sweep["final_val_loss"].idxmin(), "lr"]
        assert set(group.loc[group["best"], "lr"]) == {best}
        assert list(group.loc[group["seed"] == 1, "lr"]) == [best]
        assert group["edge"].all() == (best in (sweep["lr"].min(), sweep["lr"].max()))
    for label in ("adamw", "c-adamw", "apollo-mini-sqrt"):   # the next width's grid is centred on the best
        first = runs[(runs["width"] == 32) & (runs["optimizer"] == label) & runs["best"]]["lr"].iloc[0]
        grid = sorted(runs[(runs["width"] == 64) & (runs["optimizer"] == label) & (runs["seed"] == 0)]["lr"])
        assert grid == pytest.approx([first / 3, first, first * 3], rel=2e-3)
    centre = pretrain.DEFAULT_LR["llama"]["adamw"]
    assert sorted(runs[(runs["width"] == 32) & (runs["optimizer"] == "c-adamw") & (runs["seed"] == 0)]["lr"]) \
        == pytest.approx([centre / 3, centre, centre * 3], rel=2e-3)


def test_runs_are_of_their_width_and_the_variant_scales_by_width(tiny_study):
    _, calls = tiny_study
    assert {dim for dim, *_ in calls} == {32, 64}
    mini = [(dim, options) for dim, name, _, _, options in calls if name == "apollo-mini"]
    assert mini and all(options == {"apollo-mini": {"scale": float(dim)}} for dim, options in mini)
    assert all(options == {} for _, name, _, _, options in calls if name != "apollo-mini")


def test_summary_table_and_figure(tiny_study):
    out, _ = tiny_study
    text = (out / "summary.md").read_text()
    assert "4 steps of 4 x 32 tokens" in text and "gap to adamw" in text and "speed-up" in text
    rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| 32") or line.startswith("| 64")]
    assert sorted(rows) == sorted([f"| {w}", n] for w in (32, 64) for n in ("adamw", "c-adamw", "apollo-mini-sqrt"))
    assert (out / "scaling.png").stat().st_size > 10_000
    assert not list(out.glob("**/*.pt"))   # finished runs keep their CSV only


def test_an_interrupted_study_reads_its_runs_back(tiny_study, monkeypatch):
    out, _ = tiny_study
    before = pd.read_csv(out / "scaling.csv")
    monkeypatch.setattr(pretrain, "train", lambda *a: pytest.fail("a finished run was trained again"))
    scaling.main([*TINY, "--optimizers", "adamw,c-adamw,apollo-mini-sqrt", "--out", str(out)])
    pd.testing.assert_frame_equal(pd.read_csv(out / "scaling.csv").drop(columns="wall_s"),
                                  before.drop(columns="wall_s"))


@pytest.mark.parametrize("argv, match", [
    (["--widths", "48"], "multiples of 32"),
    (["--optimizers", "adamw,sgd-typo"], "sgd-typo"),
    (["--tokens", "10"], "less than one step"),
    (["--lr-factors", "1,-3"], "positive numbers"),
    (["--lr-factors", "a"], "positive numbers"),
    (["--dtype", "fp16"], "invalid choice"),
    (["--tokens", "100000", "--tokens-per-param", "1"], "two budgets: give one"),
    (["--tokens-per-param", "0"], "expected a number in (0, inf]"),
])
def test_bad_settings_are_one_line_usage_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_:
        scaling.main(argv + ["--out", "/nonexistent/never-made"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_variants_name_a_registered_optimizer():
    for label, (name, options) in scaling.VARIANTS.items():
        assert name in zoo.names() and label not in zoo.names()
        assert options(256) == {"scale": 256.0}


def test_parameters_are_counted_in_full_as_the_readme_does():
    """Embedding and lm_head included: the README's 0.86M at width 128, and its default budget of
    about 0.7 tokens per parameter at width 128 and 0.05 at 512."""
    assert scaling.n_params(128) == Llama(LLAMA_CONFIGS["tiny"]).num_params() == 857_216
    assert round(scaling.TOKENS / scaling.n_params(128), 1) == 0.7
    assert round(scaling.TOKENS / scaling.n_params(512), 2) == 0.05


def test_tokens_per_parameter_sets_each_widths_steps(tmp_path, monkeypatch):
    calls = []
    train = pretrain.train

    def recording(cfg, task, name, seed):
        calls.append((task.model_config.dim, Llama(task.model_config).num_params(), cfg.steps))
        return train(cfg, task, name, seed)

    monkeypatch.setattr(pretrain, "train", recording)
    scaling.main(["--widths", "32,64", "--tokens-per-param", "0.005", "--batch-size", "4", "--seq-len", "32",
                  "--seeds", "0", "--lr-factors", "1", "--optimizers", "adamw", "--no-progress",
                  "--out", str(tmp_path)])
    expected = {w: math.ceil(0.005 * scaling.n_params(w) / (4 * 32)) for w in (32, 64)}
    assert expected == {32: 3, 64: 10}
    assert [(dim, steps) for dim, _, steps in calls] == list(expected.items())
    assert all(params == scaling.n_params(dim) for dim, params, _ in calls)
    runs = pd.read_csv(tmp_path / "scaling.csv").set_index("width")
    assert runs["steps"].to_dict() == expected
    assert runs["tokens_per_param"].to_dict() == pytest.approx({w: expected[w] * 128 / scaling.n_params(w)
                                                                for w in (32, 64)})
    text = (tmp_path / "summary.md").read_text()
    assert "3 steps at width 32, 10 steps at width 64 of 4 x 32 tokens (0.005 tokens per parameter)" in text
    assert "tokens/param" in text
    # the same --out with another budget: its runs are not mixed in, the study says to use another --out
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--widths", "32,64", "--tokens-per-param", "0.01", "--batch-size", "4", "--seq-len", "32",
                      "--seeds", "0", "--lr-factors", "1", "--optimizers", "adamw", "--no-progress",
                      "--out", str(tmp_path)])
    assert exit_info.value.code == 2
