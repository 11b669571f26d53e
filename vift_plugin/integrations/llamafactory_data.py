"""LLaMA-Factory's data, as the integration reads and writes it.

Reading: the tokenized dataset LLaMA-Factory trains on keeps ``input_ids``, ``labels``, ``images``,
``videos`` and ``audios`` per row, media as lists of paths (``None`` or ``[]`` when absent). A row's
modality and length are read as Arrow list lengths, so no image is decoded and index mappings
(``train_test_split``) are respected. Writing: :func:`write_llamafactory_dataset` writes one
ShareGPT-format dataset and its ``dataset_info.json`` entry from caption and text-instruction files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vift_plugin.integrations.trainer_api import has_length


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, list | tuple) else None


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, list | tuple):
        return len(value)
    return 1


def list_lengths(dataset: Any, column: str) -> list[int] | None:
    """``len(row[column] or [])`` per row, or ``None`` when the dataset has no such column.

    On a ``datasets.Dataset`` this reads Arrow list lengths (index mappings respected); images are
    never decoded.
    """
    names = _column_names(dataset)
    if names is not None:
        if column not in names:
            return None
        values = dataset.with_format("arrow")[column]
        try:
            import pyarrow.compute as pc

            return [int(n) for n in pc.fill_null(pc.list_value_length(values), 0).to_pylist()]
        except Exception:  # not a list column (a single path per row, ...)
            return [_count(value) for value in values.to_pylist()]
    lengths = []
    for index in range(len(dataset)):
        row = dataset[index]
        if not isinstance(row, dict) or column not in row:
            return None
        lengths.append(_count(row[column]))
    return lengths


def has_any_column(dataset: Any, columns: Sequence[str]) -> bool:
    """Whether ``dataset`` (a ``datasets.Dataset`` or a list of dicts) has one of ``columns``."""
    names = _column_names(dataset)
    if names is None:
        first = dataset[0] if has_length(dataset) and len(dataset) else None
        names = list(first) if isinstance(first, dict) else []
    return any(column in names for column in columns)


def dataset_modalities(dataset: Any, visual_columns: Sequence[str]) -> list[str] | None:
    """``"image"`` where any of ``visual_columns`` is non-empty, else ``"text"``; ``None`` without those columns."""
    counts = [c for c in (list_lengths(dataset, column) for column in visual_columns) if c is not None]
    if not counts:
        return None
    return ["image" if any(row) else "text" for row in zip(*counts, strict=True)]


def write_llamafactory_dataset(
    dataset_dir: str | os.PathLike[str],
    name: str = "vift_mix",
    *,
    captions: Sequence[str | os.PathLike[str]] = (),
    texts: Sequence[str | os.PathLike[str]] = (),
    image_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    verify_images: bool = True,
    skip_bad: bool = False,
) -> dict[str, int]:
    """Write ``{dataset_dir}/{name}.json`` and register it in ``{dataset_dir}/dataset_info.json``.

    Captions become ShareGPT-style ``conversations`` with one ``<image>`` and an absolute ``image``
    path; text instructions become ``conversations`` without an image. Other entries of an existing
    ``dataset_info.json`` are kept. Use it as ``dataset: {name}`` with ``dataset_dir: {dataset_dir}``.
    Returns ``{"captions": n, "texts": m}``.
    """
    from vift_plugin.data.export import write_llava_records
    from vift_plugin.data.writers import atomic_output

    folder = Path(dataset_dir)
    counts = write_llava_records(
        folder / f"{name}.json",
        captions=captions,
        texts=texts,
        image_root=image_root,
        seed=seed,
        verify_images=verify_images,
        skip_bad=skip_bad,
        absolute_image_paths=True,
    )
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "image"},
    }
    with atomic_output(info_path) as handle:
        handle.write(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return counts
