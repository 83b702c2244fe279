"""Model files for small pretraining runs, one short file per model: a LLaMA decoder
(``llama.py``, the papers' language-model sizes) and a masked autoencoder (``mae.py``, the
image task). Configs are frozen dataclasses; ``CONFIGS`` maps size names to them."""
from .llama import CONFIGS as LLAMA_CONFIGS, Llama, LlamaConfig
from .mae import CONFIGS as MAE_CONFIGS, MAE, MAEConfig

__all__ = ["Llama", "LlamaConfig", "LLAMA_CONFIGS", "MAE", "MAEConfig", "MAE_CONFIGS"]
