"""An optimizer zoo: momentum optimizers and their cautious twins behind one registry.

    import zoo
    zoo.names()                                   # every registered name
    opt = zoo.get("c-lion")(model.parameters(), lr=3e-4)    # zoo.get(name) is the class (CLion, a Lion)
    opt = zoo.create(model, "c-adamw", lr=1e-3, weight_decay=0.1)
    opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True)   # updates inside backward
    zoo.quantize_weights(model)                   # INT8 attention/MLP weights, stochastic rounding
    zoo.state_bytes(opt), zoo.aligned_fraction(opt), zoo.describe(opt)   # also through a client's wrapper

HF Trainer, accelerate and Lightning: :mod:`zoo.integrations` (imported on its own: ``import zoo``
never imports a training client).
"""
from . import optimizers  # noqa: F401  (registers the built-in optimizers)
from .caution import caution
from .factory import aligned_fraction, create, describe, param_groups
from .layerwise import layerwise
from .memory import expected_state_bytes, state_bytes
from .optimizers.base import unwrap
from .quantized import quantize_weights
from .registry import OptimizerInfo, UnknownOptimizerError, get, info, names, normalize, register
from .sharding import index_parameters

__all__ = ["names", "get", "info", "create", "register", "state_bytes", "expected_state_bytes",
           "aligned_fraction", "unwrap", "caution", "param_groups", "describe", "layerwise", "quantize_weights",
           "index_parameters", "OptimizerInfo", "UnknownOptimizerError", "normalize"]
