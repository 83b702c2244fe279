"""The zoo inside HF transformers: :class:`ZooCallback` for the ``Trainer``, and the ``zoo-int8``
quantization method for ``save_pretrained`` / ``from_pretrained`` of INT8 weights.

    import zoo
    from zoo.integrations.transformers import ZooCallback
    opt = zoo.create(model, "c-adamw", lr=1e-3)
    trainer = Trainer(model, args, train_dataset=..., optimizers=(opt, None), callbacks=[ZooCallback()])

**ZooCallback** does what the Trainer does not:

- **Schedule-Free** (``sf-adamw``): the Trainer calls ``optimizer.eval()`` before evaluating and
  ``optimizer.train()`` before each training step, but saves checkpoints in train mode, so a
  checkpoint (and ``save_model()`` after training) would hold the training point y, not the
  average x. The callback calls ``eval()`` at a step that will save (``control.should_save``) and
  when training ends; the Trainer's next training step calls ``train()``, as a run resumed from
  the checkpoint does, so the resumed run continues bit for bit.
- **Logs**, with the training loss: ``cautious_fraction`` (what the mask kept at the last step),
  ``optimizer_state_bytes`` and, with per-layer updates, ``per_layer_grad_norm`` (the last step's
  global gradient norm, summed in the hooks). They go to the ``logs`` of the callbacks after this
  one and to ``trainer.state.log_history``.
- **Per-layer updates** (``zoo.create(..., layerwise=True)``): at the start of training it raises
  when ``gradient_accumulation_steps`` is not the optimizer's ``accumulate``, and warns when
  ``max_grad_norm`` is set (the Trainer's clipping runs after the gradients were applied; set it
  to 0 and pass ``clip_grad_norm=`` to ``zoo.create``). Without the callback, the optimizer raises
  at the second backward pass of a step, and the Trainer's clipping warns at the first step.

**INT8 weights** (:func:`zoo.quantize_weights` on a ``PreTrainedModel``): the state dict holds each
quantized weight ``W`` as ``W_codes``, ``W_scale``, ``W_low``, ``W_seed`` (:mod:`zoo.quantized`), so
``save_pretrained`` and Trainer checkpoints write them to safetensors and a resume loads them back
exactly; the model's config records ``quantization_config = {"quant_method": "zoo-int8", ...}``.
Importing this module registers the method with transformers, so that
``AutoModelForCausalLM.from_pretrained(folder)`` rebuilds the INT8 weights, codes and seeds as
saved; ``from_pretrained(float_folder, quantization_config=ZooInt8Config())`` quantizes the
selection of :func:`zoo.filters.select_matrices` while loading (as :func:`zoo.quantize_weights`
with the same settings). Without this module imported, transformers does not know the method: it
warns that it skips it and that the weights are missing.
"""
from __future__ import annotations

from transformers import TrainerCallback
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..filters import select_matrices
from ..quantized import HF_METHOD, STATE_SUFFIXES, QuantizedWeight, _check_settings, _hook_state, quantize
from . import check_per_layer, figures, switch

__all__ = ["ZooCallback", "ZooInt8Config", "ZooInt8Quantizer", "METHOD"]

METHOD = HF_METHOD


class ZooCallback(TrainerCallback):
    """Schedule-Free's average around checkpoints, the zoo's figures in the logs, and the checks of
    per-layer updates against the Trainer's settings (module docstring)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        check_per_layer(optimizer, accumulation="TrainingArguments(gradient_accumulation_steps",
                        steps=args.gradient_accumulation_steps, clipping="TrainingArguments(max_grad_norm",
                        clip=args.max_grad_norm, off="max_grad_norm=0", client="the Trainer")

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if control.should_save:
            switch(optimizer, "eval")

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        if control.should_save:
            switch(optimizer, "eval")

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        switch(optimizer, "eval")

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or "loss" not in logs:   # the training logs, not evaluation's
            return
        extra = figures(optimizer)
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)


# -- the zoo-int8 quantization method --------------------------------------------------------------

@register_quantization_config(METHOD)
class ZooInt8Config(QuantizationConfigMixin):
    """``quantization_config`` of a model with zoo INT8 weights (:func:`zoo.quantize_weights`'s
    settings); ``seed`` is the base of the rounding seeds when quantizing while loading."""

    def __init__(self, bits: int = 8, group_size: int = 128, stochastic_round: bool = True, seed: int = 0,
                 **kwargs):
        _check_settings(bits, group_size)
        self.quant_method = METHOD
        self.bits, self.group_size, self.stochastic_round, self.seed = bits, group_size, stochastic_round, seed


class _Deserialize(ConversionOps):
    """A saved INT8 weight (its plain tensors) -> the :class:`QuantizedWeight`."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer   # transformers then leaves the tensors' dtypes alone

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        codes, scale, low, seed = (input_dict["weight" + suffix][0] for suffix in STATE_SUFFIXES)
        dtype = model.get_parameter(full_layer_name).dtype if model is not None else scale.dtype
        config = self.hf_quantizer.quantization_config
        return {full_layer_name: QuantizedWeight(codes, scale, low, dtype, codes.numel() // scale.numel(),
                                                 config.stochastic_round, int(seed))}


class _Quantize(ConversionOps):
    """A float weight of a float checkpoint -> a :class:`QuantizedWeight` (round to nearest)."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        ((key, value),) = input_dict.items()
        weight = value[0] if isinstance(value, list) else value
        config = self.hf_quantizer.quantization_config
        dtype = model.get_parameter(key).dtype if model is not None else weight.dtype
        return {key: quantize(weight.to(dtype), group_size=config.group_size, stochastic_round=config.stochastic_round,
                              seed=self.hf_quantizer.seeds[key])}


@register_quantizer(METHOD)
class ZooInt8Quantizer(HfQuantizer):
    """transformers' side of ``zoo-int8``: loads saved INT8 weights (or quantizes a float
    checkpoint's selected weights while loading), saves them through the model's state dict, and
    lets the Trainer train them (any zoo optimizer updates INT8 weights)."""

    requires_calibration = False
    serialized_names = {"weight": ["weight" + suffix for suffix in STATE_SUFFIXES]}

    def get_load_operations(self):
        return {"deserialize": _Deserialize}

    def get_quantize_ops(self):
        return _Quantize(self)

    def _process_model_before_weight_loading(self, model, **kwargs):
        chosen = select_matrices(model).matrices if not self.pre_quantized else {}
        self.seeds = {name: self.quantization_config.seed + i for i, name in enumerate(chosen, start=1)}
        return model

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return not self.pre_quantized and param_name in getattr(self, "seeds", {})

    def _process_model_after_weight_loading(self, model, **kwargs):
        for module in model.modules():
            if any(isinstance(p, QuantizedWeight) for p in module._parameters.values()):
                _hook_state(module)
        if hasattr(model, "_weight_conversions"):   # loaded by our operations: nothing to revert on save
            model._weight_conversions = [c for c in model._weight_conversions if not any(
                isinstance(op, (_Deserialize, _Quantize)) for op in getattr(c, "operations", ()))]
        return model

    def get_state_dict_and_metadata(self, model):
        return model.state_dict(), {}

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True
