"""Causal language models of HF transformers, built from a config alone, behind the interface of
:class:`analysis.models.llama.Llama`: ``forward(inputs, targets) -> (logits, loss)``.

``build_causal_lm(spec, vocab_size, max_seq_len)`` takes a transformers config source (a local
folder holding ``config.json``, a ``config.json`` file, or a Hub name such as ``gpt2``, which needs
a network), sets its vocabulary to the tokens' and its position limit to at least the sequence
length, and builds ``AutoModelForCausalLM.from_config``: fresh weights (the model's own
initialisation, from the global torch RNG), never downloaded. ``llama_config_for`` is the HF
``LlamaConfig`` of one of this repository's LLaMA sizes, for comparing the two implementations.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .llama import LlamaConfig

if TYPE_CHECKING:
    import transformers   # imported where used: importing this module (as analysis.pretrain does) stays cheap

__all__ = ["CausalLM", "build_causal_lm", "causal_lm", "llama_config_for", "load_config"]

POSITION_LIMITS = ("max_position_embeddings", "n_positions")
"""Config attributes that bound the sequence length (GPT-2's ``n_positions`` is also reachable as
``max_position_embeddings`` through its ``attribute_map``)."""
SPECIAL_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id")


class CausalLM(nn.Module):
    """A transformers causal LM (the submodule ``model``) with the interface of
    :class:`analysis.models.llama.Llama`."""

    def __init__(self, model: nn.Module, max_seq_len: int):
        super().__init__()
        self.model = model
        self.max_seq_len = max_seq_len

    def num_params(self) -> int:
        """Number of parameter values (a tied embedding and head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, vocab] for token ids ``idx`` [B, T] and, given ``targets`` [B, T] (the
        next token at each position: already shifted, unlike HF's ``labels``), the mean
        cross-entropy over positions (targets equal to -100 ignored), computed as ``Llama`` does;
        the loss is None without targets. No key/value cache is kept."""
        T = idx.shape[1]
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.max_seq_len}")
        logits = self.model(input_ids=idx, use_cache=False).logits
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def load_config(spec: str) -> transformers.PretrainedConfig:
    """The transformers config of ``spec``: a local folder with ``config.json``, a JSON config file,
    or a Hub name (fetched, config only). ``ValueError`` when there is none."""
    import transformers
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"model config {spec}: this folder has no config.json")
    looks_local = path.is_absolute() or spec.startswith((".", "~")) or spec.endswith(".json")
    if not path.exists() and looks_local:
        raise ValueError(f"model config {spec}: no such folder or file; give a folder holding config.json, "
                         f"a config.json file or a Hugging Face Hub name")
    try:
        return transformers.AutoConfig.from_pretrained(str(path) if path.exists() else spec)
    except (OSError, ValueError, KeyError) as error:
        where = "this file is not a transformers config" if path.exists() else \
            "not a local folder or file, and the Hub gave no config of that name"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model config {spec}: {where} ({reason[:200]})") from None


def build_causal_lm(spec: str, vocab_size: int, max_seq_len: int) -> CausalLM:
    """``AutoModelForCausalLM.from_config`` of the config ``spec`` (:func:`load_config`), with
    ``vocab_size`` tokens and a position limit of at least ``max_seq_len``: :func:`causal_lm`.
    ``ValueError`` for a bad spec or a config that is not a causal LM."""
    return causal_lm(load_config(spec), vocab_size, max_seq_len, name=spec)


def causal_lm(config: transformers.PretrainedConfig, vocab_size: int, max_seq_len: int, name: str = "") -> CausalLM:
    """``AutoModelForCausalLM.from_config`` of a copy of ``config`` with ``vocab_size`` tokens and a
    position limit raised to ``max_seq_len`` where it is lower (kept where higher), wrapped as a
    :class:`CausalLM`. Weights are fresh, in torch's default dtype whatever the config names (the
    runner autocasts). Special token ids (pad, bos, eos) outside the new vocabulary are dropped:
    they name tokens of the config's own tokenizer. ``ValueError`` (naming the config as ``name``)
    for a config that is not a causal LM, or sizes below 1."""
    import transformers
    if vocab_size < 1 or max_seq_len < 1:
        raise ValueError(f"vocab_size and max_seq_len must be >= 1, got {vocab_size} and {max_seq_len}")
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"model config {name or type(config).__name__}: a {config.model_type!r} config, which is "
                         f"not a causal language model (AutoModelForCausalLM takes e.g. llama, gpt2, mistral, qwen2)")
    config = copy.deepcopy(config)
    for key in SPECIAL_TOKENS:   # ids of the config's tokenizer, before the vocabulary changes
        ids = getattr(config, key, None)
        if isinstance(ids, int) and ids >= vocab_size:
            setattr(config, key, None)
        elif isinstance(ids, list):
            setattr(config, key, [i for i in ids if i < vocab_size] or None)
    config.vocab_size = vocab_size
    for key in POSITION_LIMITS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, max(getattr(config, key), max_seq_len))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.get_default_dtype())
    return CausalLM(model, max_seq_len)


def llama_config_for(cfg: LlamaConfig) -> transformers.LlamaConfig:
    """The HF ``LlamaConfig`` of the architecture of ``cfg``: the same sizes, heads without grouped
    keys and values, RMSNorm eps, rotary theta (HF's default rotary layout is the one ``Llama``
    uses), no biases, an untied lm_head, SiLU gates and normal(0, 0.02) initialisation, so that
    ``LlamaForCausalLM`` has the same parameters, by name (after HF's ``model.`` prefix) and
    shape, as ``Llama(cfg)``."""
    import transformers
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, initializer_range=0.02,
        pad_token_id=None)
