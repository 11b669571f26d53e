"""Cascade inference: describe each image, then answer the question from the description as text.

A ViFT-trained model has exactly two trained abilities: describing images (captions) and solving
tasks given as text (text-only instructions). Fusion mixes them inside one forward pass; the cascade
chains them explicitly, as decoupled perception-then-reasoning pipelines do (Prism, ProReason):

1. every image is described by the model under a caption request (a user turn holding the image
   and ``describe_request``, the layout the caption data trains);
2. each conversation is answered with every image part replaced by its description as text, so the
   question reaches the model exactly where a text-only instruction puts its context.

Both passes run the same model, batched and left-padded, greedy unless ``generate_kwargs`` say
otherwise; fusion, when enabled on the model, is switched off for both passes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vift_plugin.data.queries import DETAILED_QUERIES
from vift_plugin.generation import Messages, batches, encode_messages, fusion_mode, generate_batch, to_model

DEFAULT_DESCRIBE_REQUEST = DETAILED_QUERIES[0]
DEFAULT_DESCRIPTION_TEMPLATE = "{description}\n"


@dataclass(frozen=True)
class CascadeAnswer:
    """One conversation's cascade: the description of each of its images (in order) and the answer."""

    descriptions: list[str]
    answer: str

    @property
    def description(self) -> str:
        """All descriptions in one string (one line each): what the answer pass read."""
        return "\n".join(self.descriptions)


def describe_messages(request: str) -> Messages:
    """The describe pass's user turn: the image, then ``request`` (the caption data's layout)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request}]}]


def _image_count(messages: Messages) -> int:
    return sum(
        1
        for message in messages
        if not isinstance(message.get("content"), str)
        for part in message.get("content") or []
        if part.get("type") == "image"
    )


def text_only_messages(messages: Messages, descriptions: Sequence[str], template: str) -> Messages:
    """``messages`` with the k-th image part replaced by a text part ``template.format(description=...)``."""
    found = _image_count(messages)
    if found != len(descriptions):
        raise ValueError(f"the conversation has {found} image part(s) but {len(descriptions)} description(s)")
    result = copy.deepcopy(messages)
    remaining = iter(descriptions)
    for message in result:
        content = message.get("content")
        if isinstance(content, str):
            continue
        message["content"] = [
            {"type": "text", "text": template.format(description=next(remaining))}
            if part.get("type") == "image"
            else part
            for part in content or []
        ]
    return result


def _check_template(template: str) -> None:
    try:
        template.format(description="x")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"description_template must contain '{{description}}' and no other fields, got {template!r}"
        ) from error
    if "{description}" not in template:
        raise ValueError(f"description_template must contain '{{description}}', got {template!r}")


def cascade_generate(
    model: Any,
    processor: Any,
    conversations: Sequence[Messages],
    images: Sequence[Any],
    *,
    describe_request: str = DEFAULT_DESCRIBE_REQUEST,
    description_template: str = DEFAULT_DESCRIPTION_TEMPLATE,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    describe_max_new_tokens: int | None = None,
    image_root: str | None = None,
    max_pixels: int | None = None,
    generate_kwargs: dict[str, Any] | None = None,
) -> list[CascadeAnswer]:
    """Describe, then answer: one :class:`CascadeAnswer` per conversation, in order.

    ``conversations[i]`` is a chat (user turn(s) with ``{"type": "image"}`` parts, no assistant reply
    to generate); ``images[i]`` is its image (path, URL, bytes or PIL) or a list with one image per
    image part. ``describe_request`` is the caption request of the first pass (default: the
    converter's first detailed request; use the one your caption data was trained with).
    ``description_template`` is what replaces each image part in the second pass.
    ``describe_max_new_tokens`` defaults to ``max_new_tokens``.
    """
    from vift_plugin.data.images import load_image

    if len(conversations) != len(images):
        raise ValueError(f"got {len(conversations)} conversations but {len(images)} image entries")
    if not describe_request.strip():
        raise ValueError("describe_request is empty")
    _check_template(description_template)
    per_conversation = [list(entry) if isinstance(entry, (list, tuple)) else [entry] for entry in images]
    for index, (messages, refs) in enumerate(zip(conversations, per_conversation, strict=True)):
        if _image_count(messages) != len(refs):
            raise ValueError(
                f"conversation {index} has {_image_count(messages)} image part(s) but {len(refs)} image(s) were given"
            )
    describe_tokens = describe_max_new_tokens or max_new_tokens
    results: list[CascadeAnswer] = []
    with fusion_mode(model, processor, fused=False) as mode_kwargs:
        kwargs = {**(generate_kwargs or {}), **mode_kwargs}
        for chunk in batches(list(range(len(conversations))), batch_size):
            refs = [ref for index in chunk for ref in per_conversation[index]]
            descriptions: list[str] = []
            for part in batches(refs, batch_size):
                loaded = [[load_image(ref, image_root, max_pixels=max_pixels)] for ref in part]
                encoded = encode_messages(processor, [describe_messages(describe_request)] * len(part), loaded)
                descriptions += generate_batch(
                    model, processor, to_model(encoded, model), max_new_tokens=describe_tokens, generate_kwargs=kwargs
                )
            grouped, start = [], 0
            for index in chunk:
                count = len(per_conversation[index])
                grouped.append(descriptions[start : start + count])
                start += count
            texts = [
                text_only_messages(conversations[index], group, description_template)
                for index, group in zip(chunk, grouped, strict=True)
            ]
            encoded = encode_messages(processor, texts, None)
            answers = generate_batch(
                model, processor, to_model(encoded, model), max_new_tokens=max_new_tokens, generate_kwargs=kwargs
            )
            results += [CascadeAnswer(group, answer) for group, answer in zip(grouped, answers, strict=True)]
    return results
