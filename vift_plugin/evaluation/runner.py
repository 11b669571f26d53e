"""Batched greedy generation over benchmark items, plain or ability-fused.

Each item becomes one user turn (its image, then the question with lettered options and an optional
suffix), rendered by the processor's chat template and encoded with left padding; only the new
tokens are decoded. The caller places the model (on CUDA when it has one); inputs follow the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from vift_plugin.config import FusionConfig
from vift_plugin.evaluation.benchmark import LETTERS, BenchmarkItem

Messages = list[dict[str, Any]]
T = TypeVar("T")
PromptBuilder = Callable[[BenchmarkItem], "str | Messages"]


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
    from vift_plugin.data.images import ImageError, load_image

    conversations = [item_messages(item, prompt_suffix, prompt_builder) for item in items]
    images = []
    for item in items:
        try:
            images.append([load_image(item.image, max_pixels=max_pixels)])
        except ImageError as error:
            raise ImageError(f"{item.location or f'item {item.id!r}'}: {error}") from error
    return encode_messages(processor, conversations, images)


def encoded_batches(
    model: Any,
    processor: Any,
    items: Sequence[BenchmarkItem],
    batch_size: int,
    *,
    prompt_suffix: str | None = None,
    prompt_builder: PromptBuilder | None = None,
    max_pixels: int | None = None,
) -> Iterator[tuple[Sequence[BenchmarkItem], dict[str, Any]]]:
    """``(chunk, inputs)`` per batch of ``items``: the :func:`encode_batch` encoding, moved :func:`to_model`."""
    for chunk in batches(items, batch_size):
        encoded = encode_batch(
            processor, chunk, prompt_suffix=prompt_suffix, prompt_builder=prompt_builder, max_pixels=max_pixels
        )
        yield chunk, to_model(encoded, model)


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


def generate_answers(
    model: Any,
    processor: Any,
    items: Sequence[BenchmarkItem],
    *,
    fused: bool,
    fusion: FusionConfig | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    prompt_suffix: str | None = None,
    prompt_builder: PromptBuilder | None = None,
    max_pixels: int | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> list[str]:
    """The decoded greedy answer of ``model`` to every item, plain or fused (see :func:`fusion_mode`)."""
    answers: list[str] = []
    bar = progress_bar(len(items), desc or ("fused" if fused else "plain"), progress)
    try:
        with fusion_mode(model, processor, fused, fusion) as mode_kwargs:
            for chunk, inputs in encoded_batches(
                model,
                processor,
                items,
                batch_size,
                prompt_suffix=prompt_suffix,
                prompt_builder=prompt_builder,
                max_pixels=max_pixels,
            ):
                answers += generate_batch(
                    model,
                    processor,
                    inputs,
                    max_new_tokens=max_new_tokens,
                    generate_kwargs={**(generate_kwargs or {}), **mode_kwargs},
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
    batch_size: int = 8,
    max_new_tokens: int = 64,
    prompt_suffix: str | None = None,
    prompt_builder: PromptBuilder | None = None,
    max_pixels: int | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """``(answers, descriptions)`` of every item by :func:`~vift_plugin.cascade.cascade_generate`: each image
    described under ``describe_request``, then the item's prompt answered with the description in its place."""
    from vift_plugin.cascade import DEFAULT_DESCRIBE_REQUEST, cascade_generate

    answers: list[str] = []
    descriptions: list[str] = []
    bar = progress_bar(len(items), "cascade", progress)
    try:
        for chunk in batches(items, batch_size):
            outputs = cascade_generate(
                model,
                processor,
                [item_messages(item, prompt_suffix, prompt_builder) for item in chunk],
                [item.image for item in chunk],
                describe_request=describe_request or DEFAULT_DESCRIBE_REQUEST,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                max_pixels=max_pixels,
                generate_kwargs=generate_kwargs,
            )
            answers += [output.answer for output in outputs]
            descriptions += [output.description for output in outputs]
            bar.update(len(chunk))
    finally:
        bar.close()
    return answers, descriptions
