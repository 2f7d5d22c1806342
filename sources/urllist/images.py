"""Check, hash and optionally resize one fetched image, cheapest step first.

1. Header only (Pillow's lazy ``open``): format, width, height. Formats outside
   ``filters.mime``, sizes over ``max_pixels`` (Pillow's decompression-bomb guard stays
   on, set to the same limit), too small or too elongated images stop here, before any
   pixel is decoded.
2. A reduced decode when pixels are needed: JPEG ``draft`` lets libjpeg scale by 1/2..1/8
   while decoding, so a perceptual hash decodes to about 64 px; a resize decodes at the
   eighths scale nearest above the target (see ``resize``); a truncated or corrupt body
   fails here as ``decode``.
3. Without a hash or a resize no pixel is needed: the body's structure is checked instead
   (a JPEG ends with its EOI marker, a PNG with IEND), which catches the truncated
   transfers a decode would.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from acquired.sources.urllist import outcome
from acquired.sources.urllist.resize import (
    decode_jpeg_scaled,
    encode,
    fit,
    resample,
    target_size,
)
from acquired.sources.urllist.settings import FilterSettings, ResizeSettings

_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
_SAVE = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Pixel sizes of the reduced decode the hash is computed from (imagehash works at 32 px).
_HASH_DRAFT = (64, 64)


@dataclass
class ImageResult:
    """The outcome for one body: an error class, or what to store and its facts."""

    error_class: str | None = None
    message: str | None = None
    data: bytes | None = None
    """What to store: the original bytes, or the re-encoded image."""
    ext: str = "jpg"
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    phash: int | None = None


def _fail(error_class: str, message: str, **facts: object) -> ImageResult:
    return ImageResult(error_class=error_class, message=message, **facts)  # type: ignore[arg-type]


def process_image(
    body: bytes,
    filters: FilterSettings,
    resize: ResizeSettings | None = None,
    *,
    want_phash: bool = False,
    full_check: bool = False,
) -> ImageResult:
    """Check ``body`` against ``filters``; hash it (``want_phash``) and resize it
    (``resize``) on a reduced decode. ``full_check`` decodes even when neither asks for
    pixels."""
    Image.MAX_IMAGE_PIXELS = filters.max_pixels
    with warnings.catch_warnings():
        # Between max_pixels and twice it Pillow only warns; the size check below refuses
        # those too, naming the size. Past twice the limit Pillow refuses at open.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(body))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return _fail(outcome.TOO_LARGE, f"over max_pixels: {exc}")
        except UnidentifiedImageError:
            return _fail(outcome.NOT_IMAGE, "not an image Pillow can read")
        except Exception as exc:  # a malformed header raises what its plugin raises
            return _fail(outcome.DECODE, f"bad image header: {exc}")
        return _checked(im, body, filters, resize, want_phash=want_phash, full_check=full_check)


def _checked(
    im: Image.Image,
    body: bytes,
    filters: FilterSettings,
    resize: ResizeSettings | None,
    *,
    want_phash: bool,
    full_check: bool,
) -> ImageResult:
    fmt = im.format or ""
    mime = Image.MIME.get(fmt)
    width, height = im.size
    facts: dict[str, object] = {"original_width": width, "original_height": height, "mime": mime}
    if filters.mime and mime not in filters.mime:
        return _fail(outcome.NOT_IMAGE, f"{mime or fmt} is not an accepted type", **facts)
    if width <= 0 or height <= 0:
        return _fail(outcome.DECODE, f"bad size {width}x{height}", **facts)
    if width * height > filters.max_pixels:
        return _fail(
            outcome.TOO_LARGE, f"{width}x{height} is over max_pixels {filters.max_pixels}", **facts
        )
    if filters.min_side and min(width, height) < filters.min_side:
        return _fail(
            outcome.FILTERED_SMALL, f"{width}x{height} under min_side {filters.min_side}", **facts
        )
    if filters.max_aspect and max(width, height) / min(width, height) > filters.max_aspect:
        return _fail(
            outcome.FILTERED_ASPECT,
            f"{width}x{height} over max_aspect {filters.max_aspect}",
            **facts,
        )
    result = ImageResult(
        data=body,
        ext=_EXT.get(fmt, fmt.lower()),
        mime=mime,
        width=width,
        height=height,
        original_width=width,
        original_height=height,
    )
    try:
        if resize is not None:
            _resize_into(result, im, body, resize, want_phash=want_phash)
        elif want_phash or full_check:
            if fmt == "JPEG":
                im.draft("L", _HASH_DRAFT)
            im.load()
            if want_phash:
                result.phash = phash_of(im)
        elif not _structure_ok(fmt, body):
            return _fail(outcome.DECODE, "truncated image (no end marker)", **facts)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _fail(outcome.TOO_LARGE, f"over max_pixels: {exc}", **facts)
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError...
        return _fail(outcome.DECODE, f"cannot decode: {exc}", **facts)
    return result


def _structure_ok(fmt: str, body: bytes) -> bool:
    """Whether the body ends as a complete file of its format (unknown formats pass)."""
    if fmt == "JPEG":
        # EOI, allowing a little trailing padding some encoders add.
        return b"\xff\xd9" in body[-64:]
    if fmt == "PNG":
        return b"IEND" in body[-32:]
    return True


def phash_of(im: Image.Image) -> int:
    """The 64-bit perceptual hash (imagehash's DCT phash) of ``im`` as an integer."""
    import imagehash

    # str() is the hex of the 64 bits, first row's first bit most significant.
    return int(str(imagehash.phash(im)), 16)


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        # Alpha over white, as most viewers show it.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _resize_into(
    result: ImageResult, im: Image.Image, body: bytes, resize: ResizeSettings, *, want_phash: bool
) -> None:
    size = target_size(im.width, im.height, resize)
    pixels = decode_jpeg_scaled(body, size) if im.format == "JPEG" else None
    if pixels is None:
        if im.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below the requested
            # size; asking two pixels less keeps rounding from costing a whole scale step.
            im.draft("RGB", (max(1, size[0] - 2), max(1, size[1] - 2)))
        im.load()
        if want_phash:
            result.phash = phash_of(im)
        pixels = np.asarray(_rgb(im))
    elif want_phash:
        result.phash = phash_of(Image.fromarray(pixels))
    pixels = fit(resample(pixels, size), resize)
    result.data = encode(pixels, resize)
    result.ext = resize.format
    result.mime = Image.MIME[_SAVE[resize.format]]
    result.height, result.width = pixels.shape[:2]
