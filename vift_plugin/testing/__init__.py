"""Offline tiny checkpoints of real vision-language families, for tests, examples and demos.

``make_tiny_checkpoint("qwen2_vl", path)`` writes a randomly initialised model (safetensors), an
offline byte-level tokenizer and a processor carrying the family's chat template, so that
``AutoModelForImageTextToText.from_pretrained(path)`` and :func:`vift_plugin.load_processor` load
it exactly like a downloaded checkpoint. Families with a video processor (Qwen2-VL, Qwen2.5-VL,
InternVL) also get its ``video_preprocessor_config.json``, so that ``AutoProcessor`` loads the folder
where torchvision is installed. Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from vift_plugin.testing.families import FAMILIES, FamilyRecipe, video_processor_config
from vift_plugin.testing.tokenizer import make_byte_tokenizer

__all__ = [
    "FAMILIES",
    "FamilyRecipe",
    "build_tiny_model",
    "make_byte_tokenizer",
    "make_tiny_checkpoint",
    "video_processor_config",
]

VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"  # transformers.utils.VIDEO_PROCESSOR_NAME


def build_tiny_model(family: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build a tiny random model and its processor in memory (nothing written)."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of: {', '.join(sorted(FAMILIES))}.")
    config, processor = FAMILIES[family].build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    model.eval()
    return model, processor


def make_tiny_checkpoint(family: str, path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny checkpoint of ``family`` to ``path`` with ``save_pretrained`` and return the path.

    The weights are random (seeded by ``seed``, without touching the global random state); the
    model's generation config stops at the tokenizer's end-of-turn token and pads with its pad token.
    Where the family has a video processor, its config is written beside the processor's (see
    :func:`~vift_plugin.testing.families.video_processor_config`).
    """
    model, processor = build_tiny_model(family, seed)
    tokenizer = processor.tokenizer
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = model.config.get_text_config().eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    video = video_processor_config(family, processor)
    if video is not None:
        (out / VIDEO_PROCESSOR_FILE).write_text(json.dumps(video, indent=2, sort_keys=True) + "\n")
    return out
