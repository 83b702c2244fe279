"""torch.optim's generic optimizer contract, for every registered name: what torch's own optimizer
tests (test/test_optim.py, TestOptimRenewed) check of every torch.optim class — errors for bad
params in torch's words, hooks of every kind in torch's order, state dicts (determinism, round
trip, weights_only, older states), deepcopy and pickling, param groups, tensor learning rates,
maximize, steps without or with zero gradients, gradients never written into, foreach and fused
equal to the for-loop, complex parameters and sparse gradients where torch.optim takes them."""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import zoo

ALL = zoo.names()
COMPLEX = {"adam": "Adam", "adamw": "AdamW", "nadamw": "NAdam", "radam": "RAdam", "rmsprop": "RMSprop",
           "sgdm": "SGD", "nesterov": "SGD"}
"""The names whose torch.optim counterpart optimizes complex parameters (as their real view)."""
TORCH_SETTINGS = {"nadamw": dict(decoupled_weight_decay=True), "sgdm": dict(momentum=0.9),
                  "nesterov": dict(momentum=0.9, nesterov=True)}


def problem(seed=0, dtype=torch.float32, shapes=((10, 5), (10,))):
    """Parameters and a loss of them (a matrix and a vector, as torch's tests)."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    x = torch.randn(5, generator=gen, dtype=dtype)

    def loss():
        w, b = params[0], params[1]
        return ((w @ x + b).tanh() - 0.3).square().sum() + 0.1 * (w ** 4).sum()
    return params, loss


def run(opt, loss, steps, closure=False):
    for _ in range(steps):
        opt.zero_grad()
        if closure:
            opt.step(lambda: (loss().backward(), loss())[1])
        else:
            loss().backward()
            opt.step()


def decayed(name, params, weight_decay):
    """The optimizer ``name`` over ``params`` with ``weight_decay`` where it has the setting."""
    settings = {"weight_decay": weight_decay} if "weight_decay" in zoo.info(name).defaults else {}
    return zoo.get(name)(params, **settings)


def lr_of(name):
    return zoo.info(name).defaults["lr"]


def equal_states(a: dict, b: dict) -> None:
    """Two state dicts hold the same groups and the same state, bit for bit."""
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for pid in a["state"]:
        assert a["state"][pid].keys() == b["state"][pid].keys()
        for key, value in a["state"][pid].items():
            other = b["state"][pid][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (pid, key)


# -- errors for bad params, in torch's words ------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_bad_params_get_torchs_errors(name):
    cls = zoo.get(name)
    p, q = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable"):
        cls(p)
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        cls([])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        cls([{"params": [p]}, {"params": [p, q]}])
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        cls([p * 2])
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        cls([p, 1.0])
    with pytest.raises(TypeError, match="ordered collections"):
        cls([{"params": {p}}])
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        cls([("w", p), q])
    with pytest.warns(UserWarning, match="duplicate parameters"):
        cls([p, p])
    opt = cls([p])
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([q])
    with pytest.raises(ValueError, match="lr"):   # a tensor lr has one element
        cls([p], lr=torch.tensor([1e-3, 1e-3]))
    with pytest.raises(ValueError, match="lr"):   # a refused group is not added
        opt.add_param_group({"params": [q], "lr": -1.0})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == [p]


# -- hooks of every kind, in torch's order --------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_step_hooks_in_torchs_order(name):
    params, loss = problem()
    opt = zoo.get(name)(params)
    order = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: order.append("global pre")),
               opt.register_step_pre_hook(lambda o, a, k: order.append("pre")),
               opt.register_step_post_hook(lambda o, a, k: order.append("post")),
               register_optimizer_step_post_hook(lambda o, a, k: order.append("global post"))]
    try:
        run(opt, loss, 1)
        assert order == ["global pre", "pre", "post", "global post"]
    finally:
        for handle in handles:
            handle.remove()
    run(opt, loss, 1)
    assert len(order) == 4


@pytest.mark.parametrize("name", ALL)
def test_state_dict_hooks(name):
    params, loss = problem()
    opt = zoo.get(name)(params)
    run(opt, loss, 2)
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("note", 1))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 2})
    saved = opt.state_dict()
    assert saved["state"]["note"] == 1 and saved["extra"] == 2
    assert zoo.state_bytes(opt) > 0   # a non-parameter entry in the state is allowed, as in torch


@pytest.mark.parametrize("name", ALL)
def test_load_state_dict_hooks_in_torchs_order(name):
    """Pre-hooks run first (and may return the state to load, or change it), in their order
    (prepend first); then the state is checked and loaded; post-hooks see the loaded, normalised
    state and may write anything into optimizer.state."""
    params, loss = problem()
    source = zoo.get(name)(params)
    run(source, loss, 2)
    saved = source.state_dict()
    lr = lr_of(name)
    target = zoo.get(name)([p.detach().clone().requires_grad_() for p in params])
    seen = []

    def set_lr(optimizer, state_dict):
        for group in state_dict["param_groups"]:
            group["lr"] = lr / 2

    def replace(optimizer, state_dict):
        seen.append("replace")
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group["lr"] = lr / 3
        return state_dict

    def invalid_then_fixed(optimizer, state_dict):   # the check runs after the pre-hooks
        seen.append("fix")
        for group in state_dict["param_groups"]:
            group.pop("bogus", None)

    def post(optimizer):
        seen.append("post")
        assert all(isinstance(s.get("step", 0), int) for s in optimizer.state.values())
        optimizer.state["flag"] = True   # torch allows any value here

    target.register_load_state_dict_pre_hook(set_lr)
    target.register_load_state_dict_pre_hook(replace, prepend=True)
    target.register_load_state_dict_pre_hook(invalid_then_fixed)
    target.register_load_state_dict_post_hook(post)
    broken = copy.deepcopy(saved)
    for group in broken["param_groups"]:
        group["bogus"] = "x"
    target.load_state_dict(broken)
    assert seen == ["replace", "fix", "post"]
    assert all(group["lr"] == lr / 2 for group in target.param_groups)   # set_lr ran last
    run(target, loss, 1)   # the state written by the post-hook does not stop a step, nor a save
    target.state_dict()
    assert target.state["flag"] is True


def test_load_state_dict_post_hooks_see_a_torch_state_normalised():
    """A torch.optim.AdamW state loaded into c-adamw: post-hooks see the twin's caution kept and
    the step an int, not the half-loaded state."""
    w = torch.randn(4, 3, requires_grad=True)
    torch_opt = torch.optim.AdamW([w])
    w.grad = torch.ones_like(w)
    torch_opt.step()
    twin = zoo.get("c-adamw")([w])
    seen = {}
    twin.register_load_state_dict_post_hook(
        lambda o: seen.update(caution=o.param_groups[0]["caution"], step=type(o.state[w]["step"])))
    twin.load_state_dict(torch_opt.state_dict())
    assert seen == {"caution": True, "step": int}


# -- state dicts --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_state_dict_is_deterministic_and_round_trips(name):
    """torch's test_state_dict_deterministic: an optimizer loaded from another's state (deep
    copied) steps as the other, bit for bit, and their state dicts stay equal; the state passes
    torch.save/torch.load with weights_only=True."""
    params, loss = problem()
    opt = zoo.get(name)(params)
    run(opt, loss, 3)
    clones = [p.detach().clone().requires_grad_() for p in params]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    equal_states(loaded, opt.state_dict())
    other = zoo.get(name)(clones)
    other.load_state_dict(loaded)
    equal_states(other.state_dict(), opt.state_dict())
    for _ in range(3):   # the same gradients, the same steps
        opt.zero_grad()
        loss().backward()
        opt.step()
        for p, q in zip(params, clones):
            q.grad = p.grad.clone()
        other.step()
        assert all(torch.equal(p, q) for p, q in zip(params, clones))
    equal_states(other.state_dict(), opt.state_dict())


@pytest.mark.parametrize("name", ALL)
def test_an_older_state_without_the_flags_loads(name):
    """torch's test_can_load_older_state_dict: groups saved without maximize, foreach,
    differentiable, capturable (older versions) load, keep this optimizer's values, and step."""
    params, loss = problem()
    opt = zoo.get(name)(params)
    run(opt, loss, 2)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        for key in ("maximize", "foreach", "differentiable", "capturable"):
            group.pop(key, None)
    other = zoo.get(name)([p.detach().clone().requires_grad_() for p in params])
    other.load_state_dict(saved)
    assert other.param_groups[0]["maximize"] is False
    run(other, loss, 1)


# -- copies --------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", ALL)
def test_a_copy_has_every_public_attribute_and_continues_alike(name, how):
    """torch's test_deepcopy_copies_all_public_attrs; a copy (its own parameters) then steps as
    the original, bit for bit."""
    params, loss = problem()
    opt = zoo.get(name)(params)
    run(opt, loss, 3)
    copied = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert type(copied) is type(opt) and copied.compile == opt.compile
    assert {k for k in copied.__dict__ if not k.startswith("_")} == {k for k in opt.__dict__ if not k.startswith("_")}
    equal_states(copied.state_dict(), opt.state_dict())
    copies = [p for group in copied.param_groups for p in group["params"]]
    assert all(q is not p and torch.equal(q, p) for p, q in zip(params, copies))
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        for p, q in zip(params, copies):
            q.grad = p.grad.clone()
        opt.step()
        copied.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copies))
    assert repr(opt).startswith(type(opt).__name__)


def test_a_compiled_optimizer_stays_compiled_when_copied():
    params, _ = problem()
    opt = zoo.get("adamw")(params, compile=True)
    assert copy.deepcopy(opt).compile is True and pickle.loads(pickle.dumps(opt)).compile is True


# -- param groups, learning rates, maximize, gradients -----------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_param_groups_each_with_their_own_lr_and_weight_decay(name):
    """torch's test_param_groups_lr / _weight_decay: a group with a learning rate of 1e-28 stays
    put while the other group learns; a group's weight decay is its own."""
    params, loss = problem()
    frozen = torch.randn(3, 4, requires_grad=True)
    start = frozen.detach().clone()
    opt = zoo.get(name)([{"params": params, "weight_decay": 0.0},
                         {"params": [frozen], "lr": 1e-28}], lr=10 * lr_of(name))
    before = loss().item()
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        frozen.grad = torch.randn(frozen.shape, generator=gen)
        opt.step()
    assert loss().item() < before
    torch.testing.assert_close(frozen, start, rtol=0, atol=1e-20)
    assert opt.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("name", ALL)
def test_a_tensor_lr_steps_as_the_float(name, shape):
    lr = lr_of(name)
    results = []
    for value in (lr, torch.tensor(lr, dtype=torch.float64).reshape(shape)):   # the same number
        params, loss = problem()
        run(zoo.get(name)(params, lr=value), loss, 5)
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("name", [n for n in ALL if "maximize" in zoo.info(n).defaults])
def test_maximize_climbs_what_minimize_descends(name):
    results = []
    for maximize in (False, True):
        params, loss = problem()
        run(zoo.get(name)(params, maximize=maximize), (lambda: -loss()) if maximize else loss, 5)
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("name", ALL)
def test_gradients_are_never_written_into_and_steps_without_them_do_nothing(name):
    """torch's test_grads_are_never_inplaced_into, test_step_is_noop_when_params_have_no_grad."""
    params, loss = problem()
    opt = decayed(name, params, 0.1)
    before = [p.detach().clone() for p in params]
    opt.step(lambda: loss())   # no backward in the closure: no gradients
    assert all(torch.equal(p, q) for p, q in zip(params, before)) and not opt.state
    loss().backward()
    versions = [p.grad._version for p in params]
    for _ in range(4):
        opt.step()
    assert [p.grad._version for p in params] == versions


@pytest.mark.parametrize("name", ALL)
def test_zero_gradients_leave_the_parameters_alone(name):
    """torch's test_step_is_noop_for_zero_grads (without weight decay)."""
    params, _ = problem()
    opt = decayed(name, params, 0.0)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    for _ in range(3):
        opt.step()
    for p, q in zip(params, before):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_the_loss_goes_down_with_a_schedule_and_a_closure(name):
    """torch's test_forloop_goes_right_direction with a scheduler, stepping through a closure."""
    params, loss = problem()
    opt = zoo.get(name)(params, lr=10 * lr_of(name))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.9)
    before = loss().item()
    for _ in range(20):
        run(opt, loss, 1, closure=True)
        scheduler.step()
    assert loss().item() < before


# -- foreach and fused against the for-loop ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("impl,name", [(impl, n) for n in ALL for impl in ("foreach", "fused")
                                       if impl in zoo.info(n).defaults
                                       and not (impl == "fused" and zoo.info(n).cautious)])
def test_foreach_and_fused_equal_the_for_loop(name, impl, dtype):
    """torch's test_foreach_matches_forloop / test_fused_matches_forloop: 7 steps over two groups
    with a parameter that has no gradient at one step and another frozen for two steps."""
    results = []
    for flag in (False, True):
        params, loss = problem(dtype=dtype, shapes=((10, 5), (10,), (4, 3)))
        opt = zoo.get(name)([{"params": params[:2]}, {"params": params[2:], "lr": lr_of(name) / 2}],
                            weight_decay=0.1, **{impl: flag})
        for step in range(7):
            opt.zero_grad()
            params[2].requires_grad_(step not in (3, 4))
            (loss() + (params[2].sum() if step not in (3, 4) else 0)).backward()
            if step == 2:
                params[0].grad = None
            opt.step()
        results.append((params, opt.state_dict()))
    (a, state_a), (b, state_b) = results
    tol = dict(rtol=0, atol=0) if dtype == torch.float64 and impl == "fused" else dict(rtol=1e-6, atol=1e-7)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **({"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else tol))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_on_a_device_without_the_kernel_is_torchs_error(name):
    """torch's test_fused_error_on_params_on_meta: the step raises naming the device, before any
    state is made; the same parameters on the CPU step."""
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    opt = zoo.get(name)(model.parameters(), fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors of "
                                           "supported devices.*meta"):
        opt.step()
    assert not opt.state
    cpu = torch.nn.Linear(4, 3)
    opt = zoo.get(name)(cpu.parameters(), fused=True)
    for p in cpu.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert len(opt.state) == 2


# -- complex parameters and sparse gradients, where torch.optim takes them ------------------------

def complex_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.complex128).requires_grad_() for s in ((10, 5), (10,))]


def complex_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


@pytest.mark.parametrize("name", [n for n in ALL if (zoo.info(n).base or n) in COMPLEX])
def test_complex_parameters_are_their_real_view(name, float64):
    """torch's test_complex: a complex parameter steps as its real view (torch.view_as_real) does,
    bit for bit, with complex state; a non-cautious name also matches torch.optim on complex
    parameters to float64 round-off (SGD's complex arithmetic rounds once differently; torch keeps
    NAdam's mu product in the default dtype, float64 here), and its state loads into torch.optim
    and back."""
    params = complex_problem()
    views = [torch.view_as_real(p.detach()).clone().requires_grad_() for p in params]
    opt = zoo.get(name)(params, weight_decay=0.1)
    real = zoo.get(name)(views, weight_decay=0.1)
    for step in range(5):
        grads = complex_grads(params, step)
        for p, v, g in zip(params, views, grads):
            p.grad, v.grad = g.clone(), torch.view_as_real(g).clone()
        opt.step()
        real.step()
    for p, v in zip(params, views):
        assert torch.equal(torch.view_as_real(p.detach()), v)
        assert all(t.is_complex() for t in opt.state[p].values() if isinstance(t, torch.Tensor))
    if zoo.info(name).cautious:
        return
    torch_params = complex_problem()
    torch_opt = getattr(torch.optim, COMPLEX[name])(torch_params, lr=lr_of(name), weight_decay=0.1,
                                                    **TORCH_SETTINGS.get(name, {}))
    for step in range(5):
        for p, g in zip(torch_params, complex_grads(torch_params, step)):
            p.grad = g
        torch_opt.step()
    for p, q in zip(params, torch_params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    torch_opt.load_state_dict(opt.state_dict())
    opt.load_state_dict(torch_opt.state_dict())


@pytest.mark.parametrize("name", [n for n in ALL if (zoo.info(n).base or n) not in COMPLEX])
def test_complex_parameters_are_refused_when_added_with_the_reason(name):
    complex_param = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match="does not support complex parameters: its step is defined on real"):
        zoo.get(name)([complex_param])
    opt = zoo.get(name)([torch.randn(4, 3, requires_grad=True)])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [complex_param]})
    assert len(opt.param_groups) == 1


def sparse_grads(params, step):
    gen = torch.Generator().manual_seed(step)
    grads = []
    for p in params:
        index = torch.randint(0, p.shape[0], (1, 3), generator=gen)
        index[0, 1] = index[0, 0]   # uncoalesced: one row twice, as an embedding's gradient
        values = torch.randn((3, *p.shape[1:]), generator=gen, dtype=p.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch's note that invariant checks are off
            grads.append(torch.sparse_coo_tensor(index, values, p.shape))
    return grads


@pytest.mark.parametrize("name,settings", [("sgdm", dict(momentum=0.9)), ("sgdm", dict(momentum=0.0)),
                                           ("sgdm", dict(momentum=0.9, dampening=0.3, maximize=True)),
                                           ("nesterov", dict(momentum=0.9)),
                                           ("nesterov", dict(momentum=0.8, maximize=True))])
def test_sparse_gradients_as_torch_sgd(name, settings):
    ours, theirs = complex_problem(1), complex_problem(1)
    ours = [p.detach().real.clone().requires_grad_() for p in ours]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = zoo.get(name)(ours, lr=0.1, **settings)
    torch_opt = torch.optim.SGD(theirs, lr=0.1, nesterov=name == "nesterov", **settings)
    for step in range(5):
        for a, b, g in zip(ours, theirs, sparse_grads(ours, step)):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        torch_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    if settings["momentum"]:
        buffers = [opt.state[p]["momentum_buffer"] for p in ours]
        assert all(b.is_sparse for b in buffers)
        assert zoo.state_bytes(opt) == zoo.expected_state_bytes(opt) == sum(
            b._indices().nbytes + b._values().nbytes for b in buffers)


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("sgdm", "nesterov")])
def test_sparse_gradients_are_refused_by_every_other_name(name):
    params, _ = problem()
    opt = zoo.get(name)(params)
    for p, g in zip(params, sparse_grads(params, 0)):
        p.grad = g
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
