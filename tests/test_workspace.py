"""The eager steps' workspace (``zoo.optimizers.blocks.workspace`` / ``into``): the temporaries of
every tensor's step come from one buffer per purpose for the whole optimizer step, with the same
values as fresh tensors, and nothing is held once the step is done."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import zoo
from zoo.optimizers import blocks

MATRIX_TEMPORARIES = {
    "adafactor": "its factored second moment is rebuilt per tensor by an outer product",
    "apollo": "the projected gradient and its scaling are matrix products per tensor",
    "apollo-svd": "the projected gradient and its scaling are matrix products per tensor",
    "galore": "the projected gradient and the update's projection back are matrix products",
    "fira": "the projected gradient and the update's projection back are matrix products",
    "muon": "Newton-Schulz iterations are matrix products",
    "soap": "the rotations into and out of the eigenbases are matrix products",
}
"""Names (and their cautious twins) whose steps make per-tensor results of matrix products; the
workspace serves elementwise temporaries only."""


class FreshResults(TorchDispatchMode):
    """Counts results of at least ``numel`` values written into new memory (not into an input)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        self.count += sum(isinstance(t, torch.Tensor) and t.numel() >= self.numel
                          and t.untyped_storage().data_ptr() not in inputs for t in tree_flatten(out)[0])
        return out


def fresh_per_step(name: str, tensors: int) -> int:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 128)) for _ in range(tensors)]
    opt = zoo.get(name)(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()   # the states are made
    with FreshResults(64 * 128) as mode:
        opt.step()
    return mode.count


def test_into_hands_out_views_of_one_buffer_per_purpose():
    a, b = torch.zeros(64, 32), torch.zeros(16, 8)
    assert blocks.into(a, "denom") == {}   # no workspace: a fresh result
    with blocks.workspace():
        out_a, out_b = blocks.into(a, "denom")["out"], blocks.into(b, "denom")["out"]
        assert out_a.shape == a.shape and out_b.shape == b.shape and out_b.is_contiguous()
        assert out_b.data_ptr() == out_a.data_ptr()
        assert blocks.into(b, "mask")["out"].data_ptr() != out_a.data_ptr()
        assert blocks.into(a.t(), "denom") == {}   # not contiguous
        assert blocks.into(b, "denom", torch.zeros(16, 8, dtype=torch.float64)) == {}   # another dtype
        assert blocks.into(b, "denom", torch.zeros(8)) == {}   # a broadcast operand
        assert blocks.into(torch.nn.Parameter(b), "denom") == {}   # a subclass
        with blocks.workspace():   # nested: the open one
            assert blocks.into(b, "denom")["out"].data_ptr() == out_a.data_ptr()
        larger = blocks.into(torch.zeros(128, 64), "denom")["out"]
        assert larger.numel() == 128 * 64
    assert blocks.into(a, "denom") == {} and blocks._WORKSPACE.get() is None


@pytest.mark.parametrize("name", zoo.names())
def test_an_eager_step_makes_its_elementwise_temporaries_once_not_per_tensor(name):
    """The count of new tensor-size results in one step is the same for 2 and 4 parameters
    (the workspace's buffers, one per purpose), or, for the names whose steps multiply matrices,
    grows with them (so this list of exceptions stays true)."""
    two, four = fresh_per_step(name, 2), fresh_per_step(name, 4)
    if zoo.info(name).base in MATRIX_TEMPORARIES or name in MATRIX_TEMPORARIES:
        assert four > two
    else:
        assert four == two, f"{name}: {two} new tensor-size results with 2 parameters, {four} with 4"


@pytest.mark.parametrize("name", zoo.names())
def test_the_workspace_gives_the_values_of_fresh_temporaries(name, monkeypatch):
    torch.manual_seed(0)
    shapes = [(64, 128), (32, 16), (128, 64)]   # the workspace grows and is reused
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(4)]

    def run():
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = zoo.get(name)(params, lr=1e-2)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        return params

    reused = run()
    monkeypatch.setattr(blocks, "workspace", contextlib.nullcontext)
    fresh = run()
    for a, b in zip(reused, fresh):
        assert torch.equal(a, b)


def test_a_low_precision_norm_is_taken_in_float32_without_a_float32_copy():
    """float_norm (APOLLO's norm of the gradient, the per-layer clipping norm): the largest
    allocation is one chunk's float32 values, not the tensor's, and the norm is no further from the
    float64 one than the single float32 reduction's (3e-5 and 6e-5 here)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    x = torch.randn(3 * blocks.NORM_CHUNK + 5, dtype=torch.bfloat16)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        norm = blocks.float_norm(x)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= 4 * blocks.NORM_CHUNK < 2 * x.numel()
    assert norm.dtype == torch.float32
    exact = x.double().norm().item()
    single = torch.linalg.vector_norm(x, dtype=torch.float32).item()
    assert abs(norm.item() - exact) <= abs(single - exact)
    small = torch.randn(100, dtype=torch.bfloat16)   # one call, as before
    assert torch.equal(blocks.float_norm(small), torch.linalg.vector_norm(small, dtype=torch.float32))


@pytest.mark.parametrize("method", ["add_", "addcmul_", "addcdiv_"])
def test_a_float32_tensor_updated_by_bfloat16_operands_in_chunks_takes_the_mixed_kernel_values(method):
    """The blocks' in-place updates of a float32 tensor (the working copy of a bf16 weight rounded
    stochastically, or of an INT8 weight) by bfloat16 operands go by chunks converted to float32:
    equal to torch's mixed-dtype kernel, to the bit, also with a 0-d multiplier."""
    torch.manual_seed(0)
    n = 2 * blocks.MIXED_CHUNK + 3
    x = torch.randn(n)
    a = torch.randn(n, dtype=torch.bfloat16)
    b = torch.rand(n, dtype=torch.bfloat16).add_(0.5)
    fn = {"add_": lambda t: blocks.add_(t, a, -0.3),
          "addcmul_": lambda t: blocks.addcmul_(t, a, torch.tensor(0.7), -0.3),
          "addcdiv_": lambda t: blocks.addcdiv_(t, a, b, -0.3)}[method]
    direct = {"add_": lambda t: t.add_(a, alpha=-0.3),
              "addcmul_": lambda t: t.addcmul_(a, torch.tensor(0.7), value=-0.3),
              "addcdiv_": lambda t: t.addcdiv_(a, b, value=-0.3)}[method]
    assert torch.equal(fn(x.clone()), direct(x.clone()))
