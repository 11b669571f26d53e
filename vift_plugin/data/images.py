"""Image references: resolve paths safely under a root, read sizes from headers, load capped RGB images."""

from __future__ import annotations

import io
import math
import os
import posixpath
import warnings
from typing import Any

from PIL import Image

URL_PREFIXES = ("http://", "https://")


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, escaping its root, or empty."""


def is_url(reference: str) -> bool:
    return reference.startswith(URL_PREFIXES)


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


def _open(source: Any, image_root: str | os.PathLike[str] | None) -> tuple[Image.Image, str]:
    """Open ``source`` lazily (only the header is read) and name it for error messages."""
    if isinstance(source, Image.Image):
        return source, "<in-memory image>"
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
            from transformers.image_utils import load_image as fetch

            try:
                return fetch(reference), reference
            except Exception as error:  # noqa: BLE001 - network errors come in many types
                raise ImageError(f"could not fetch image {reference}: {error}") from error
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


def image_size(source: Any, image_root: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """``(width, height)`` from the file header only (the pixels are not decoded)."""
    img, name = _open(source, image_root)
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
    source: Any, image_root: str | os.PathLike[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode ``source`` (path under ``image_root``, URL, bytes, ``{"bytes", "path"}`` or PIL) to RGB.

    Images with more than ``max_pixels`` pixels are downscaled (JPEG decodes at reduced size first);
    palette, alpha, greyscale, CMYK and 16-bit images become 8-bit RGB (alpha over white).
    """
    img, name = _open(source, image_root)
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
