"""Caption file formats: each reader turns one kind of caption file into ``{"id", "image", "caption"}`` rows.

- ``llava``: LLaVA-Pretrain / ShareGPT4V JSON or JSONL (``id``, ``image``, ``conversations``; the
  caption is the first ``gpt`` turn);
- ``coco``: COCO caption annotations (``images`` + ``annotations``), one row per annotation;
- ``table``: JSON/JSONL/CSV/TSV/Parquet with an image path-or-URL column and a caption column
  (LAION-style), the columns found by name or given.

Readers only reshape rows; checking captions and images is the converter's job (:mod:`.captions`).
More formats join through :func:`register_caption_format`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from vift_plugin.data.files import RowError, file_kind, iter_rows, read_json_document

IMAGE_COLUMNS = ("image", "image_path", "images", "file_name", "filename", "path", "url", "image_url", "URL", "img")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "captions", "alt_text", "description", "sentence")


def guess_column(columns: Any, candidates: tuple[str, ...], what: str, where: str) -> str:
    """The first of ``candidates`` among ``columns``, or an error listing both."""
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"{where}: no {what} column found among {sorted(columns)}; looked for {list(candidates)}. "
        f"Name it with --{what}-column / {what}_column=."
    )


def detect_caption_format(path: str | os.PathLike[str]) -> str:
    """``coco`` (an object with ``annotations``), ``llava`` (rows with ``conversations``) or ``table``."""
    if file_kind(path) == "json":
        with open(path, encoding="utf-8-sig", errors="replace") as handle:  # a peek: the readers name bad bytes
            head = handle.read(4096).lstrip()
        if head.startswith("{"):
            return "coco"
    for _, row in iter_rows(path):
        return "llava" if isinstance(row, dict) and "conversations" in row else "table"
    return "table"


def _llava_rows(path: str) -> Iterator[tuple[str, Any]]:
    for location, row in iter_rows(path):
        if isinstance(row, RowError):
            yield location, row
            continue
        if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
            yield location, RowError(location, "expected an object with a 'conversations' list")
            continue
        caption = next(
            (
                t.get("value")
                for t in row["conversations"]
                if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")
            ),
            None,
        )
        yield location, {"id": row.get("id"), "image": row.get("image"), "caption": caption}


def _coco_rows(path: str) -> Iterator[tuple[str, Any]]:
    data = read_json_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise RowError(path, "expected a COCO caption file: an object with 'images' and 'annotations' lists")
    files = {image.get("id"): image.get("file_name") for image in data.get("images", []) if isinstance(image, dict)}
    for index, annotation in enumerate(data["annotations"]):
        location = f"{path}:annotations[{index}]"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            yield location, RowError(location, "annotation without an image_id")
            continue
        image = files.get(annotation["image_id"])
        if image is None:
            yield location, RowError(location, f"image_id {annotation['image_id']!r} is not in 'images'")
            continue
        yield location, {"id": annotation.get("id", index), "image": image, "caption": annotation.get("caption")}


def _table_rows(path: str, image_column: str | None, caption_column: str | None) -> Iterator[tuple[str, Any]]:
    columns: tuple[str, str] | None = None
    for location, row in iter_rows(path):
        if isinstance(row, RowError):
            yield location, row
            continue
        if not isinstance(row, dict):
            yield location, RowError(location, f"expected a record, got {type(row).__name__}")
            continue
        if columns is None:
            columns = (
                image_column or guess_column(row, IMAGE_COLUMNS, "image", path),
                caption_column or guess_column(row, CAPTION_COLUMNS, "caption", path),
            )
        image, caption = columns
        if image not in row or caption not in row:
            yield location, RowError(location, f"missing column {image!r} or {caption!r}")
            continue
        yield location, {"id": row.get("id", row.get("key")), "image": row[image], "caption": row[caption]}


CaptionReader = Callable[[str, str | None, str | None], Iterator[tuple[str, Any]]]
CAPTION_READERS: dict[str, tuple[CaptionReader, str]] = {
    "llava": (lambda path, image, caption: _llava_rows(path), "LLaVA-Pretrain / ShareGPT4V: id, image, conversations"),
    "coco": (lambda path, image, caption: _coco_rows(path), "COCO captions: images + annotations"),
    "table": (_table_rows, "JSON/JSONL/CSV/TSV/Parquet with image and caption columns (LAION-style)"),
}


def register_caption_format(name: str, reader: CaptionReader, description: str) -> None:
    """Add an input format: ``reader(path, image_column, caption_column)`` yields ``(location, row)``
    with rows ``{"id", "image", "caption"}`` (or a ``RowError`` for a malformed row)."""
    CAPTION_READERS[name] = (reader, description)


def read_caption_rows(
    path: str | os.PathLike[str],
    input_format: str = "auto",
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> Iterator[tuple[str, Any]]:
    """``(location, {"id", "image", "caption"} | RowError)`` for each row of a caption file, streaming."""
    name = os.fspath(path)
    if input_format == "auto":
        input_format = detect_caption_format(name)
    if input_format not in CAPTION_READERS:
        raise ValueError(f"input format must be 'auto' or one of {sorted(CAPTION_READERS)}, got {input_format!r}.")
    return CAPTION_READERS[input_format][0](name, image_column, caption_column)
