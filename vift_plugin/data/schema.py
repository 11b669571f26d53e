"""The one record schema every converter writes, in Hugging Face chat format or LLaVA's.

Chat format (what ``processor.apply_chat_template`` takes)::

    {"id": str, "messages": [{"role": ..., "content": [{"type": "image"|"text", "text": str|None}]}],
     "images": [path or URL relative to the image root, ...]}

LLaVA format::

    {"id": str, "image": path (absent for text), "conversations": [{"from": "human"|"gpt"|"system",
     "value": "<image>\\n..."}]}

Content is always a list of parts with both keys, so Arrow sees one schema for image and text rows.
"""

from __future__ import annotations

from typing import Any, Literal

OutputFormat = Literal["messages", "llava"]
OUTPUT_FORMATS = ("messages", "llava")
LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part() -> dict[str, Any]:
    return {"type": "image", "text": None}


def caption_messages(query: str, caption: str) -> list[dict[str, Any]]:
    """A user turn (image, then the request) and the caption as the assistant turn."""
    return [
        {"role": "user", "content": [image_part(), text_part(query)]},
        {"role": "assistant", "content": [text_part(caption)]},
    ]


def messages_to_llava(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """LLaVA ``conversations``: image parts become ``<image>`` on their own line, before the text."""
    turns = []
    for message in messages:
        pieces = [LLAVA_IMAGE_TOKEN if part["type"] == "image" else part["text"] for part in message["content"]]
        turns.append({"from": LLAVA_ROLES[message["role"]], "value": "\n".join(pieces)})
    return turns


def llava_to_messages(conversations: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The inverse of :func:`messages_to_llava`: ``<image>`` markers become image parts, in place."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    messages = []
    for turn in conversations:
        if turn.get("from") not in roles:
            raise ValueError(f"unsupported speaker {turn.get('from')!r} in conversations")
        content: list[dict[str, Any]] = []
        for k, piece in enumerate(str(turn.get("value", "")).split(LLAVA_IMAGE_TOKEN)):
            if k:
                content.append(image_part())
            piece = piece.strip("\n") if k or LLAVA_IMAGE_TOKEN in turn["value"] else piece
            if piece:
                content.append(text_part(piece))
        messages.append({"role": roles[turn["from"]], "content": content})
    return messages


def record(
    row_id: str, messages: list[dict[str, Any]], images: list[Any], output_format: OutputFormat
) -> dict[str, Any]:
    """One output record in ``output_format``."""
    if output_format == "messages":
        return {"id": row_id, "messages": messages, "images": images}
    out: dict[str, Any] = {"id": row_id}
    if images:
        if len(images) > 1:
            raise ValueError(f"row {row_id}: LLaVA's conversations format holds one image, got {len(images)}")
        out["image"] = images[0]
    out["conversations"] = messages_to_llava(messages)
    return out


def check_output_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}.")
