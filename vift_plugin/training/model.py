"""Loading a model for ViFT training: quantization, role freezing and LoRA. A saved run to start
from is read through :mod:`vift_plugin.loading`."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
from torch import nn

from vift_plugin.layers import find_decoder_layers
from vift_plugin.loading import adapter_base, check_saved_model, continue_from_run
from vift_plugin.training.arguments import ModelArguments, ViFTTrainingArguments, parse_layer_range
from vift_plugin.training.roles import (
    GENERIC_PATTERNS,
    MODEL_TYPE_PATTERNS,
    module_names_by_role,
    parameters_by_role,
    set_trainable,
)

logger = logging.getLogger(__name__)


def _dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(torch, name)


def unquantized_modules(model_type: str) -> list[str]:
    """Patterns (transformers' ``llm_int8_skip_modules`` syntax) for the vision encoder, the connector
    and the output head: QLoRA quantizes only the language model, whose weights are the bulk."""
    patterns = MODEL_TYPE_PATTERNS.get(model_type, GENERIC_PATTERNS)
    names = {*patterns["vision"], *patterns["connector"], "lm_head"}
    return sorted(rf"(?:.*\.)?{re.escape(name)}" for name in names)


def _config_model_type(path: str, model_args: ModelArguments) -> str:
    from transformers import AutoConfig

    path = adapter_base(path) or path
    config = AutoConfig.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    return str(config.model_type)


def _resolve(model_args: ModelArguments) -> str:
    path = model_args.model_name_or_path
    return os.path.abspath(path) if os.path.isdir(path) else path  # saved adapters then name their base anywhere


def load_training_processor(model_args: ModelArguments, args: ViFTTrainingArguments) -> Any:
    """The processor of ``model_args.model_name_or_path``, with ``max_pixels`` applied (no weights load)."""
    from vift_plugin.processors import load_processor

    processor = load_processor(_resolve(model_args))
    apply_max_pixels(processor, args.max_pixels)
    return processor


def load_training_model(model_args: ModelArguments, args: ViFTTrainingArguments) -> Any:
    """Load ``model_args.model_name_or_path`` (or a saved LoRA run) and prepare it with :func:`prepare_model`."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    path = _resolve(model_args)
    kwargs: dict[str, Any] = {"dtype": _dtype(model_args.dtype), "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.load_in_bits:
        compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=model_args.load_in_bits == 4,
            load_in_8bit=model_args.load_in_bits == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=unquantized_modules(_config_model_type(path, model_args)),
        )
    check_saved_model(path)
    base = adapter_base(path)
    if base is not None:
        check_saved_model(base)
        model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
        model = continue_from_run(model, path, merge=not model_args.load_in_bits)
    else:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return prepare_model(model, args, quantized=bool(model_args.load_in_bits))


def load_model_and_processor(model_args: ModelArguments, args: ViFTTrainingArguments) -> tuple[Any, Any]:
    """``(load_training_model(...), load_training_processor(...))``."""
    return load_training_model(model_args, args), load_training_processor(model_args, args)


def apply_max_pixels(processor: Any, max_pixels: int | None) -> None:
    """Cap the image processor's resize target too, so inference sees what training saw."""
    if max_pixels is None:
        return
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return
    if hasattr(image_processor, "max_pixels"):
        image_processor.max_pixels = max_pixels
    size = getattr(image_processor, "size", None)
    if isinstance(size, dict) and "longest_edge" in size and "shortest_edge" in size:
        size["longest_edge"] = max_pixels


def lora_target_modules(model: nn.Module, args: ViFTTrainingArguments) -> list[str]:
    """Full names of the linear layers LoRA adapts: the roles in ``lora_target``, never the output head,
    and for the language model only the decoder layers that ``lora_layers`` selects."""
    targets: list[str] = []
    for role in args.lora_roles:
        names = [n for n in module_names_by_role(model, role) if not n.endswith("lm_head")]  # type: ignore[arg-type]
        if role == "language":
            layers = find_decoder_layers(model)
            keep = set(parse_layer_range(args.lora_layers, len(layers)))
            prefixes = {name for name, module in model.named_modules() if any(module is layers[i] for i in keep)}
            names = [n for n in names if any(n.startswith(p + ".") for p in prefixes)]
        targets += names
    if not targets:
        raise ValueError(f"lora_target={args.lora_target!r} with lora_layers={args.lora_layers!r} selects no layer.")
    return targets


def prepare_model(model: Any, args: ViFTTrainingArguments, quantized: bool = False) -> Any:
    """Freeze roles, prepare k-bit training, add LoRA; the trainable set is what the arguments say.

    With LoRA the adapted roles train through their adapters only; the other unfrozen roles (e.g.
    the connector) train in full and are saved as ``vift_trainable_weights.safetensors``.
    """
    if quantized:
        from peft import prepare_model_for_kbit_training

        if not args.use_lora:
            raise ValueError(
                "A quantized model (load_in_bits) trains through LoRA adapters: set use_lora, or load the model "
                "unquantized (e.g. for a connector-only stage 1)."
            )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    frozen = set(args.frozen_roles()) | (set(args.lora_roles) if args.use_lora else set())
    if args.use_lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            peft_model = model
        else:
            config = LoraConfig(
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=lora_target_modules(model, args),
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, config)
        stuck = set_trainable(peft_model, frozen)
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(True)
        model = peft_model
    else:
        stuck = set_trainable(model, frozen)
    if stuck:
        raise ValueError(
            f"{stuck[0]} (and {len(stuck) - 1} more) is quantized and cannot train in full; "
            "freeze its role or put LoRA on it (lora_target)."
        )
    if args.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return model


def describe_trainable(model: nn.Module) -> str:
    """``vision 0 / 21,536 trainable | connector 6,272 / 6,272 trainable | language ...``."""
    parts = []
    for role, named in parameters_by_role(model).items():
        trainable = sum(p.numel() for _, p in named if p.requires_grad)
        parts.append(f"{role} {trainable:,} / {sum(p.numel() for _, p in named):,} trainable")
    return " | ".join(parts)
