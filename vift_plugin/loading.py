"""A saved ViFT run and how it loads back: for fused inference (:func:`load_vift`), for evaluation
(:func:`load_model`, which also takes plain checkpoints), and as the start of the next stage.

A saved run is a folder with either full weights or a LoRA adapter (``adapter_config.json``), plus
``vift_trainable_weights.safetensors`` (the non-LoRA parameters that trained, e.g. the connector, by
their base-model names), the processor and ``vift_fusion_config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vift_plugin.config import FUSION_CONFIG_NAME

TRAINABLE_WEIGHTS_NAME = "vift_trainable_weights.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


def adapter_base(path: str | os.PathLike[str]) -> str | None:
    """The base checkpoint a saved LoRA run was trained on, or ``None`` when ``path`` holds full weights."""
    adapter = Path(path, ADAPTER_CONFIG_NAME)
    if not adapter.is_file():
        return None
    base: str = json.loads(adapter.read_text())["base_model_name_or_path"]
    return base


def continue_from_run(model: Any, path: str, merge: bool) -> Any:
    """A base model with a saved run's adapter and trainable weights: merged in, or kept as the adapter."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, path, is_trainable=not merge)
    load_trainable_weights(peft_model, path)
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


def trainable_weights(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The trainable parameters that are not LoRA weights, by their base-model names."""
    names = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    source = state_dict if state_dict is not None else dict(model.named_parameters())
    return {_base_name(n): t.detach().cpu().contiguous() for n, t in source.items() if n in names}


def _base_name(name: str) -> str:
    for prefix in ("base_model.model.", "module."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".modules_to_save.default", "").replace(".base_layer", "")


def save_trainable_weights(model: nn.Module, output_dir: str, state_dict: dict[str, torch.Tensor] | None) -> None:
    from safetensors.torch import save_file

    weights = trainable_weights(model, state_dict)
    if weights:
        save_file(weights, os.path.join(output_dir, TRAINABLE_WEIGHTS_NAME), metadata={"format": "pt"})


def load_trainable_weights(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Copy a run's non-LoRA trained weights into ``model`` (plain or PEFT); returns how many tensors."""
    from safetensors.torch import load_file

    file = Path(path, TRAINABLE_WEIGHTS_NAME)
    if not file.is_file():
        return 0
    weights = load_file(file)
    params = {_base_name(n): p for n, p in model.named_parameters()}
    missing = sorted(set(weights) - set(params))
    if missing:
        raise ValueError(f"{file} holds weights the model does not have: {missing[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return len(weights)


def load_vift(path: str | os.PathLike[str], **kwargs: Any) -> tuple[Any, Any]:
    """``(model, processor)`` of a saved ViFT run, LoRA merged, fused inference enabled from its config.

    ``model.generate(**processor.apply_chat_template(...))`` then runs fused; extra ``kwargs`` go to
    ``from_pretrained`` (e.g. ``dtype``, ``device_map``).
    """
    from transformers import AutoModelForImageTextToText

    from vift_plugin.config import FUSION_CONFIG_NAME, FusionConfig
    from vift_plugin.fusion import enable_vift
    from vift_plugin.processors import load_processor

    folder = os.fspath(path)
    base = adapter_base(folder)
    if base is not None:
        model = continue_from_run(AutoModelForImageTextToText.from_pretrained(base, **kwargs), folder, merge=True)
    else:
        model = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
        load_trainable_weights(model, folder)
    processor = load_processor(folder)
    model.eval()
    config_file = Path(folder, FUSION_CONFIG_NAME)
    config = FusionConfig.from_pretrained(config_file) if config_file.is_file() else FusionConfig()
    enable_vift(model, config, processor=processor)
    return model, processor


def is_vift_run(path: str | os.PathLike[str]) -> bool:
    """A saved ViFT run (a LoRA adapter and/or a saved fusion config) rather than a plain checkpoint."""
    return Path(path, ADAPTER_CONFIG_NAME).is_file() or Path(path, FUSION_CONFIG_NAME).is_file()


def load_model(path: str, *, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` for evaluation, on ``device`` (default: CUDA when available).

    A saved ViFT run goes through :func:`~vift_plugin.training.load_vift` (adapter merged, fusion
    enabled from its saved config); anything else is a plain checkpoint without fusion enabled.
    """
    import torch

    from vift_plugin.generation import default_device

    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    if os.path.isdir(path) and is_vift_run(path):
        model, processor = load_vift(path, dtype=torch_dtype)
    else:
        from transformers import AutoModelForImageTextToText

        from vift_plugin.processors import load_processor

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        processor = load_processor(path)
    model.to(device or default_device())
    model.eval()
    return model, processor
