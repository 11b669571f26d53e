"""Text-only instruction data (ShareGPT, Alpaca, OpenAI ``messages``) into the same record schema.

Each row's format is recognised from its keys, so mixed files work: ``conversations`` (ShareGPT,
``from``/``value`` turns), ``instruction``/``output`` (Alpaca, with optional ``input``, ``system``
and ``history`` of earlier ``[query, answer]`` pairs), or ``messages`` (``role``/``content``, content
a string or text parts). Multi-turn dialogues are kept whole. A row that holds an image, has no
answer, or whose turns do not alternate is a bad row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from vift_plugin.data.files import RowError, iter_rows
from vift_plugin.data.report import ConversionReport, convert_stream
from vift_plugin.data.schema import LLAVA_IMAGE_TOKEN, OutputFormat, check_output_format, record, text_part
from vift_plugin.data.writers import dump_columns

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SHAREGPT_ROLES |= {"chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
IMAGE_MARKERS = (LLAVA_IMAGE_TOKEN, "<|image_pad|>", "<|vision_start|>", "<start_of_image>", "[IMG]")


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        pieces = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("image", "image_url", "video"):
                raise ValueError(f"{where} holds an image part; text instructions must be text-only")
            else:
                raise ValueError(f"{where} has an unsupported content part {part!r}")
        return "\n".join(pieces)
    raise ValueError(f"{where} content must be text, got {type(value).__name__}")


def _system_turn(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The row's ``system`` prompt as a first turn, when it has a non-empty one."""
    system = row.get("system")
    return [("system", system)] if isinstance(system, str) and system.strip() else []


def _sharegpt(row: dict[str, Any]) -> list[tuple[str, str]]:
    turns = _system_turn(row)
    for i, turn in enumerate(row["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversations[{i}] must have 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"conversations[{i}] has unsupported speaker {turn['from']!r}")
        turns.append((role, _text(turn["value"], f"conversations[{i}]")))
    return turns


def _alpaca(row: dict[str, Any]) -> list[tuple[str, str]]:
    turns = _system_turn(row)
    for i, pair in enumerate(row.get("history") or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"history[{i}] must be a [query, answer] pair")
        turns += [("user", _text(pair[0], f"history[{i}]")), ("assistant", _text(pair[1], f"history[{i}]"))]
    instruction = _text(row["instruction"], "instruction")
    extra = row.get("input")
    if extra is not None and _text(extra, "input").strip():
        instruction = f"{instruction}\n\n{extra}" if instruction.strip() else extra
    turns += [("user", instruction), ("assistant", _text(row.get("output"), "output"))]
    return turns


def _openai(row: dict[str, Any]) -> list[tuple[str, str]]:
    turns = []
    for i, message in enumerate(row["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] must have role system, user or assistant")
        turns.append((message["role"], _text(message.get("content"), f"messages[{i}]")))
    return turns


def instruction_turns(row: Any) -> list[tuple[str, str]]:
    """``[(role, text), ...]`` of one row in any supported format, validated."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a record, got {type(row).__name__}")
    if isinstance(row.get("conversations"), list):
        turns = _sharegpt(row)
    elif isinstance(row.get("messages"), list):
        turns = _openai(row)
    elif "instruction" in row:
        turns = _alpaca(row)
    else:
        raise ValueError(f"not a ShareGPT, Alpaca or messages row (keys: {sorted(row)})")
    if row.get("image") or row.get("images"):
        raise ValueError("the row has an image; text instructions must be text-only")
    if turns and turns[0][0] == "system" and not turns[0][1].strip():
        turns = turns[1:]
    for role, text in turns[:1]:
        if role == "system" and any(marker in text for marker in IMAGE_MARKERS):
            raise ValueError("the system prompt contains an image placeholder; text instructions must be text-only")
    dialogue = turns[1:] if turns and turns[0][0] == "system" else turns
    if not dialogue:
        raise ValueError("no turns")
    for i, (role, text) in enumerate(dialogue):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"turn {i} is {role!r}, expected {expected!r} (turns must alternate, starting with user)")
        if not text.strip():
            raise ValueError(f"turn {i} ({role}) is empty")
        if any(marker in text for marker in IMAGE_MARKERS):
            raise ValueError(f"turn {i} contains an image placeholder; text instructions must be text-only")
    if dialogue[-1][0] != "assistant":
        raise ValueError("the dialogue ends with a user turn that has no answer")
    return turns


def _records(
    rows: list[Any],
    positions: Any,
    locations: list[str] | None,
    *,
    output_format: OutputFormat,
    id_column: str | None,
    skip_bad: bool,
    rejects: list[dict[str, Any]] | None,
) -> dict[str, list[Any]]:
    keys = ("id", "messages", "images") if output_format == "messages" else ("id", "conversations")
    out: dict[str, list[Any]] = {key: [] for key in keys}
    for i, (row, position) in enumerate(zip(rows, positions, strict=True)):
        location = locations[i] if locations else f"row {position}"
        try:
            turns = instruction_turns(row)
        except ValueError as error:
            if not skip_bad:
                raise RowError(location, str(error)) from error
            if rejects is not None:
                rejects.append({"location": location, "reason": str(error)})
            continue
        raw_id = row.get(id_column) if id_column else None
        row_id = str(raw_id) if raw_id is not None else str(position)
        messages = [{"role": role, "content": [text_part(text)]} for role, text in turns]
        item = record(row_id, messages, [], output_format)
        for key in keys:
            out[key].append(item[key])
    return out


def instructions_to_messages(
    batch: dict[str, list[Any]],
    indices: list[int] | None = None,
    *,
    output_format: OutputFormat = "messages",
    id_column: str | None = "id",
    skip_bad: bool = False,
) -> dict[str, list[Any]]:
    """Batched transform (``datasets.map(batched=True, with_indices=True)``) of instruction rows to records.

    A bad row raises ``RowError`` naming it, or with ``skip_bad`` is left out.
    """
    names = list(batch)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    positions = indices if indices is not None else range(len(rows))
    return _records(
        rows, positions, None, output_format=output_format, id_column=id_column, skip_bad=skip_bad, rejects=None
    )


def convert_instructions(
    dataset: Any,
    *,
    output_format: OutputFormat = "messages",
    skip_bad: bool = False,
    num_proc: int | None = None,
) -> Any:
    """A text-instruction ``datasets.Dataset`` in the record schema, through one batched ``map``."""
    check_output_format(output_format)
    return dataset.map(
        instructions_to_messages,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="instructions -> records",
        fn_kwargs={"output_format": output_format, "skip_bad": skip_bad},
    )


def _wrapped_rows(path: str) -> Iterator[tuple[str, Any]]:
    for location, row in iter_rows(path):
        yield location, row if isinstance(row, RowError) else {"row": row}


def convert_instruction_file(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    output_format: OutputFormat = "messages",
    skip_bad: bool = False,
    rejects_path: str | os.PathLike[str] | None = None,
    chunk_size: int = 4096,
) -> ConversionReport:
    """Stream a ShareGPT/Alpaca/messages file (JSON, JSONL, Parquet) into records, written atomically."""
    check_output_format(output_format)

    def transform(
        columns: dict[str, list[Any]], positions: list[int], locations: list[str], rejects: list[dict[str, Any]]
    ) -> Iterator[str]:
        return dump_columns(
            _records(
                columns["row"],
                positions,
                locations,
                output_format=output_format,
                id_column="id",
                skip_bad=skip_bad,
                rejects=rejects,
            )
        )

    return convert_stream(
        _wrapped_rows(os.fspath(path)),
        transform,
        ("row",),
        output,
        skip_bad=skip_bad,
        rejects_path=rejects_path,
        chunk_size=chunk_size,
        source=os.fspath(path),
    )
