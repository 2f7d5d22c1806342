"""Images made with Pillow for URL-list tests: photos-like pictures (smooth shapes, so
re-encoding and small resizes keep their perceptual hash), broken bodies and bombs."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw, ImageFilter


def picture(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A distinct picture per seed: a gradient with a few coloured shapes, slightly blurred."""
    rng = random.Random(seed)
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(width // 8 + 1, width // 2 + 2)
        y1 = y0 + rng.randrange(height // 8 + 1, height // 2 + 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return im.filter(ImageFilter.GaussianBlur(2))


def encode(im: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """``im`` saved in ``fmt`` (quality= and friends in ``options``)."""
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def jpeg(seed: int, width: int = 320, height: int = 240, quality: int = 85) -> bytes:
    """A picture as a JPEG."""
    return encode(picture(seed, width, height), "JPEG", quality=quality)


def png(seed: int, width: int = 320, height: int = 240) -> bytes:
    """A picture as a PNG."""
    return encode(picture(seed, width, height), "PNG")


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
