"""Fitting a generated PNG under an upload limit."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.imaging import fit_under, thumbnail
from fake_pixazo import GenerationParams, render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    return render_png(GenerationParams(prompt="static", seed=1), long_edge=256, noisy=True)


def test_png_that_fits_is_untouched(noisy_png: bytes) -> None:
    data, name = fit_under(noisy_png, len(noisy_png), "krea-42")
    assert data == noisy_png
    assert name == "krea-42.png"


def test_png_over_the_limit_becomes_a_smaller_jpeg(noisy_png: bytes) -> None:
    limit = 40_000
    assert len(noisy_png) > limit

    data, name = fit_under(noisy_png, limit, "krea-42")

    assert name == "krea-42.jpg"
    assert len(data) <= limit
    assert data.startswith(JPEG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.width <= 256 and image.height <= 256


def test_very_small_limit_shrinks_the_pixels(noisy_png: bytes) -> None:
    data, name = fit_under(noisy_png, 4_000, "x")
    assert name == "x.jpg" and len(data) <= 4_000
    with Image.open(io.BytesIO(data)) as image:
        assert image.width < 256


def test_impossible_limit_raises(noisy_png: bytes) -> None:
    with pytest.raises(ValueError, match="small enough"):
        fit_under(noisy_png, 100, "x")


def test_thumbnail_long_edge() -> None:
    png = render_png(GenerationParams(prompt="p", aspect_ratio="16:9"), long_edge=128)
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(thumbnail(png, 64))) as image:
        assert image.format == "JPEG"
        assert image.size == (64, 36)
