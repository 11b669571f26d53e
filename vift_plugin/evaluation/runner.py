"""Batched greedy generation over benchmark items, plain or ability-fused.

Each item becomes one user turn (its image, then the question with lettered options and an optional
suffix), rendered by the processor's chat template and encoded with left padding; only the new
tokens are decoded. The caller places the model (on CUDA when it has one); inputs follow the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from vift_plugin.config import FusionConfig
from vift_plugin.evaluation.answers import LETTERS
from vift_plugin.evaluation.benchmark import BenchmarkItem
from vift_plugin.evaluation.settings import GenerationSettings, PromptBuilder
from vift_plugin.generation import (
    Messages,
    batches,
    encode_messages,
    fusion_mode,
    generate_batch,
    progress_bar,
    to_model,
)


def build_prompt(item: BenchmarkItem, prompt_suffix: str | None = None) -> str:
    """The text of the user turn: the question, the options as ``A. text`` lines, then ``prompt_suffix``."""
    lines = [item.question.strip()]
    if item.choices:
        lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices)]
    if prompt_suffix:
        lines.append(prompt_suffix)
    return "\n".join(lines)


def build_messages(text: str) -> Messages:
    """One user turn: an image part, then the text part."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def item_messages(
    item: BenchmarkItem, prompt_suffix: str | None = None, prompt_builder: PromptBuilder | None = None
) -> Messages:
    """The chat messages of ``item``; ``prompt_builder(item)`` may return the text or whole messages."""
    built: str | Messages = prompt_builder(item) if prompt_builder else build_prompt(item, prompt_suffix)
    return build_messages(built) if isinstance(built, str) else built


def encode_batch(
    processor: Any,
    items: Sequence[BenchmarkItem],
    *,
    prompt_suffix: str | None = None,
    prompt_builder: PromptBuilder | None = None,
    max_pixels: int | None = None,
) -> Any:
    """The processor's left-padded encoding of ``items`` (chat template with a generation prompt).

    An image that fails to load (one changed since the benchmark was read and checked, or an item
    built in memory) raises an :class:`~vift_plugin.data.ImageError` naming the item's row.
    """
    from vift_plugin.data.files import ImageError
    from vift_plugin.data.images import load_image

    conversations = [item_messages(item, prompt_suffix, prompt_builder) for item in items]
    images = []
    for item in items:
        try:
            images.append([load_image(item.image, max_pixels=max_pixels)])
        except ImageError as error:
            raise ImageError(f"{item.location or f'item {item.id!r}'}: {error}") from error
    return encode_messages(processor, conversations, images)


def encoded_batches(
    model: Any, processor: Any, items: Sequence[BenchmarkItem], settings: GenerationSettings
) -> Iterator[tuple[Sequence[BenchmarkItem], dict[str, Any]]]:
    """``(chunk, inputs)`` per ``settings.batch_size`` items: the :func:`encode_batch` encoding (with the
    settings' prompt and image size), moved :func:`to_model`."""
    for chunk in batches(items, settings.batch_size):
        encoded = encode_batch(
            processor,
            chunk,
            prompt_suffix=settings.prompt_suffix,
            prompt_builder=settings.prompt_builder,
            max_pixels=settings.max_pixels,
        )
        yield chunk, to_model(encoded, model)


def generate_answers(
    model: Any,
    processor: Any,
    items: Sequence[BenchmarkItem],
    *,
    fused: bool,
    fusion: FusionConfig | None = None,
    settings: GenerationSettings | None = None,
    desc: str | None = None,
) -> list[str]:
    """The decoded greedy answer of ``model`` to every item, plain or fused (see :func:`fusion_mode`), prompted
    and generated as ``settings`` say (default :class:`GenerationSettings`; its answer markers are not used)."""
    settings = settings or GenerationSettings()
    answers: list[str] = []
    bar = progress_bar(len(items), desc or ("fused" if fused else "plain"), settings.progress)
    try:
        with fusion_mode(model, processor, fused, fusion) as mode_kwargs:
            for chunk, inputs in encoded_batches(model, processor, items, settings):
                answers += generate_batch(
                    model,
                    processor,
                    inputs,
                    max_new_tokens=settings.max_new_tokens,
                    generate_kwargs={**(settings.generate_kwargs or {}), **mode_kwargs},
                )
                bar.update(len(chunk))
    finally:
        bar.close()
    return answers


def cascade_answers(
    model: Any,
    processor: Any,
    items: Sequence[BenchmarkItem],
    *,
    describe_request: str | None = None,
    settings: GenerationSettings | None = None,
) -> tuple[list[str], list[str]]:
    """``(answers, descriptions)`` of every item by :func:`~vift_plugin.cascade.cascade_generate`: each image
    described under ``describe_request``, then the item's prompt answered with the description in its place;
    both passes prompted and generated as ``settings`` say (default :class:`GenerationSettings`)."""
    from vift_plugin.cascade import DEFAULT_DESCRIBE_REQUEST, cascade_generate

    settings = settings or GenerationSettings()
    answers: list[str] = []
    descriptions: list[str] = []
    bar = progress_bar(len(items), "cascade", settings.progress)
    try:
        for chunk in batches(items, settings.batch_size):
            outputs = cascade_generate(
                model,
                processor,
                [item_messages(item, settings.prompt_suffix, settings.prompt_builder) for item in chunk],
                [item.image for item in chunk],
                describe_request=describe_request or DEFAULT_DESCRIBE_REQUEST,
                batch_size=settings.batch_size,
                max_new_tokens=settings.max_new_tokens,
                max_pixels=settings.max_pixels,
                generate_kwargs=settings.generate_kwargs,
            )
            answers += [output.answer for output in outputs]
            descriptions += [output.description for output in outputs]
            bar.update(len(chunk))
    finally:
        bar.close()
    return answers, descriptions
