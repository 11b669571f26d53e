"""A saved ViFT run and how it loads back: for fused inference (:func:`load_vift`), for evaluation
(:func:`load_model`, which also takes plain checkpoints), and as the start of the next stage.

A saved run is a folder with either full weights or a LoRA adapter (``adapter_config.json``), plus
``vift_trainable_weights.safetensors`` (the non-LoRA parameters that trained, e.g. the connector, by
their base-model names), the processor and ``vift_fusion_config.json``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vift_plugin.config import FUSION_CONFIG_NAME

TRAINABLE_WEIGHTS_NAME = "vift_trainable_weights.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (header unreadable, data shorter than declared), else None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                return f"{path.name} is truncated (header of {header_length} bytes in a {size}-byte file)"
            header = json.loads(handle.read(header_length))
    except (struct.error, ValueError, UnicodeDecodeError):
        return f"{path.name} is not a readable safetensors file"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why the model weights in ``folder`` are not whole (missing, truncated, a shard missing), else None."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return safetensors_problem(folder / name) if name.endswith(".safetensors") else None
    for name in SHARD_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as error:
                return f"{name} is unreadable ({error})"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"shard {shard} named by {name} is missing"
                if shard.endswith(".safetensors") and (problem := safetensors_problem(folder / shard)):
                    return problem
            return None
    if any(
        entry.is_dir() and entry.name.startswith(("pytorch_model_fsdp", "global_step")) for entry in folder.iterdir()
    ):
        return None  # FSDP and DeepSpeed write their own sharded states
    return "no model weights"


def saved_model_problem(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` does not hold a whole saved model (weights or adapter, and the trainable weights), else None.

    A save cut short (killed, disk full) leaves files that ``from_pretrained`` rejects without naming them
    ("incomplete metadata, file not fully covered"); the headers and sizes are checked here instead.
    """
    path = Path(folder)
    problem = weights_problem(path)
    extra = path / TRAINABLE_WEIGHTS_NAME
    if problem is None and extra.is_file():
        problem = safetensors_problem(extra)
    return problem


def check_saved_model(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` naming ``path`` when it is a local folder without a whole saved model (hub ids pass)."""
    if not os.path.isdir(path):
        return
    problem = saved_model_problem(path)
    if problem is not None:
        raise ValueError(
            f"{path} does not hold a whole saved model ({problem}): its save was interrupted or the copy is "
            "incomplete. Save it again, or use one of the run's complete checkpoint-N folders (`vift train` "
            "resumes from the last complete one with resume_from_checkpoint: true)."
        )


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
    check_saved_model(folder)
    base = adapter_base(folder)
    if base is not None:
        check_saved_model(base)
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

        check_saved_model(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
        processor = load_processor(path)
    model.to(device or default_device())
    model.eval()
    return model, processor
