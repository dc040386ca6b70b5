"""Deterministic stand-in images for the fake gateway.

The picture is a gradient with translucent shapes, all derived from a SHA-256 of the
generation inputs, so the same inputs always give a byte-identical PNG and a different
seed (or prompt, style, ...) gives a different one. ``noisy=True`` blends in
pseudo-random noise so the PNG is nearly incompressible (for tests that need big files).
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Final

from PIL import Image, ImageDraw

from fake_pixazo.validation import GenerationParams

DEFAULT_LONG_EDGE: Final = 512

_SHAPES_PER_CREATIVITY: Final = {"raw": 4, "low": 6, "medium": 9, "high": 14}


def image_size(aspect_ratio: str, long_edge: int = DEFAULT_LONG_EDGE) -> tuple[int, int]:
    """Return ``(width, height)`` for an aspect ratio such as ``"16:9"`` and a long edge.

    The long side is ``long_edge`` and the short side is rounded, e.g. 16:9 at 512 gives
    512x288 and 2.35:1 gives 512x218.
    """
    if long_edge < 1:
        raise ValueError("long_edge must be positive")
    width_part, height_part = (float(part) for part in aspect_ratio.split(":"))
    if width_part >= height_part:
        return long_edge, max(1, round(long_edge * height_part / width_part))
    return max(1, round(long_edge * width_part / height_part)), long_edge


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def render_png(
    params: GenerationParams, *, long_edge: int = DEFAULT_LONG_EDGE, noisy: bool = False
) -> bytes:
    """Render the PNG for a job: a pure function of ``params``, ``long_edge`` and ``noisy``."""
    digest = hashlib.sha256(params.canonical_json().encode("utf-8")).digest()
    rng = random.Random(digest)
    width, height = image_size(params.aspect_ratio, long_edge)

    mask = Image.radial_gradient("L") if rng.random() < 0.25 else Image.linear_gradient("L")
    mask = mask.rotate(90 * rng.randrange(4)).resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), _colour(rng)),
        Image.new("RGB", (width, height), _colour(rng)),
        mask,
    ).convert("RGBA")

    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(_SHAPES_PER_CREATIVITY.get(params.creativity, 8)):
        fill = (*_colour(rng), rng.randrange(60, 180))
        x0, x1 = sorted(rng.randrange(-width // 4, width + width // 4) for _ in range(2))
        y0, y1 = sorted(rng.randrange(-height // 4, height + height // 4) for _ in range(2))
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            points = [(rng.randrange(width), rng.randrange(height)) for _ in range(3)]
            draw.polygon(points, fill=fill)
    image = Image.alpha_composite(image, overlay).convert("RGB")

    if noisy:
        noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        image = Image.blend(image, noise, 0.5)

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1 if noisy else 6)
    return buffer.getvalue()
