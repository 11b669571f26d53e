"""Tests of :mod:`vift_plugin.data.images`: safe paths, header-only sizes and RGB loading."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin

from vift_plugin.data.images import (
    ImageError,
    capped_size,
    image_size,
    load_image,
    normalize_image_path,
    resolve_image_path,
)


def save(img: Image.Image, path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def encoded(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("x.png", "x.png"),
        ("sub/dir/x.png", "sub/dir/x.png"),
        ("./sub/./x.png", "sub/x.png"),
        ("sub/../x.png", "x.png"),
        ("sub//x.png", "sub/x.png"),
        ("  sub/x.png  ", "sub/x.png"),
    ],
)
def test_normalize_relative_paths(tmp_path: Path, reference: str, expected: str) -> None:
    assert normalize_image_path(reference, tmp_path) == expected


@pytest.mark.parametrize("reference", ["../x.png", "a/../../x.png", "..", "a/b/../../../x.png", "../root2/x.png"])
def test_relative_escape_is_rejected(tmp_path: Path, reference: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageError, match="escapes"):
        normalize_image_path(reference, root)
    with pytest.raises(ImageError, match="escapes"):
        resolve_image_path(reference, root)


def test_absolute_path_outside_root_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = save(Image.new("RGB", (4, 4)), tmp_path / "elsewhere" / "x.png")
    with pytest.raises(ImageError, match="escapes"):
        normalize_image_path(str(outside), root)
    with pytest.raises(ImageError, match="escapes"):
        load_image(str(outside), root)
    with pytest.raises(ImageError, match="escapes"):
        image_size(str(outside), root)


def test_sibling_folder_sharing_the_root_prefix_is_outside(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(ImageError, match="escapes"):
        normalize_image_path(str(tmp_path / "images2" / "x.png"), root)
    with pytest.raises(ImageError, match="escapes"):
        normalize_image_path("../images2/x.png", root)


def test_absolute_path_inside_root_becomes_relative(tmp_path: Path) -> None:
    inside = tmp_path / "a" / "b" / "x.png"
    assert normalize_image_path(str(inside), tmp_path) == "a/b/x.png"
    assert normalize_image_path(os.path.join(str(tmp_path), "a", "..", "x.png"), tmp_path) == "x.png"
    # A relative root is made absolute first.
    assert normalize_image_path(str(inside), os.path.relpath(tmp_path)) == "a/b/x.png"


@pytest.mark.parametrize("reference", [".", "", "   ", "sub/.."])
def test_root_itself_or_empty_is_rejected(tmp_path: Path, reference: str) -> None:
    with pytest.raises(ImageError):
        normalize_image_path(reference, tmp_path)


@pytest.mark.parametrize("reference", [None, 3, b"x.png"])
def test_non_string_reference_is_rejected(tmp_path: Path, reference: Any) -> None:
    with pytest.raises(ImageError, match="non-empty string"):
        normalize_image_path(reference, tmp_path)


@pytest.mark.parametrize(
    "url", ["http://example.com/../x.png", "https://example.com/a/b.jpg?x=1&y=../../z", "https://h/x.png"]
)
def test_urls_pass_through(tmp_path: Path, url: str) -> None:
    assert normalize_image_path(url, tmp_path) == url
    assert resolve_image_path(url, tmp_path) == url
    assert resolve_image_path(url, None) == url


def test_resolve_image_path(tmp_path: Path) -> None:
    assert resolve_image_path("sub/x.png", tmp_path) == os.path.join(str(tmp_path), "sub", "x.png")
    assert resolve_image_path("../anything.png", None) == "../anything.png"


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found") as info:
        load_image("missing/x.png", tmp_path)
    assert str(tmp_path / "missing" / "x.png") in str(info.value)
    with pytest.raises(ImageError, match="not found"):
        image_size(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageError, match="not found"):
        load_image({"path": str(tmp_path / "nope.jpg"), "bytes": None})


def test_a_folder_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="not found"):
        load_image("dir.png", tmp_path)


@pytest.mark.parametrize("reader", [load_image, image_size])
def test_corrupt_file_is_an_image_error(tmp_path: Path, reader: Any) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="noise.png"):
        reader("noise.png", tmp_path)
    with pytest.raises(ImageError):
        reader(path.read_bytes())
    with pytest.raises(ImageError):
        reader(b"")


def test_truncated_pixel_data_fails_in_load_image_but_not_in_image_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = encoded(Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert image_size("cut.png", tmp_path) == (90, 120)
    with pytest.raises(ImageError, match="cut.png"):
        load_image("cut.png", tmp_path)


def test_image_size_does_not_decode_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(Image.new("RGB", (37, 21), "blue"), tmp_path / "x.jpg")
    save(Image.new("RGBA", (5, 8)), tmp_path / "y.png")

    def refuse(self: Image.Image) -> Any:
        raise AssertionError("image_size decoded the pixels")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(Image.Image, "convert", refuse)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    assert image_size("x.jpg", tmp_path) == (37, 21)
    assert image_size(str(tmp_path / "y.png")) == (5, 8)
    assert image_size((tmp_path / "y.png").read_bytes()) == (5, 8)


def test_unsupported_value_and_empty_dict(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="unsupported"):
        load_image(3.5)
    with pytest.raises(ImageError, match="neither bytes nor a path"):
        load_image({"bytes": None, "path": None})


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    # Over MAX_IMAGE_PIXELS (a warning in PIL) and over twice that (an error in PIL): both refused.
    for limit in (9_000, 4_000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageError, match="large") as info:
            load_image("big.png", tmp_path)
        assert "big.png" in str(info.value)
        with pytest.raises(ImageError, match="large"):
            image_size(data)
        with pytest.raises(ImageError, match="large"):
            load_image({"bytes": data, "path": "named.png"})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image("big.png", tmp_path).size == (100, 100)


# ---------------------------------------------------------------------------------------------- inputs


def test_bytes_dict_and_pil_inputs(tmp_path: Path) -> None:
    img = Image.new("RGB", (12, 7), (10, 20, 30))
    data = encoded(img)
    save(img, tmp_path / "sub" / "x.png")
    for source, root in [
        (data, None),
        (bytearray(data), None),
        ({"bytes": data, "path": "whatever.png"}, None),
        ({"bytes": data}, None),
        ({"bytes": None, "path": "sub/x.png"}, tmp_path),
        ({"path": str(tmp_path / "sub" / "x.png")}, None),
        ("sub/x.png", tmp_path),
        (tmp_path / "sub" / "x.png", None),
        (img, None),
    ]:
        out = load_image(source, root)
        assert out.mode == "RGB"
        assert out.size == (12, 7)
        assert out.getpixel((3, 3)) == (10, 20, 30)
        assert image_size(source, root) == (12, 7)


def test_dict_bytes_errors_use_the_path_as_name() -> None:
    with pytest.raises(ImageError, match="holiday.png"):
        load_image({"bytes": b"not an image", "path": "holiday.png"})


def test_dict_path_is_checked_against_the_root(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="escapes"):
        load_image({"bytes": None, "path": "../x.png"}, tmp_path)


# ---------------------------------------------------------------------------------------------- modes


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def png_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    return encoded(img, "PNG", **kwargs)


def test_greyscale_becomes_rgb(tmp_path: Path) -> None:
    img = Image.new("L", (4, 3), 77)
    out = load_image(png_bytes(img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (77, 77, 77)


def test_one_bit_becomes_rgb() -> None:
    img = Image.new("1", (4, 3), 1)
    out = load_image(png_bytes(img))
    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == (255, 255, 255)


def test_rgba_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 0))
    img.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(png_bytes(img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in pixel(out, (2, 0)))  # half black over white: grey
    assert out.getpixel((3, 1)) == (255, 0, 0)


def test_la_transparent_pixels_become_white() -> None:
    img = Image.new("LA", (3, 1), (0, 255))
    img.putpixel((0, 0), (0, 0))
    out = load_image(png_bytes(img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 0)


def test_palette_with_transparency_becomes_rgb_over_white() -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((2, 0), 2)
    data = png_bytes(img, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black index composited over white
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert out.getpixel((2, 0)) == (0, 255, 0)


def test_palette_without_transparency_becomes_rgb() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 0, 200] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    out = load_image(png_bytes(img))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (0, 0, 200)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_becomes_rgb(fmt: str) -> None:
    img = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    data = encoded(img, fmt)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.size == (8, 8)
    assert all(c >= 250 for c in pixel(out, (4, 4)))


def test_sixteen_bit_greyscale_is_rescaled_not_clipped() -> None:
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(2, axis=0)
    img = Image.fromarray(gradient)
    if img.mode != "I;16":
        img = Image.frombytes("I;16", (256, 2), gradient.astype("<u2").tobytes())
    assert img.mode == "I;16"
    data = png_bytes(img)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # a real 16-bit PNG
    for source in (data, img):
        out = load_image(source)
        assert out.mode == "RGB"
        row = np.asarray(out)[0, :, 0].astype(int)
        assert row[0] == 0
        assert row[-1] == 255
        assert np.all(np.diff(row) >= 0)  # monotonic, not clipped at 255 after the first column
        assert np.abs(row - np.arange(256)).max() <= 1
        assert (np.asarray(out)[..., 0] == np.asarray(out)[..., 2]).all()


def test_float_image_becomes_rgb() -> None:
    values = np.linspace(-1.0, 3.0, 64, dtype=np.float32).reshape(4, 16)
    img = Image.fromarray(values)
    assert img.mode == "F"
    data = encoded(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = load_image(data)
    assert out.mode == "RGB"
    grey = np.asarray(out)[..., 0].astype(int).ravel()
    assert grey[0] == 0
    assert grey[-1] == 255
    assert np.all(np.diff(grey) >= 0)


# ---------------------------------------------------------------------------------------------- max_pixels


def test_max_pixels_keeps_aspect_ratio(tmp_path: Path) -> None:
    save(Image.new("RGB", (400, 100), "green"), tmp_path / "wide.png")
    out = load_image("wide.png", tmp_path, max_pixels=10_000)
    assert out.size == (200, 50)
    assert out.width * out.height <= 10_000
    assert out.getpixel((100, 25)) == (0, 128, 0)


def test_max_pixels_does_not_upscale(tmp_path: Path) -> None:
    save(Image.new("RGB", (40, 10)), tmp_path / "small.png")
    assert load_image("small.png", tmp_path, max_pixels=10_000).size == (40, 10)
    assert load_image("small.png", tmp_path, max_pixels=400).size == (40, 10)  # exactly at the cap


@pytest.mark.parametrize(("size", "max_pixels"), [((1600, 1200), 40_000), ((1024, 256), 10_000), ((999, 333), 5_000)])
def test_max_pixels_jpeg_draft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], max_pixels: int
) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    big = Image.fromarray(pixels).resize(size, Image.Resampling.NEAREST)
    save(big, tmp_path / "photo.jpg", quality=90)
    drafts: list[tuple[str | None, tuple[int, int] | None, tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: str | None, requested: tuple[int, int] | None) -> Any:
        result = original(self, mode, requested)
        drafts.append((mode, requested, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = load_image("photo.jpg", tmp_path, max_pixels=max_pixels)
    expected = capped_size(size[0], size[1], max_pixels)
    assert out.mode == "RGB"
    assert out.size == expected
    assert out.width * out.height <= max_pixels
    assert abs(out.width / out.height - size[0] / size[1]) < 0.02 * size[0] / size[1]
    ((mode, requested, decoded),) = drafts
    assert (mode, requested) == ("RGB", expected)
    # The JPEG was decoded at a reduced scale, still at least as big as the target.
    assert decoded[0] < size[0] and decoded[1] < size[1]
    assert decoded[0] >= expected[0] and decoded[1] >= expected[1]


def test_max_pixels_greyscale_jpeg(tmp_path: Path) -> None:
    save(Image.new("L", (800, 200), 90), tmp_path / "grey.jpg")
    out = load_image("grey.jpg", tmp_path, max_pixels=10_000)
    assert out.mode == "RGB"
    assert out.size == (200, 50)
    assert all(abs(c - 90) <= 2 for c in pixel(out, (100, 25)))


def test_max_pixels_applies_after_mode_conversion() -> None:
    img = Image.new("RGBA", (400, 100), (0, 0, 0, 0))
    out = load_image(png_bytes(img), max_pixels=10_000)
    assert out.mode == "RGB"
    assert out.size == (200, 50)
    assert out.getpixel((10, 10)) == (255, 255, 255)


def test_capped_size_examples() -> None:
    assert capped_size(400, 100, 10_000) == (200, 50)
    assert capped_size(400, 100, None) == (400, 100)
    assert capped_size(400, 100, 40_000) == (400, 100)
    assert capped_size(3, 3, 1) == (1, 1)


@settings(max_examples=500, deadline=None)
@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    max_pixels=st.integers(1, 4_000_000),
)
def test_capped_size_properties(width: int, height: int, max_pixels: int) -> None:
    w, h = capped_size(width, height, max_pixels)
    assert 1 <= w <= width
    assert 1 <= h <= height
    if width * height <= max_pixels:
        assert (w, h) == (width, height)
        return
    assert w * h <= max_pixels
    if w > 1 and h > 1:
        # Aspect ratio kept to within the rounding of one pixel on each side.
        assert abs(w / h - width / height) <= width / height * (1 / h + 1 / w) * 1.01 + 1e-9


@pytest.mark.parametrize(("width", "height", "max_pixels"), [(10_000, 2, 1_000), (2, 10_000, 1_000), (50_000, 3, 7)])
def test_capped_size_never_exceeds_max_pixels_for_thin_images(width: int, height: int, max_pixels: int) -> None:
    w, h = capped_size(width, height, max_pixels)
    assert 1 <= w * h <= max_pixels


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full((4, 4), 65535, dtype=np.uint16), 255),
        (np.zeros((4, 4), dtype=np.uint16), 0),
        (np.full((4, 4), 1.0, dtype=np.float32), 255),
        (np.zeros((4, 4), dtype=np.float32), 0),
    ],
)
def test_uniform_high_depth_images_keep_their_brightness(values: np.ndarray, expected: int) -> None:
    img = Image.fromarray(values)
    assert img.mode in ("I;16", "F")
    data = png_bytes(img) if img.mode == "I;16" else encoded(img, "TIFF")
    for source in (data, img):
        assert load_image(source).getpixel((1, 1)) == (expected,) * 3
