"""The model files: LLaMA against HF transformers' Llama, names and shapes against
zoo.memory.llama_shapes; HF causal LMs built from a config (analysis.models.hf); the masked
autoencoder's masking, target and loss."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig as HFLlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

import zoo
from analysis.models import LLAMA_CONFIGS, MAE, MAE_CONFIGS, Llama, LlamaConfig, MAEConfig
from analysis.models.hf import build_causal_lm, llama_config_for
from analysis.models.mae import patchify
from zoo.filters import select_matrices
from zoo.memory import llama_shapes

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = LlamaConfig(vocab_size=67, dim=48, n_layers=2, n_heads=3, mlp_hidden=80, max_seq_len=16,
                    rope_theta=10000.0, norm_eps=1e-5)


# ---------------------------------------------------------------- LLaMA

def hf_twin(model: Llama) -> LlamaForCausalLM:
    """HF's LlamaForCausalLM of the same sizes, holding ``model``'s weights."""
    cfg = model.config
    hf = LlamaForCausalLM(HFLlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, attn_implementation="sdpa"))
    hf.to(next(model.parameters()).dtype)
    hf.load_state_dict({(k if k.startswith("lm_head") else f"model.{k}"): v
                        for k, v in model.state_dict().items()})
    return hf.eval()


def hf_norm_float64(self, x):
    """HF's RMSNorm with its float32 computation left in the input's dtype."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def hf_rotary_float64(self, x, position_ids):
    """HF's rotary embedding (inverse frequencies, angles, cos, sin) in float64 instead of float32."""
    head_dim = 2 * self.inv_freq.numel()
    theta = self.config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = position_ids[..., None].double() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_llama_matches_hf_transformers(monkeypatch, dtype, tol):
    """Same logits as HF's Llama with the weights copied by name. HF computes its norms and rotary
    angles in float32 whatever the weights' dtype; for the float64 comparison those two pieces
    are lifted to float64, the float32 comparison uses HF unchanged."""
    if dtype == torch.float64:
        monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", hf_norm_float64)
        monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", hf_rotary_float64)
    torch.manual_seed(0)
    model = Llama(SMALL).to(dtype)
    with torch.no_grad():  # attention far from uniform (std 0.2, not 0.02), norm weights not ones
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
            else:
                p.uniform_(0.5, 1.5)
    hf = hf_twin(model)
    for T in (1, 5, 16):
        idx = torch.randint(0, SMALL.vocab_size, (2, T))
        targets = torch.cat((idx[:, 1:], torch.full((2, 1), -100)), dim=1)  # HF shifts its labels
        logits, loss = model(idx, targets)
        with torch.no_grad():
            ref = hf(input_ids=idx, labels=idx)
        assert logits.shape == (2, T, SMALL.vocab_size)
        torch.testing.assert_close(logits.detach(), ref.logits, rtol=tol, atol=tol)
        if T > 1:  # HF's loss is float32 in any dtype
            assert loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


def test_llama_loss_is_cross_entropy(float64):
    torch.manual_seed(1)
    model = Llama(SMALL)
    idx, targets = torch.randint(0, SMALL.vocab_size, (2, 2, 9))
    logits, loss = model(idx, targets)
    assert model(idx)[1] is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, SMALL.vocab_size), targets.reshape(-1)),
                               rtol=1e-14, atol=1e-14)


def test_llama_is_causal(float64):
    torch.manual_seed(2)
    model = Llama(SMALL)
    idx = torch.randint(0, SMALL.vocab_size, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % SMALL.vocab_size
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=1e-13, atol=1e-13)
    assert (a[:, 7:] - b[:, 7:]).abs().amax(-1).min() > 1e-6


@pytest.mark.parametrize("size", ["60M", "130M", "350M", "1B"])
def test_llama_paper_sizes_have_the_memory_tables_shapes(size):
    with torch.device("meta"):
        model = Llama(dataclasses.replace(LLAMA_CONFIGS[size], vocab_size=32000))
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == llama_shapes(size)


def test_llama_tiny_size_and_init():
    torch.manual_seed(0)
    model = Llama(LLAMA_CONFIGS["tiny"])
    assert 0.8e6 < model.num_params() < 1.2e6
    torch.manual_seed(0)
    again = Llama(LLAMA_CONFIGS["tiny"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert abs(model.lm_head.weight.std().item() - 0.02) < 1e-3
    assert torch.equal(model.norm.weight, torch.ones(128))


def test_llama_rejects_bad_configs_and_long_sequences():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        LlamaConfig(dim=100, n_heads=8)
    with pytest.raises(ValueError, match="even head_dim"):
        LlamaConfig(dim=60, n_heads=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        Llama(SMALL)(torch.zeros(1, SMALL.max_seq_len + 1, dtype=torch.long))


# ---------------------------------------------------------------- HF transformers models from a config

HF_CONFIGS = {
    "llama": lambda: HFLlamaConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=8),
    "gpt2": lambda: GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=2, n_positions=8),
}
HF_MATRICES = {"llama": [f"model.model.layers.{i}.{m}.{p}_proj.weight" for i in range(2)
                         for m, ps in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for p in ps],
               "gpt2": [f"model.transformer.h.{i}.{w}.weight" for i in range(2)
                        for w in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]}


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
@pytest.mark.parametrize("as_file", [False, True])
def test_hf_causal_lm_from_a_config(tmp_path, kind, as_file):
    """Built from a saved config (folder or config.json) with the tokens' vocabulary and a position
    limit raised to the sequence length; Llama's forward: (logits, mean next-token cross-entropy)."""
    HF_CONFIGS[kind]().save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = build_causal_lm(str(tmp_path / "config.json" if as_file else tmp_path), vocab_size=67, max_seq_len=16)
    assert model.model.config.vocab_size == 67 and model.model.config.max_position_embeddings == 16
    assert next(model.parameters()).dtype == torch.float32
    idx, targets = torch.randint(0, 67, (2, 2, 16))
    targets[0, -1] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 16, 67) and loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 67), targets.reshape(-1)))
    assert model(idx)[1] is None
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_hf_causal_lm_matrices_for_zoo(tmp_path, kind):
    """zoo's selection through the wrapper: the attention and MLP matrices (GPT-2's Conv1D too),
    not embeddings or head; quantize_weights quantizes exactly those and the model still runs."""
    HF_CONFIGS[kind]().save_pretrained(tmp_path)
    model = build_causal_lm(str(tmp_path), vocab_size=64, max_seq_len=8)
    assert list(select_matrices(model).matrices) == HF_MATRICES[kind]
    groups = {g["name"]: g["param_names"] for g in zoo.create(model, "apollo-mini", lr=1e-3).param_groups}
    assert groups["low_rank"] == HF_MATRICES[kind]
    assert zoo.quantize_weights(model, group_size=16) == HF_MATRICES[kind]
    logits, loss = model(torch.randint(0, 64, (1, 8)), torch.randint(0, 64, (1, 8)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("size", ["tiny", "60M"])
def test_llama_config_for_gives_hf_the_same_parameters(size):
    cfg = LLAMA_CONFIGS[size]
    ours, theirs = Llama(cfg), LlamaForCausalLM(llama_config_for(cfg))
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())
    assert {(k if k.startswith("lm_head") else f"model.{k}"): tuple(p.shape) for k, p in ours.named_parameters()} \
        == {k: tuple(p.shape) for k, p in theirs.named_parameters()}


def test_llama_config_for_gives_hf_the_same_function():
    """HF's model of llama_config_for(cfg) with the weights of Llama(cfg) computes the same logits."""
    torch.manual_seed(0)
    ours = Llama(SMALL)
    theirs = LlamaForCausalLM(llama_config_for(SMALL))
    theirs.load_state_dict({(k if k.startswith("lm_head") else f"model.{k}"): v for k, v in ours.state_dict().items()})
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=idx).logits, ours(idx)[0], rtol=2e-5, atol=2e-5)


def test_hf_causal_lm_bad_specs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "t5.json").write_text('{"model_type": "t5"}')
    for spec, match in [(tmp_path / "missing", "no such folder or file"), ("missing/config.json", "no such folder"),
                        (tmp_path / "empty", "no config.json"), (tmp_path / "broken.json", "not a transformers config"),
                        (tmp_path / "t5.json", "'t5' config, which is not a causal language model")]:
        with pytest.raises(ValueError, match=match):
            build_causal_lm(str(spec), vocab_size=64, max_seq_len=8)
    HF_CONFIGS["llama"]().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocab_size and max_seq_len"):
        build_causal_lm(str(tmp_path), vocab_size=0, max_seq_len=8)


# ---------------------------------------------------------------- MAE

def test_patchify_layout():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    for b, i, j, r, c, ch in [(0, 0, 0, 0, 0, 0), (1, 1, 2, 3, 1, 2), (0, 0, 1, 2, 3, 1), (1, 1, 0, 0, 2, 0)]:
        assert patches[b, i * 3 + j, (r * 4 + c) * 3 + ch] == images[b, ch, i * 4 + r, j * 4 + c]


def test_mae_masks_the_largest_noise():
    torch.manual_seed(0)
    cfg = MAE_CONFIGS["tiny"]
    model = MAE(cfg)
    images, noise = torch.randn(5, 1, 28, 28), torch.rand(5, cfg.num_patches)
    loss, pred, mask = model(images, noise)
    keep = int(cfg.num_patches * (1 - cfg.mask_ratio))
    threshold = noise.sort(dim=1).values[:, keep:keep + 1]  # the smallest masked noise
    assert torch.equal(mask, (noise >= threshold).to(mask.dtype))
    assert (mask.sum(1) == cfg.num_patches - keep).all()
    loss2, pred2, mask2 = model(images, noise)
    assert torch.equal(loss, loss2) and torch.equal(pred, pred2) and torch.equal(mask, mask2)
    _, _, mask3 = model(images)  # random noise: still the same count per sample
    assert (mask3.sum(1) == cfg.num_patches - keep).all()


def test_mae_norm_pix_target_and_loss_by_hand(float64):
    torch.manual_seed(1)
    model = MAE(MAE_CONFIGS["tiny"])
    images = torch.rand(2, 1, 28, 28)
    loss, pred, mask = model(images)
    patches = patchify(images, 4)
    total, count = 0.0, 0
    for b in range(2):
        for l in range(49):
            x = patches[b, l].tolist()
            mean = sum(x) / len(x)
            var = sum((v - mean) ** 2 for v in x) / (len(x) - 1)
            target = [(v - mean) / math.sqrt(var + 1e-6) for v in x]
            if (b, l) == (1, 5):
                torch.testing.assert_close(model.target(patches)[b, l], torch.tensor(target), rtol=1e-12, atol=1e-12)
            if mask[b, l] == 1:
                total += sum((p - t) ** 2 for p, t in zip(pred[b, l].tolist(), target)) / len(x)
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    plain = MAE(dataclasses.replace(MAE_CONFIGS["tiny"], norm_pix_loss=False))
    torch.testing.assert_close(plain.target(patches), patches)


def test_mae_loss_ignores_visible_patches(float64):
    torch.manual_seed(2)
    model = MAE(MAE_CONFIGS["tiny"])
    images, noise = torch.rand(3, 1, 28, 28), torch.rand(3, 49)
    loss, pred, mask = model(images, noise)
    patches = patchify(images, 4)
    visible = (1 - mask)[..., None]
    assert model.loss(pred + 5 * visible * torch.randn_like(pred), patches, mask) == loss
    assert model.loss(pred, patches + 5 * visible * torch.randn_like(patches), mask) == loss
    # a masked patch's pixels: unseen by the encoder (same prediction), but a new target
    b, l = 1, int(mask[1].nonzero()[0])
    i, j = divmod(l, 7)
    changed = images.clone()
    changed[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = torch.rand(1, 4, 4)
    loss2, pred2, _ = model(changed, noise)
    torch.testing.assert_close(pred2, pred, rtol=1e-13, atol=1e-13)
    assert abs(loss2.item() - loss.item()) > 1e-6


def test_mae_batch_loss_is_the_mean_of_equal_parts(float64):
    torch.manual_seed(3)
    model = MAE(MAE_CONFIGS["tiny"])
    images, noise = torch.rand(8, 1, 28, 28), torch.rand(8, 49)
    whole = model(images, noise)[0]
    halves = [model(images[s], noise[s])[0] for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2, rtol=1e-13, atol=1e-13)


def test_mae_a_step_reduces_the_loss():
    torch.manual_seed(4)
    model = MAE(MAE_CONFIGS["tiny"])
    images, noise = torch.rand(16, 1, 28, 28), torch.rand(16, 49)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = model(images, noise)[0]
    before.backward()
    opt.step()
    assert model(images, noise)[0].item() < before.item()


@pytest.mark.parametrize("size", ["tiny", "gpu"])
def test_mae_shapes(size):
    cfg = MAE_CONFIGS[size]
    torch.manual_seed(0)
    loss, pred, mask = MAE(cfg)(torch.rand(2, cfg.in_chans, cfg.image_size, cfg.image_size))
    assert loss.shape == () and pred.shape == (2, 49, 16) and mask.shape == (2, 49)


@pytest.mark.parametrize("bad,match", [
    (dict(patch_size=5), "divisible by patch_size"),
    (dict(encoder_dim=66), "encoder_dim .* encoder_heads"),
    (dict(decoder_dim=30, decoder_heads=3), "divisible by 4"),
    (dict(mask_ratio=1.0), "at least one"),
    (dict(mask_ratio=0.0), "at least one"),
    (dict(encoder_depth=0), "encoder_depth"),
])
def test_mae_rejects_bad_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        MAEConfig(**bad)


def test_mae_rejects_bad_inputs():
    model = MAE(MAE_CONFIGS["tiny"])
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.rand(2, 1, 28, 28), torch.rand(2, 48))


# ---------------------------------------------------------------- naming for zoo.create

@pytest.mark.parametrize("make,expected", [
    (lambda: Llama(SMALL), {f"layers.{i}.{m}.{p}_proj.weight" for i in range(2)
                            for m, ps in (("self_attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for p in ps}),
    (lambda: MAE(MAE_CONFIGS["tiny"]), {f"{blocks}.{i}.{w}.weight" for blocks, depth in (("blocks", 2), ("decoder_blocks", 1))
                                        for i in range(depth) for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}),
])
def test_zoo_create_finds_the_low_rank_weights(make, expected):
    opt = zoo.create(make(), "apollo-mini", lr=1e-3)
    groups = {g["name"]: set(g["param_names"]) for g in opt.param_groups}
    assert groups["low_rank"] == expected
