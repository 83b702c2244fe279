"""Properties of the one cautious rule, zoo.caution (PAPERS.md §A.1)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zoo.caution import caution, check_norm

finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)
pairs = st.integers(1, 40).flatmap(lambda n: st.tuples(arrays(np.float64, n, elements=finite),
                                                         arrays(np.float64, n, elements=finite)))
norms = st.sampled_from(["mean", "paper", 0.0, 0.01, 0.5])


@settings(max_examples=200, deadline=None)
@given(pairs, norms)
def test_applied_update_never_opposes_the_gradient(pair, norm):
    u, g = (torch.from_numpy(a) for a in pair)
    assert bool((caution(u, g, norm) * g >= 0).all())


@settings(max_examples=200, deadline=None)
@given(pairs)
def test_mean_scale_is_at_least_one_and_exact(pair):
    u, g = (torch.from_numpy(a) for a in pair)
    out = caution(u, g, "mean")
    keep = torch.sign(u) * torch.sign(g) > 0   # the exact sign of u * g (the product may underflow)
    assert bool((out[~keep] == 0).all())
    if keep.any():
        scale = 1 / max(keep.double().mean().item(), 1e-3)
        assert scale >= 1
        torch.testing.assert_close(out[keep], u[keep] * scale, rtol=1e-15, atol=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    arrays(np.float64, n, elements=st.floats(0.01, 10)), arrays(np.float64, n, elements=st.floats(0.01, 10)),
    arrays(np.bool_, n))))
def test_full_agreement_mean_is_base_step_paper_is_not(data):
    mag_u, mag_g, signs = data
    sign = torch.from_numpy(np.where(signs, -1.0, 1.0))
    u, g = torch.from_numpy(mag_u) * sign, torch.from_numpy(mag_g) * sign   # u_i g_i > 0 everywhere
    assert torch.equal(caution(u, g, "mean"), u)
    n = u.numel()
    torch.testing.assert_close(caution(u, g, "paper"), u * n / (n + 1), rtol=1e-15, atol=0)
    assert not torch.equal(caution(u, g, "paper"), u)      # the paper's scale n/(n+1) < 1 there


def test_zero_products_are_masked():
    u = torch.tensor([1.0, 2.0, 0.0, -1.0])
    g = torch.tensor([0.0, 1.0, 3.0, -2.0])   # u g = [0, 2, 0, 2]
    torch.testing.assert_close(caution(u, g, "mean"), torch.tensor([0.0, 4.0, 0.0, -2.0]))
    torch.testing.assert_close(caution(u, g, "paper"), torch.tensor([0.0, 2.0, 0.0, -1.0]) * 4 / 3)
    torch.testing.assert_close(caution(u, g, 0.5), torch.tensor([-0.5, 2.0, 0.0, -1.0]))


def test_mean_clamp_when_nothing_agrees():
    u, g = torch.ones(10), -torch.ones(10)
    assert torch.equal(caution(u, g, "mean"), torch.zeros(10))


def test_soft_mask_reverses_and_shrinks():
    u, g = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(caution(u, g, 0.1), torch.tensor([1.0, 0.2]))


def test_inputs_are_not_modified_and_counts_are_recorded():
    u, g = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, 1.0])
    u0, g0 = u.clone(), g.clone()
    counts = []
    caution(u, g, "mean", counts)
    assert torch.equal(u, u0) and torch.equal(g, g0)
    assert [(float(c), n) for c, n in counts] == [(2.0, 3)]


def test_sign_of_builds_the_mask_from_another_tensor():
    u, g, b = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    torch.testing.assert_close(caution(u, g, "mean", sign_of=b), torch.tensor([2.0, 0.0]))


def test_bf16_count_is_exact():
    u = torch.ones(1000, dtype=torch.bfloat16)
    g = torch.cat([torch.ones(999), -torch.ones(1)]).to(torch.bfloat16)
    out = caution(u, g, "mean")
    assert out.dtype == torch.bfloat16
    assert out[0].item() == pytest.approx(1000 / 999, rel=1e-2)


@pytest.mark.parametrize("bad", ["Mean", "none", -0.1, float("nan"), None, True])
def test_bad_norm_is_refused(bad):
    with pytest.raises(ValueError, match="caution_norm"):
        check_norm(bad)


def test_callable_mask_is_used_as_returned():
    u, g = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([1.0, 1.0, -1.0])

    def inner_product_mask(update, grad):   # Theorem A.5: keep the whole update when u.g >= 0
        return (update * grad).sum().ge(0).to(update.dtype).expand_as(update)

    counts = []
    torch.testing.assert_close(caution(u, g, inner_product_mask, counts), torch.zeros(3))
    assert float(counts[0][0]) == 0.0
    torch.testing.assert_close(caution(u, -g, inner_product_mask), u)


@pytest.mark.parametrize("dtype,tiny", [(torch.float16, 1e-4), (torch.float32, 1e-23), (torch.float64, 1e-170)])
def test_tiny_agreeing_values_are_kept(dtype, tiny):
    # u * g underflows to 0 here; the mask must still see that the signs agree
    u = torch.tensor([tiny, -tiny, tiny], dtype=dtype)
    g = torch.tensor([tiny, -tiny, -tiny], dtype=dtype)
    assert torch.equal(caution(u, g, 0.0), torch.tensor([tiny, -tiny, 0.0], dtype=dtype))
