"""probe_image: the format and size of untrusted bytes from their header, without decoding."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from bot import imaging
from bot.imaging import (
    DEFAULT_MAX_PIXELS,
    ImageIncomplete,
    ImageInfo,
    ImageRejected,
    configure,
    decode_image,
    fit_under,
    make_grid,
    probe_image,
    thumbnail,
)
from tests.bot.images import (
    BOMB_SIDE,
    NOT_IMAGES,
    animated,
    bomb_jpeg,
    bomb_png,
    encode,
    picture,
)

STILLS = {
    "png rgb": ("PNG", lambda: encode(picture(), "PNG")),
    "png rgba": ("PNG", lambda: encode(picture(mode="RGBA"), "PNG")),
    "png palette": ("PNG", lambda: encode(picture(mode="P"), "PNG")),
    "png grey 16-bit": ("PNG", lambda: encode(picture(mode="I;16"), "PNG")),
    "png interlaced": ("PNG", lambda: encode(picture(), "PNG", interlace=1)),
    "jpeg": ("JPEG", lambda: encode(picture(), "JPEG")),
    "jpeg progressive": ("JPEG", lambda: encode(picture(), "JPEG", progressive=True)),
    "jpeg grey": ("JPEG", lambda: encode(picture(mode="L"), "JPEG")),
    "jpeg cmyk": ("JPEG", lambda: encode(picture(mode="CMYK"), "JPEG")),
    "jpeg with exif": (
        "JPEG",
        lambda: encode(picture(), "JPEG", exif=b"Exif\x00\x00" + b"x" * 900),
    ),
    "webp lossy": ("WEBP", lambda: encode(picture(), "WEBP")),
    "webp lossless": ("WEBP", lambda: encode(picture(), "WEBP", lossless=True)),
    "webp alpha": ("WEBP", lambda: encode(picture(mode="RGBA"), "WEBP")),
    "gif": ("GIF", lambda: encode(picture(mode="P"), "GIF")),
}


@pytest.mark.parametrize("name", sorted(STILLS))
def test_each_accepted_format_is_probed_as_pillow_sees_it(name: str) -> None:
    format, make = STILLS[name]
    data = make()
    info = probe_image(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (
            (info.format, info.width, info.height)
            == (image.format, *image.size)
            == (
                format,
                300,
                200,
            )
        )
    assert info.frames == 1
    assert info.extension == {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}[format]
    assert info.mime_type == f"image/{format.lower()}"


@pytest.mark.parametrize("format", ["GIF", "WEBP", "PNG"])
def test_animations_are_accepted_and_their_frames_counted(format: str) -> None:
    info = probe_image(animated(format, frames=3))
    assert info == ImageInfo(format, 64, 48, 3)


@pytest.mark.parametrize("name", sorted(STILLS))
def test_the_first_few_kilobytes_are_enough(name: str) -> None:
    """An attachment can be checked from a ranged download of its start."""
    data = STILLS[name][1]()
    head = data[:2048]
    info = probe_image(head, partial=True)
    assert (info.format, info.width, info.height) == (STILLS[name][0], 300, 200)


def test_a_prefix_without_the_whole_header_asks_for_more() -> None:
    png = encode(picture(), "PNG")
    for size in (0, 4, 20):
        with pytest.raises(ImageIncomplete):
            probe_image(png[:size], partial=True)
    jpeg = encode(picture(), "JPEG", exif=b"Exif\x00\x00" + b"x" * 20_000)
    with pytest.raises(ImageIncomplete):
        probe_image(jpeg[:4096], partial=True)  # the frame header is behind the metadata
    assert probe_image(jpeg[:32_000], partial=True).width == 300


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_anything_else_is_refused_whatever_its_name(name: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        probe_image(NOT_IMAGES[name])
    assert refused.value.message in (imaging.NOT_AN_IMAGE, imaging.TRUNCATED)
    with pytest.raises(ImageRejected):
        probe_image(NOT_IMAGES[name][:64], partial=True)


@pytest.mark.parametrize("name", ["png rgb", "jpeg", "webp lossy", "gif"])
def test_truncated_files_are_refused(name: str) -> None:
    data = STILLS[name][1]()
    cut = data[: len(data) // 2] if name != "jpeg" else data[:300]
    with pytest.raises(ImageRejected, match=r"truncated|header"):
        probe_image(cut if name != "gif" else data[:20])


def test_a_damaged_png_header_is_refused() -> None:
    data = bytearray(encode(picture(), "PNG"))
    data[20] ^= 0xFF  # in IHDR: its CRC no longer matches
    with pytest.raises(ImageRejected, match="could not be decoded"):
        probe_image(bytes(data))


def test_the_decompression_bomb_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = bomb_png()
    assert len(bomb) < 25_000
    with pytest.raises(Image.DecompressionBombError):  # Pillow's own guard, set by kreabot
        Image.open(io.BytesIO(bomb))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(bomb)) as image:  # lazily: Pillow agrees on the declared size
        assert image.size == (BOMB_SIDE, BOMB_SIDE)
    monkeypatch.undo()
    with pytest.raises(ImageRejected, match="13000×13000 pixels") as refused:
        probe_image(bomb)
    assert "limit is 50 megapixels" in refused.value.message
    with pytest.raises(ImageRejected, match="13000×13000"):
        probe_image(bomb[:100], partial=True)
    with pytest.raises(ImageRejected, match="60000×60000"):
        probe_image(bomb_jpeg())


def test_every_entry_point_refuses_the_bomb() -> None:
    bomb = bomb_png()
    for call in (
        lambda: fit_under(bomb, 10 << 20, "x"),  # even though it fits the upload limit
        lambda: fit_under(bomb, 1000, "x"),
        lambda: thumbnail(bomb, 768),
        lambda: make_grid([encode(picture(), "PNG"), bomb], 1 << 20),
        lambda: decode_image(bomb),
    ):
        with pytest.raises(ImageRejected, match="13000×13000"):
            call()


def test_the_limit_is_configurable_and_pillow_guards_with_it() -> None:
    assert imaging.max_pixels() == DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    data = encode(picture((300, 200)), "PNG")
    with pytest.raises(ImageRejected, match=r"limit is 0\.05 megapixels"):
        probe_image(data, max_pixels=50_000)
    try:
        configure(50_000)
        assert Image.MAX_IMAGE_PIXELS == 50_000
        with pytest.raises(ImageRejected, match="300×200"):
            thumbnail(data, 64)
    finally:
        configure(DEFAULT_MAX_PIXELS)
    assert probe_image(data).pixels == 60_000


def test_the_setting_and_the_default_agree() -> None:
    from bot.settings import Settings

    assert Settings.model_fields["MAX_IMAGE_PIXELS"].default == DEFAULT_MAX_PIXELS


def test_a_file_of_one_format_is_not_opened_as_another() -> None:
    """The probe's format is the only one Pillow may try."""
    gif = encode(picture(mode="P"), "GIF")
    disguised = b"\x89PNG\r\n\x1a\n" + gif
    with pytest.raises(ImageRejected):
        thumbnail(disguised, 64)


def test_a_gif_frame_reaching_far_past_its_screen_counts_its_pixels() -> None:
    """A 10x10 GIF whose one frame declares 60000x60000 pixels (Pillow grows the canvas
    for such frames) is refused like any other bomb."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 60_000, 60_000, 0) + b"\x02\x00"
    with pytest.raises(ImageRejected, match="60000×60000"):
        probe_image(screen + frame + b"\x3b")
    small = b"\x2c" + struct.pack("<HHHHB", 0, 0, 10, 10, 0) + b"\x02\x00"
    assert probe_image(screen + small + b"\x3b") == ImageInfo("GIF", 10, 10, 1)
