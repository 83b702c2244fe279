"""Run by tests/test_fsdp.py under ``torch.distributed.run`` with 2 gloo processes: every
registered optimizer on parameters sharded by FSDP2 (``fully_shard``), against the same
optimizer on the unsharded model in one process, on the same global batch.

The model's weights cover the cases of the sharded-parameter issue: (24, 16) is sharded by rows,
the axis APOLLO keeps; (9, 24) by rows too, the axis it compresses, and unevenly (5 and 4 rows);
the biases are 1-D. float64 throughout; Muon's Newton-Schulz in float64 too (in its default
bfloat16 the sharded matmuls round differently from the whole ones). Rank 0 writes, per name,
the largest weight difference and both aligned fractions of every step to ``argv[1]`` (JSON); the
names to run may follow (default: all).
"""
import copy
import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import zoo

STEPS = 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 9))

    def forward(self, x):
        return self.mlp(x)


def build(name: str, model: nn.Module):
    record = zoo.info(name)
    options = {"lr": 1e-2}
    if record.low_rank and "rank" not in record.fixed:
        options["rank"] = 2
    if "use_muon" in record.defaults:
        options["ns_dtype"] = torch.float64
    return zoo.get(name)(model.parameters(), **options)


def train(model: nn.Module, optimizer, x, y, cautious: bool) -> list[float]:
    fractions = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
        if cautious:
            fractions.append(optimizer.aligned_fraction())
    return fractions


def main(out: str, names: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.set_default_dtype(torch.float64)
    results = {}
    for name in names or zoo.names():
        cautious = zoo.info(name).cautious
        torch.manual_seed(0)
        x, y = torch.randn(32, 16), torch.randn(32, 9)   # the same global batch on both ranks
        reference = Net()
        sharded = copy.deepcopy(reference)
        for layer in (sharded.mlp[0], sharded.mlp[2], sharded):
            fully_shard(layer, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in sharded.parameters())
        fractions = train(sharded, build(name, sharded), x, y, cautious)
        full = [p.full_tensor() for p in sharded.parameters()]
        if rank == 0:
            initial = [p.detach().clone() for p in reference.parameters()]
            expected = train(reference, build(name, reference), x, y, cautious)
            results[name] = {"difference": max((a - b).abs().max().item()
                                               for a, b in zip(full, reference.parameters())),
                             "moved": max((a - b).abs().max().item() for a, b in zip(full, initial)),
                             "fractions": fractions, "expected_fractions": expected}
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(results, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
