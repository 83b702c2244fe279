"""An optimizer zoo: momentum optimizers and their cautious twins behind one registry.

    import zoo
    zoo.names()                                   # every registered name
    opt = zoo.get("c-lion")(model.parameters(), lr=3e-4)
    opt = zoo.create(model, "c-adamw", lr=1e-3, weight_decay=0.1)
    opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True)   # updates inside backward
    zoo.quantize_weights(model)                   # INT8 attention/MLP weights, stochastic rounding
"""
from . import optimizers  # noqa: F401  (registers the built-in optimizers)
from .caution import caution
from .factory import create, describe, param_groups
from .layerwise import layerwise
from .memory import expected_state_bytes, state_bytes
from .quantized import quantize_weights
from .registry import OptimizerInfo, UnknownOptimizerError, get, info, names, normalize, register
from .sharding import index_parameters

__all__ = ["names", "get", "info", "create", "register", "state_bytes", "expected_state_bytes",
           "caution", "param_groups", "describe", "layerwise", "quantize_weights", "index_parameters",
           "OptimizerInfo", "UnknownOptimizerError", "normalize"]
