"""Measured optimizer state equals each optimizer's analytical formula (PAPERS.md §B.2)."""
import pytest
import torch

import zoo
from zoo.memory import LLAMA_CONFIGS, llama_shapes, state_table


def small_model(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    shapes = [(24, 8), (6, 20), (8,), (2, 3, 4)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", zoo.names())
def test_measured_state_equals_the_formula(name, dtype):
    params = small_model(dtype)
    groups = params
    if zoo.info(name).low_rank:
        rank = {} if "rank" in zoo.info(name).fixed else {"rank": 3}
        groups = [{"params": params[:2], **rank}, {"params": params[2:], "rank": None}]
    opt = zoo.get(name)(groups)
    for _ in range(3):
        opt.zero_grad()
        sum((p.float() ** 2).sum() for p in params).backward()
        opt.step()
    assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt) > 0


def test_apollo_state_matches_table_1():
    """Elements per m x n weight (n the kept dimension): APOLLO 2nr + 2, APOLLO-Mini 2n + 2,
    GaLore 2nr + mr, Fira 2nr + mr + 1, AdamW 2mn; fp32 values, int64 seed."""
    w = torch.zeros(40, 10, requires_grad=True)
    w.grad = torch.randn(40, 10)
    n, m, r = 40, 10, 4
    expected = {"apollo": 2 * n * r * 4 + 4 + 8, "apollo-mini": 2 * n * 4 + 4 + 8,
                "galore": (2 * n * r + m * r) * 4, "fira": (2 * n * r + m * r) * 4 + 4,
                "adamw": 2 * m * n * 4}
    for name, nbytes in expected.items():
        opt = zoo.get(name)([w], **({"rank": r} if name in ("apollo", "galore", "fira") else {}))
        opt.step()
        assert zoo.state_bytes(opt) == nbytes, name


def test_llama_shapes_have_the_papers_sizes():
    for config, millions in [("60M", 58), ("130M", 134), ("350M", 368), ("1B", 1339)]:
        total = sum(torch.Size(s).numel() for s in llama_shapes(config).values())
        assert round(total / 1e6) == millions
    assert set(LLAMA_CONFIGS) >= {"60M", "130M", "350M", "1B"}


def test_state_table_on_meta_costs_no_memory_and_agrees():
    rows = state_table(configs=("60M",))
    by_name = {row["optimizer"]: row for row in rows}
    assert all(row["state_bytes_formula"] == row["state_bytes_measured"] for row in rows)
    assert by_name["adamw"]["state_bytes_measured"] == 2 * by_name["adamw"]["weight_bytes"]
    assert (by_name["apollo-mini"]["state_bytes_measured"] < by_name["apollo"]["state_bytes_measured"]
            < by_name["galore"]["state_bytes_measured"] < by_name["adamw"]["state_bytes_measured"])


def test_state_bytes_counts_shared_storage_once():
    p = torch.zeros(10, requires_grad=True)
    opt = zoo.get("adamw")([p])
    p.grad = torch.ones(10)
    opt.step()
    opt.state[p]["alias"] = opt.state[p]["exp_avg"][:5]
    assert zoo.state_bytes(opt) == 2 * 10 * 4
