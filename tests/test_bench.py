"""Smoke test of the step benchmark on a tiny workload."""
import pytest
import torch

from analysis import bench


def test_step_benchmark_tiny(capsys):
    table = bench.main(["step", "--shape", "8x16", "--count", "2", "--rounds", "1", "--steps", "1",
                        "--only", "adamw,c-adamw", "--copy-mb", "4", "--allocator", "default"])
    assert "ms kept" not in table
    assert sorted(table.index) == sorted(["adamw", "c-adamw", "adamw-fused", *bench.BASELINES])
    assert (table["ms/step"] > 0).all()
    assert (table["moved MB"] > 0).all()
    out = capsys.readouterr().out
    assert "roofline" in out and "c-adamw <= 1.10x adamw" in out


@pytest.mark.skipif(not bench.glibc(), reason="MALLOC_MMAP_THRESHOLD_ is glibc's")
def test_step_benchmark_both_allocator_settings_tiny(capsys):
    """The default on glibc: the same rows measured again in a child process whose malloc keeps
    large blocks mapped, side by side."""
    table = bench.main(["step", "--shape", "8x16", "--count", "2", "--rounds", "1", "--steps", "1",
                        "--only", "lion,c-lion", "--copy-mb", "4", "--refresh-steps", "0"])
    assert (table["ms kept"] > 0).all() and not table["ms kept"].isna().any()
    assert (table["default / kept"] - table["ms/step"] / table["ms kept"]).abs().max() < 1e-9
    assert "ms kept" in capsys.readouterr().out


def test_allocator_both_is_refused_without_glibc(monkeypatch, capsys):
    monkeypatch.setattr(bench, "glibc", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["step", "--shape", "8x16", "--count", "1", "--only", "lion", "--allocator", "both"])
    assert exit_info.value.code == 2
    assert "MALLOC_MMAP_THRESHOLD_" in capsys.readouterr().err


def test_refresh_measurement_tiny(capsys):
    bench.main(["step", "--shape", "8x16", "--count", "2", "--rounds", "1", "--steps", "1",
                "--only", "galore", "--copy-mb", "4", "--allocator", "default", "--refresh-gap", "2",
                "--refresh-steps", "4"])
    out = capsys.readouterr().out
    assert "projection refresh" in out and "galore" in out.split("projection refresh")[1]


def test_training_step_benchmark_tiny(capsys):
    table = bench.main(["train", "--model", "tiny", "--optimizers", "adamw,apollo-mini", "--variants",
                        "fp32,layerwise,layerwise-bf16", "--rounds", "1", "--steps", "1", "--warmup", "0",
                        "--batch-size", "1", "--seq-len", "8"])
    assert list(table["variant"]) == ["fp32", "layerwise", "layerwise-bf16"] * 2
    assert (table["ms/step"] > 0).all() and (table.loc[table["variant"] == "fp32", "x fp32"] == 1).all()
    assert "LLaMA tiny" in capsys.readouterr().out


def test_training_step_benchmark_against_hf_tiny(capsys):
    """--hf: the repository's LLaMA and HF's LlamaForCausalLM of the same configuration side by side,
    tokens/s of each and their ratio; --vocab-size sets the vocabulary."""
    table = bench.main(["train", "--model", "tiny", "--optimizers", "adamw", "--variants", "fp32", "--hf",
                        "--vocab-size", "300", "--rounds", "1", "--steps", "1", "--batch-size", "2", "--seq-len", "16"])
    assert list(table["model"]) == ["ours", "hf"]
    assert (table["tokens/s"] > 0).all()
    ratio = table.loc[0, "tokens/s"] / table.loc[1, "tokens/s"]
    assert table["ours / hf"].tolist() == pytest.approx([ratio, ratio])
    out = capsys.readouterr().out
    assert "LLaMA tiny (vocabulary 300)" in out and "LlamaForCausalLM" in out and "ours / hf" in out


def test_training_models_start_from_the_same_weights():
    config = bench.llama.CONFIGS["tiny"]
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    ours, hf = (bench.train_model(kind, config, seed=3) for kind in bench.TRAIN_MODELS)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens, tokens)[1], ours(tokens, tokens)[1])


def test_step_benchmark_compiled_rows_tiny(capsys):
    table = bench.main(["step", "--shape", "8x16", "--count", "2", "--rounds", "1", "--steps", "1",
                        "--only", "adamw,c-adamw", "--copy-mb", "4", "--refresh-steps", "0", "--compile",
                        "--allocator", "default"])
    assert {"adamw+compile", "c-adamw+compile"} <= set(table.index)
    assert (table.loc[["adamw+compile", "c-adamw+compile"], "first step s"] > 0).all()
    out = capsys.readouterr().out
    assert "adamw+compile <= 1.20x torch-adamw-fused" in out and "c-adamw+compile <= 1.15x adamw+compile" in out
    assert "c-adamw+compile first step (compiling) <= 20 s" in out


def test_step_benchmark_low_bit_rows_and_peers_tiny(capsys):
    """--state-bits 8,4: rows <name>+8bit and +4bit (64x64: 4,096 values, so the states are codes),
    and beside adamw the peers' low-bit AdamW where they run here, or a line saying why not."""
    table = bench.main(["step", "--shape", "64x64", "--count", "2", "--rounds", "1", "--steps", "1",
                        "--only", "adamw", "--copy-mb", "4", "--refresh-steps", "0", "--state-bits", "8,4",
                        "--allocator", "default"])
    assert {"adamw+8bit", "adamw+4bit"} <= set(table.index)
    full, eight, four = table.loc[["adamw", "adamw+8bit", "adamw+4bit"], "state MB"]
    assert four < eight < full / 3
    out = capsys.readouterr().out
    for peer in bench.PEERS:   # measured, or named with the reason
        assert peer in table.index or f"{peer} not measured:" in out
