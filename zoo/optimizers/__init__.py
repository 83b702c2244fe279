"""The built-in optimizers, one small file per family, and their registry records."""
from __future__ import annotations

from ..registry import register
from .adafactor import Adafactor
from .adam import Adam, AdamW, NAdamW
from .adopt import ADOPT
from .base import ZooOptimizer
from .laprop import LaProp
from .lion import Lion, Signum
from .lowrank import Apollo, Fira, GaLore
from .muon import Muon
from .sgd import SGD

__all__ = ["ZooOptimizer", "SGD", "Adam", "AdamW", "NAdamW", "Lion", "Signum", "Adafactor", "LaProp",
           "ADOPT", "Muon", "Apollo", "GaLore", "Fira"]

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

# the low-rank family (PAPERS.md §B): name, class, fixed arguments, defaults, state per m x n weight
# (k = max(m, n) kept, c = min(m, n) compressed), reference, whether it has a cautious twin
_LOW_RANK = [
    ("apollo", Apollo, {}, {}, "2kr + 2 (M, V; seed, limiter norm)", "Zhu et al. 2025, APOLLO", False),
    ("apollo-mini", Apollo, {"rank": 1, "scale_type": "tensor"}, {"scale": 128.0},
     "2k + 2 (M, V; seed, limiter norm)", "Zhu et al. 2025, APOLLO-Mini", False),
    ("apollo-svd", Apollo, {"proj": "svd"}, {}, "2kr + cr + 1 (M, V, P; limiter norm)",
     "Zhu et al. 2025, APOLLO with SVD projection", False),
    ("galore", GaLore, {}, {}, "2kr + cr (M, V, P)", "Zhao et al. 2024, GaLore", True),
    ("fira", Fira, {}, {}, "2kr + cr + 1 (M, V, P; limiter norm)", "Chen et al. 2024, Fira", True),
]
_CAUTION_REFERENCE = "Liang et al. 2024, Cautious Optimizers (arXiv 2411.16085), over {}"

for _name, _cls, _family, _fixed, _twin_defaults, _formula, _ref in _BUILTINS:
    register(_cls, _name, family=_family, fixed=_fixed, state_formula=_formula, reference=_ref)
    register(_cls, f"c-{_name}", family=_family, fixed={**_fixed, "caution": True},
             defaults=_twin_defaults, state_formula=_formula, base=_name,
             reference=_CAUTION_REFERENCE.format(_name))

for _name, _cls, _fixed, _defaults, _formula, _ref, _twin in _LOW_RANK:
    register(_cls, _name, family=_cls.method, fixed=_fixed, defaults=_defaults, low_rank=True,
             state_formula=_formula, reference=_ref)
    if _twin:
        register(_cls, f"c-{_name}", family=_cls.method, fixed={**_fixed, "caution": True},
                 defaults=_defaults, low_rank=True, state_formula=_formula, base=_name,
                 reference=_CAUTION_REFERENCE.format(_name))
