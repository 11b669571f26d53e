"""One training set from caption records and text records: ``modality`` and ``length`` columns, ratios.

``length`` is the sample's token count as the model will see it: text tokens from the tokenizer
(one batched call per ``map`` batch) plus the chat template's per-turn overhead, plus, per image,
the number of tokens the processor expands it to, computed from the image size read from the file
header (never decoding pixels) and the processor's patch/merge settings. These are what
:class:`~vift_plugin.data.sampler.ModalityGroupedSampler` groups by.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from vift_plugin.data.files import ImageError
from vift_plugin.data.images import capped_size, image_size

MODALITIES = ("image", "text")
MAX_RESAMPLED_ROWS = 2**31 - 1
"""The most rows :func:`resample` makes of one source: the index list of more would not fit in memory."""


def _texts(messages: list[dict[str, Any]]) -> str:
    return "\n".join(
        part["text"]
        for message in messages
        for part in (message.get("content") or [])
        if isinstance(part, dict) and part.get("text")
    )


class TokenCounter:
    """Counts text and image tokens for a processor, caching image counts by size."""

    def __init__(self, processor: Any, max_pixels: int | None = None) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_pixels = max_pixels
        self.first_exchange, self.next_exchange = self._template_overhead(1), self._template_overhead(2)
        self.next_exchange -= self.first_exchange
        self.image_overhead = self._image_overhead()
        self.image_tokens = functools.lru_cache(maxsize=65536)(self._image_tokens)

    def _template_overhead(self, exchanges: int) -> int:
        """Template tokens (roles, separators, default system prompt) around ``exchanges`` Q/A pairs."""
        conversation = [
            {"role": role, "content": [{"type": "text", "text": text}]}
            for _ in range(exchanges)
            for role, text in (("user", "a"), ("assistant", "b"))
        ]
        try:
            text = self.processor.apply_chat_template(conversation, tokenize=False)
        except Exception:  # noqa: BLE001 - no template: count the content only
            return 0
        content = len(self.tokenizer("\n".join(["a\nb"] * exchanges), add_special_tokens=False)["input_ids"])
        return max(0, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) - content)

    def _image_overhead(self, size: int = 56) -> int:
        """Tokens one image adds beyond the processor's count (template markers, separators), measured once."""
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
        ]
        try:
            text = self.processor.apply_chat_template(conversation, tokenize=False)
            image = Image.new("RGB", (size, size))
            ids = self.processor(text=[text], images=[[image]], add_special_tokens=False)["input_ids"][0]
        except Exception:  # noqa: BLE001 - processors without templates or batched images: no correction
            return 0
        content = len(self.tokenizer("a\nb", add_special_tokens=False)["input_ids"])
        return len(ids) - self.first_exchange - content - self._processor_image_tokens(size, size)

    def _image_tokens(self, width: int, height: int) -> int:
        width, height = capped_size(width, height, self.max_pixels)
        return self._processor_image_tokens(width, height) + self.image_overhead

    def _processor_image_tokens(self, width: int, height: int) -> int:
        counter = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if counter is not None:
            try:
                data = counter(image_sizes=[(height, width)])
            except ValueError as error:  # the size itself is refused (Qwen2-VL: an aspect ratio over 200)
                name = type(self.processor).__name__
                raise ImageError(f"{name} cannot take a {width}x{height} image: {error}") from error
            counts = data["num_image_tokens"] if "num_image_tokens" in data else None
            if counts:
                return int(counts[0])
        raise ValueError(
            f"{type(self.processor).__name__} cannot count image tokens from a size; "
            "pass lengths yourself or use a processor with _get_num_multimodal_tokens."
        )

    def text_lengths(self, texts: list[str], turns: list[int]) -> list[int]:
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        overhead = [self.first_exchange + self.next_exchange * max(0, (n + 1) // 2 - 1) for n in turns]
        return [len(row) + extra for row, extra in zip(ids, overhead, strict=True)]


def add_modality_and_length(
    dataset: Any,
    processor: Any,
    *,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    default_image_size: tuple[int, int] | None = None,
    allow_remote_images: bool = False,
    num_proc: int | None = None,
) -> Any:
    """``dataset`` (records with ``messages`` and ``images``) plus ``modality`` and ``length`` columns.

    Images whose size cannot be read (URLs offline, or remote images not allowed) use
    ``default_image_size`` ``(width, height)`` when given, else raise naming the row. Only headers
    are read: :func:`~vift_plugin.data.images.check_images` decodes.
    """
    counter = TokenCounter(processor, max_pixels)

    def lengths(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        images = batch["images"]
        turns = [sum(1 for m in messages if m.get("role") != "system") for messages in batch["messages"]]
        text = counter.text_lengths([_texts(messages) for messages in batch["messages"]], turns)
        out_lengths, modality = [], []
        for i, (row_images, count) in enumerate(zip(images, text, strict=True)):
            for image in row_images or []:
                try:
                    width, height = image_size(image, image_root, allow_remote_images=allow_remote_images)
                except (ImageError, OSError) as error:
                    if default_image_size is None:
                        raise ImageError(f"row {indices[i]}: {error}") from error
                    width, height = default_image_size
                try:
                    count += counter.image_tokens(width, height)
                except ImageError as error:
                    where = f"image {image}" if isinstance(image, str) else "its image"
                    raise ImageError(f"row {indices[i]}: {where}: {error}") from error
            out_lengths.append(count)
            modality.append("image" if row_images else "text")
        return {"modality": modality, "length": out_lengths}

    if "images" in dataset.column_names:
        from datasets import Image, List

        feature = dataset.features["images"]
        if isinstance(feature, List) and isinstance(feature.feature, Image) and feature.feature.decode:
            undecoded = dataset.cast_column("images", List(Image(decode=False)))
            added = undecoded.map(lengths, batched=True, with_indices=True, num_proc=num_proc, desc="token lengths")
            return added.cast_column("images", feature)
    return dataset.map(lengths, batched=True, with_indices=True, num_proc=num_proc, desc="token lengths")


def check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """``ratios`` (``{"image": r, "text": r}``) checked: known modalities, finite numbers >= 0.

    Shared by :func:`mix_datasets` and ``vift convert mix --ratio``, which checks before loading anything.
    """
    unknown = set(ratios) - set(MODALITIES)
    if unknown:
        raise ValueError(f"ratios keys must be among {MODALITIES}, got {sorted(unknown)}.")
    for name, ratio in ratios.items():
        _check_ratio(ratio, name)
    return dict(ratios)


def _check_ratio(ratio: float, name: str = "sampling") -> None:
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"{name} ratio must be a finite number >= 0, got {ratio}.")


def resample(dataset: Any, ratio: float, seed: int = 0) -> Any:
    """``round(len * ratio)`` rows: whole copies for the integer part, a seeded subset for the rest."""
    _check_ratio(ratio)
    n = len(dataset)
    if n * ratio > MAX_RESAMPLED_ROWS:  # e.g. 1e308: finite, but its row list would overflow or exhaust memory
        raise ValueError(
            f"sampling ratio {ratio:g} turns {n} rows into {n * ratio:.3g}, more than {MAX_RESAMPLED_ROWS:,}; "
            "a ratio is a small multiple such as 2.0."
        )
    total = round(n * ratio)
    if total == n:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    copies, rest = divmod(total, n) if n else (0, 0)
    indices = list(range(n)) * copies + torch.randperm(n, generator=generator)[:rest].tolist()
    return dataset.select(sorted(indices))


def mix_datasets(
    captions: Any,
    texts: Any,
    processor: Any,
    *,
    ratios: dict[str, float] | None = None,
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    default_image_size: tuple[int, int] | None = None,
    allow_remote_images: bool = False,
    num_proc: int | None = None,
) -> Any:
    """Caption records and text records as one dataset with ``modality`` and ``length`` columns.

    ``ratios`` (``{"image": r, "text": r}``) resamples each source to ``r`` times its size before
    mixing, e.g. ``{"text": 2.0}`` to see every text instruction twice per epoch.
    """
    from datasets import concatenate_datasets

    ratios = check_ratios(ratios or {})
    sources = [(name, d) for name, d in (("image", captions), ("text", texts)) if d is not None and len(d)]
    if not sources:
        raise ValueError("both datasets are empty.")
    for name, dataset in sources:
        missing = {"messages", "images"} - set(dataset.column_names)
        if missing:
            raise ValueError(f"the {name} dataset lacks {sorted(missing)}; convert it with vift_plugin.data first.")
    keep = ["messages", "images"] + (["id"] if all("id" in d.column_names for _, d in sources) else [])
    parts = [resample(d.select_columns(keep), ratios.get(name, 1.0), seed) for name, d in sources]
    if len(parts) == 2 and parts[1].features != parts[0].features:
        parts[1] = parts[1].cast(parts[0].features)
    mixed = concatenate_datasets(parts)
    return add_modality_and_length(
        mixed,
        processor,
        image_root=image_root,
        max_pixels=max_pixels,
        default_image_size=default_image_size,
        allow_remote_images=allow_remote_images,
        num_proc=num_proc,
    )
