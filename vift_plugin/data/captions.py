"""Caption data into instruction format: a caption request as the user turn, the caption as the answer.

Inputs are the caption files :mod:`.caption_formats` reads (LLaVA-Pretrain, COCO, LAION-style tables) or
a ``datasets.Dataset`` (or a ``save_to_disk`` folder), whose image column may be an ``Image`` feature.

:func:`captions_to_messages` is the pure, batched transform shared by :func:`convert_captions`
(``datasets.map``) and :func:`convert_caption_file` (streaming, for ``vift convert captions``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vift_plugin.data.caption_formats import CAPTION_COLUMNS, IMAGE_COLUMNS, guess_column, read_caption_rows
from vift_plugin.data.files import ImageError, RowError
from vift_plugin.data.images import ImageRoot, check_remote, load_image, threaded_map, warn_if_truncated_images_pass
from vift_plugin.data.queries import QueryPool
from vift_plugin.data.remote import is_url
from vift_plugin.data.report import ConversionReport, convert_stream
from vift_plugin.data.schema import LLAVA_IMAGE_TOKEN, OutputFormat, caption_messages, check_output_format, record

logger = logging.getLogger(__name__)


def _check_caption(caption: Any) -> str:
    if not isinstance(caption, str):
        raise ValueError(f"caption must be text, got {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        raise ValueError("empty caption")
    return caption


def _check_image(image: Any, paths: ImageRoot | None, verify_images: bool, allow_remote_images: bool) -> Any:
    """The image reference to write for one row. With ``verify_images`` its pixels are decoded as training
    will decode them: a header read passes a file cut short, which would then stop training mid-run."""
    if isinstance(image, dict) or (image is not None and hasattr(image, "size") and not isinstance(image, str)):
        if verify_images:
            load_image(image, allow_remote_images=allow_remote_images)
        return image
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ImageError("no image")
    if not isinstance(image, str):
        raise ImageError(f"image must be a path or URL string, got {type(image).__name__}")
    reference = image.strip() if paths is None else paths.relative(image)
    if is_url(reference):
        check_remote(reference, allow_remote_images)
    if verify_images and (paths is not None or is_url(reference)):
        load_image(reference, None if paths is None else paths.root, allow_remote_images=allow_remote_images)
    return reference


def _checked_rows(
    captions: list[Any],
    images: list[Any],
    paths: ImageRoot | None,
    *,
    verify_images: bool,
    allow_remote_images: bool,
    verify_threads: int | None,
) -> Iterator[tuple[str, Any] | Exception]:
    """The cleaned ``(caption, image)`` of each row, in order, or the error saying why the row is bad.

    Decoding images is the slow part of a conversion, so with ``verify_images`` the images are
    checked in ``verify_threads`` threads (PIL decodes without the GIL); row order is kept.
    """

    def check(image: Any) -> Any:
        return _check_image(image, paths, verify_images, allow_remote_images)

    checked = threaded_map(check, images, verify_threads if verify_images else 1)
    for caption, image in zip(captions, checked, strict=True):
        try:
            text = _check_caption(caption)
        except ValueError as error:
            yield error
            continue
        yield image if isinstance(image, Exception) else (text, image)


def _valid_rows(
    batch: dict[str, list[Any]],
    indices: Any,
    *,
    queries: QueryPool | None,
    seed: int,
    image_column: str,
    caption_column: str,
    id_column: str | None,
    image_root: str | None,
    verify_images: bool,
    allow_remote_images: bool,
    verify_threads: int | None,
    skip_bad: bool,
    locations: list[str] | None,
    rejects: list[dict[str, Any]] | None,
) -> Iterator[tuple[str, str, str, Any]]:
    """``(id, query, caption, image)`` of each good row; bad rows raise or are recorded as rejects."""
    pool = queries or QueryPool()
    ids = batch.get(id_column) if id_column else None
    captions = batch[caption_column]
    positions = indices if indices is not None else range(len(captions))
    rows = _checked_rows(
        captions,
        batch[image_column],
        ImageRoot(image_root) if image_root is not None else None,
        verify_images=verify_images,
        allow_remote_images=allow_remote_images,
        verify_threads=verify_threads,
    )
    for i, (position, row) in enumerate(zip(positions, rows, strict=True)):
        if isinstance(row, Exception):
            location = locations[i] if locations else f"row {position}"
            reason = row.reason if isinstance(row, RowError) else str(row)
            if not skip_bad:
                raise RowError(location, reason) from row
            if rejects is not None:
                rejects.append({"location": location, "reason": reason})
            continue
        caption, image = row
        row_id = str(ids[i]) if ids is not None and ids[i] is not None else str(position)
        yield row_id, pool.pick(caption, row_id, seed), caption, image


def captions_to_messages(
    batch: dict[str, list[Any]],
    indices: list[int] | None = None,
    *,
    queries: QueryPool | None = None,
    seed: int = 0,
    output_format: OutputFormat = "messages",
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = "id",
    image_root: str | None = None,
    verify_images: bool = False,
    allow_remote_images: bool = False,
    verify_threads: int | None = None,
    skip_bad: bool = False,
    locations: list[str] | None = None,
    rejects: list[dict[str, Any]] | None = None,
) -> dict[str, list[Any]]:
    """Batched transform (``datasets.map(batched=True, with_indices=True)``) of caption rows to records.

    A bad row (empty caption, missing or escaping image, an image that does not decode with
    ``verify_images``, a URL without ``allow_remote_images``) raises ``RowError`` naming the row, or
    with ``skip_bad`` is left out and, when ``rejects`` is given, appended to it as ``{"location", "reason"}``.
    """
    keys = ("id", "messages", "images") if output_format == "messages" else ("id", "image", "conversations")
    out: dict[str, list[Any]] = {key: [] for key in keys}
    rows = _valid_rows(
        batch,
        indices,
        queries=queries,
        seed=seed,
        image_column=image_column,
        caption_column=caption_column,
        id_column=id_column,
        image_root=image_root,
        verify_images=verify_images,
        allow_remote_images=allow_remote_images,
        verify_threads=verify_threads,
        skip_bad=skip_bad,
        locations=locations,
        rejects=rejects,
    )
    for row_id, query, caption, image in rows:
        item = record(row_id, caption_messages(query, caption), [image], output_format)
        for key in keys:
            out[key].append(item[key])
    return out


def _messages_line(row_id: str, query: str, caption: str, image: str) -> str:
    """``json.dumps(record(..., "messages"))`` without building the nested objects (the converter's hot path)."""
    return (
        f'{{"id": {_quote(row_id)}, "messages": [{{"role": "user", "content": [{{"type": "image", "text": null}}, '
        f'{{"type": "text", "text": {_quote(query)}}}]}}, {{"role": "assistant", "content": [{{"type": "text", '
        f'"text": {_quote(caption)}}}]}}], "images": [{_quote(image)}]}}'
    )


def _llava_line(row_id: str, query: str, caption: str, image: str) -> str:
    """``json.dumps(record(..., "llava"))`` without building the nested objects."""
    return (
        f'{{"id": {_quote(row_id)}, "image": {_quote(image)}, "conversations": [{{"from": "human", '
        f'"value": {_quote(LLAVA_IMAGE_TOKEN + chr(10) + query)}}}, {{"from": "gpt", "value": {_quote(caption)}}}]}}'
    )


SERIALISERS = {"messages": _messages_line, "llava": _llava_line}
_quote = json.JSONEncoder(ensure_ascii=False).encode


def convert_captions(
    dataset: Any,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    id_column: str | None = None,
    output_format: OutputFormat = "messages",
    queries: QueryPool | None = None,
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
    verify_images: bool = False,
    allow_remote_images: bool = False,
    verify_threads: int | None = None,
    skip_bad: bool = False,
    rejects_path: str | os.PathLike[str] | None = None,
    num_proc: int | None = None,
) -> Any:
    """A caption ``datasets.Dataset`` in instruction format, through one batched ``map``.

    An ``Image`` feature column stays an ``Image`` feature (as the ``images`` list) without decoding.
    With ``skip_bad``, bad rows are left out and counted; with ``rejects_path`` too, a first pass
    lists them (``{"location": "row N", "reason"}``) in that JSONL file, written atomically.
    """
    from datasets import Image, List

    check_output_format(output_format)
    columns = dataset.column_names
    image_column = image_column or guess_column(columns, IMAGE_COLUMNS, "image", "dataset")
    caption_column = caption_column or guess_column(columns, CAPTION_COLUMNS, "caption", "dataset")
    if id_column is None and "id" in columns:
        id_column = "id"
    image_feature = isinstance(dataset.features.get(image_column), Image)
    if image_feature:
        if output_format == "llava":
            raise ValueError("LLaVA's conversations format references image files; an Image feature needs 'messages'.")
        dataset = dataset.cast_column(image_column, Image(decode=False))
    root = None if image_root is None else os.fspath(image_root)
    checks = dict(verify_images=verify_images, allow_remote_images=allow_remote_images, verify_threads=verify_threads)
    if verify_images:
        warn_if_truncated_images_pass("convert_captions")
    if skip_bad and rejects_path is not None:
        _write_rejects(dataset, rejects_path, image_column, caption_column, root, checks, num_proc)
    converted = dataset.map(
        captions_to_messages,
        batched=True,
        with_indices=True,
        remove_columns=columns,
        num_proc=num_proc,
        desc="captions -> instructions",
        fn_kwargs={
            "queries": queries,
            "seed": seed,
            "output_format": output_format,
            "image_column": image_column,
            "caption_column": caption_column,
            "id_column": id_column,
            "image_root": root,
            **checks,
            "skip_bad": skip_bad,
        },
    )
    if image_feature:
        converted = converted.cast_column("images", List(Image()))
    skipped = len(dataset) - len(converted)
    if skipped:
        logger.warning("convert_captions: skipped %d bad row(s) of %d (skip_bad=True).", skipped, len(dataset))
    return converted


def _reasons(
    batch: dict[str, list[Any]],
    *,
    image_column: str,
    caption_column: str,
    image_root: str | None,
    verify_images: bool,
    allow_remote_images: bool,
    verify_threads: int | None,
) -> dict[str, list[str | None]]:
    """Batched: why each row is bad (``None`` when it is good)."""
    rows = _checked_rows(
        batch[caption_column],
        batch[image_column],
        ImageRoot(image_root) if image_root is not None else None,
        verify_images=verify_images,
        allow_remote_images=allow_remote_images,
        verify_threads=verify_threads,
    )
    return {"reason": [str(row) if isinstance(row, Exception) else None for row in rows]}


def _write_rejects(
    dataset: Any,
    path: str | os.PathLike[str],
    image_column: str,
    caption_column: str,
    image_root: str | None,
    checks: dict[str, Any],
    num_proc: int | None,
) -> None:
    from vift_plugin.data.writers import atomic_output

    reasons = dataset.map(
        _reasons,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="checking captions",
        fn_kwargs={
            "image_column": image_column,
            "caption_column": caption_column,
            "image_root": image_root,
            **checks,
        },
    )["reason"]
    with atomic_output(path) as handle:
        for index, reason in enumerate(reasons):
            if reason is not None:
                handle.write(json.dumps({"location": f"row {index}", "reason": reason}, ensure_ascii=False) + "\n")


def convert_caption_file(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    input_format: str = "auto",
    output_format: OutputFormat = "messages",
    image_column: str | None = None,
    caption_column: str | None = None,
    queries: QueryPool | None = None,
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
    verify_images: bool = True,
    allow_remote_images: bool = False,
    verify_threads: int | None = None,
    skip_bad: bool = False,
    rejects_path: str | os.PathLike[str] | None = None,
    chunk_size: int = 4096,
) -> ConversionReport:
    """Stream a caption file into a ``.jsonl``/``.json`` file of records, written atomically.

    Image paths resolve under ``image_root`` (default: the input file's folder) and are written
    relative to it. ``verify_images`` decodes every image, in ``verify_threads`` threads (default:
    the CPUs, at most 8), ``chunk_size`` rows at a time: missing, truncated, corrupt or empty images
    are bad rows here rather than a crash mid-training. Turn it off for speed when the files are
    known good. URLs are bad rows unless ``allow_remote_images`` (then fetched, with the limits of
    :mod:`vift_plugin.data.remote`, when verifying).
    """
    check_output_format(output_format)
    root = os.fspath(image_root) if image_root is not None else str(Path(path).resolve().parent)
    if verify_images:
        warn_if_truncated_images_pass("vift convert captions")
    rows = read_caption_rows(path, input_format, image_column=image_column, caption_column=caption_column)

    serialise = SERIALISERS[output_format]

    def transform(
        columns: dict[str, list[Any]], positions: list[int], locations: list[str], rejects: list[dict[str, Any]]
    ) -> Iterator[str]:
        rows = _valid_rows(
            columns,
            positions,
            queries=queries,
            seed=seed,
            image_column="image",
            caption_column="caption",
            id_column="id",
            image_root=root,
            verify_images=verify_images,
            allow_remote_images=allow_remote_images,
            verify_threads=verify_threads,
            skip_bad=skip_bad,
            locations=locations,
            rejects=rejects,
        )
        return (serialise(*row) for row in rows)

    return convert_stream(
        rows,
        transform,
        ("id", "image", "caption"),
        output,
        skip_bad=skip_bad,
        rejects_path=rejects_path,
        chunk_size=chunk_size,
        source=os.fspath(path),
    )
