"""Memory: of the optimizer state (formula against measurement, beside the APOLLO paper's Table 2)
and of a whole training step (measured by category with torch's tracker, and planned for models
that do not fit here).

- :mod:`.state`: optimizer-state bytes of the papers' LLaMA sizes (``notebooks/02_memory.ipynb``).
- :mod:`.step`: :func:`measure_step`, the peak of one training step by category (parameters,
  gradients, optimizer state, activations, temporaries), on real or fake tensors.
- :mod:`.plan`: LLaMA steps planned under ``FakeTensorMode`` (7B, 13B), the largest batch that
  fits a card, and real steps measured on this machine (``notebooks/07_training_memory.ipynb``).
- ``python -m analysis.memory plan ...``, ``measure ...`` and ``demo`` (LLaMA-7B with INT8 weights
  and per-layer updates trained on this machine) (:mod:`.cli`).

Units: GB = 10⁹ bytes, GiB = 2³⁰ bytes.
"""
from .plan import DTYPES, PLAN_COLUMNS, WEIGHTS, Setting, build, llama_step, max_batch, measure, plan, row
from .state import (CONFIGS, FRAME_COLUMNS, GB, GIB, OPTIMIZERS, PAPER_TABLE2, full_rank_state_bytes, memory_frame,
                    paper_comparison, plot_state_memory)
from .step import CATEGORIES, default_dtype, max_resident_bytes, measure_step, train_step

__all__ = ["GB", "GIB", "CONFIGS", "FRAME_COLUMNS", "OPTIMIZERS", "PAPER_TABLE2", "full_rank_state_bytes", "memory_frame",
           "paper_comparison", "plot_state_memory", "CATEGORIES", "measure_step", "train_step",
           "max_resident_bytes", "default_dtype", "DTYPES", "WEIGHTS", "PLAN_COLUMNS", "Setting", "build",
           "llama_step",
           "row", "max_batch", "plan", "measure"]
