"""analysis.memory: the optimizer-state table of the LLaMA sizes against the APOLLO paper's
Table 2 (PAPERS.md §B.2), and its chart. Only the 60M size is built, to stay fast."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

import zoo  # noqa: E402
from analysis import memory  # noqa: E402
from zoo.memory import llama_shapes  # noqa: E402

CONFIGS = ("60M",)


@pytest.fixture(scope="module")
def frame():
    return memory.memory_frame(configs=CONFIGS)


@pytest.fixture(scope="module")
def lean():
    return memory.memory_frame(configs=CONFIGS, include_full_rank_states=False)


def _by_optimizer(frame, column):
    return frame.set_index("optimizer")[column]


def test_one_row_per_config_and_optimizer(frame):
    assert list(frame.columns) == list(memory.FRAME_COLUMNS)
    pairs = list(zip(frame["model"], frame["optimizer"]))
    assert pairs == [(c, n) for c in CONFIGS for n in memory.OPTIMIZERS]
    assert frame["params (M)"].round().tolist() == [58.0] * len(memory.OPTIMIZERS)


def test_formula_equals_measurement_everywhere(frame, lean):
    for table in (frame, lean):
        assert table["formula == measured"].dtype == bool
        assert table["formula == measured"].all()
        assert (table["state GB (formula)"] == table["state GB (measured)"]).all()


def test_adamw_state_is_twice_the_weights(frame):
    row = frame.set_index("optimizer").loc["adamw"]
    assert row["state GB (measured)"] == 2 * row["weights GB"]
    assert row["weights GB"] == pytest.approx(58_073_600 * 2 / 1e9)  # bf16: 2 bytes a parameter


def test_state_ordering(frame):
    state = _by_optimizer(frame, "state GB (measured)")
    assert state["apollo-mini"] < state["apollo"] < state["galore"] <= state["fira"] < state["adamw"]


def test_totals_in_gb_and_gib(frame):
    assert frame["total GB"].to_numpy() == pytest.approx(
        (frame["weights GB"] + frame["state GB (measured)"]).to_numpy(), rel=1e-15)
    assert frame["total GiB"].to_numpy() == pytest.approx(frame["total GB"].to_numpy() * 1e9 / 2**30)


def test_paper_column_is_table_2(frame):
    assert frame["paper total GB"].notna().all()
    assert _by_optimizer(frame, "paper total GB").to_dict() == {
        "adamw": 0.36, "galore": 0.24, "fira": 0.24, "apollo": 0.24, "apollo-mini": 0.12}
    other_dtype = memory.memory_frame(configs=CONFIGS, names=("adamw",), dtype=torch.float32)
    assert other_dtype["paper total GB"].isna().all()   # the paper's figures are BF16


def test_paper_adamw_is_three_times_apollo_mini():
    """The observation the notebook rests on: the paper's APOLLO-Mini total is its weights alone
    (AdamW = weights + 2 moments = 3 x weights)."""
    for config in memory.CONFIGS:
        assert memory.PAPER_TABLE2["adamw"][config] == pytest.approx(
            3 * memory.PAPER_TABLE2["apollo-mini"][config], abs=0.015)


def test_full_rank_states_are_adamw_moments_of_embeddings_head_and_norms():
    outside = sum(torch.Size(s).numel() for n, s in llama_shapes("60M").items()
                  if not ("attn" in n or "mlp" in n))
    assert outside == 2 * 32000 * 512 + 512 + 8 * 2 * 512
    for name in memory.OPTIMIZERS:
        assert memory.full_rank_state_bytes(name, "60M") == (2 * 2 * outside, 2 * 2 * outside), name


def test_leaving_out_full_rank_states(frame, lean):
    full, lean_state = _by_optimizer(frame, "state GB (measured)"), _by_optimizer(lean, "state GB (measured)")
    assert lean_state["adamw"] == full["adamw"]
    removed = (full - lean_state).drop("adamw")
    assert removed.to_numpy() == pytest.approx([memory.full_rank_state_bytes("adamw", "60M")[1] / 1e9] * 4)
    # what is left of APOLLO-Mini is a few hundred kB: its total is the weights, as in the paper
    row = lean.set_index("optimizer").loc["apollo-mini"]
    assert 0 < row["state GB (measured)"] < 1e-3
    assert row["total GB"] == pytest.approx(row["paper total GB"], abs=0.005)


def test_paper_comparison(frame, lean):
    table = memory.paper_comparison(frame, lean)
    assert list(table.index) == list(zip(frame["model"], frame["optimizer"]))
    assert list(table.columns) == ["paper total GB", "total GB", "total GiB",
                                   "total GB, no full-rank states", "total GiB, no full-rank states"]
    assert table.loc[("60M", "apollo-mini"), "total GB, no full-rank states"] < table.loc[("60M", "apollo-mini"), "total GB"]
    assert table.notna().all().all()


@pytest.mark.parametrize("paper", [True, False])
def test_plot_returns_a_figure(frame, paper):
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    matplotlib.use("Agg")
    fig = memory.plot_state_memory(frame, paper=paper)
    try:
        assert isinstance(fig, Figure)
        left, right = fig.axes[:2]
        assert len(left.patches) >= len(frame)      # one bar per row
        markers = [line for line in right.get_lines() if line.get_marker() == "D"]
        assert len(markers) == (len(frame) if paper else 0)
        assert left.get_yscale() == "log"
    finally:
        plt.close(fig)
