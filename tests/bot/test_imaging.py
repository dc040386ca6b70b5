"""Fitting images under an upload limit, thumbnails and grids: always at reduced size or a
strip at a time where that is possible, with the same pixels."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot import imaging
from bot.imaging import ImageRejected, decode_image, fit_under, make_grid, probe_image, thumbnail
from fake_pixazo import GenerationParams, render_png
from tests.bot.images import encode, picture

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


# --------------------------------------------------------------------------- fit_under


def test_fitting_images_keep_their_bytes_and_are_named_by_their_format() -> None:
    for format, extension in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif")):
        data = encode(picture(mode="P" if format == "GIF" else "RGB"), format)
        assert fit_under(data, len(data), "krea-1") == (data, f"krea-1.{extension}")


@pytest.mark.parametrize(
    "name",
    [
        "noisy png",
        "rgba png",
        "palette png",
        "grey png",
        "16-bit png",
        "interlaced png",
        "jpeg",
        "webp",
        "animated gif",
    ],
)
@pytest.mark.parametrize("share", [0.6, 0.25, 0.05])
def test_fit_under_is_always_under_the_limit(name: str, share: float, noisy_png: bytes) -> None:
    noise = Image.open(io.BytesIO(noisy_png)).convert("RGB")
    make = {
        "noisy png": lambda: noisy_png,
        "rgba png": lambda: encode(noise.convert("RGBA"), "PNG"),
        "palette png": lambda: encode(noise.quantize(256), "PNG"),
        "grey png": lambda: encode(noise.convert("L"), "PNG"),
        "16-bit png": lambda: encode(noise.convert("I;16"), "PNG"),
        "interlaced png": lambda: encode(noise, "PNG", interlace=1),
        "jpeg": lambda: encode(noise, "JPEG", quality=100),
        "webp": lambda: encode(noise, "WEBP", lossless=True),
        "animated gif": lambda: encode(
            noise.quantize(256), "GIF", save_all=True, append_images=[noise.quantize(16)]
        ),
    }[name]
    data = make()
    limit = int(len(data) * share)
    fitted, filename = fit_under(data, limit, "x")
    assert len(fitted) <= limit and filename == "x.jpg"
    with Image.open(io.BytesIO(fitted)) as image:
        image.load()
        assert image.format == "JPEG" and image.width <= 256


def test_a_streamed_png_decodes_exactly_as_pillow_decodes_it() -> None:
    """8-bit PNGs are decoded in strips of rows (never whole): the pixels are Pillow's."""
    base = picture((301, 203))
    for mode in ("RGB", "RGBA", "L", "LA", "P"):
        image = base.quantize(200) if mode == "P" else base.convert(mode)
        data = encode(image, "PNG")
        source = imaging._Source(data, probe_image(data), None)
        assert source.png is not None, mode
        for rows in (1, 16, 37, 500):
            strips = list(source.strips(rows))
            assert {s.width for s in strips} == {301} and sum(s.height for s in strips) == 203
            joined = imaging._assemble(iter(strips), 301, 203)
            with Image.open(io.BytesIO(data)) as reference:
                assert joined.tobytes() == reference.convert("RGB").tobytes(), (mode, rows)


@pytest.mark.parametrize("size", [(301, 203), (64, 2000), (2100, 40), (16, 16), (1, 1)])
def test_a_jpeg_encoded_in_strips_is_the_jpeg_of_the_whole_image(size: tuple[int, int]) -> None:
    """Strips joined with restart markers decode to exactly the pixels of one encode."""
    image = picture(size)
    data = encode(image, "PNG")
    stitched = imaging._stitched_jpeg(imaging._Source(data, probe_image(data), None), 85, 1 << 30)
    assert stitched is not None and stitched.startswith(JPEG_SIGNATURE)
    whole = imaging._jpeg(image, 85)
    with Image.open(io.BytesIO(stitched)) as ours, Image.open(io.BytesIO(whole)) as theirs:
        assert ours.size == size and ours.tobytes() == theirs.tobytes()
    assert abs(len(stitched) - len(whole)) < 0.02 * len(whole) + 200  # a few RST markers


def test_a_stitched_jpeg_gives_up_as_soon_as_it_outgrows_the_limit(noisy_png: bytes) -> None:
    source = imaging._Source(noisy_png, probe_image(noisy_png), None)
    assert imaging._stitched_jpeg(source, 92, 1000) is None


def test_a_result_that_is_no_image_is_refused_even_when_it_fits() -> None:
    with pytest.raises(ImageRejected, match="not a PNG, JPEG, WebP or GIF"):
        fit_under(b"%PDF-1.7 ...", 10 << 20, "x")


# --------------------------------------------------------------------------- thumbnails


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_thumbnails_of_every_format(format: str) -> None:
    data = encode(picture((1800, 1000), mode="P" if format == "GIF" else "RGB"), format)
    with Image.open(io.BytesIO(thumbnail(data, 768))) as image:
        assert (image.format, image.size) == ("JPEG", (768, 427))
    with Image.open(io.BytesIO(thumbnail(data, 4000))) as image:
        assert image.size == (1800, 1000)  # never enlarged


@pytest.mark.parametrize("size", [(1800, 1000), (1000, 1800), (999, 1000), (5000, 7), (7, 5000)])
def test_thumbnail_sizes_are_pillows(size: tuple[int, int]) -> None:
    expected = picture(size)
    expected.thumbnail((768, 768))
    assert imaging._thumbnail_size(*size, 768) == expected.size


def test_a_png_thumbnail_is_the_lanczos_resize_of_the_whole_image() -> None:
    """The PNG is resized a strip at a time (horizontal pass), then vertically: the same
    pixels as Pillow's resize of the whole decoded image."""
    data = encode(picture((1500, 844)), "PNG")
    source = imaging._Source(data, probe_image(data), None)
    ours = imaging._reduced_to(source, (768, 432))
    with Image.open(io.BytesIO(data)) as whole:
        theirs = whole.convert("RGB").resize((768, 432), Image.Resampling.LANCZOS)
    assert ours.tobytes() == theirs.tobytes()


def test_big_jpegs_are_decoded_at_reduced_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4000x3000 JPEG thumbnail at 768 px: the decoder itself scales by 1/2 (draft), so
    the pixels decoded are a quarter of the photo's."""
    data = encode(picture((4000, 3000)), "JPEG")
    decoded: list[tuple[int, int]] = []
    original = imaging._rgb

    def spy(image: Image.Image) -> Image.Image:
        result = original(image)
        decoded.append(result.size)
        return result

    monkeypatch.setattr(imaging, "_rgb", spy)
    with Image.open(io.BytesIO(thumbnail(data, 768))) as image:
        assert image.size == (768, 576)
    assert decoded == [(2000, 1500)]
    assert decode_image(data, at_least=(900, 700)).size == (1000, 750)  # 1/4
    assert decode_image(data, at_least=(300, 300)).size == (500, 375)  # 1/8
    assert decode_image(data).size == (4000, 3000)


def test_reduced_decoding_of_other_formats_uses_integer_reductions() -> None:
    data = encode(picture((1000, 600)), "WEBP")
    assert decode_image(data, at_least=(300, 300)).size == (500, 300)
    png = encode(picture((1000, 600)), "PNG")
    assert decode_image(png, at_least=(240, 190)).size == (334, 200)  # 1/3


# --------------------------------------------------------------------------- grids


def test_a_grid_has_half_size_tiles_and_dark_missing_ones() -> None:
    images: list[bytes | None] = [
        encode(picture((400, 300)), "PNG"),
        None,
        encode(picture((400, 300)), "JPEG"),
        encode(picture((800, 600)), "WEBP"),  # another size: fitted into the tile
    ]
    grid = make_grid(images, 1 << 20)
    with Image.open(io.BytesIO(grid)) as image:
        image.load()
        assert image.format == "JPEG" and image.size == (2 * 200 + 4, 2 * 150 + 4)
        assert image.crop((204, 0, 404, 150)).convert("L").getextrema()[1] < 60  # missing


def test_a_grid_over_its_share_is_shrunk_under_it(noisy_png: bytes) -> None:
    grid = make_grid([noisy_png] * 4, 6_000)
    assert len(grid) <= 6_000 and grid.startswith(JPEG_SIGNATURE)


def test_a_grid_of_nothing_is_refused() -> None:
    with pytest.raises(ImageRejected):
        make_grid([None, None], 1 << 20)
