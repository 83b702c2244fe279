"""The built-in optimizers, one small file per family, and their registry records."""
from __future__ import annotations

from ..registry import info, names, register
from .adafactor import Adafactor
from .adam import Adam, AdamW, NAdamW
from .ademamix import AdEMAMix
from .adan import Adan
from .adopt import ADOPT
from .base import ZooOptimizer
from .lamb import Lamb
from .laprop import LaProp
from .lion import Lion, Signum
from .lowrank import Apollo, Fira, GaLore
from .mars import Mars
from .muon import Muon
from .radam import RAdam
from .rmsprop import RMSprop
from .schedule_free import AdamWScheduleFree
from .sgd import SGD
from .soap import SOAP

__all__ = ["ZooOptimizer", "SGD", "Adam", "AdamW", "NAdamW", "Lion", "Signum", "Adafactor", "LaProp",
           "ADOPT", "Muon", "Apollo", "GaLore", "Fira", "RMSprop", "RAdam", "Lamb", "AdEMAMix", "Adan",
           "AdamWScheduleFree", "SOAP", "Mars"]

_CAUTION_REFERENCE = "Liang et al. 2024, Cautious Optimizers (arXiv 2411.16085), over {}"


def register_family(cls: type, name: str, *, state: str, reference: str, family: str | None = None,
                    fixed: dict | None = None, defaults: dict | None = None, twin_defaults: dict | None = None,
                    low_rank: bool = False, twin: bool = True, class_name: str | None = None) -> None:
    """Register ``name`` and, with ``twin``, its cautious twin ``c-<name>`` (``fixed`` plus
    ``caution=True``; ``twin_defaults`` on top of ``defaults``), each with its class
    (:func:`zoo.register`: ``cls`` itself where the name changes nothing, else a subclass named
    ``class_name``; the twin's is ``"C"`` and its base's name). ``state`` is the formula of the
    state per tensor, ``reference`` what the step follows; ``family`` defaults to the class's
    ``method`` or the name."""
    fixed, defaults = fixed or {}, defaults or {}
    family = family or getattr(cls, "method", name)
    register(cls, name, family=family, fixed=fixed, defaults=defaults, low_rank=low_rank, state_formula=state,
             reference=reference, class_name=class_name)
    if twin:
        register(cls, f"c-{name}", family=family, fixed={**fixed, "caution": True},
                 defaults={**defaults, **(twin_defaults or {})}, low_rank=low_rank, state_formula=state, base=name,
                 reference=_CAUTION_REFERENCE.format(name))


register_family(SGD, "sgdm", family="sgd", state="numel (momentum buffer)",
                reference="Polyak 1964 heavy ball; torch.optim.SGD(momentum=0.9)")
register_family(SGD, "nesterov", family="sgd", fixed={"nesterov": True}, state="numel (momentum buffer)",
                reference="Sutskever et al. 2013; torch.optim.SGD(momentum=0.9, nesterov=True)")
register_family(Adam, "adam", state="2 numel (m, v)", reference="Kingma & Ba 2015; torch.optim.Adam")
register_family(AdamW, "adamw", family="adam", state="2 numel (m, v)",
                reference="Loshchilov & Hutter 2019; torch.optim.AdamW")
register_family(NAdamW, "nadamw", family="nadam", state="2 numel (m, v)",
                reference="Dozat 2016; torch.optim.NAdam(decoupled_weight_decay=True)")
register_family(Lion, "lion", state="numel (m)",
                reference="Chen et al. 2023, Symbolic Discovery of Optimization Algorithms")
register_family(Signum, "signum", state="numel (m)", reference="Bernstein et al. 2018, signSGD")
register_family(Adafactor, "adafactor", twin_defaults={"beta1": 0.9},
                state="rows + cols per matrix, numel per vector (+ numel with beta1)",
                reference="Shazeer & Stern 2018; torch.optim.Adafactor")
register_family(LaProp, "laprop", state="2 numel (m, v)", reference="Ziyin et al. 2020, LaProp")
register_family(ADOPT, "adopt", state="2 numel (m, v)", reference="Taniguchi et al. 2024, ADOPT")
register_family(Muon, "muon", state="numel per matrix (momentum), 2 numel per AdamW tensor",
                reference="Jordan et al. 2024; torch.optim.Muon")
register_family(RMSprop, "rmsprop", twin_defaults={"momentum": 0.9},
                state="numel (v), + numel with momentum (b), + numel centred (a)",
                reference="Hinton 2012, Graves 2013 (centred); torch.optim.RMSprop")
register_family(RAdam, "radam", state="2 numel (m, v)", reference="Liu et al. 2020, RAdam; torch.optim.RAdam")
register_family(Lamb, "lamb", state="2 numel (m, v)",
                reference="You et al. 2020, LAMB; timm.optim.Lamb (max_grad_norm off by default)")
register_family(AdEMAMix, "ademamix", state="3 numel (m1, m2, v); 2 numel when beta1 = 0",
                reference="Pagliardini et al. 2024, AdEMAMix; apple/ml-ademamix pytorch/ademamix.py")
register_family(Adan, "adan", state="4 numel (m, n, s, previous gradient)",
                reference="Xie et al. 2022, Adan; timm.optim.Adan (single-tensor path)")
register_family(AdamWScheduleFree, "sf-adamw", family="schedule-free", state="2 numel (z, v)",
                reference="Defazio et al. 2024, The Road Less Scheduled; facebookresearch/schedule_free "
                          "AdamWScheduleFree (release 1.4)")
register_family(SOAP, "soap",
                state="2 numel (m, v), + 2 d^2 (GG, Q; float32 at least) per preconditioned dimension d",
                reference="Vyas et al. 2024, SOAP (arXiv 2409.11321); nikhilvyas/SOAP soap.py, merge_dims=False")
register_family(Mars, "mars", state="3 numel (m, v, previous gradient) per tensor of 2+ dimensions (2 with "
                "mars_type='lion'), 2 numel (m, v) per AdamW tensor",
                reference="Yuan et al. 2024, MARS (arXiv 2411.10438); timm.optim.Mars")

# the low-rank family (PAPERS.md §B); state per m x n weight, k = max(m, n) kept, c = min(m, n) compressed
register_family(Apollo, "apollo", low_rank=True, twin=False, state="2kr + 2 (M, V; seed, limiter norm)",
                reference="Zhu et al. 2025, APOLLO")
register_family(Apollo, "apollo-mini", low_rank=True, twin=False, fixed={"rank": 1, "scale_type": "tensor"},
                defaults={"scale": 128.0}, state="2k + 2 (M, V; seed, limiter norm)",
                reference="Zhu et al. 2025, APOLLO-Mini")
register_family(Apollo, "apollo-svd", low_rank=True, twin=False, fixed={"proj": "svd"}, class_name="ApolloSVD",
                state="2kr + cr + 1 (M, V, P; limiter norm)", reference="Zhu et al. 2025, APOLLO with SVD projection")
register_family(GaLore, "galore", low_rank=True, state="2kr + cr (M, V, P)", reference="Zhao et al. 2024, GaLore")
register_family(Fira, "fira", low_rank=True, state="2kr + cr + 1 (M, V, P; limiter norm)",
                reference="Chen et al. 2024, Fira")

_NAMED = {rec.cls.__name__: rec.cls for rec in map(info, names())}
globals().update(_NAMED)   # every name's class, importable from here: zoo.optimizers.CAdamW, ApolloMini...
__all__ += sorted(set(_NAMED) - set(__all__))
