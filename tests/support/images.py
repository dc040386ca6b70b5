"""Small real images for attachments in tests (Pillow, so the bot can decode them)."""

from __future__ import annotations

import io
import random

from PIL import Image


def png_bytes(
    colour: str | tuple[int, int, int] = "red", size: tuple[int, int] = (32, 24)
) -> bytes:
    """A solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def noisy_png(size: tuple[int, int] = (64, 64), seed: int = 1) -> bytes:
    """A PNG of random pixels: nearly incompressible, so its byte size follows its pixel size."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
