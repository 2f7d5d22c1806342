"""Header checks, reduced decodes, perceptual hashes and resizes of single images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support.images import encode, jpeg, picture, png, png_bomb

from acquired.sources.urllist import outcome
from acquired.sources.urllist.images import process_image, target_size
from acquired.sources.urllist.settings import FilterSettings, ResizeSettings

FILTERS = FilterSettings(min_side=100, max_aspect=3.0)


def classify(body: bytes, **kw: object) -> str | None:
    return process_image(body, FILTERS, **kw).error_class  # type: ignore[arg-type]


@pytest.mark.parametrize("want_phash", [False, True])
def test_classes(want_phash: bool) -> None:
    good = jpeg(1)
    assert classify(good, want_phash=want_phash) is None
    assert classify(png(2), want_phash=want_phash) is None
    assert classify(jpeg(3, 80, 300), want_phash=want_phash) == outcome.FILTERED_SMALL
    assert classify(jpeg(4, 1000, 200), want_phash=want_phash) == outcome.FILTERED_ASPECT
    assert classify(b"<html>not an image</html>", want_phash=want_phash) == outcome.NOT_IMAGE
    assert classify(good[: len(good) // 2], want_phash=want_phash) == outcome.DECODE
    assert classify(png_bomb(), want_phash=want_phash) == outcome.TOO_LARGE
    gif = encode(picture(5), "GIF")
    assert classify(gif, want_phash=want_phash) == outcome.NOT_IMAGE


def test_pixels_between_limit_and_twice_it_are_too_large() -> None:
    result = process_image(png_bomb(400, 400), FilterSettings(max_pixels=100_000))
    assert result.error_class == outcome.TOO_LARGE
    assert result.original_width == 400


def test_truncated_png_and_full_check() -> None:
    body = png(6)
    assert classify(body[:-40]) == outcome.DECODE
    assert classify(body[: len(body) // 2], full_check=True) == outcome.DECODE


def test_phash_near_duplicates_and_distinct() -> None:
    base = picture(7, 400, 300)
    h = process_image(encode(base, "JPEG", quality=90), FILTERS, want_phash=True).phash
    requality = process_image(encode(base, "JPEG", quality=40), FILTERS, want_phash=True).phash
    resized = process_image(
        encode(base.resize((396, 297)), "JPEG", quality=85), FILTERS, want_phash=True
    ).phash
    other = process_image(jpeg(8, 400, 300), FILTERS, want_phash=True).phash
    assert h is not None and requality is not None and resized is not None and other is not None
    assert (h ^ requality).bit_count() <= 4
    assert (h ^ resized).bit_count() <= 4
    assert (h ^ other).bit_count() > 10


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("keep_ratio", (341, 256)), ("center_crop", (256, 256)), ("border", (256, 256))],
)
def test_resize_modes(mode: str, expected: tuple[int, int]) -> None:
    settings = ResizeSettings(mode=mode, size=256, format="jpg", quality=90)  # type: ignore[arg-type]
    result = process_image(jpeg(9, 640, 480), FILTERS, settings, want_phash=True)
    assert result.error_class is None and result.data is not None
    out = Image.open(io.BytesIO(result.data))
    assert out.format == "JPEG" and out.size == expected
    assert (result.width, result.height) == expected
    assert (result.original_width, result.original_height) == (640, 480)
    assert result.phash is not None


def test_resize_png_with_alpha_to_webp() -> None:
    im = picture(10, 300, 200).convert("RGBA")
    settings = ResizeSettings(mode="border", size=128, format="webp", quality=80)
    result = process_image(encode(im, "PNG"), FILTERS, settings)
    assert result.data is not None and result.ext == "webp"
    assert Image.open(io.BytesIO(result.data)).size == (128, 128)


def test_target_size() -> None:
    assert target_size(1000, 500, ResizeSettings(mode="keep_ratio", size=100)) == (200, 100)
    assert target_size(1000, 500, ResizeSettings(mode="border", size=100)) == (100, 50)


@pytest.mark.parametrize(("width", "height"), [(1600, 1200), (400, 300), (300, 700)])
def test_a_resized_jpeg_matches_a_full_decode_resized(width: int, height: int) -> None:
    # The reduced decode and the cheaper resampling must not show: compare with Pillow's
    # full decode shrunk by area averaging.
    base = picture(11, width, height)
    settings = ResizeSettings(mode="keep_ratio", size=256, format="png")
    result = process_image(encode(base, "JPEG", quality=95), FILTERS, settings)
    assert result.error_class is None and result.data is not None
    out = np.asarray(Image.open(io.BytesIO(result.data)).convert("RGB"), dtype=np.float64)
    expected = target_size(width, height, settings)
    assert (out.shape[1], out.shape[0]) == expected == (result.width, result.height)
    ref = np.asarray(base.resize(expected, Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(out - ref).mean() < 1.0  # a shift by two pixels alone is 1.4


def test_resize_of_a_cmyk_jpeg_and_of_a_truncated_one() -> None:
    settings = ResizeSettings(mode="center_crop", size=128)
    cmyk = encode(picture(12, 400, 300).convert("CMYK"), "JPEG", quality=90)
    result = process_image(cmyk, FILTERS, settings)
    assert result.error_class is None and result.data is not None
    assert Image.open(io.BytesIO(result.data)).size == (128, 128)
    good = jpeg(13, 640, 480)
    assert classify(good[: len(good) // 2], resize=settings) == outcome.DECODE
