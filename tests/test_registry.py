"""The registry and zoo.create (DESIGN.md public contract)."""
import dataclasses
import inspect
import pickle
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo.registry import markdown_table
from zoo.optimizers import SGD, AdamW, Lion, Muon

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("spelling", ["c-adamw", "C-AdamW", "c_adamw", "cadamw", "C AdamW", "CADAMW"])
def test_names_are_normalised(spelling):
    assert zoo.info(spelling).name == "c-adamw"


def test_unknown_name_lists_closest_and_is_a_key_error():
    with pytest.raises(KeyError) as err:
        zoo.get("c-adamx")
    assert isinstance(err.value, zoo.UnknownOptimizerError)
    assert "c-adamw" in str(err.value) and "closest" in str(err.value)
    with pytest.raises(TypeError):
        zoo.get(None)


def test_names_are_sorted_and_filtered():
    all_names = zoo.names()
    assert all_names == sorted(all_names)
    cautious = zoo.names(cautious=True)
    assert cautious and all(n.startswith("c-") for n in cautious)
    assert set(cautious) | set(zoo.names(cautious=False)) == set(all_names)
    assert zoo.names(family="lion") == ["c-lion", "lion"]
    assert zoo.names(base="Lion") == ["c-lion"] and zoo.names(base="c-lion") == []
    assert zoo.names(low_rank=True) == [n for n in all_names if zoo.info(n).low_rank]


def test_every_base_with_momentum_has_a_cautious_twin_subclassing_it():
    for name in zoo.names(cautious=False):
        rec = zoo.info(name)
        if getattr(rec.cls, "caution_refusal", None):   # refused, with the reason
            with pytest.raises(KeyError, match="never act"):
                zoo.get(f"c-{name}")
            with pytest.raises(ValueError, match="never act"):
                zoo.get(name)([torch.zeros(2, 2, requires_grad=True)], caution=True)
        elif rec.has_momentum:
            twin = zoo.info(f"c-{name}")
            assert issubclass(twin.cls, rec.cls) and twin.cls is not rec.cls and twin.base == name and twin.cautious
            assert twin.cls.__name__ == "C" + rec.cls.__name__ and twin.defaults["caution"] is True


def test_cautious_apollo_is_refused_with_the_reason():
    for spelling in ("c-apollo", "C_Apollo_Mini", "c-apollo-svd"):
        with pytest.raises(KeyError, match="positive"):
            zoo.get(spelling)


def test_info_is_frozen_and_complete():
    rec = zoo.info("c-lion")
    assert (rec.name, rec.family, rec.cautious, rec.base) == ("c-lion", "lion", True, "lion")
    assert rec.cls is zoo.get("c-lion")
    assert rec.cls.__bases__ == (Lion,)
    assert rec.defaults["lr"] == 1e-4 and rec.reference and rec.state_formula
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.name = "x"
    with pytest.raises(TypeError):
        rec.defaults["lr"] = 1.0


def test_get_builds_the_named_optimizer():
    p = [torch.zeros(3, requires_grad=True)]
    opt = zoo.get("c-lion")(p, lr=3e-4)
    assert isinstance(opt, Lion) and opt.defaults["caution"] and opt.defaults["lr"] == 3e-4
    nesterov = zoo.get("nesterov")(p)
    assert isinstance(nesterov, SGD) and nesterov.defaults["nesterov"]
    with pytest.raises(ValueError, match="nesterov"):
        zoo.get("nesterov")(p, nesterov=False)


@pytest.mark.parametrize("name", zoo.names())
def test_get_returns_a_class_that_is_the_name(name):
    """zoo.get(name) is an Optimizer class: instances are isinstance of it, a twin subclasses its
    base, positional arguments work as in the class it is made from, the class and its
    instances pickle by reference, and bad params get torch.optim's own errors."""
    cls, rec = zoo.get(name), zoo.info(name)
    assert isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is rec.cls
    assert getattr(zoo.optimizers, cls.__name__) is cls   # importable: zoo.optimizers.CAdamW
    assert pickle.loads(pickle.dumps(cls)) is cls
    if rec.base:
        assert issubclass(cls, zoo.get(rec.base))
    w = torch.zeros(4, 3, requires_grad=True)
    opt = cls([w], rec.defaults["lr"] / 2)   # lr is positional, as in torch.optim
    assert isinstance(opt, cls) and opt.defaults["lr"] == rec.defaults["lr"] / 2
    assert {k: opt.defaults[k] for k in rec.fixed} == dict(rec.fixed)
    w.grad = torch.ones_like(w)
    opt.step()
    copy = pickle.loads(pickle.dumps(opt))
    assert type(copy) is cls and copy.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable"):
        cls(torch.zeros(3, 2, requires_grad=True))   # torch's error, not three row views
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])
    sig = inspect.signature(cls)
    assert {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty} == dict(rec.defaults)


def test_a_twin_loads_its_base_state_when_told_to_switch():
    """The README recipe: a base's state, with caution=True written into its groups (here by a
    load_state_dict pre-hook), loads into the twin (the state names the class that implements
    both, not the twin's own class)."""
    w = torch.randn(4, 3, requires_grad=True)
    base = zoo.get("adamw")([w])
    w.grad = torch.ones_like(w)
    base.step()
    twin = zoo.get("c-adamw")([w])
    with pytest.raises(ValueError, match="caution=False"):
        twin.load_state_dict(base.state_dict())

    def switch(optimizer, state_dict):
        for group in state_dict["param_groups"]:
            group["caution"] = True

    twin.register_load_state_dict_pre_hook(switch)
    twin.load_state_dict(base.state_dict())
    assert twin.state[w]["step"] == 1 and twin.param_groups[0]["caution"]


def test_register_a_user_optimizer():
    class Plain(torch.optim.SGD):
        pass

    rec = zoo.register(Plain, name="test-plain-sgd", aliases=("tps",), has_momentum=False,
                       reference="test")
    try:
        assert zoo.info("TestPlainSGD") is rec and zoo.info("tps") is rec
        assert isinstance(zoo.get("test_plain_sgd")([torch.zeros(2, requires_grad=True)], lr=0.1), Plain)
        with pytest.raises(ValueError, match="already"):
            zoo.register(Plain, name="test-plain-sgd")
        with pytest.raises(ValueError, match="taken"):
            zoo.register(Plain, name="adam-w")   # normalises to an existing name
        with pytest.raises(TypeError):
            zoo.register(object, name="nope")
    finally:
        from zoo import registry
        registry._REGISTRY.pop("test-plain-sgd")
        for key in ("testplainsgd", "tps"):
            registry._KEYS.pop(key)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 16)
        self.head = nn.Linear(16, 10, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_create_groups_decay_free_params():
    model = TinyNet()
    opt = zoo.create(model, "c-adamw", lr=1e-3, weight_decay=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["param_names"] == ["fc.weight", "head.weight", "frozen.weight"]
    assert sorted(groups["no_decay"]["param_names"]) == ["embed.weight", "fc.bias", "frozen.bias", "norm.bias",
                                                         "norm.weight"]
    assert all(g["caution"] and g["lr"] == 1e-3 for g in opt.param_groups)
    assert isinstance(opt, AdamW)


@pytest.mark.parametrize("name", zoo.names())
def test_a_parameter_frozen_at_create_is_updated_once_unfrozen(name):
    """As torch.optim: every parameter is in a group; a frozen one has no gradient and is skipped,
    and once unfrozen it is updated like the rest of its group (it was never updated before)."""
    torch.manual_seed(0)
    model = TinyLM()
    model.mlp["up_proj"].requires_grad_(False)
    opt = zoo.create(model, name, lr=1e-2, **({"rank": 2} if zoo.info(name).low_rank and name != "apollo-mini" else {}))
    frozen = model.mlp["up_proj"].weight
    start = frozen.detach().clone()
    for unfrozen in (False, True, True):   # two steps unfrozen: ADOPT's first step only sets its moment
        frozen.requires_grad_(unfrozen)
        opt.zero_grad()
        model.head(model.mlp["down_proj"](torch.relu(model.mlp["up_proj"](model.embed(torch.arange(6)))))).sum().backward()
        opt.step()
        if not unfrozen:
            assert torch.equal(frozen, start) and frozen not in opt.state, name
    assert not torch.equal(frozen, start), name


def test_create_uses_the_class_default_weight_decay_and_passes_plain_params_through():
    model = TinyNet()
    opt = zoo.create(model, "adamw")
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"decay": 1e-2, "no_decay": 0.0}
    plain = zoo.create(list(model.fc.parameters()), "sgdm", lr=0.1)
    assert len(plain.param_groups) == 1


def test_create_keeps_embeddings_and_vectors_out_of_muon():
    opt = zoo.create(TinyNet(), "muon", lr=0.02, muon_filter=lambda name, p: name == "fc.weight")
    assert isinstance(opt, Muon)
    assert {g["name"]: g["use_muon"] for g in opt.param_groups} == {"muon": True, "decay": False, "no_decay": False}


def test_create_routes_only_the_hidden_matrices_to_muon():
    """Attention/MLP weights are orthogonalised; embeddings, the output head, norms and biases go
    to Muon's AdamW (as every reference setup); describe shows the split."""
    for name in ("muon", "c-muon"):
        opt = zoo.create(TinyLM(), name, lr=0.02)
        groups = {g["name"]: g for g in opt.param_groups}
        assert groups["muon"]["param_names"] == ["layers.0.attn.q_proj.weight", "layers.0.attn.o_proj.weight",
                                                 "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight"]
        assert groups["muon"]["use_muon"] is True
        assert groups["decay"]["param_names"] == ["head.weight"] and groups["decay"]["use_muon"] is False
        assert "embed.weight" in groups["no_decay"]["param_names"] and groups["no_decay"]["use_muon"] is False
        assert "muon: 4 tensors" in zoo.describe(opt) and "use_muon=False" in zoo.describe(opt)
        opt.zero_grad()
        model = TinyLM()
        opt = zoo.create(model, name, lr=0.02)
        model.head(model.mlp["down_proj"](model.mlp["up_proj"](model.embed(torch.arange(3))))).sum().backward()
        opt.step()
        assert "momentum_buffer" in opt.state[model.mlp["up_proj"].weight]
        assert set(opt.state[model.head.weight]) == {"step", "exp_avg", "exp_avg_sq"}   # AdamW, not Newton-Schulz
    with pytest.raises(ValueError, match="matched the Muon filter"):
        zoo.create(TinyLM(), "muon", muon_filter=lambda name, p: False)
    with pytest.raises(ValueError, match="muon_filter is for muon"):
        zoo.create(TinyLM(), "adamw", muon_filter=lambda name, p: True)
    with pytest.raises(ValueError, match="use_muon: True for a parameter of shape"):
        zoo.create(TinyLM(), "muon", muon_filter=lambda name, p: name == "norm.weight")


def test_readme_lists_exactly_the_registry():
    text = README.read_text()
    block = re.search(r"<!-- optimizers:start -->(.*?)<!-- optimizers:end -->", text, re.S)
    assert block, "README.md lacks the generated optimizer list"
    listed = re.findall(r"^\| `([^`]+)` \|", block.group(1), re.M)
    assert listed == zoo.names()
    assert block.group(1).strip() == markdown_table()   # regenerate with: python -m zoo


def test_import_zoo_pulls_in_no_analysis_libraries():
    import subprocess
    import sys
    code = ("import sys, zoo; heavy = {'pandas', 'scipy', 'sympy', 'matplotlib', 'seaborn', 'transformers', "
            "'accelerate', 'lightning'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class TinyLM(nn.Module):
    """Embedding, one block (in a ModuleList) with attention and MLP linears, a head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        attn = nn.ModuleDict({"q_proj": nn.Linear(16, 16, bias=False), "o_proj": nn.Linear(16, 16, bias=False)})
        mlp = nn.ModuleDict({"up_proj": nn.Linear(16, 32), "down_proj": nn.Linear(32, 16)})
        self.layers = nn.ModuleList([nn.ModuleDict({"attn": attn, "mlp": mlp})])
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50, bias=False)

    @property
    def mlp(self):
        return self.layers[0]["mlp"]


def test_create_routes_attention_and_mlp_weights_to_low_rank():
    opt = zoo.create(TinyLM(), "apollo-mini", lr=1e-2)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["low_rank"]["param_names"] == ["layers.0.attn.q_proj.weight", "layers.0.attn.o_proj.weight",
                                                 "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight"]
    assert groups["low_rank"]["rank"] == 1 and groups["decay"]["rank"] is None
    assert groups["decay"]["param_names"] == ["head.weight"] and groups["no_decay"]["rank"] is None
    text = zoo.describe(opt)
    assert "low_rank: 4 tensors" in text and "layers.0.mlp.down_proj.weight (16, 32)" in text


def test_create_low_rank_filter_and_rank_override():
    opt = zoo.create(TinyLM(), "galore", rank=4, low_rank_filter=lambda name, p: name == "head.weight")
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["low_rank"]["param_names"] == ["head.weight"] and groups["low_rank"]["rank"] == 4
    with pytest.raises(ValueError, match="low-rank filter"):
        zoo.create(TinyLM(), "apollo", low_rank_filter=lambda name, p: False)
    with pytest.raises(ValueError, match="rank"):
        zoo.create(TinyLM(), "apollo-mini", rank=4)   # rank 1 defines apollo-mini
    with pytest.raises(ValueError, match="low-rank"):
        zoo.create(TinyLM(), "adamw", low_rank_filter=lambda name, p: True)


def test_create_refuses_a_low_rank_optimizer_without_rank():
    with pytest.raises(ValueError, match="plain AdamW"):
        zoo.create(TinyLM(), "galore", rank=None)
