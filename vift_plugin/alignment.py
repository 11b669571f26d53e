"""Aligning the prompt's text tokens between the multimodal and the text-only inputs.

The multimodal prompt of row ``b`` is a left- or right-padded sequence of ``T`` ids with image spans
(placeholder tokens plus the family's begin/end/separator tokens). Removing the spans gives the same
conversation without its images; :func:`align_by_removal` returns those text-only rows and, for the
fused tokens, the pairs ``(P, Q)``: position ``P`` in the padded multimodal row and position ``Q`` in
the unpadded text-only row. :func:`align_by_suffix` pairs a user's own text-only inputs instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PretrainedConfig

TokenScope = Literal["after_image", "all_text"]

_CONFIG_IMAGE_ID_ATTRIBUTES = (
    "image_token_id",
    "image_token_index",
    "vision_start_token_id",
    "vision_end_token_id",
    "boi_token_index",
    "eoi_token_index",
    "boi_token_id",
    "eoi_token_id",
    "image_start_token_id",
    "image_end_token_id",
    "image_break_token_id",
)
_PROCESSOR_IMAGE_TOKEN_ATTRIBUTES = (
    "image_token",
    "fake_image_token",
    "global_image_tag",
    "global_image_token",
    "image_break_token",
    "image_end_token",
    "start_image_token",
    "end_image_token",
    "boi_token",
    "eoi_token",
    "image_start_token",
    "vision_start_token",
    "vision_end_token",
)
_TILE_TOKEN = re.compile(r"^<row_\d+_col_\d+>$")


def _as_ids(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value] if value >= 0 else []
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _as_ids(item)]
    return []


def image_token_ids_from_config(config: PretrainedConfig) -> set[int]:
    """Ids of image placeholder and image begin/end tokens named in a model config."""
    ids: set[int] = set()
    for attribute in _CONFIG_IMAGE_ID_ATTRIBUTES:
        ids.update(_as_ids(getattr(config, attribute, None)))
    return ids


def image_token_ids_from_processor(processor: Any) -> set[int]:
    """Ids of every image-span token a processor inserts (placeholders, tile tags, begin/end/break)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids: set[int] = set(_as_ids(getattr(processor, "image_token_ids", None)))
    ids.update(_as_ids(getattr(processor, "image_token_id", None)))
    tokens = {getattr(processor, a, None) for a in _PROCESSOR_IMAGE_TOKEN_ATTRIBUTES}
    tokens |= {t for t in getattr(tokenizer, "get_vocab", dict)() if _TILE_TOKEN.match(str(t))}
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in tokens:
        if isinstance(token, str) and token:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != unk:
                ids.add(token_id)
    return ids


@dataclass
class Alignment:
    """Text-only rows and the fused-token pairs of one batch.

    ``text_rows[b]`` is a dict of 1-D per-token tensors (``input_ids`` and e.g. ``token_type_ids``)
    of the text-only version of row ``b``; pair ``k`` fuses multimodal position
    ``(batch_index[k], mm_position[k])`` with position ``text_position[k]`` of text row ``batch_index[k]``.
    """

    text_rows: list[dict[str, torch.Tensor]]
    batch_index: torch.Tensor
    mm_position: torch.Tensor
    text_position: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.batch_index.numel())


def _per_token_keys(inputs: dict[str, Any], shape: torch.Size) -> list[str]:
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape == shape and k != "labels"]


def _valid(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()


def _image_mask(input_ids: torch.Tensor, valid: torch.Tensor, image_ids: set[int]) -> torch.Tensor:
    return torch.isin(input_ids, torch.tensor(sorted(image_ids), device=input_ids.device)) & valid


def _build(rows: list[dict[str, torch.Tensor]], pairs: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Alignment:
    def cat(parts: Iterable[torch.Tensor]) -> torch.Tensor:
        parts = list(parts)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    return Alignment(
        text_rows=rows,
        batch_index=cat(torch.full((p.numel(),), b, dtype=torch.long) for b, p, _ in pairs),
        mm_position=cat(p for _, p, _ in pairs),
        text_position=cat(q for _, _, q in pairs),
    )


def align_by_removal(inputs: dict[str, Any], image_ids: set[int], tokens: TokenScope) -> Alignment:
    """Derive the text-only rows by deleting image-span tokens and padding from each row."""
    input_ids: torch.Tensor = inputs["input_ids"]
    valid = _valid(input_ids, inputs.get("attention_mask"))
    image = _image_mask(input_ids, valid, image_ids)
    keep = valid & ~image
    keys = _per_token_keys(inputs, input_ids.shape)
    rows, pairs = [], []
    for b in range(input_ids.shape[0]):
        rows.append({k: inputs[k][b][keep[b]].cpu() for k in keys if k != "attention_mask"})
        text_index = keep[b].long().cumsum(0) - 1
        positions = keep[b].nonzero().squeeze(-1)
        if tokens == "after_image":
            image_positions = image[b].nonzero()
            if image_positions.numel() == 0:
                positions = positions[:0]
            else:
                positions = positions[positions > image_positions.max()]
        pairs.append((b, positions.cpu(), text_index[positions].cpu()))
    return _build(rows, pairs)


def align_by_suffix(
    inputs: dict[str, Any], text_inputs: dict[str, Any], image_ids: set[int], tokens: TokenScope
) -> Alignment:
    """Pair each multimodal row with the user's text-only row on their longest common token suffix."""
    input_ids: torch.Tensor = inputs["input_ids"]
    text_ids: torch.Tensor = text_inputs["input_ids"]
    if text_ids.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"vift_text_inputs has {text_ids.shape[0]} rows but the multimodal inputs have {input_ids.shape[0]}"
        )
    valid = _valid(input_ids, inputs.get("attention_mask"))
    text_valid = _valid(text_ids, text_inputs.get("attention_mask"))
    image = _image_mask(input_ids, valid, image_ids)
    keys = _per_token_keys(text_inputs, text_ids.shape)
    rows, pairs = [], []
    for b in range(input_ids.shape[0]):
        mm_positions = valid[b].nonzero().squeeze(-1).cpu()
        row = {k: text_inputs[k][b][text_valid[b]].cpu() for k in keys if k != "attention_mask"}
        rows.append(row)
        mm_tokens, text_tokens = input_ids[b].cpu()[mm_positions], row["input_ids"]
        n = min(mm_tokens.numel(), text_tokens.numel())
        same = (mm_tokens[mm_tokens.numel() - n :] == text_tokens[text_tokens.numel() - n :]).flip(0)
        k = n if bool(same.all()) else int((~same).nonzero()[0])
        positions = mm_positions[mm_positions.numel() - k :]
        text_positions = torch.arange(text_tokens.numel() - k, text_tokens.numel())
        image_positions = image[b].nonzero()
        if tokens == "after_image" and image_positions.numel() > 0:
            after = positions > int(image_positions.max())
            positions, text_positions = positions[after], text_positions[after]
        pairs.append((b, positions, text_positions))
    return _build(rows, pairs)
