"""Run by tests/test_fsdp.py under ``torch.distributed.run`` with 2 gloo processes: every
registered optimizer on parameters sharded by FSDP2 (``fully_shard``), against the same
optimizer on the unsharded model in one process, on the same global batch.

Then, per name, a checkpoint through ``torch.distributed.checkpoint`` after 2 steps (model and
optimizer state from ``get_state_dict``), 2 more steps, and a fresh sharded model and optimizer
that load it (``set_state_dict``) and take the same 2 steps: the largest difference to the
uninterrupted run (low-rank names refresh their projection every 2 steps, so the resumed run
advances APOLLO's seeds, and the limiter norms and step counters carry over).

The model's weights cover the cases of the sharded-parameter issue: (24, 16) is sharded by rows,
the axis APOLLO keeps; (9, 24) by rows too, the axis it compresses, and unevenly (5 and 4 rows);
the biases are 1-D. float64 throughout (Muon's Newton-Schulz in its default bfloat16). The
low-rank names refresh their projections at steps 1 and 3. Rank 0 writes, per name, the largest
weight difference, both aligned fractions of every step, the collectives of every step
(CommDebugMode) and each rank's number of SVDs to ``argv[1]`` (JSON); the names to run may
follow (default: all).
"""
import contextlib
import copy
import json
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.debug import CommDebugMode

import zoo
from zoo.optimizers import lowrank

STEPS = 4


LOW_BIT = ("adamw", "c-adamw", "lion", "sgdm", "adan", "soap")   # ZeRO with state_bits=8


class Net(nn.Module):
    def __init__(self, hidden: int = 24):   # 256: a first weight of 4,096 values, kept in 8 bits
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 9))

    def forward(self, x):
        return self.mlp(x)


@contextlib.contextmanager
def counting_svds(calls: list):
    """Record every SVD projection the low-rank optimizers take on this rank."""
    original = lowrank.top_singular
    lowrank.top_singular = lambda *args: calls.append(1) or original(*args)
    try:
        yield
    finally:
        lowrank.top_singular = original


def all_ranks(value) -> list:
    """``value`` of every rank, in rank order."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def settings(name: str, **more) -> dict:
    record = zoo.info(name)
    options = {"lr": 1e-2, **more}
    if record.low_rank and "rank" not in record.fixed:
        options["rank"] = 2
    return options


def build(name: str, model: nn.Module, **more):
    return zoo.get(name)(model.parameters(), **settings(name, **more))


def train(model: nn.Module, optimizer, x, y, cautious: bool, steps: int = STEPS, comms: list | None = None):
    """``steps`` steps; returns the aligned fraction after each (cautious names). ``comms`` gets,
    per step, the collectives of ``optimizer.step()`` counted by CommDebugMode."""
    fractions = []
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        with CommDebugMode() as comm:
            optimizer.step()
        if comms is not None:
            comms.append({str(op).split(".")[-1].rstrip("_"): n for op, n in comm.get_comm_counts().items()})
        if cautious:
            fractions.append(optimizer.aligned_fraction())
    return fractions


def resume_difference(name: str, mesh, path: Path, load_optimizer: bool = True) -> float:
    """Largest difference between 4 steps and 2 steps, a DCP checkpoint, a fresh start, 2 steps
    (``load_optimizer=False``: the fresh optimizer starts from scratch, a control)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.randn(32, 9)
    initial = Net()
    more = {"update_proj_gap": 2} if zoo.info(name).low_rank else {}

    def sharded():
        model = copy.deepcopy(initial)
        for layer in (model.mlp[0], model.mlp[2], model):
            fully_shard(layer, mesh=mesh)
        return model, build(name, model, **more)

    model, optimizer = sharded()
    train(model, optimizer, x, y, False, steps=2)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(path))
    train(model, optimizer, x, y, False, steps=2)
    fresh, fresh_optimizer = sharded()
    if load_optimizer:
        model_state, optimizer_state = get_state_dict(fresh, fresh_optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(fresh, fresh_optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:   # get_state_dict would give the fresh optimizer a state that dcp.load fills in place
        state = {"model": get_model_state_dict(fresh)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(fresh, state["model"])
    train(fresh, fresh_optimizer, x, y, False, steps=2)
    return max((a.full_tensor() - b.full_tensor()).abs().max().item()
               for a, b in zip(model.parameters(), fresh.parameters()))


def largest_difference(states: dict, expected: dict) -> float:
    """The largest difference between two optimizers' ``state_dict()["state"]`` (inf where their
    parameters, keys or non-tensor values differ)."""
    if states.keys() != expected.keys():
        return math.inf
    worst = 0.0
    for index, state in states.items():
        if state.keys() != expected[index].keys():
            return math.inf
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                worst = max(worst, (value.double() - expected[index][key].double()).abs().max().item())
            elif value != expected[index][key]:
                return math.inf
    return worst


def zero(name: str, indexed: bool = True, **more) -> dict:
    """ZeRO-1: ``ZeroRedundancyOptimizer`` with ``optimizer_class=zoo.get(name)`` under DDP, every
    rank on the same global batch (so DDP's mean gradient is the one-process gradient exactly),
    against one process; then the state consolidated on rank 0, loaded into a one-process
    optimizer, against the one-process state. ``indexed=False`` skips ``zoo.index_parameters``;
    ``more`` are settings of both optimizers (``state_bits=8``: on a wider net)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 16), torch.randn(32, 9)
    reference = Net(256 if more else 24)
    model = copy.deepcopy(reference)
    if indexed:
        zoo.index_parameters(model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=zoo.get(name),
                                            **settings(name, **more))
        train(DistributedDataParallel(model), optimizer, x, y, False)
    optimizer.consolidate_state_dict(to=0)
    if dist.get_rank() != 0:
        return {}
    state = optimizer.state_dict()
    expected = build(name, reference, **more)
    train(reference, expected, x, y, False)
    loaded = zoo.get(name)(copy.deepcopy(reference).parameters(), **settings(name, **more))
    loaded.load_state_dict(state)
    return {"difference": max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters())),
            "state_difference": largest_difference(loaded.state_dict()["state"], expected.state_dict()["state"]),
            "warned": any("zoo.index_parameters" in str(w.message) for w in caught),
            "quantized": sum(v.dtype == torch.uint8 for s in state["state"].values() for v in s.values()
                             if isinstance(v, torch.Tensor))}


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
        if name in LOW_BIT:
            try:
                build(name, sharded, state_bits=8)
                results.setdefault("refused", {})[name] = ""
            except ValueError as error:
                results.setdefault("refused", {})[name] = str(error)
        more = {"update_proj_gap": 2} if zoo.info(name).low_rank else {}   # refreshes at steps 1 and 3
        comms, svds = [], []
        with counting_svds(svds):
            fractions = train(sharded, build(name, sharded, **more), x, y, cautious, comms=comms)
        full = [p.full_tensor() for p in sharded.parameters()]
        results[name] = {"collectives": comms, "svds": all_ranks(len(svds))}
        if rank == 0:
            initial = [p.detach().clone() for p in reference.parameters()]
            expected = train(reference, build(name, reference, **more), x, y, cautious)
            results[name] |= {"difference": max((a - b).abs().max().item()
                                               for a, b in zip(full, reference.parameters())),
                             "moved": max((a - b).abs().max().item() for a, b in zip(full, initial)),
                             "fractions": fractions, "expected_fractions": expected}
    for name in names or zoo.names():
        results[name]["zero"] = zero(name)
        if name in LOW_BIT:
            results[name]["zero_8bit"] = zero(name, state_bits=8)
    if "apollo" in results:
        results["apollo"]["zero_unindexed"] = zero("apollo", indexed=False)
    for name in names or zoo.names():
        path = Path(out).parent / "checkpoints" / name
        results[name]["resumed"] = resume_difference(name, mesh, path)
        results[name]["without_optimizer_state"] = resume_difference(name, mesh, path, load_optimizer=False)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(results, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
