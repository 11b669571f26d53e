"""Benchmark files: JSONL rows of ``image``, ``question``, optional ``choices``, ``answer``, ``id``.

Every other field is kept in :attr:`BenchmarkItem.extra` (``type`` also has its own attribute, as the
summary is broken down by it). A malformed row stops reading with its ``file:row``; images that are
missing or do not decode are all listed in one error, before any model runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vift_plugin.data.files import ImageError, RowError, iter_rows
from vift_plugin.data.images import check_remote, load_image, threaded_map, warn_if_truncated_images_pass
from vift_plugin.data.remote import is_url
from vift_plugin.evaluation.answers import LETTERS, Answer, gold_choice

KNOWN_FIELDS = ("id", "image", "question", "choices", "answer")


@dataclass
class BenchmarkItem:
    """One benchmark question about one image.

    ``image`` is a resolved path (or a PIL image / bytes for items built in memory; a fetched remote
    image is held as ``{"bytes", "path": URL}``), ``choices`` the
    options of a multiple-choice question (``None`` for open answers), ``answer`` the reference: a
    string, a list of accepted strings, or for multiple choice a letter, a 0-based index or the
    option's text. A reference may carry reasoning before an answer marker (``... answer : red``).
    """

    id: str
    image: Any
    question: str
    answer: Answer
    choices: list[str] | None = None
    type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    location: str = ""

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.choices)


def _check_row(row: Any, location: str) -> None:
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, Mapping):
        raise RowError(location, f"expected a JSON object, got {type(row).__name__}")


def _item(row: Mapping[str, Any], location: str, index: int) -> BenchmarkItem:
    """Validate one row (already known to be a mapping) into a :class:`BenchmarkItem`."""
    image = row.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        raise RowError(location, "missing 'image'")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RowError(location, "'question' must be a non-empty string")
    choices = row.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise RowError(location, "'choices' must be a list of non-empty strings")
        if not 2 <= len(choices) <= len(LETTERS):
            raise RowError(location, f"'choices' must hold 2 to {len(LETTERS)} options, got {len(choices)}")
    if "answer" not in row or row["answer"] is None:
        raise RowError(location, "missing 'answer'")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float, list)):
        raise RowError(location, f"'answer' must be a string, a number or a list of strings, got {answer!r}")
    if isinstance(answer, list) and (not answer or not all(isinstance(a, str) for a in answer)):
        raise RowError(location, "a list 'answer' must hold one or more strings (the accepted answers)")
    if isinstance(answer, str) and not answer.strip():
        raise RowError(location, "'answer' is empty")
    if choices:
        if gold_choice(answer, choices) is None:
            raise RowError(
                location, f"'answer' {answer!r} is none of the choices (a letter, a 0-based index or a text)"
            )
    item_id = row.get("id", index)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or str(item_id) == "":
        raise RowError(location, f"'id' must be a non-empty string or an integer, got {item_id!r}")
    kind = row.get("type")
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    return BenchmarkItem(
        id=str(item_id),
        image=image,
        question=question,
        answer=answer,
        choices=list(choices) if choices else None,
        type=None if kind is None else str(kind),
        extra=extra,
        location=location,
    )


def items_from_rows(
    rows: Iterable[tuple[str, Any]],
    image_root: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    check_images: bool = True,
    allow_remote_images: bool = False,
) -> list[BenchmarkItem]:
    """Items from ``(location, row)`` pairs; relative image paths are resolved under ``image_root``.

    With ``check_images`` every image is decoded here (in threads), so a missing or broken one is
    named with its row before a model runs rather than ending a run that computed everything else.
    A URL is a bad row unless ``allow_remote_images``; then it is fetched once, here, and held in memory.
    """
    items: list[BenchmarkItem] = []
    seen: dict[str, str] = {}
    for index, (location, row) in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        _check_row(row, location)
        item = _item(row, location, index)
        if item.id in seen:
            raise RowError(location, f"duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = location
        if isinstance(item.image, str) and is_url(item.image):
            try:
                check_remote(item.image, allow_remote_images)
            except ImageError as error:
                raise RowError(location, str(error)) from error
        elif isinstance(item.image, str):
            if image_root is not None and not os.path.isabs(item.image):
                item.image = os.path.join(os.fspath(image_root), item.image)
        elif not isinstance(item.image, (bytes, Mapping)) and not hasattr(item.image, "size"):
            raise RowError(location, f"'image' must be a path, got {type(item.image).__name__}")
        items.append(item)
    problems = _prepare_images(items, check_images)
    if problems:
        shown = "\n  ".join(problem for problem, _ in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        if all(missing for _, missing in problems):
            raise FileNotFoundError(f"{len(problems)} image file(s) not found:\n  {shown}{more}")
        raise ImageError(f"{len(problems)} image(s) cannot be used:\n  {shown}{more}\nFix or remove these rows.")
    return items


def _prepare_images(items: list[BenchmarkItem], check_images: bool) -> list[tuple[str, bool]]:
    """Fetch each remote image once and, with ``check_images``, decode every image, in threads.

    Returns ``(f"{file:row}: {problem}", missing)`` for each image that fails. A fetched image is
    kept as ``{"bytes", "path": URL}``: generation then never waits on the network, and an image
    that went away cannot end a run midway. URLs reach here only when remote images are allowed.
    """

    def prepare(item: BenchmarkItem) -> None:
        if isinstance(item.image, str) and is_url(item.image):
            from vift_plugin.data.remote import fetch_image_bytes

            item.image = {"bytes": fetch_image_bytes(item.image), "path": item.image}
        elif isinstance(item.image, str) and check_images and not os.path.isfile(item.image):
            raise FileNotFoundError(item.image)
        if check_images:
            load_image(item.image)

    if check_images:
        warn_if_truncated_images_pass("the benchmark's image check")
    todo = items if check_images else [item for item in items if isinstance(item.image, str) and is_url(item.image)]
    problems = []
    for item, outcome in zip(todo, threaded_map(prepare, todo), strict=True):
        if isinstance(outcome, FileNotFoundError):
            problems.append((f"{item.location}: {item.image}", True))
        elif isinstance(outcome, Exception):
            problems.append((f"{item.location}: {outcome}", False))
    return problems


def read_benchmark(
    path: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    check_images: bool = True,
    allow_remote_images: bool = False,
) -> list[BenchmarkItem]:
    """The items of a benchmark file (JSONL; JSON arrays, CSV and Parquet are read too).

    Relative image paths are resolved against ``image_root``, by default the file's folder. With
    ``limit`` only the first ``limit`` rows are read. Raises :class:`~vift_plugin.data.RowError`
    (``file:row: reason``) for a malformed row, and with ``check_images`` (every image decoded)
    :class:`FileNotFoundError` listing every missing image file, or :class:`~vift_plugin.data.ImageError`
    listing every image that is missing or does not decode. URLs: see :func:`items_from_rows`.
    """
    root = Path(image_root) if image_root is not None else Path(path).resolve().parent
    items = items_from_rows(
        iter_rows(path), root, limit=limit, check_images=check_images, allow_remote_images=allow_remote_images
    )
    if not items:
        raise ValueError(f"{path} holds no benchmark rows")
    return items


def as_items(
    items: str | os.PathLike[str] | Sequence[BenchmarkItem | Mapping[str, Any]],
    image_root: str | os.PathLike[str] | None = None,
    *,
    allow_remote_images: bool = False,
) -> list[BenchmarkItem]:
    """A benchmark file path, items, or row dicts (validated like file rows, images checked) as a list of
    items. :class:`BenchmarkItem` objects are used as they are (:func:`read_benchmark` made and checked them)."""
    if isinstance(items, (str, os.PathLike)):
        return read_benchmark(items, image_root, allow_remote_images=allow_remote_images)
    rows: list[tuple[str, Any]] = []
    ready: list[BenchmarkItem] = []
    for index, entry in enumerate(items):
        if isinstance(entry, BenchmarkItem):
            ready.append(entry)
        else:
            rows.append((f"items[{index}]", entry))
    if rows and ready:
        raise TypeError("pass either BenchmarkItem objects or row dicts, not both")
    result = ready or items_from_rows(rows, image_root, allow_remote_images=allow_remote_images)
    if not result:
        raise ValueError("no benchmark items to evaluate")
    return result
