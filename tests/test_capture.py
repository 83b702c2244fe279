"""analysis.capture: windows of real gradients recorded during training, written and read back."""
import pytest
import torch

from analysis import capture, lowrank
from conftest import TinyLlama, train_with_capture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_capture_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TinyLlama(layers=5)
    hook = capture.GradientCapture(model, at_steps=[6, 2], window=3)
    assert sorted({capture.parse_name(n)[0] for n in hook.params}) == [0, 2, 4]   # first, middle, last
    assert len(hook.params) == 3 * 7
    seen = train_with_capture(model, hook, steps=12)
    meta = {"config": "tiny", "optimizer": "sgd", "seed": 0}
    hook.save(tmp_path / "grads" / "grads.pt", meta)   # the folder is made
    records = capture.load_gradients(tmp_path / "grads" / "grads.pt")
    assert capture.load_meta(tmp_path / "grads" / "grads.pt") == dict(meta, window=3, starts=[2, 6])
    assert len(records) == 2 * 21 and [r.step for r in records] == [2] * 21 + [6] * 21
    kinds = {(r.layer, r.kind) for r in records}
    assert kinds == {(layer, kind) for layer in (0, 2, 4) for kind in capture.LAYER_KINDS}
    for rec in records:
        assert rec.grads.dtype == torch.bfloat16 and rec.grads.shape[0] == 3
        expected = torch.stack([seen[s][rec.name] for s in range(rec.step, rec.step + 3)]).to(torch.bfloat16)
        assert torch.equal(rec.grads, expected), rec.name
    down = next(r for r in records if r.kind == "down")
    assert down.grads.shape == (3, 8, 16) and down.label == f"L{down.layer}.down@{down.step}"
    frame = lowrank.study(records[:2], ranks=[1, 2])   # bfloat16 windows go straight into the analysis
    assert frame["ratio"].notna().all()


def test_capture_overlapping_windows_selection_and_depths(tmp_path):
    model = TinyLlama(layers=4)
    only_q = capture.GradientCapture(model, at_steps=[1, 2], window=2, depths=None, dtype=torch.float32,
                                     select=lambda name, p: name.endswith("q_proj.weight"))
    assert sorted(only_q.params) == [f"layers.{i}.self_attn.q_proj.weight" for i in range(4)]
    seen = train_with_capture(model, only_q, steps=5)
    only_q.save(tmp_path / "q.pt", {})
    records = capture.load_gradients(tmp_path / "q.pt")
    assert [(r.step, r.layer) for r in records] == [(1, i) for i in range(4)] + [(2, i) for i in range(4)]
    assert torch.equal(records[4].grads[0], seen[2]["layers.0.self_attn.q_proj.weight"])   # step 2 in both
    assert torch.equal(records[0].grads[1], records[4].grads[0])
    last = capture.GradientCapture(model, at_steps=[0], depths=[-1])
    assert {capture.parse_name(n)[0] for n in last.params} == {3}


@pytest.mark.parametrize("call,match", [
    (lambda: capture.GradientCapture(TinyLlama(2), at_steps=[]), "at_steps.*allowed a non-empty"),
    (lambda: capture.GradientCapture(TinyLlama(2), at_steps=[-1]), "at_steps.*ints >= 0"),
    (lambda: capture.GradientCapture(TinyLlama(2), at_steps=[0], window=0), "window.*allowed an int >= 1"),
    (lambda: capture.GradientCapture(TinyLlama(2), at_steps=[0], depths="ends"), "allowed 'first-middle-last'"),
    (lambda: capture.GradientCapture(TinyLlama(2), at_steps=[0]).save("x.pt", {"f": object()}), "JSON"),
])
def test_bad_input_is_refused_with_what_is_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_not_a_capture_file(tmp_path):
    torch.save({"something": 1}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    for name in ("other.pt", "text.pt"):
        with pytest.raises(ValueError, match="not a gradient file"):
            capture.load_gradients(tmp_path / name)
