"""Image references: resolve paths safely under a root, read sizes from headers, load capped RGB images,
and check many images up front, decoded in threads.

A reference is a path under an image root or a URL. URLs are fetched only when the caller allows
remote images (:mod:`vift_plugin.data.remote` says how, and why it is off by default).
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import posixpath
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image, ImageFile

from vift_plugin.data.files import ImageError
from vift_plugin.data.remote import check_url, is_url

logger = logging.getLogger(__name__)

REMOTE_IMAGES_OFF = "remote images are off; pass --allow-remote-images (allow_remote_images=True) to fetch them"
T = TypeVar("T")
R = TypeVar("R")


def check_remote(url: str, allow_remote_images: bool) -> None:
    """An :class:`ImageError` unless ``url`` may be fetched: http(s) with a host, and remote images allowed."""
    check_url(url)
    if not allow_remote_images:
        raise ImageError(f"image {url}: {REMOTE_IMAGES_OFF}")


class ImageRoot:
    """Checks image references against one root folder (its absolute path computed once)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(root)
        self._prefix = self.root.rstrip(os.sep) + os.sep

    def relative(self, reference: str) -> str:
        """The ``/``-separated path of ``reference`` relative to the root; URLs pass through.

        Absolute paths inside the root are made relative; a path that leaves the root (``..``, or
        an absolute path elsewhere) raises :class:`ImageError`. The check is lexical, like archive
        extraction guards: symbolic links inside the root are the user's own choice.
        """
        if not isinstance(reference, str) or not reference.strip():
            raise ImageError(f"image reference must be a non-empty string, got {reference!r}")
        reference = reference.strip()
        if is_url(reference):
            check_url(reference)
            return reference
        if os.sep == "/" and not reference.startswith("/"):
            normal = posixpath.normpath(reference)
            if normal == reference and normal != "." and normal != ".." and not normal.startswith("../"):
                return reference
        full = os.path.normpath(os.path.join(self.root, reference))
        if not full.startswith(self._prefix):
            if full == self.root:
                raise ImageError(f"image path {reference!r} names the image root itself, not a file")
            raise ImageError(f"image path {reference!r} escapes the image root {self.root}")
        return full[len(self._prefix) :].replace(os.sep, "/")


def normalize_image_path(reference: str, image_root: str | os.PathLike[str]) -> str:
    """``ImageRoot(image_root).relative(reference)``: the path relative to the root, escapes rejected."""
    return ImageRoot(image_root).relative(reference)


def resolve_image_path(reference: str, image_root: str | os.PathLike[str] | None) -> str:
    """The file to open for ``reference`` (checked to stay under ``image_root`` when one is given)."""
    if is_url(reference) or image_root is None:
        return reference
    return os.path.join(os.path.abspath(image_root), normalize_image_path(reference, image_root))


def _open(
    source: Any, image_root: str | os.PathLike[str] | None, allow_remote_images: bool = False
) -> tuple[Image.Image, str]:
    """Open ``source`` lazily (only the header is read) and name it for error messages."""
    if isinstance(source, Image.Image):
        return source, getattr(source, "filename", None) or "<in-memory image>"
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            name = source.get("path") or "<image bytes>"
            return _open_file(io.BytesIO(source["bytes"]), name), name
        if source.get("path"):
            source = source["path"]
        else:
            raise ImageError(f"image entry {source!r} has neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        return _open_file(io.BytesIO(source), "<image bytes>"), "<image bytes>"
    if isinstance(source, (str, os.PathLike)):
        reference = os.fspath(source)
        if is_url(reference):
            from vift_plugin.data.remote import fetch_image_bytes

            check_remote(reference, allow_remote_images)
            return _open_file(io.BytesIO(fetch_image_bytes(reference)), reference), reference
        path = resolve_image_path(reference, image_root)
        if not os.path.isfile(path):
            raise ImageError(f"image file not found: {path}")
        return _open_file(path, path), path
    raise ImageError(f"unsupported image value of type {type(source).__name__}")


def _open_file(file: Any, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image {name} is absurdly large ({error})") from error
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        raise ImageError(f"cannot read image {name}: {error}") from error


def image_size(
    source: Any, image_root: str | os.PathLike[str] | None = None, *, allow_remote_images: bool = False
) -> tuple[int, int]:
    """``(width, height)`` from the file header only (the pixels are not decoded, so a file cut short
    passes; :func:`load_image` and :func:`check_images` decode)."""
    img, name = _open(source, image_root, allow_remote_images)
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"image {name} is empty ({width}x{height})")
    return width, height


def capped_size(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down, keeping the aspect ratio, to at most ``max_pixels`` pixels."""
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    new_width, new_height = max(1, int(width * scale)), max(1, int(height * scale))
    if new_width * new_height > max_pixels:
        if new_height == 1:
            new_width = max(1, max_pixels)
        else:
            new_height = max(1, max_pixels // new_width)
    return new_width, new_height


def load_image(
    source: Any,
    image_root: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    *,
    allow_remote_images: bool = False,
) -> Image.Image:
    """Decode ``source`` (path under ``image_root``, URL, bytes, ``{"bytes", "path"}`` or PIL) to RGB.

    Images with more than ``max_pixels`` pixels are downscaled (JPEG decodes at reduced size first);
    palette, alpha, greyscale, CMYK and 16-bit images become 8-bit RGB (alpha over white). A URL is
    fetched only with ``allow_remote_images`` (see :mod:`vift_plugin.data.remote`).
    """
    img, name = _open(source, image_root, allow_remote_images)
    try:
        width, height = img.size
        target = capped_size(width, height, max_pixels)
        if target != (width, height) and img.format == "JPEG":
            img.draft("RGB", target)
        img.load()
        rgb = to_rgb(img)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated or corrupt pixel data
        if img is not source:
            img.close()  # a failed load leaves the file open; checks of many images would run out of handles
        raise ImageError(f"cannot decode image {name}: {error}") from error
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"image {name} is empty ({rgb.width}x{rgb.height})")
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels composited over white, high bit depths rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        import numpy as np

        array = np.asarray(img, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if high > low:
            scaled = (array - low) * (255.0 / (high - low))
        else:
            full_scale = 65535.0 if img.mode.startswith("I;16") else max(high, 1.0)
            scaled = np.full_like(array, 255.0 * min(max(high, 0.0) / full_scale, 1.0))
        return Image.fromarray(scaled.astype("uint8"), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def warn_if_truncated_images_pass(check: str) -> bool:
    """Warn (and return True) when PIL is set to decode files cut short, which no image check can then catch.

    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, set by user code or an imported library, makes a
    truncated file decode with its missing part filled in, so ``check`` would pass it without a word.
    The setting is the user's to make; the checks only say what it costs.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        return False
    logger.warning(
        "%s: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by your code or a library it imports), so an image "
        "file cut short decodes with its missing part filled in and passes this check; set it to False to find them.",
        check,
    )
    return True


def default_threads() -> int:
    """Threads for decoding images: the CPUs this process may use, at most 8 (PIL decodes without the GIL)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, available))


def threaded_map(
    function: Callable[[T], R], values: Iterable[T], threads: int | None = None
) -> Iterator[R | Exception]:
    """``function(value)`` for each of ``values``, in order, run by ``threads`` worker threads.

    A ``ValueError`` or ``OSError`` (a bad image) comes back in place of its result, so the caller
    can name the row; other exceptions are bugs and propagate. At most ``4 * threads`` calls are in
    flight and ``values`` is consumed as results are taken, so a stream of any length is checked in
    bounded memory. ``threads=1`` runs in the calling thread.
    """
    workers = default_threads() if threads is None else threads
    if workers < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")

    def guarded(value: T) -> R | Exception:
        try:
            return function(value)
        except (ValueError, OSError) as error:
            return error

    if workers == 1:
        yield from map(guarded, values)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vift-images")
    pending: deque[Future[R | Exception]] = deque()
    try:
        for value in values:
            pending.append(pool.submit(guarded, value))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def record_images(record: Mapping[str, Any]) -> list[Any]:
    """The image references of a training record: ``images`` (chat records) or ``image`` (LLaVA records)."""
    images = record.get("images")
    if images is None:
        images = record.get("image")
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def check_images(
    dataset: Any,
    image_root: str | os.PathLike[str] | None = None,
    *,
    max_pixels: int | None = None,
    allow_remote_images: bool = False,
    skip_bad: bool = False,
    threads: int | None = None,
) -> tuple[Any, list[dict[str, str]]]:
    """Decode every image of ``dataset`` as the collator will, before training starts.

    A file cut short passes header reads (:func:`image_size`) and only fails when its pixels are
    decoded, which without this check happens at some step mid-run. ``dataset`` is a
    ``datasets.Dataset`` or a sequence of records with ``images`` (or LLaVA ``image``). Each image
    goes through :func:`load_image` with the collator's ``image_root``, ``max_pixels`` and
    ``allow_remote_images``, in ``threads`` threads.

    Returns ``(dataset, rejects)``. A bad image raises one :class:`ImageError` listing every bad
    row (``row N (id ...)``, the image and the reason) unless ``skip_bad``; then those rows are left
    out (``dataset.select`` for a Dataset), counted in a warning and returned as ``rejects``,
    ``[{"location", "reason"}]`` like the converters' rejects files.
    """
    problems = image_problems(
        dataset, image_root, max_pixels=max_pixels, allow_remote_images=allow_remote_images, threads=threads
    )
    return drop_bad_images(dataset, problems, skip_bad=skip_bad)


def image_problems(
    dataset: Any,
    image_root: str | os.PathLike[str] | None = None,
    *,
    max_pixels: int | None = None,
    allow_remote_images: bool = False,
    threads: int | None = None,
) -> dict[int, str]:
    """``{row index: why its first bad image cannot be used}`` for ``dataset``: the decoding half of
    :func:`check_images`, so that one process can decode and send the result to the others."""
    rows = _image_columns(dataset)
    warn_if_truncated_images_pass("check_images")

    def references() -> Iterator[tuple[int, Any]]:
        for index, record in enumerate(rows):
            for image in record_images(record):
                yield index, image

    def load(entry: tuple[int, Any]) -> None:
        load_image(entry[1], image_root, max_pixels, allow_remote_images=allow_remote_images)

    entries, work = itertools.tee(references())  # tee buffers only the threads' read-ahead window
    bad: dict[int, str] = {}
    for (index, _), error in zip(entries, threaded_map(load, work, threads), strict=True):
        if error is not None:
            bad.setdefault(index, str(error))
    return bad


def drop_bad_images(dataset: Any, problems: dict[int, str], *, skip_bad: bool) -> tuple[Any, list[dict[str, str]]]:
    """The half of :func:`check_images` after decoding: raise naming every row in ``problems``, or with
    ``skip_bad`` leave those rows out with a warning."""
    if not problems:
        return dataset, []
    rows = _image_columns(dataset)
    rejects = [
        {"location": _row_name(rows[index], index), "reason": reason} for index, reason in sorted(problems.items())
    ]
    if not skip_bad:
        shown = "\n  ".join(f"{r['location']}: {r['reason']}" for r in rejects[:10])
        more = f"\n  ... and {len(rejects) - 10} more" if len(rejects) > 10 else ""
        raise ImageError(
            f"{len(rejects)} row(s) have an image that cannot be used:\n  {shown}{more}\n"
            "Fix or remove these rows, or leave them out (`vift train --skip_bad_images true`, `skip_bad=True`)."
        )
    logger.warning(
        "check_images: left out %d row(s) of %d with unusable images (skip_bad): %s%s",
        len(problems),
        len(rows),
        "; ".join(f"{r['location']}: {r['reason']}" for r in rejects[:3]),
        " ..." if len(rejects) > 3 else "",
    )
    keep = [index for index in range(len(rows)) if index not in problems]
    kept = dataset.select(keep) if hasattr(dataset, "select") else [dataset[index] for index in keep]
    return kept, rejects


def _image_columns(dataset: Any) -> Any:
    """``dataset`` reduced to what :func:`check_images` reads; a Dataset's ``Image`` features left undecoded
    (so a broken file reaches :func:`load_image`, which names it, instead of failing inside ``datasets``)."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        return dataset
    from datasets import Image as ImageFeature
    from datasets import List

    reduced = dataset.select_columns([name for name in ("id", "images", "image") if name in names])
    for name, feature in reduced.features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            reduced = reduced.cast_column(name, ImageFeature(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, ImageFeature) and feature.feature.decode:
            reduced = reduced.cast_column(name, List(ImageFeature(decode=False)))
    return reduced


def _row_name(record: Mapping[str, Any], index: int) -> str:
    row_id = record.get("id")
    return f"row {index}" if row_id is None else f"row {index} (id {row_id!r})"
