"""Which precision is fast on this machine, measured, and the host's CPU by name.

CPUs differ by an order of magnitude and more in bf16: with AMX (Intel Sapphire Rapids and later)
bf16 matrix products run about 6x faster than fp32, with AVX-512 BF16 (AMD Zen 4) about 2x, and
on a CPU with AVX2 only about 10x slower, and the layout ``g @ W`` with ``W`` contiguous (a linear
layer's input gradient) hundreds of times slower. So nothing here assumes: :func:`matmul_seconds`
times the three layouts of a linear layer's step (forward ``x @ W.T``, input gradient ``g @ W``,
weight gradient ``g.T @ x``) on a 128 x 512 x 512 product in each precision, once per process, and
the rest is decided from it.

- :func:`speedup`: how many times faster bf16 is than fp32 on the slowest of the three layouts;
- :func:`resolve`: the precision a command runs in for ``--dtype auto`` (bf16 on CUDA; on the CPU
  bf16 where it is faster than fp32 by :data:`MARGIN` at least, so that a machine near parity does
  not flip between runs, else fp32), and a warning, once, with the measured ratio, when bf16 is
  asked for where it is slower;
- :func:`slow_input_gradient`: whether ``g @ W`` is slow in a precision (the INT8 linear then
  computes its input gradient as ``g @ (W.T).T``, from a contiguous transposed copy);
- :func:`host`: the line every benchmark and demo report starts with.
"""
from __future__ import annotations

import functools
import platform
import time
import warnings

import torch
import torch.nn.functional as F

__all__ = ["cpu_features", "cpu_name", "matmul_seconds", "speedup", "resolve", "slow_input_gradient", "host",
           "DTYPES"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROBE = (128, 512, 512)   # rows, inputs, outputs: 67 MFLOP a product
MARGIN = 1.25
"""How much faster than fp32 bf16 must measure for ``--dtype auto`` to choose it on the CPU."""
LAYOUTS = ("x @ W.T", "g @ W", "g.T @ x")


def cpu_features() -> list[str]:
    """The matrix and vector extensions torch reports for this CPU, strongest first: ``AMX``,
    ``AVX512-BF16``, ``AVX512``, ``AVX2`` (empty where it reports none)."""
    checks = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"),
              ("AVX512", "_is_avx512_supported"), ("AVX2", "_is_avx2_supported"))
    return [name for name, check in checks if getattr(torch.cpu, check, lambda: False)()]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), or what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def matmul_seconds(dtype: torch.dtype, device: str = "cpu") -> dict[str, float]:
    """Seconds of one :data:`PROBE` product in each of :data:`LAYOUTS`, in ``dtype`` on ``device``
    (the best of three after a warm-up; measured once per process)."""
    rows, inputs, outputs = PROBE
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.randn(shape, generator=gen).to(device, dtype)
               for shape in ((rows, inputs), (outputs, inputs), (rows, outputs)))
    products = {"x @ W.T": lambda: F.linear(x, w), "g @ W": lambda: g @ w, "g.T @ x": lambda: g.t() @ x}
    seconds = {}
    for layout, product in products.items():
        product()
        best = float("inf")
        for _ in range(3):
            if device != "cpu":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            product()
            if device != "cpu":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        seconds[layout] = best
    return seconds


def speedup(dtype: torch.dtype = torch.bfloat16, device: str = "cpu") -> float:
    """fp32's time over ``dtype``'s, on the layout where ``dtype`` does worst (above 1: faster)."""
    fast, slow = matmul_seconds(torch.float32, device), matmul_seconds(dtype, device)
    return min(fast[layout] / slow[layout] for layout in LAYOUTS)


def slow_input_gradient(dtype: torch.dtype, device: str = "cpu") -> bool:
    """Whether ``g @ W`` (``W`` contiguous) takes over twice the time of ``x @ W.T`` in ``dtype``
    on ``device``: then a transposed copy of ``W`` and ``F.linear`` are faster (AVX2-only CPUs in
    bf16, where it is hundreds of times slower)."""
    if torch.device(device).type != "cpu" or not dtype.is_floating_point:
        return False
    seconds = matmul_seconds(dtype, "cpu")
    return seconds["g @ W"] > 2 * seconds["x @ W.T"]


_WARNED: set = set()


def resolve(dtype: str, device: str = "cpu") -> str:
    """The precision (``"fp32"`` or ``"bf16"``) a run asked for ``dtype`` (``"auto"``, ``"fp32"``,
    ``"bf16"``) computes in on ``device``: ``auto`` is bf16 on CUDA, and on the CPU bf16 where
    :func:`speedup` measures it faster than fp32 by :data:`MARGIN`, else fp32. An explicit ``bf16`` on a CPU where it is
    slower runs as asked, with a warning (once) that names the measured ratio."""
    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"Invalid dtype: {dtype!r}; allowed 'auto', {', '.join(map(repr, DTYPES))}")
    device = torch.device(device).type
    if device != "cpu":
        return "bf16" if dtype == "auto" else dtype
    if dtype == "auto":
        return "bf16" if speedup() >= MARGIN else "fp32"
    if dtype == "bf16" and speedup() < 1 and device not in _WARNED:
        _WARNED.add(device)
        warnings.warn(f"bf16 is {1 / speedup():.1f}x slower than fp32 on this CPU ({host()}); --dtype auto would "
                      "run in fp32", stacklevel=2)
    return dtype


def host() -> str:
    """One line naming the machine: CPU, the extensions torch reports, bf16's measured speed against
    fp32 and torch's threads."""
    features = ", ".join(cpu_features()) or torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_name()} ({features}); bf16 matmuls {speedup():.1f}x fp32's speed; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
