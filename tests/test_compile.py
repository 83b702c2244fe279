"""compile=True: every registered optimizer's per-tensor step through torch.compile equals the eager
step to float round-off, never recompiles as steps advance or the learning rate changes, fuses
caution for every normalisation, and exchanges state dicts with the eager optimizer."""
import math

import pytest
import torch
from torch._dynamo.utils import counters

import zoo

SHAPES = [((16, 24), torch.float32), ((24,), torch.float32), ((12, 20), torch.float64), ((), torch.float64)]
STEPS = 50


def parameters(shapes=SHAPES) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape, dtype in shapes]


def options(name: str, **more) -> dict:
    record = zoo.info(name)
    extra = {"rank": 2} if record.low_rank and "rank" not in record.fixed else {}
    if record.low_rank:
        extra["update_proj_gap"] = 7   # projections refresh during the run
    if "use_muon" in record.defaults:
        extra["ns_dtype"] = torch.float64   # bfloat16 Newton-Schulz would round compiled and eager apart
    if name == "adafactor" or name == "c-adafactor":
        extra["beta1"] = 0.9
    return {"lr": 1e-2, **extra, **more}


def run(params, optimizer, steps: int, start: int = 0, graphs_at: int | None = None):
    """``steps`` steps with seeded gradients (step ``start`` on) and a learning rate that changes
    every step; returns the number of compiled graphs after step ``graphs_at``."""
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + 0.1 * (s + start)))
    graphs = None
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()
        schedule.step()
        if step == graphs_at:
            graphs = counters["stats"]["unique_graphs"]
    return graphs


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", zoo.names())
def test_compiled_equals_eager_and_never_recompiles(name):
    """50 steps of float32 and float64 tensors (a matrix of each, a vector, a 0-d tensor): within
    1e-5 relative in float32 and 1e-10 in float64, and no graph compiled after the third step."""
    eager, compiled = parameters(), parameters()
    reference = zoo.get(name)(eager, **options(name))
    optimizer = zoo.get(name)(compiled, **options(name), compile=True)
    counters.clear()
    graphs = run(compiled, optimizer, STEPS, graphs_at=2)
    run(eager, reference, STEPS)
    assert counters["stats"]["unique_graphs"] == graphs > 0   # compiled, and nothing more after step 3
    assert optimizer.compile is True
    for a, b, start in zip(compiled, eager, parameters()):
        assert relative(a, b) <= (1e-5 if a.dtype == torch.float32 else 1e-10), (a.dtype, relative(a, b))
        assert relative(a, start) > 1e-3   # the step moved the weights, so equality means something
    if zoo.info(name).cautious:
        assert optimizer.aligned_fraction() == pytest.approx(reference.aligned_fraction(), abs=1e-6)


def test_mixed_shapes_compile_a_bounded_number_of_graphs():
    """Eight matrix shapes and three vector shapes: one graph per number of dimensions for the
    first size, one more once sizes vary (dynamic), not one per shape."""
    shapes = [((n, n + 3), torch.float32) for n in range(4, 12)] + [((n,), torch.float32) for n in (5, 7, 9)]
    params = parameters(shapes)
    optimizer = zoo.get("c-adamw")(params, lr=1e-3, compile=True)
    counters.clear()
    run(params, optimizer, 3)
    assert counters["stats"]["unique_graphs"] <= 4


@pytest.mark.parametrize("norm", ["mean", "paper", 0.5, lambda u, g: (u * g > 0).to(u.dtype) * 2.0])
def test_every_caution_normalisation_compiles_into_the_step(norm):
    eager, compiled = parameters(), parameters()
    reference = zoo.get("c-adamw")(eager, lr=1e-2, caution_norm=norm)
    optimizer = zoo.get("c-adamw")(compiled, lr=1e-2, caution_norm=norm, compile=True)
    run(compiled, optimizer, 10)
    run(eager, reference, 10)
    for a, b in zip(compiled, eager):
        assert relative(a, b) <= (1e-5 if a.dtype == torch.float32 else 1e-10)
    assert optimizer.aligned_fraction() == pytest.approx(reference.aligned_fraction(), abs=1e-6)


def untraceable(update, grad):
    """A mask dynamo cannot put in a graph (a NumPy round trip)."""
    return torch.from_numpy((update * grad > 0).numpy().astype(update.numpy().dtype))


def test_a_mask_that_cannot_be_compiled_is_an_error_unless_auto():
    with pytest.raises(RuntimeError, match="could not be compiled.*compile='auto'"):
        opt = zoo.get("c-sgdm")(parameters(), lr=1e-2, caution_norm=untraceable, compile=True)
        run(opt.param_groups[0]["params"], opt, 1)
    eager, fallback = parameters(), parameters()
    reference = zoo.get("c-sgdm")(eager, lr=1e-2, caution_norm=untraceable)
    optimizer = zoo.get("c-sgdm")(fallback, lr=1e-2, caution_norm=untraceable, compile="auto")
    with pytest.warns(UserWarning, match="compile='auto'.*could not be compiled.*eagerly"):
        run(fallback, optimizer, 3)
    run(eager, reference, 3)
    assert optimizer.compile is False
    for a, b in zip(fallback, eager):
        assert torch.equal(a, b)   # eager from the first step on: no tensor was updated by a half step


@pytest.mark.parametrize("name", ["c-adamw", "apollo-mini", "c-muon", "adopt"])
def test_state_dicts_pass_between_compiled_and_eager(name):
    """A compiled optimizer's state loads into an eager one and the reverse; both continue as the
    uninterrupted compiled run, to round-off."""
    straight, there, back = parameters(), parameters(), parameters()
    uninterrupted = zoo.get(name)(straight, **options(name), compile=True)
    run(straight, uninterrupted, 8)
    first = zoo.get(name)(there, **options(name), compile=True)
    run(there, first, 4)
    eager = zoo.get(name)(back, **options(name))
    with torch.no_grad():
        for p, q in zip(back, there):
            p.copy_(q)
    eager.load_state_dict(first.state_dict())
    assert "compile" not in eager.state_dict()["param_groups"][0]
    run(back, eager, 2, start=4)
    again = zoo.get(name)(there, **options(name), compile=True)
    again.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for p, q in zip(there, back):
            p.copy_(q)
    run(there, again, 2, start=6)
    for a, b in zip(there, straight):
        assert relative(a, b) <= (1e-5 if a.dtype == torch.float32 else 1e-10)


def test_bad_compile_settings_are_refused():
    with pytest.raises(ValueError, match="Invalid compile: 'yes'; allowed False, True, 'auto'"):
        zoo.get("adamw")(parameters(), compile="yes")
    with pytest.raises(ValueError, match="Invalid fused: compile compiles the per-tensor step"):
        zoo.get("adamw")(parameters(), fused=True, compile=True)
    with pytest.raises(ValueError, match="Invalid foreach: compile"):
        zoo.get("lion")(parameters(), foreach=True, compile=True)


def test_create_and_per_layer_updates_take_compile():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    reference.load_state_dict(model.state_dict())
    optimizer = zoo.create(model, "c-adamw", lr=1e-2, compile=True, layerwise=True)
    eager = zoo.create(reference, "c-adamw", lr=1e-2)
    x = torch.randn(32, 8)
    for _ in range(5):
        for net, opt in ((model, optimizer), (reference, eager)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert optimizer.compile is True and math.isfinite(optimizer.aligned_fraction())
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_dispatch_mode_is_refused_by_compile_and_run_eagerly_by_auto():
    """torch.compile cannot run under a TorchDispatchMode (a memory tracker, for instance)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    strict = zoo.get("adamw")(parameters(), lr=1e-2, compile=True)
    with Passing(), pytest.raises(RuntimeError, match="TorchDispatchMode \\(Passing"):
        run(strict.param_groups[0]["params"], strict, 1)
    eager, fallback = parameters(), parameters()
    reference = zoo.get("adamw")(eager, lr=1e-2)
    optimizer = zoo.get("adamw")(fallback, lr=1e-2, compile="auto")
    with Passing(), pytest.warns(UserWarning, match="TorchDispatchMode"):
        run(fallback, optimizer, 2)
    run(eager, reference, 2)
    assert all(torch.equal(a, b) for a, b in zip(fallback, eager))
