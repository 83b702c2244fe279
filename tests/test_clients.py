"""The zoo inside the training stacks users train with: HF transformers' Trainer, accelerate and
Lightning, on tiny HF models built from configs and data made here (never a hub download).
Nothing a client does (clipping, accumulation, saving, evaluating) may silently lose its effect."""
from __future__ import annotations

import re
import warnings

import lightning.pytorch as L
import pytest
import torch
import transformers as T
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from safetensors.torch import load_file

import zoo
from zoo.integrations.lightning import ZooCallback as LightningCallback
from zoo.integrations.transformers import ZooCallback, ZooInt8Config
from zoo.layerwise import SpentGradient
from zoo.quantized import QuantizedWeight

VOCAB = 64
DATA = torch.randint(0, VOCAB, (24, 16), generator=torch.Generator().manual_seed(0))


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB,
                                            max_position_embeddings=32))


def dataset():
    return [{"input_ids": x, "labels": x} for x in DATA]


def arguments(out, **settings):
    return T.TrainingArguments(**{**dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=4,
                                         learning_rate=1e-3, lr_scheduler_type="constant", use_cpu=True,
                                         report_to="none", logging_steps=1, save_steps=3, disable_tqdm=True,
                                         seed=0), **settings})


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def pattern(names) -> list[str]:
    """Qualified names with layer and expert indices as ``*``, sorted and deduplicated."""
    return sorted({re.sub(r"\.\d+(?=\.)", ".*", name) for name in names})


# -- HF Trainer ---------------------------------------------------------------------------------

TRAINER_CASES = {   # case -> (name, create settings, quantize, TrainingArguments settings)
    "c-adamw": ("c-adamw", {}, False, {}),
    "c-lion": ("c-lion", {"lr": 1e-4}, False, {}),
    "apollo-mini": ("apollo-mini", {"update_proj_gap": 2}, False, {}),
    "muon": ("muon", {"lr": 0.02}, False, {}),
    "sf-adamw": ("sf-adamw", {}, False, {}),
    "soap": ("soap", {"precondition_frequency": 2}, False, {}),
    "c-adamw-int8": ("c-adamw", {}, True, {}),
    "apollo-mini-int8-per-layer-accumulate-2": ("apollo-mini", {"layerwise": True, "accumulate": 2}, True,
                                                {"gradient_accumulation_steps": 2, "max_grad_norm": 0}),
}


def fit(out, case, resume=None, callbacks=True, **settings):
    name, create, quantize, extra = TRAINER_CASES[case]
    model = tiny_llama()
    if quantize:
        zoo.quantize_weights(model)
    optimizer = zoo.create(model, name, **{"lr": 1e-3, **create})
    trainer = T.Trainer(model, arguments(out, **{**extra, **settings}), train_dataset=dataset(),
                        optimizers=(optimizer, None), callbacks=[ZooCallback()] if callbacks else [])
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, model, optimizer


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_trainer_resumes_bit_for_bit(tmp_path, case):
    """6 steps straight, against a fresh Trainer resumed from the checkpoint at step 3 (INT8
    weights through the checkpoint's safetensors; per-layer updates with accumulation)."""
    _, full, _ = fit(tmp_path / "a", case)
    _, resumed, _ = fit(tmp_path / "b", case, resume=tmp_path / "a" / "checkpoint-3")
    assert same_weights(full, resumed)
    if TRAINER_CASES[case][2]:
        saved = load_file(tmp_path / "a" / "checkpoint-3" / "model.safetensors")
        assert saved["model.layers.0.mlp.up_proj.weight_codes"].dtype == torch.uint8


def test_trainer_builds_a_zoo_class_it_is_given(tmp_path):
    """A tool that takes an optimizer class (Trainer's optimizer_cls_and_kwargs) takes zoo.get(name):
    the Trainer builds CLion over its own weight-decay groups."""
    model = tiny_llama()
    trainer = T.Trainer(model, arguments(tmp_path, max_steps=2, weight_decay=0.1), train_dataset=dataset(),
                        optimizer_cls_and_kwargs=(zoo.get("c-lion"), {"lr": 1e-4}))
    trainer.train()
    inner = zoo.unwrap(trainer.optimizer)
    assert type(inner) is zoo.get("c-lion") and isinstance(inner, zoo.get("lion"))
    assert {group["weight_decay"] for group in inner.param_groups} == {0.0, 0.1}
    assert 0 < zoo.aligned_fraction(trainer.optimizer) <= 1


def test_trainer_per_layer_accumulation_equals_the_ordinary_trainer(tmp_path):
    _, per_layer, _ = fit(tmp_path / "a", "apollo-mini-int8-per-layer-accumulate-2")
    model = tiny_llama()
    zoo.quantize_weights(model)
    optimizer = zoo.create(model, "apollo-mini", lr=1e-3)
    T.Trainer(model, arguments(tmp_path / "b", gradient_accumulation_steps=2, max_grad_norm=0),
              train_dataset=dataset(), optimizers=(optimizer, None)).train()
    assert same_weights(per_layer, model)


def test_trainer_int8_model_saves_and_loads_through_save_pretrained(tmp_path):
    trainer, model, _ = fit(tmp_path / "run", "c-adamw-int8")
    trainer.save_model(str(tmp_path / "model"))
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    for (name, p), q in zip(model.named_parameters(), loaded.parameters()):
        if isinstance(p, QuantizedWeight):
            assert isinstance(q, QuantizedWeight) and (p.seed, p.group_size) == (q.seed, q.group_size), name
            assert all(torch.equal(a, b) for a, b in zip((p.codes, p.scale, p.low), (q.codes, q.scale, q.low)))
        else:
            assert torch.equal(p, q), name
    ids = DATA[:2]
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    loaded.save_pretrained(tmp_path / "again")   # a loaded INT8 model saves again
    assert torch.equal(T.AutoModelForCausalLM.from_pretrained(tmp_path / "again")(ids).logits, loaded(ids).logits)


def test_from_pretrained_quantizes_a_float_checkpoint_as_quantize_weights(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=ZooInt8Config(seed=4))
    reference = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    zoo.quantize_weights(reference, seed=4)
    quantized = [n for n, p in loaded.named_parameters() if isinstance(p, QuantizedWeight)]
    assert quantized == [n for n, p in reference.named_parameters() if isinstance(p, QuantizedWeight)]
    assert len(quantized) == 14 and same_weights(loaded, reference)


def test_trainer_clipping_cannot_act_on_per_layer_updates_and_says_so(tmp_path):
    """The Trainer's max_grad_norm runs after per-layer updates applied the gradients: it warns,
    at the first step, naming the settings (the callback, at the start), and the logged grad_norm
    is the true one (the ordinary Trainer's at the first step, from the same weights)."""
    model = tiny_llama()
    optimizer = zoo.create(model, "adamw", lr=1e-3, layerwise=True)
    trainer = T.Trainer(model, arguments(tmp_path / "a", max_steps=2, max_grad_norm=0.01), train_dataset=dataset(),
                        optimizers=(optimizer, None))
    with pytest.warns(UserWarning, match=r"cannot act with per-layer updates.*max_grad_norm=0"):
        trainer.train()
    ordinary = tiny_llama()
    reference = T.Trainer(ordinary, arguments(tmp_path / "b", max_steps=1, max_grad_norm=0.01),
                          train_dataset=dataset(), optimizers=(zoo.create(ordinary, "adamw", lr=1e-3), None))
    reference.train()
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(reference.state.log_history[0]["grad_norm"],
                                                                         rel=1e-6)
    with pytest.warns(UserWarning, match=r"TrainingArguments\(max_grad_norm=0.01\) cannot clip"):
        model = tiny_llama()
        T.Trainer(model, arguments(tmp_path / "c", max_steps=1, max_grad_norm=0.01), train_dataset=dataset(),
                  optimizers=(zoo.create(model, "adamw", layerwise=True), None), callbacks=[ZooCallback()]).train()


def test_trainer_per_layer_clipping_in_the_hooks_is_logged_without_warnings(tmp_path):
    model = tiny_llama()
    optimizer = zoo.create(model, "c-adamw", lr=1e-3, layerwise=True, clip_grad_norm=0.5)
    trainer = T.Trainer(model, arguments(tmp_path, max_steps=3, max_grad_norm=0), train_dataset=dataset(),
                        optimizers=(optimizer, None), callbacks=[ZooCallback()])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*(cannot act|cannot clip).*")
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["per_layer_grad_norm"] > 0.5 and 0 < entry["cautious_fraction"] <= 1 for entry in logs[1:])
    assert logs[1]["grad_norm"] == pytest.approx(logs[1]["per_layer_grad_norm"], rel=1e-6)


def test_trainer_accumulation_needs_accumulate_k(tmp_path):
    def trainer(callbacks):
        model = tiny_llama()
        optimizer = zoo.create(model, "adamw", lr=1e-3, layerwise=True)
        return T.Trainer(model, arguments(tmp_path, gradient_accumulation_steps=2, max_grad_norm=0),
                         train_dataset=dataset(), optimizers=(optimizer, None), callbacks=callbacks)
    with pytest.raises(RuntimeError, match="accumulate=k"):
        trainer([]).train()
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2\) with per-layer updates of accumulate=1"):
        trainer([ZooCallback()]).train()


def test_trainer_schedule_free_checkpoints_and_final_model_hold_the_average(tmp_path):
    """Without evaluation the Trainer saves in train mode (the point y); with ZooCallback the
    checkpoint at step 3 holds the average x of step 3, and after training the model is at x."""
    def checkpoint_weights(folder):
        return load_file(folder / "checkpoint-3" / "model.safetensors")

    _, _, optimizer = fit(tmp_path / "with", "sf-adamw")
    fit(tmp_path / "without", "sf-adamw", callbacks=False)
    _, reference, reference_optimizer = fit(tmp_path / "ref", "sf-adamw", callbacks=False, max_steps=3,
                                            save_steps=100)
    training_point = {k: v.clone() for k, v in reference.state_dict().items()}
    reference_optimizer.eval()
    average = reference.state_dict()
    with_callback, without = checkpoint_weights(tmp_path / "with"), checkpoint_weights(tmp_path / "without")
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(with_callback[key], average[key]) and torch.equal(without[key], training_point[key])
    assert not torch.equal(average[key], training_point[key])
    assert all(group["train_mode"] is False for group in optimizer.param_groups)   # save_model() saves x


def test_trainer_callbacks_see_the_zoo_through_accelerates_wrapper(tmp_path):
    seen = []

    class Probe(T.TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            seen.append((type(optimizer), zoo.aligned_fraction(optimizer), zoo.state_bytes(optimizer),
                         zoo.describe(optimizer)))

    trainer, _, optimizer = fit(tmp_path, "c-adamw", max_steps=2)
    trainer.add_callback(Probe())
    trainer.train()
    wrapper, fraction, nbytes, text = seen[-1]
    assert wrapper is AcceleratedOptimizer and zoo.unwrap(trainer.optimizer) is optimizer
    assert 0 < fraction <= 1 and nbytes == zoo.state_bytes(optimizer) > 0 and "decay" in text
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged[-1]["optimizer_state_bytes"] == nbytes and "cautious_fraction" in logged[-1]


# -- accelerate ---------------------------------------------------------------------------------

def accelerate_run(layerwise, steps=4, state_in=None, state_out=None, clip=None, first=0):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = tiny_llama()
    zoo.quantize_weights(model)
    optimizer = zoo.create(model, "c-adamw", lr=1e-3, layerwise=layerwise, accumulate=2 if layerwise else 1)
    model, optimizer = accelerator.prepare(model, optimizer)
    if state_in:
        accelerator.load_state(state_in)
    for i in range(2 * first, 2 * (first + steps)):
        with accelerator.accumulate(model):
            batch = DATA[4 * (i % 6):4 * (i % 6) + 4]
            accelerator.backward(model(batch, labels=batch).loss)
            if clip and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
    if state_out:
        accelerator.save_state(state_out)
    return model, optimizer


def test_accelerate_loop_with_per_layer_accumulation_int8_and_a_saved_state(tmp_path):
    per_layer, optimizer = accelerate_run(True, state_out=tmp_path / "state")
    ordinary, _ = accelerate_run(False)
    assert same_weights(per_layer, ordinary)
    assert zoo.state_bytes(optimizer) == zoo.expected_state_bytes(optimizer) > 0
    again, _ = accelerate_run(True, steps=2, state_in=tmp_path / "state", first=4)
    straight, _ = accelerate_run(True, steps=6)
    assert same_weights(again, straight)
    with pytest.warns(UserWarning, match="cannot act with per-layer updates"):
        accelerate_run(True, steps=1, clip=1e-3)


# -- Lightning ----------------------------------------------------------------------------------

class Module(L.LightningModule):
    def __init__(self, name, **create):
        super().__init__()
        self.model, self.name, self.create = tiny_llama(), name, create
        self.wrappers = []

    def training_step(self, batch, batch_idx):
        loss = self.model(batch[0], labels=batch[0]).loss
        self.wrappers.append(self.optimizers())
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(batch[0], labels=batch[0]).loss)

    def configure_optimizers(self):
        return zoo.create(self.model, self.name, **{"lr": 1e-3, **self.create})


def lightning_fit(tmp_path, module, steps=6, ckpt_path=None, **settings):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(DATA[:12]), batch_size=4)
    checkpoints = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=3,
                                              save_top_k=-1, filename="{step}")
    trainer = L.Trainer(**{**dict(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                                  enable_progress_bar=False, enable_model_summary=False,
                                  callbacks=[LightningCallback(), checkpoints], limit_val_batches=1,
                                  val_check_interval=None, check_val_every_n_epoch=1), **settings})
    trainer.fit(module, loader, loader, ckpt_path=ckpt_path)
    return trainer


def test_lightning_schedule_free_checkpoint_holds_the_average_and_resumes_bit_for_bit(tmp_path):
    full = Module("sf-adamw")
    lightning_fit(tmp_path / "a", full)
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "step=3.ckpt", weights_only=False)
    reference = Module("sf-adamw")
    trainer = lightning_fit(tmp_path / "ref", reference, steps=3, enable_checkpointing=False,
                            callbacks=[LightningCallback()], limit_val_batches=0)
    assert all(group["train_mode"] is False for group in trainer.optimizers[0].param_groups)   # eval at the end
    key = "model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(checkpoint["state_dict"][key], reference.state_dict()[key])
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["train_mode"] is False
    resumed = Module("sf-adamw")
    lightning_fit(tmp_path / "b", resumed, ckpt_path=tmp_path / "a" / "checkpoints" / "step=3.ckpt")
    assert same_weights(full, resumed)


def test_lightning_logs_the_figures_and_sees_through_its_wrapper(tmp_path):
    module = Module("c-adamw")
    trainer = lightning_fit(tmp_path, module, steps=2)
    assert {"cautious_fraction", "optimizer_state_bytes"} <= set(trainer.callback_metrics)
    wrapper = module.wrappers[-1]
    assert isinstance(wrapper, L.core.optimizer.LightningOptimizer) and 0 < zoo.aligned_fraction(wrapper) <= 1
    assert trainer.callback_metrics["optimizer_state_bytes"] == zoo.state_bytes(wrapper)


def test_lightning_per_layer_settings_are_checked(tmp_path):
    with pytest.warns(UserWarning, match=r"gradient_clip_val=0.01\) cannot clip per-layer updates"):
        lightning_fit(tmp_path / "a", Module("adamw", layerwise=True), steps=1, gradient_clip_val=0.01)
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=2\) with per-layer updates of accumulate=1"):
        lightning_fit(tmp_path / "b", Module("adamw", layerwise=True), steps=1, accumulate_grad_batches=2)
    module = Module("adamw", layerwise=True, accumulate=2, clip_grad_norm=0.5)
    lightning_fit(tmp_path / "c", module, steps=2, accumulate_grad_batches=2)
    assert isinstance(module.model.model.layers[0].mlp.up_proj.weight.grad, (SpentGradient, type(None)))


# -- which weights are low-rank, on HF architectures ----------------------------------------------

ATTENTION = ["{}.self_attn.k_proj.weight", "{}.self_attn.o_proj.weight", "{}.self_attn.q_proj.weight",
             "{}.self_attn.v_proj.weight"]
LLAMA_MLP = ["{}.mlp.down_proj.weight", "{}.mlp.gate_proj.weight", "{}.mlp.up_proj.weight"]
H, I = 32, 64
ARCHITECTURES = {
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=I, vocab_size=VOCAB)),
              [s.format("model.layers.*") for s in ATTENTION + LLAMA_MLP], []),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=H, n_layer=2, n_head=4, n_inner=I, vocab_size=VOCAB,
                                                    n_positions=32, bos_token_id=0, eos_token_id=0)),
             ["transformer.h.*.attn.c_attn.weight", "transformer.h.*.attn.c_proj.weight",
              "transformer.h.*.mlp.c_fc.weight", "transformer.h.*.mlp.c_proj.weight"], []),
    "bert": (lambda: T.BertForMaskedLM(T.BertConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=I, vocab_size=VOCAB,
                                                    max_position_embeddings=32)),
             [f"bert.encoder.layer.*.{s}.weight" for s in ("attention.output.dense", "attention.self.key",
                                                            "attention.self.query", "attention.self.value",
                                                            "intermediate.dense", "output.dense")], []),
    "opt": (lambda: T.OPTForCausalLM(T.OPTConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                 ffn_dim=I, vocab_size=VOCAB, max_position_embeddings=32,
                                                 word_embed_proj_dim=H)),
            [f"model.decoder.layers.*.{s}.weight" for s in ("fc1", "fc2", "self_attn.k_proj", "self_attn.out_proj",
                                                            "self_attn.q_proj", "self_attn.v_proj")], []),
    "t5": (lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=H, d_kv=8, d_ff=I, num_layers=2,
                                                           num_decoder_layers=2, num_heads=4, vocab_size=VOCAB,
                                                           relative_attention_num_buckets=8)),
           sorted([f"{side}.block.*.layer.*.{s}.weight" for side in ("encoder", "decoder")
                   for s in ("DenseReluDense.wi", "DenseReluDense.wo", "SelfAttention.k", "SelfAttention.o",
                             "SelfAttention.q", "SelfAttention.v")]
                  + [f"decoder.block.*.layer.*.EncDecAttention.{s}.weight" for s in "koqv"]), []),
    "mixtral": (lambda: T.MixtralForCausalLM(T.MixtralConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                             num_key_value_heads=2, intermediate_size=I,
                                                             vocab_size=VOCAB, num_local_experts=2,
                                                             num_experts_per_tok=1)),
                [s.format("model.layers.*") for s in ATTENTION],
                ["model.layers.*.mlp.experts.down_proj", "model.layers.*.mlp.experts.gate_up_proj"]),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                                            intermediate_size=I, image_size=16, patch_size=4,
                                                            num_labels=5)),
            [f"vit.layers.*.{s}.weight" for s in ("attention.k_proj", "attention.o_proj", "attention.q_proj",
                                                 "attention.v_proj", "mlp.fc1", "mlp.fc2")], []),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_low_rank_selection_by_module_type_and_role(arch):
    """The attention and MLP matrices inside the blocks; never embeddings, heads, poolers, norms,
    biases, T5's relative attention bias or routers; fused 3-D experts left full-rank with a
    warning naming them. The same selection for Muon and quantize_weights."""
    build, expected, left = ARCHITECTURES[arch]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        groups = {g["name"]: g["param_names"] for g in zoo.create(build(), "apollo-mini").param_groups}
    messages = [str(w.message) for w in caught if "stay full-rank" in str(w.message)]
    expected = sorted(expected)
    assert pattern(groups["low_rank"]) == expected
    if left:
        assert len(messages) == 1 and all(name.replace("*", "0") in messages[0] for name in left)
        assert "fused expert weights" in messages[0]
    else:
        assert not messages
    muon = {g["name"]: g["param_names"] for g in zoo.create(build(), "muon", lr=0.02).param_groups}
    assert muon["muon"] == groups["low_rank"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pattern(zoo.quantize_weights(build())) == expected
    if arch == "mixtral":   # the routers stay out, with AdamW
        assert "model.layers.0.mlp.gate.weight" in groups["decay"]
