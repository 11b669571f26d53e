"""Batched greedy generation with a Hugging Face processor, plain or fused: what benchmark evaluation
(:mod:`vift_plugin.evaluation.runner`) and cascade inference (:mod:`vift_plugin.cascade`) share.

Conversations are chat-template rendered with a generation prompt and left padded (generation
appends on the right); tensors follow the model's device and floating dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from vift_plugin.config import FusionConfig

Messages = list[dict[str, Any]]
T = TypeVar("T")


def model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def progress_bar(total: int, desc: str, enabled: bool = True) -> Any:
    """A tqdm bar when tqdm is installed and ``enabled``, else an object with no-op ``update``/``close``."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit="item", leave=False)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def batches(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def encode_messages(processor: Any, conversations: Sequence[Messages], images: Sequence[list[Any]] | None) -> Any:
    """The processor's left-padded encoding of ``conversations`` (chat template with a generation prompt);
    ``images[i]`` are the loaded images of conversation ``i``, ``None`` for a text-only batch."""
    texts = [
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        for messages in conversations
    ]
    tokenizer = getattr(processor, "tokenizer", processor)
    side = getattr(tokenizer, "padding_side", None)
    tokenizer.padding_side = "left"
    try:
        if images is None:
            try:
                return processor(text=texts, padding=True, return_tensors="pt")
            except ValueError:  # processors that require images (PaliGemma): the tokenizer alone
                return tokenizer(texts, padding=True, return_tensors="pt")
        return processor(text=texts, images=list(images), padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side


def to_model(batch: Any, model: Any) -> dict[str, Any]:
    """Tensors moved to the model's device; floating tensors (pixels) cast to its dtype."""
    device = model_device(model)
    dtype = getattr(model, "dtype", None)
    moved: dict[str, Any] = {}
    for key, value in dict(batch).items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                value = value.to(device=device, dtype=dtype)
            else:
                value = value.to(device)
        moved[key] = value
    return moved


def generate_batch(
    model: Any,
    processor: Any,
    inputs: dict[str, Any],
    *,
    max_new_tokens: int = 64,
    generate_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Greedy ``model.generate`` on encoded ``inputs``; the new tokens of each row, decoded."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(model.generation_config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.pad_token_id
    kwargs.update(generate_kwargs or {})
    with torch.no_grad():
        output = model.generate(**inputs, **kwargs)
    sequences = output.sequences if hasattr(output, "sequences") else output
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    decoded: list[str] = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [text.strip() for text in decoded]


@contextmanager
def fusion_mode(
    model: Any, processor: Any, fused: bool, fusion: FusionConfig | None = None
) -> Iterator[dict[str, Any]]:
    """Set ``model`` up for one mode; yields the extra ``generate`` keywords of that mode.

    Plain: ``vift=False`` when fusion is enabled on the model, nothing otherwise. Fused: ``fusion``
    applied for the duration (the previous state restored afterwards), else the model's own config
    (e.g. from :func:`~vift_plugin.training.load_vift`), else ``FusionConfig()``.
    """
    from vift_plugin.fusion import fusion_config, vift_fusion

    enabled = fusion_config(model) is not None
    if not fused:
        yield {"vift": False} if enabled else {}
    elif fusion is None and enabled:
        yield {}
    else:
        with vift_fusion(model, fusion or FusionConfig(), processor=processor):
            yield {}


def active_fusion(model: Any, fusion: FusionConfig | None) -> FusionConfig:
    """The config a fused run of :func:`generate_answers` uses."""
    from vift_plugin.fusion import fusion_config

    return fusion or fusion_config(model) or FusionConfig()
