"""The built-in optimizers, one small file per family, and their registry records."""
from __future__ import annotations

from ..registry import register
from .adafactor import Adafactor
from .adam import Adam, AdamW, NAdamW
from .adopt import ADOPT
from .base import ZooOptimizer
from .laprop import LaProp
from .lion import Lion, Signum
from .muon import Muon
from .sgd import SGD

__all__ = ["ZooOptimizer", "SGD", "Adam", "AdamW", "NAdamW", "Lion", "Signum", "Adafactor", "LaProp",
           "ADOPT", "Muon"]

# name, class, family, fixed arguments, extra defaults of the cautious twin, state per tensor, reference
_BUILTINS = [
    ("sgdm", SGD, "sgd", {}, {}, "numel (momentum buffer)",
     "Polyak 1964 heavy ball; torch.optim.SGD(momentum=0.9)"),
    ("nesterov", SGD, "sgd", {"nesterov": True}, {}, "numel (momentum buffer)",
     "Sutskever et al. 2013; torch.optim.SGD(momentum=0.9, nesterov=True)"),
    ("adam", Adam, "adam", {}, {}, "2 numel (m, v)", "Kingma & Ba 2015; torch.optim.Adam"),
    ("adamw", AdamW, "adam", {}, {}, "2 numel (m, v)", "Loshchilov & Hutter 2019; torch.optim.AdamW"),
    ("nadamw", NAdamW, "nadam", {}, {}, "2 numel (m, v)",
     "Dozat 2016; torch.optim.NAdam(decoupled_weight_decay=True)"),
    ("lion", Lion, "lion", {}, {}, "numel (m)", "Chen et al. 2023, Symbolic Discovery of Optimization Algorithms"),
    ("signum", Signum, "signum", {}, {}, "numel (m)", "Bernstein et al. 2018, signSGD"),
    ("adafactor", Adafactor, "adafactor", {}, {"beta1": 0.9},
     "rows + cols per matrix, numel per vector (+ numel with beta1)",
     "Shazeer & Stern 2018; torch.optim.Adafactor"),
    ("laprop", LaProp, "laprop", {}, {}, "2 numel (m, v)", "Ziyin et al. 2020, LaProp"),
    ("adopt", ADOPT, "adopt", {}, {}, "2 numel (m, v)", "Taniguchi et al. 2024, ADOPT"),
    ("muon", Muon, "muon", {}, {}, "numel per matrix (momentum), 2 numel per AdamW tensor",
     "Jordan et al. 2024; torch.optim.Muon"),
]

for _name, _cls, _family, _fixed, _twin_defaults, _formula, _ref in _BUILTINS:
    register(_cls, _name, family=_family, fixed=_fixed, state_formula=_formula, reference=_ref)
    register(_cls, f"c-{_name}", family=_family, fixed={**_fixed, "caution": True},
             defaults=_twin_defaults, state_formula=_formula, base=_name,
             reference=f"Liang et al. 2024, Cautious Optimizers (arXiv 2411.16085), over {_name}")
