"""Supervised fine-tuning batches from chat-format records, with loss only on the assistant turns.

The text comes from ``processor.apply_chat_template`` (so every family gets its own prompt format),
the tokens from the processor itself (so image placeholders expand exactly as at inference). The
assistant spans are found in the rendered text by rendering each conversation prefix, then mapped
onto tokens through the tokenizer's character offsets, shifted by the processor's
``text_replacement_offsets`` where image placeholders were expanded. Labels are ``-100`` outside
the spans, on image tokens and on padding. A text-only batch calls the processor without images
and carries no image tensors.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from vift_plugin.alignment import image_token_ids_from_processor
from vift_plugin.data.images import load_image
from vift_plugin.data.schema import llava_to_messages

IGNORE_INDEX = -100
_DROPPED_KEYS = ("offset_mapping", "text_replacement_offsets", "labels")
PREFIX_LM_PROCESSORS = ("PaliGemmaProcessor",)


def _clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``None`` keys from messages and parts (Arrow fills them in; templates test for presence)."""
    cleaned = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if v is not None} for part in content]
        cleaned.append({**{k: v for k, v in message.items() if v is not None}, "content": content})
    return cleaned


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content or [] if part.get("type") == "text")


def as_chat_record(feature: dict[str, Any], row: str) -> dict[str, Any]:
    """A chat-format record; LLaVA ``conversations`` records (``image`` path) are converted."""
    if "messages" in feature:
        return feature
    if "conversations" in feature:
        image = feature.get("image")
        return {"messages": llava_to_messages(feature["conversations"]), "images": [image] if image else []}
    raise ValueError(f"row {row}: no 'messages' or 'conversations'; convert the data with vift_plugin.data first")


@dataclass
class ViFTDataCollator:
    """Collate ``{"messages", "images"}`` records (see :mod:`vift_plugin.data.schema`) for a ``Trainer``.

    Returns the processor's tensors (``input_ids``, ``attention_mask``, ``pixel_values``, ...) plus
    ``labels``. Image references are paths under ``image_root``, bytes, PIL images, or URLs with
    ``allow_remote_images``; images larger than ``max_pixels`` are downscaled first. An image that
    cannot be loaded, or that the processor refuses, is an error naming its row. Sequences longer
    than ``max_length`` are cut on the right unless that would cut image tokens (an error naming the row).
    """

    processor: Any = field(metadata={"help": "The model's processor (with its chat template)."})
    image_root: str | os.PathLike[str] | None = field(
        default=None, metadata={"help": "Folder image paths resolve under."}
    )
    max_pixels: int | None = field(default=None, metadata={"help": "Downscale larger images to this many pixels."})
    max_length: int | None = field(default=None, metadata={"help": "Cut longer sequences to this many tokens."})
    padding_side: str = field(default="right", metadata={"help": "'right' for training, 'left' for generation."})
    allow_remote_images: bool = field(
        default=False, metadata={"help": "Fetch http(s) image URLs (public hosts, deadline, size cap); else refused."}
    )

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}.")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}.")
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.image_token_ids = sorted(image_token_ids_from_processor(self.processor))

    def render(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """The chat-template text of ``messages`` and the ``(start, end)`` character spans to learn."""
        template = self.processor.apply_chat_template
        text: str = template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt: str = template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            turn: str = template(messages[: i + 1], tokenize=False)
            if not (text.startswith(turn) and turn.startswith(prompt)):
                raise ValueError(
                    "The chat template does not render conversations prefix by prefix, so the assistant "
                    f"turns cannot be located (turn {i}). Use a template that renders earlier turns unchanged."
                )
            answer = _message_text(message)
            start = turn.find(answer, len(prompt)) if answer else -1
            start = len(prompt) + (len(turn[len(prompt) :]) - len(turn[len(prompt) :].lstrip())) if start < 0 else start
            spans.append((start, len(turn.rstrip())))
        return text, spans

    def _images(self, feature: dict[str, Any], messages: list[dict[str, Any]], row: str) -> list[Any]:
        images = feature.get("images") or []
        wanted = sum(
            1
            for message in messages
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image"
        )
        if wanted != len(images):
            raise ValueError(f"row {row}: {wanted} image part(s) in messages but {len(images)} image(s) given")
        try:
            return [
                load_image(image, self.image_root, self.max_pixels, allow_remote_images=self.allow_remote_images)
                for image in images
            ]
        except ValueError as error:
            raise ValueError(f"row {row}: {error}") from error

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if type(self.processor).__name__ in PREFIX_LM_PROCESSORS:
            return self._prefix_lm_batch(features)
        texts, spans, images, ids = [], [], [], []
        for position, feature in enumerate(features):
            row = str(feature.get("id", position))
            feature = as_chat_record(feature, row)
            messages = _clean_messages(feature["messages"])
            if not any(m.get("role") == "assistant" for m in messages):
                raise ValueError(f"row {row}: no assistant turn to learn from")
            text, turn_spans = self.render(messages)
            texts.append(text)
            spans.append(turn_spans)
            images.append(self._images(feature, messages, row))
            ids.append(row)
        try:
            batch = self._tokenize(texts, images)
        except ValueError as error:
            refusal = self._refusal(error, texts, images, ids)
            if refusal is None:
                raise
            raise refusal from error
        labels = self._labels(batch, spans)
        for key in _DROPPED_KEYS:
            batch.pop(key, None)
        batch["labels"] = labels
        if self.max_length is not None:
            self._truncate(batch, ids)
        return dict(batch)

    def _refusal(
        self, error: ValueError, texts: list[str], images: list[list[Any]], ids: list[str]
    ) -> ValueError | None:
        """The processor's ``error`` for a batch, naming the row whose images it refuses (Qwen2-VL: an aspect
        ratio over 200); None when no row alone fails. Only on this error path is each row encoded alone."""
        for text, row_images, row in zip(texts, images, ids, strict=True):
            if not row_images:
                continue
            try:
                self._tokenize([text], [row_images])
            except ValueError:
                sizes = ", ".join(f"{image.width}x{image.height}" for image in row_images)
                name = type(self.processor).__name__
                return ValueError(f"row {row}: {name} cannot take its image(s) ({sizes}, after max_pixels): {error}")
        return None

    def _tokenize(self, texts: list[str], images: list[list[Any]]) -> Any:
        bos = getattr(self.tokenizer, "bos_token", None)
        kwargs: dict[str, Any] = {
            "padding": True,
            "padding_side": self.padding_side,
            "return_tensors": "pt",
            "return_offsets_mapping": True,
            "add_special_tokens": not (bos and texts[0].startswith(bos)),
        }
        if any(images):
            return self.processor(text=texts, images=images, return_text_replacement_offsets=True, **kwargs)
        try:
            return self.processor(text=texts, **kwargs)
        except ValueError:
            return self.tokenizer(texts, **kwargs)

    def _labels(self, batch: Any, spans: list[list[tuple[int, int]]]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        offsets = batch["offset_mapping"].tolist()
        replacements = batch.get("text_replacement_offsets") or [[] for _ in spans]
        for row, row_spans in enumerate(spans):
            ends = [r["span"][1] for r in replacements[row]]
            gained = [0]
            for r in replacements[row]:
                gained.append(gained[-1] + (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0]))
            shifted = [tuple(c + gained[bisect.bisect_right(ends, c)] for c in span) for span in row_spans]
            for position, (start, end) in enumerate(offsets[row]):
                if end > start and any(start < s_end and end > s_start for s_start, s_end in shifted):
                    labels[row, position] = input_ids[row, position]
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        if self.image_token_ids:
            labels[torch.isin(input_ids, torch.tensor(self.image_token_ids))] = IGNORE_INDEX
        return labels

    def _truncate(self, batch: dict[str, Any], ids: list[str]) -> None:
        assert self.max_length is not None
        length = batch["input_ids"].shape[1]
        if length <= self.max_length:
            return
        if self.padding_side == "left":
            raise ValueError(f"a sequence of {length} tokens exceeds max_length={self.max_length} with left padding")
        if self.image_token_ids:
            cut = torch.isin(batch["input_ids"][:, self.max_length :], torch.tensor(self.image_token_ids))
            for row in cut.any(dim=1).nonzero().flatten().tolist():
                raise ValueError(
                    f"row {ids[row]}: max_length={self.max_length} would cut image tokens; raise max_length "
                    "or lower max_pixels"
                )
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == length:
                batch[key] = value[:, : self.max_length]

    def _prefix_lm_batch(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """PaliGemma: prompt as prefix, answer as ``suffix`` (``token_type_ids`` mark it for prefix-LM attention)."""
        prompts, answers, images, ids = [], [], [], []
        for position, feature in enumerate(features):
            row = str(feature.get("id", position))
            ids.append(row)
            feature = as_chat_record(feature, row)
            messages = [m for m in _clean_messages(feature["messages"]) if m["role"] != "system"]
            if [m["role"] for m in messages] != ["user", "assistant"]:
                raise ValueError(
                    f"row {row}: {type(self.processor).__name__} trains on one prompt/answer pair per sample "
                    "(prefix-LM); split multi-turn dialogues into single exchanges"
                )
            prompts.append(_message_text(messages[0]))
            answers.append(_message_text(messages[1]))
            images.append(self._images(feature, messages, row))
        kwargs: dict[str, Any] = {"padding": True, "padding_side": self.padding_side, "return_tensors": "pt"}
        if any(images):
            batch = self.processor(text=prompts, images=images, suffix=answers, **kwargs)
            batch.pop("labels", None)
        else:
            tokenizer = self.tokenizer
            batch = tokenizer(
                [f"{tokenizer.bos_token}{prompt}\n" for prompt in prompts],
                text_pair=[f"{answer}{tokenizer.eos_token}" for answer in answers],
                add_special_tokens=False,
                return_token_type_ids=True,
                **kwargs,
            )
        labels = batch["input_ids"].masked_fill(batch["token_type_ids"] == 0, IGNORE_INDEX)
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        batch["labels"] = labels
        if self.max_length is not None:
            self._truncate(batch, ids)
        return dict(batch)
