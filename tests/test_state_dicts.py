"""State dicts: a torch.optim state resumes in the zoo (and the other way) with the next step
equal to torch's; a state of another optimizer is refused at load, naming the mismatch."""
from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch

import zoo
from conftest import loss_fn, make_params

SHAPES = ((6, 4), (4, 7), (5,))
# zoo name -> (torch.optim class, hyper-parameters for both); muon: torch.optim.Muon takes matrices only
TORCH = {
    "sgdm": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.02)),
    "nesterov": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    "adam": ("Adam", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.02)),
    "adamw": ("AdamW", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.1)),
    "nadamw": ("NAdam", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.1)),
    "adafactor": ("Adafactor", dict(lr=0.05, weight_decay=0.1)),
    "muon": ("Muon", dict(lr=0.02, weight_decay=0.1, momentum=0.9)),
    "rmsprop": ("RMSprop", dict(lr=0.01, momentum=0.8, centered=True, weight_decay=0.02)),
    "radam": ("RAdam", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.02)),
}
TORCH_ONLY = {"nadamw": dict(decoupled_weight_decay=True)}   # what torch needs to be that optimizer


def shapes_for(name):
    return SHAPES[:2] if name == "muon" else SHAPES


def steps(opt, params, first, count):
    for t in range(first, first + count):
        opt.zero_grad()
        loss_fn(params, t).backward()
        opt.step()
    return [p.detach().clone() for p in params]


def through_bytes(state: dict) -> dict:
    """What a checkpoint file gives back (torch.save, then torch.load with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def torch_optimizer(name, params, **extra):
    cls, hp = TORCH[name]
    return getattr(torch.optim, cls)(params, **hp, **extra)


def zoo_optimizer(name, params):
    base = zoo.info(name).base or name
    hp = dict(TORCH[base][1])
    hp.pop("nesterov", None)
    return zoo.get(name)(params, **hp, **({"beta1": 0.9} if name == "c-adafactor" else {}))


def hand_over(first, params, make_second):
    """``first`` trains ``params`` 4 steps; a copy of the parameters goes to ``make_second``, whose
    optimizer loads ``first``'s checkpoint; both then train 4 more steps and must agree."""
    steps(first, params, 0, 4)
    copies = [p.detach().clone().requires_grad_() for p in params]
    second = make_second(copies)
    second.load_state_dict(through_bytes(first.state_dict()))
    for x, y in zip(steps(second, copies, 4, 4), steps(first, params, 4, 4)):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    return second


@pytest.mark.parametrize("name", list(TORCH))
def test_a_torch_optim_state_resumes_in_the_zoo(float64, name):
    """torch.optim's checkpoint loads into the zoo optimizer, whose next steps equal torch's own
    (torch's tensor step counters included); the zoo keeps its own settings (caution off)."""
    params = make_params(shapes_for(name))
    ours = hand_over(torch_optimizer(name, params, **TORCH_ONLY.get(name, {})), params,
                     lambda copies: zoo_optimizer(name, copies))
    assert all(g["caution"] is False for g in ours.param_groups)
    assert all(isinstance(s["step"], int) for s in ours.state.values() if "step" in s)


@pytest.mark.parametrize("name", list(TORCH))
def test_a_zoo_state_resumes_in_torch_optim(float64, name):
    """The other way: torch.optim built with its defaults (NAdam: L2 decay) reads the zoo's
    checkpoint and continues as the zoo optimizer does (NAdam: decoupled decay, from the state)."""
    params = make_params(shapes_for(name))
    hand_over(zoo_optimizer(name, params), params, lambda copies: torch_optimizer(name, copies))


@pytest.mark.parametrize("name", [n for n in zoo.names(cautious=True) if zoo.info(n).base in TORCH])
def test_a_torch_optim_state_switches_to_the_cautious_twin(float64, name):
    """Switching from torch.optim to the cautious twin mid-run: torch's state has no caution
    setting, so the twin keeps its own, and it continues as from the zoo base's state. (A zoo
    state says caution=False and is refused by the twin: switching is then asked for by setting
    caution=True in the state's groups, as here.)"""
    base = zoo.info(name).base
    shapes = shapes_for(base)
    results = []
    for source in ("torch", "zoo"):
        params = make_params(shapes)
        first = torch_optimizer(base, params, **TORCH_ONLY.get(base, {})) if source == "torch" else \
            zoo_optimizer(base, params)
        steps(first, params, 0, 4)
        state = through_bytes(first.state_dict())
        twin = zoo_optimizer(name, params)
        if source == "zoo":
            with pytest.raises(ValueError, match="has caution=False"):
                twin.load_state_dict(state)
            for group in state["param_groups"]:   # (c-adafactor also needs its first moment switched on)
                group.update(caution=True, **({"beta1": 0.9} if name == "c-adafactor" else {}))
        twin.load_state_dict(state)
        assert all(g["caution"] is True for g in twin.param_groups)
        results.append(steps(twin, params, 4, 4))
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)


def stepped(name, shapes=((6, 4), (5,)), count=2):
    """``name`` built over fresh parameters (refreshing its projection every step) and stepped."""
    params = make_params(shapes)
    hp = {"update_proj_gap": 1, "rank": 2} if zoo.info(name).low_rank and "rank" not in zoo.info(name).fixed else \
        {"update_proj_gap": 1} if zoo.info(name).low_rank else {}
    opt = zoo.get(name)(params, **hp)
    steps(opt, params, 0, count)
    return opt, params


def test_a_state_of_another_optimizer_is_refused_for_every_ordered_pair():
    """For every ordered pair of names (the same two parameters, one group), the target refuses
    the source's state with a ValueError, unless they are the same name, where the loaded
    optimizer continues exactly as the one that saved it."""
    names = zoo.names()
    saved = {name: through_bytes(stepped(name)[0].state_dict()) for name in names}
    accepted = []
    for source, target in itertools.product(names, names):
        opt, params = stepped(target, count=0)
        try:
            opt.load_state_dict(saved[source])
        except ValueError:
            assert source != target, f"{target} refused its own state"
            continue
        accepted.append((source, target))
    assert accepted == [(name, name) for name in names]


@pytest.mark.parametrize("source, target, match", [
    ("adamw", "c-adamw", "has caution=False but this AdamW has caution=True"),
    ("c-adamw", "adamw", "has caution=True but this AdamW has caution=False"),
    ("sgdm", "nesterov", "has nesterov=False but this SGD has nesterov=True"),
    ("apollo", "apollo-mini", "has rank=2 but this Apollo has rank=1"),
    ("apollo", "apollo-svd", "has proj='random' but this Apollo has proj='svd'"),
    ("adam", "adamw", "saved by a Adam optimizer"),
    ("galore", "fira", "saved by a GaLore optimizer"),
    ("lion", "signum", "saved by a Lion optimizer"),
])
def test_the_refusal_names_the_mismatch(source, target, match):
    state = stepped(source)[0].state_dict()
    with pytest.raises(ValueError, match=match):
        stepped(target, count=0)[0].load_state_dict(state)


def test_states_without_the_class_marker_are_told_apart_by_their_settings():
    """A torch.optim state, or a zoo state saved before states named their class, carries no
    class: its settings and per-parameter keys still tell it apart."""
    def unmarked(name):
        state = stepped(name)[0].state_dict()
        for group in state["param_groups"]:
            group.pop(zoo.optimizers.base.STATE_MARKER)
        return state
    for source, target, match in [("adamw", "lion", r"settings \['decoupled_weight_decay', 'eps', 'fused'\]"),
                                  ("adam", "adamw", "has decoupled_weight_decay=False"),
                                  ("fira", "galore", r"has \['update_norm'\], which GaLore does not keep"),
                                  ("lion", "adamw", r"lacks \['exp_avg_sq'\]")]:
        with pytest.raises(ValueError, match=match):
            stepped(target, count=0)[0].load_state_dict(unmarked(source))
    opt, _ = stepped("adamw", count=0)
    opt.load_state_dict(unmarked("adamw"))   # its own, unmarked: accepted


def test_missing_and_unknown_parameter_state_keys_are_named():
    state = stepped("adamw")[0].state_dict()
    del state["state"][0]["exp_avg_sq"]
    state["state"][0]["momentum_buffer"] = torch.zeros(6, 4)
    with pytest.raises(ValueError, match=r"parameter 0 \(param group 0\) lacks \['exp_avg_sq'\] and has "
                                         r"\['momentum_buffer'\], which AdamW does not keep"):
        stepped("adamw", count=0)[0].load_state_dict(state)


def test_torch_settings_the_zoo_does_not_implement_are_refused():
    params = make_params(((6, 4),))
    amsgrad = torch.optim.AdamW(params, amsgrad=True)
    steps(amsgrad, params, 0, 1)
    with pytest.raises(ValueError, match="amsgrad=True, which AdamW does not implement"):
        zoo.get("adamw")(make_params(((6, 4),))).load_state_dict(amsgrad.state_dict())
    l2 = torch.optim.Adam(params)
    steps(l2, params, 0, 1)
    with pytest.raises(ValueError, match="decoupled_weight_decay=False but this AdamW"):
        zoo.get("adamw")(make_params(((6, 4),))).load_state_dict(l2.state_dict())


def test_a_scheduler_s_keys_do_not_count_as_another_optimizer():
    """LR schedulers add their own keys (initial_lr) to the groups; a state saved with one loads
    into an optimizer that has no scheduler yet."""
    opt, params = stepped("c-adamw", count=0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    steps(opt, params, 0, 2)
    fresh, _ = stepped("c-adamw", count=0)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["initial_lr"] == opt.param_groups[0]["initial_lr"]


def test_a_refused_state_changes_nothing():
    """The check runs before anything is loaded: a refused state leaves the optimizer as it was,
    including a state whose only fault is a setting out of range."""
    opt, _ = stepped("c-adamw")
    before = copy.deepcopy(opt.state_dict())
    bad_lr = copy.deepcopy(before)
    bad_lr["param_groups"][0]["lr"] = -1.0
    for state, match in ((stepped("adamw")[0].state_dict(), "caution=False"), (bad_lr, "Invalid lr")):
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(state)
        after = opt.state_dict()
        assert after["param_groups"] == before["param_groups"]
        for pid, values in before["state"].items():
            assert all(torch.equal(values[k], after["state"][pid][k]) if isinstance(values[k], torch.Tensor)
                       else values[k] == after["state"][pid][k] for k in values)
