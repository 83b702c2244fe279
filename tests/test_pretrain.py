"""analysis/pretrain.py: runs, metrics, resume bit for bit, data-parallel equivalence, summary."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import zoo
from analysis import pretrain
from analysis.pretrain import Config, METRICS, compare, load_metrics, parse_args, steps_to_reach, summarize
from conftest import write_idx_set

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=6, batch_size=4, seq_len=16, eval_interval=3, eval_batches=2, progress=False, dtype="fp32")


def small(tmp_path, **overrides) -> Config:
    return Config(**{**SMALL, "optimizers": ("adamw",), "seeds": (0,), "out": str(tmp_path), **overrides})


def checkpoint(out, name="adamw", seed=0) -> dict:
    return torch.load(Path(out, "checkpoints", f"{name}_seed{seed}.pt"), weights_only=False)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="wall_s").reset_index(drop=True)


# ---------------------------------------------------------------- command line and settings

def test_parse_args_learning_rates_and_defaults():
    cfg = parse_args(["llama", "--optimizers", "adamw,c-lion", "--lr", "adamw=1e-3", "--steps", "7"])
    assert cfg.optimizers == ("adamw", "c-lion") and cfg.steps == 7 and cfg.out == "runs/llama"
    assert cfg.peak_lr("adamw") == 1e-3
    assert cfg.peak_lr("c-lion") == pretrain.DEFAULT_LR["llama"]["lion"]  # a twin takes its base's rate
    cfg = parse_args(["mae", "--optimizers", "adamw,lion", "--lr", "2e-3", "--seeds", "3,4"])
    assert cfg.lr == {"adamw": 2e-3, "lion": 2e-3} and cfg.seeds == (3, 4) and cfg.out == "runs/mae"


@pytest.mark.parametrize("overrides, match", [
    (dict(task="bert"), "allowed: llama, mae"),
    (dict(model="30B"), "allowed: tiny"),
    (dict(optimizers=("adamw", "sdg")), "sgd"),
    (dict(lr={"muon": 1e-4}), "not in --optimizers"),
    (dict(device="tpu"), "allowed: auto, cpu, cuda"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(warmup=500), "warmup"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(grad_clip=-1.0), "grad_clip"),
    (dict(corpus="c4"), "allowed: shakespeare, stdlib"),
])
def test_bad_settings_are_refused(overrides, match):
    with pytest.raises((ValueError, KeyError), match=match):
        Config(**overrides)


@pytest.mark.parametrize("argv, match", [
    (["llama", "--optimizers", "muon"], "pass --lr muon=VALUE"),
    (["llama", "--lr", "adamw=fast"], "--lr takes a number for every optimizer"),
    (["mae", "--seeds", "0,x"], "--seeds: expected comma-separated integers"),
])
def test_command_line_errors_are_usage_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_no_silent_default_learning_rate():
    with pytest.raises(ValueError, match="pass --lr muon=VALUE"):
        Config(optimizers=("muon",)).peak_lr("muon")


def test_schedule_warms_up_then_decays_to_the_floor():
    factor = pretrain._schedule(Config(steps=100, warmup=10, min_lr_ratio=0.1))
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.55)
    assert factor(100) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------- runs

def test_llama_run_writes_metrics_summary_and_figure(tmp_path):
    cfg = small(tmp_path, optimizers=("adamw", "c-adamw", "apollo-mini"), steps=9)
    metrics, table = compare(cfg)
    run = pd.read_csv(tmp_path / "runs" / "c-adamw_seed0.csv")
    assert list(run.columns[:len(METRICS)]) == list(METRICS)
    assert run["step"].tolist() == list(range(10))
    assert run["val_loss"].notna().tolist() == [s % 3 == 0 for s in range(10)]
    assert run.loc[1:, "units"].diff().dropna().eq(4 * 16).all()         # tokens of the global batch
    assert run.loc[1:, "masked_fraction"].between(0, 1).all()
    assert run["lr"].iloc[1] == cfg.peak_lr("c-adamw")                    # 9 steps: no warm-up step
    # the same seed starts from the same weights and batches: identical initial validation loss
    assert metrics.groupby("optimizer")["val_loss"].first().nunique() == 1
    # apollo-mini's state is far smaller than adamw's; the measured bytes are the optimizer's
    assert table.loc["apollo-mini", "state MB"] < 0.2 * table.loc["adamw", "state MB"]
    assert set(table.index) == {"adamw", "c-adamw", "apollo-mini"} and table["seeds"].eq(1).all()
    summary = (tmp_path / "summary.md").read_text()
    assert "| optimizer | final val loss |" in summary and "c-adamw" in summary
    assert (tmp_path / "val_loss.png").stat().st_size > 10_000
    pd.testing.assert_frame_equal(load_metrics(tmp_path).sort_values(["optimizer", "step"]).reset_index(drop=True),
                                  metrics.sort_values(["optimizer", "step"]).reset_index(drop=True),
                                  check_dtype=False)


def test_runs_are_deterministic_for_a_seed(tmp_path):
    a, _ = compare(small(tmp_path / "a"))
    b, _ = compare(small(tmp_path / "b"))
    c, _ = compare(small(tmp_path / "c", seeds=(1,)))
    pd.testing.assert_frame_equal(comparable(a), comparable(b))
    assert not a["train_loss"].dropna().equals(c["train_loss"].dropna())


@pytest.mark.parametrize("name, settings", [
    ("c-adamw", {}), ("apollo", {}), ("apollo-mini", {"weights": "int8"}), ("adamw", {"state_bits": 8}),
    ("c-adamw", {"weights": "bf16", "kahan": True, "dtype": "bf16"}),
    ("lion", {"weights": "bf16", "stochastic_round": True, "state_bits": 4, "dtype": "bf16"})])
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, name, settings):
    cfg = small(tmp_path / "full", optimizers=(name,), steps=8, eval_interval=2, update_proj_gap=3, **settings)
    assert_resume_bit_for_bit(tmp_path, monkeypatch, cfg, name)


def assert_resume_bit_for_bit(tmp_path, monkeypatch, cfg: Config, name: str) -> None:
    """A run of ``cfg`` (8 steps, checkpoints every 2) interrupted after its second checkpoint
    and resumed equals the whole run: its metrics and its final weights."""
    full, _ = compare(cfg)

    saves = []
    real_save = pretrain.save_checkpoint

    def interrupted(path, payload):  # Ctrl-C right after the second checkpoint was written
        real_save(path, payload)
        saves.append(payload["step"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "save_checkpoint", interrupted)
    cut = Config(**{**cfg.__dict__, "out": str(tmp_path / "cut")})
    with pytest.raises(KeyboardInterrupt):
        compare(cut)
    assert saves == [2, 4] and checkpoint(cut.out, name)["step"] == 4
    monkeypatch.setattr(pretrain, "save_checkpoint", real_save)
    resumed, _ = compare(Config(**{**cut.__dict__, "resume": True}))
    pd.testing.assert_frame_equal(comparable(resumed), comparable(full))
    for key, value in checkpoint(cfg.out, name)["model"].items():
        assert torch.equal(value, checkpoint(cut.out, name)["model"][key]), key


def test_layerwise_runs_equal_ordinary_runs_in_less_memory(tmp_path):
    """--layerwise (clipping off, as it must be) trains exactly as the ordinary loop; its peak is
    lower (the gradients never all exist); the CPU peak is tracked from the first step on."""
    ordinary, _ = compare(small(tmp_path / "a", optimizers=("c-adamw",), grad_clip=0.0))
    layerwise, table = compare(small(tmp_path / "b", optimizers=("c-adamw",), grad_clip=0.0, layerwise=True))
    pd.testing.assert_frame_equal(comparable(layerwise).drop(columns="peak_bytes"),
                                  comparable(ordinary).drop(columns="peak_bytes"))
    assert ordinary["peak_bytes"].iloc[1:].notna().all() and math.isnan(ordinary["peak_bytes"].iloc[0])
    assert layerwise["peak_bytes"].max() < ordinary["peak_bytes"].max()
    assert table.loc["c-adamw", "peak MB"] == layerwise["peak_bytes"].max() / 1e6


def test_int8_weights_train_close_to_float_weights(tmp_path):
    """--weights int8: the attention and MLP weights are INT8 in the run and in its checkpoint;
    validation loss falls as with float weights, and ends close to it."""
    settings = dict(optimizers=("adamw", "apollo-mini"), steps=40, batch_size=8, seq_len=32, eval_interval=20)
    floats, _ = compare(small(tmp_path / "a", **settings))
    int8, _ = compare(small(tmp_path / "b", weights="int8", **settings))
    assert checkpoint(tmp_path / "b")["model"]["layers.0.mlp.up_proj.weight_codes"].dtype == torch.uint8
    for name in settings["optimizers"]:
        curve = int8[int8["optimizer"] == name]["val_loss"].dropna().to_numpy()
        reference = floats[floats["optimizer"] == name]["val_loss"].dropna().to_numpy()
        assert curve[0] == pytest.approx(reference[0], abs=2e-3)   # the same initial weights, rounded to INT8
        assert curve[-1] < curve[0] - 1.0 and abs(curve[-1] - reference[-1]) < 0.1, (name, curve, reference)


def test_low_bit_states_and_bf16_weights_in_the_run_and_its_checkpoint(tmp_path):
    """--state-bits 8: the embedding's moments are codes in the checkpoint; --weights bf16 --kahan:
    bfloat16 weights with their compensation; the summary says both."""
    compare(small(tmp_path / "a", state_bits=8))
    state = checkpoint(tmp_path / "a")["optimizer"]["state"]
    assert any(v.dtype == torch.uint8 for s in state.values() for v in s.values() if isinstance(v, torch.Tensor))
    assert "8-bit optimizer states" in (tmp_path / "a" / "summary.md").read_text()
    frame, _ = compare(small(tmp_path / "b", weights="bf16", kahan=True, dtype="bf16"))
    saved = checkpoint(tmp_path / "b")
    assert all(v.dtype == torch.bfloat16 for v in saved["model"].values() if v.is_floating_point())
    assert all("kahan_comp" in s for s in saved["optimizer"]["state"].values())
    assert frame["train_loss"].iloc[1:].map(math.isfinite).all()   # row 0: the evaluation before training
    assert "bfloat16 weights, Kahan summation" in (tmp_path / "b" / "summary.md").read_text()


@pytest.mark.parametrize("overrides, match", [
    (dict(kahan=True), "pass --weights bf16"), (dict(state_bits=16), "must be 32, 8 or 4"),
    (dict(weights="bf16", dtype="fp32"), "--dtype fp32 contradicts it"),
    (dict(weights="bf16", kahan=True, stochastic_round=True, dtype="bf16"), "choose one"),
    (dict(state_bits=8, fsdp=True), "straddle the shards")])
def test_low_precision_settings_that_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        small(tmp_path, **overrides)


def test_int8_weights_are_refused_with_several_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "_world", lambda: (0, 2))
    with pytest.raises(ValueError, match=r"weights int8 \(--weights int8\) is for one process"):
        pretrain.prepare(small(tmp_path, weights="int8"))


def test_dtype_auto_runs_in_the_precision_this_cpu_is_fast_in(tmp_path):
    """--dtype auto is bf16 where the probe measures bf16 matmuls faster than fp32, else fp32: the
    same losses as that precision asked for by name; the summary names the precision and the host."""
    chosen = zoo.precision.resolve("auto")
    auto, _ = compare(small(tmp_path / "a", dtype="auto"))
    named, _ = compare(small(tmp_path / "b", dtype=chosen))
    assert auto["train_loss"].equals(named["train_loss"])
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert f"precision: {chosen} (--dtype auto) on {zoo.precision.cpu_name()}" in summary


def test_bf16_autocast_on_the_cpu(tmp_path):
    fp32, _ = compare(small(tmp_path / "a"))
    bf16, _ = compare(small(tmp_path / "b", dtype="bf16"))
    assert bf16["train_loss"].iloc[1:].map(math.isfinite).all()
    assert not bf16["train_loss"].iloc[1:].equals(fp32["train_loss"].iloc[1:])
    with pytest.raises(ValueError, match="unknown dtype 'fp16'"):
        small(tmp_path, dtype="fp16")


def test_resume_refuses_changed_settings(tmp_path):
    compare(small(tmp_path))
    with pytest.raises(ValueError, match="differ from the checkpoint.*'steps': \\(6, 9\\)"):
        compare(small(tmp_path, steps=9, resume=True))


def test_resume_of_a_finished_run_trains_no_more(tmp_path):
    first, _ = compare(small(tmp_path))
    again, _ = compare(small(tmp_path, resume=True))
    pd.testing.assert_frame_equal(first, again)


def test_mae_run_on_an_idx_folder(tmp_path):
    write_idx_set(tmp_path, n_train=40, n_test=16, size=28)
    cfg = small(tmp_path / "out", task="mae", optimizers=("adamw", "c-lion"), batch_size=8, data_dir=str(tmp_path))
    metrics, table = compare(cfg)
    assert metrics.groupby("optimizer")["units"].max().eq(6 * 8).all()     # images seen
    assert table["final val loss"].between(0.01, 10).all()


def test_missing_image_data_is_an_error_not_random_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        compare(small(tmp_path, task="mae", data_dir=str(tmp_path)))


# ---------------------------------------------------------------- several processes

TWO_RANKS = ["--standalone", "--nproc_per_node", "2"]


def run_ranks(*args, script=("-m", "analysis.pretrain"), check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *TWO_RANKS, *script, *args],
                          cwd=ROOT, env=env, check=check, capture_output=True, timeout=300)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, mode):
    """torchrun with 2 gloo ranks trains on the same global batches as one process: the same
    train losses and final weights to round-off; with DDP the runner checks that both ranks
    agree; with --fsdp the checkpoint holds the whole model, gathered on rank 0. SGD with
    momentum keeps the update linear in the gradient, so the reduction's round-off is not
    amplified (Adam's g/sqrt(v) turns it into relative differences of 1e-3 at coordinates whose
    gradient is tiny)."""
    args = ["llama", "--optimizers", "sgdm", "--lr", "0.3", "--seeds", "0", "--steps", "4", "--batch-size", "4",
            "--seq-len", "16", "--eval-interval", "2", "--eval-batches", "1", "--no-progress", "--dtype", "fp32"]
    run_ranks(*args, *(["--fsdp"] if mode == "fsdp" else []), "--out", str(tmp_path / mode))
    subprocess.run([sys.executable, "-m", "analysis.pretrain", *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, timeout=300)
    ranks, one = (pd.read_csv(tmp_path / d / "runs" / "sgdm_seed0.csv") for d in (mode, "one"))
    assert f"world size 2{' (FSDP2)' if mode == 'fsdp' else ''}\n" in (tmp_path / mode / "summary.md").read_text()
    pd.testing.assert_series_equal(ranks["train_loss"], one["train_loss"], rtol=1e-5)
    pd.testing.assert_series_equal(ranks["val_loss"], one["val_loss"], rtol=1e-5)
    assert one["train_loss"].iloc[-1] < one["train_loss"].iloc[1]
    whole = checkpoint(tmp_path / "one", "sgdm")["model"]
    assert checkpoint(tmp_path / mode, "sgdm")["model"].keys() == whole.keys()
    for key, value in checkpoint(tmp_path / mode, "sgdm")["model"].items():
        torch.testing.assert_close(value, whole[key], rtol=1e-5, atol=1e-7)
    if mode == "fsdp":   # each rank holds half of SGD's momentum: the state column is rank 0's share
        assert ranks["state_bytes"].iloc[-1] == pytest.approx(one["state_bytes"].iloc[-1] / 2, rel=0.01)


def test_fsdp_resume_continues_bit_for_bit(tmp_path):
    """An FSDP run stopped on every rank at its second checkpoint resumes from the first (whole
    model and optimizer state, APOLLO-Mini's seeds and limiter norm, the step counter) and ends
    exactly where the uninterrupted run ends; the projection refreshes after the resume."""
    args = ["llama", "--optimizers", "apollo-mini", "--seeds", "0", "--steps", "6", "--batch-size", "4",
            "--seq-len", "16", "--eval-interval", "2", "--eval-batches", "1", "--update-proj-gap", "3",
            "--no-progress", "--fsdp"]
    run_ranks(*args, "--out", str(tmp_path / "full"))
    stopped = run_ranks(*args, "--out", str(tmp_path / "cut"), script=[str(ROOT / "tests" / "pretrain_interrupted.py")],
                        check=False)
    assert stopped.returncode != 0 and checkpoint(tmp_path / "cut", "apollo-mini")["step"] == 2
    run_ranks(*args, "--out", str(tmp_path / "cut"), "--resume")
    full, resumed = (pd.read_csv(tmp_path / d / "runs" / "apollo-mini_seed0.csv") for d in ("full", "cut"))
    pd.testing.assert_frame_equal(comparable(resumed), comparable(full))
    for key, value in checkpoint(tmp_path / "full", "apollo-mini")["model"].items():
        assert torch.equal(value, checkpoint(tmp_path / "cut", "apollo-mini")["model"][key]), key


# ---------------------------------------------------------------- summary

def fake_metrics() -> pd.DataFrame:
    """Two seeds of two optimizers with known validation curves (evaluated every 10 steps)."""
    curves = {"adamw": [4.0, 3.0, 2.0], "lion": [4.0, 2.5, 1.5]}
    rows = []
    for name, curve in curves.items():
        for seed, shift in ((0, -0.1), (1, 0.1)):
            for step in range(21):
                val = curve[step // 10] + shift if step % 10 == 0 else math.nan
                rows.append(dict(step=step, train_loss=1.0, val_loss=val, lr=1e-3, samples=step, units=10 * step,
                                 wall_s=step / 2, state_bytes=2e6 if name == "adamw" else 1e6,
                                 masked_fraction=math.nan, peak_bytes=(3e6 if name == "adamw" else 2e6) + seed * 1e6,
                                 optimizer=name, seed=seed))
    return pd.DataFrame(rows)


def test_summary_against_hand_computed_values():
    table = summarize(fake_metrics())
    assert list(table.index) == ["lion", "adamw"]
    assert table.loc["adamw", "final val loss"] == pytest.approx(2.0)
    assert table.loc["adamw", "std"] == pytest.approx(math.sqrt(0.02))
    assert table.loc["adamw", "units/s"] == pytest.approx(20.0) and table.loc["lion", "state MB"] == 1.0
    assert table.loc["adamw", "peak MB"] == 3.5 and table.loc["lion", "peak MB"] == 2.5   # mean over seeds
    # lion's mean curve 4.0, 2.5, 1.5 reaches adamw's final 2.0 halfway from step 10 to 20
    assert table.loc["lion", "steps to adamw"] == pytest.approx(15.0)
    assert table.loc["lion", "speed-up"] == pytest.approx(20 / 15)
    assert table.loc["adamw", "speed-up"] == pytest.approx(1.0)


def test_steps_to_reach_edge_cases():
    curve = pd.Series([3.0, 2.0, 1.0], index=[0, 10, 20])
    assert steps_to_reach(curve, 3.5) == 0.0
    assert steps_to_reach(curve, 1.0) == 20.0
    assert math.isnan(steps_to_reach(curve, 0.5))


def test_summary_without_the_baseline_has_no_speed_up():
    table = summarize(fake_metrics().query("optimizer == 'lion'"))
    assert "speed-up" not in table.columns and table.loc["lion", "seeds"] == 2


def test_markdown_table():
    text = pretrain.markdown(summarize(fake_metrics()))
    lines = text.splitlines()
    assert lines[0].startswith("| optimizer | final val loss | std |") and lines[1].startswith("| --- |")
    assert lines[2].startswith("| lion | 1.5 |") and len(lines) == 4


def test_compiled_optimizer_steps_train_as_the_eager_ones(tmp_path):
    """--compile-optimizer: every step through torch.compile, the same run to float32 round-off."""
    eager, _ = compare(small(tmp_path / "eager", optimizers=("c-adamw", "apollo-mini"), steps=4))
    compiled, _ = compare(small(tmp_path / "compiled", optimizers=("c-adamw", "apollo-mini"), steps=4,
                                compile_optimizer=True))
    pd.testing.assert_series_equal(compiled["train_loss"], eager["train_loss"], rtol=1e-5)
    pd.testing.assert_series_equal(compiled["masked_fraction"], eager["masked_fraction"], atol=1e-6)


# ---------------------------------------------------------------- the user's data and model

def write_tokens(folder, vocab_size=300, n_train=4000, n_val=1000, seed=0) -> str:
    from analysis.data import write_token_files
    gen = torch.Generator().manual_seed(seed)
    train, val = (torch.randint(vocab_size, (n,), generator=gen).numpy() for n in (n_train, n_val))
    write_token_files(folder, train, val, vocab_size)
    return str(folder)


def test_token_files_train_a_model_of_their_vocabulary(tmp_path):
    data = write_tokens(tmp_path / "tokens")
    cfg = small(tmp_path / "out", data=data, optimizers=("adamw", "apollo-mini"))
    task = pretrain.prepare(cfg)
    assert cfg.corpus is None and task.corpus.vocab_size == 300
    assert task.build_model().embed_tokens.weight.shape[0] == 300
    metrics, table = compare(cfg, task)
    assert metrics.groupby("optimizer")["units"].max().eq(6 * 4 * 16).all()
    assert f"files:{data}" in (tmp_path / "out" / "summary.md").read_text()
    assert table["final val loss"].lt(math.log(300) + 0.5).all()


def test_resume_on_token_files_is_bit_for_bit_and_refuses_other_text(tmp_path, monkeypatch):
    data = write_tokens(tmp_path / "tokens")
    assert_resume_bit_for_bit(tmp_path, monkeypatch, small(tmp_path / "full", data=data, steps=8, eval_interval=2),
                              "adamw")
    write_tokens(tmp_path / "tokens", seed=1)   # other tokens in the same folder
    with pytest.raises(ValueError, match="other text"):
        compare(small(tmp_path / "full", data=data, steps=8, eval_interval=2, resume=True))


def test_a_dataset_file_with_a_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(f'{{"code": {json_string(d)}}}\n' for d in docs))
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(docs, tokenizers.trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tok.json"))
    cfg = small(tmp_path / "out", dataset=str(path), text_column="code", tokenizer=str(tmp_path / "tok.json"))
    task = pretrain.prepare(cfg)
    assert task.corpus.vocab_size == tok.get_vocab_size() <= 401
    assert int(max(task.corpus.train.max(), task.corpus.val.max())) < task.corpus.vocab_size
    _, table = compare(cfg, task)
    assert table["final val loss"].notna().all()
    with pytest.raises(ValueError, match="code"):   # the column that does not exist names those that do
        pretrain.prepare(small(tmp_path / "out", dataset=str(path), text_column="text", tokenizer=str(tmp_path / "tok.json")))


def json_string(text: str) -> str:
    import json
    return json.dumps(text)


def write_hf_llama(folder) -> str:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                                      num_key_value_heads=4, vocab_size=1000, max_position_embeddings=8)
    config.save_pretrained(folder)
    return f"hf:{folder}"


def test_a_transformers_model_from_its_config(tmp_path):
    model = write_hf_llama(tmp_path / "config")
    cfg = small(tmp_path / "out", model=model, optimizers=("adamw", "apollo-mini"))
    task = pretrain.prepare(cfg)
    net = task.build_model()
    logits, loss = net(*task.batch(torch.Generator().manual_seed(0)))
    assert logits.shape == (4, 16, 256) and loss.ndim == 0   # the text's vocabulary and the run's sequence length
    optimizer = pretrain._build_optimizer(cfg, "apollo-mini", net)
    low_rank = [g for g in optimizer.param_groups if g.get("rank")]
    assert low_rank and sum(len(g["params"]) for g in low_rank) == 2 * 7   # q k v o gate up down, 2 layers
    _, table = compare(cfg, task)
    assert table["final val loss"].notna().all()
    int8, _ = compare(small(tmp_path / "int8", model=model, weights="int8"))
    assert int8["val_loss"].notna().any()


@pytest.mark.parametrize("overrides, match", [
    (dict(corpus="stdlib", data="x"), "--corpus and --data are two sources of text"),
    (dict(data="x", dataset="y"), "--data and --dataset are two sources"),
    (dict(dataset="y", streaming=True), "pass --max-documents"),
    (dict(text_column="body"), "pass --dataset"),
    (dict(task="mae", tokenizer="t.json"), "the llama task's text"),
    (dict(task="mae", model="hf:x"), "is for the llama task"),
    (dict(model="hf:"), "with a config after 'hf:'"),
])
def test_bad_text_sources_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        Config(**overrides)


def test_missing_token_files_are_a_one_line_usage_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "analysis.pretrain", "llama", "--data", str(tmp_path / "none"),
                           "--steps", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "none" in done.stderr   # usage line + the reason
