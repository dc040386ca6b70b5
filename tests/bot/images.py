"""Images built for the imaging tests: every format, bombs, and files that are no image."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

#: The decompression bomb of the issue: 13000x13000 pixels declared by a PNG of ~20 KB.
BOMB_SIDE = 13_000


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` black pixels: a few KB per 10^8
    pixels, and Pillow decodes it to one byte per pixel (four once converted to RGB)."""
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bomb_jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small JPEG whose frame header declares ``width`` x ``height`` pixels."""
    real = encode(Image.new("RGB", (16, 16), "red"), "JPEG")
    position = 2
    while real[position + 1] != 0xC0:
        position += 2 + struct.unpack(">H", real[position + 2 : position + 4])[0]
    return real[: position + 5] + struct.pack(">HH", height, width) + real[position + 9 :]


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def picture(size: tuple[int, int] = (300, 200), mode: str = "RGB") -> Image.Image:
    """A colourful image of ``size`` (gradients, so every format has something to keep)."""
    red = Image.linear_gradient("L").resize(size)
    green = Image.linear_gradient("L").rotate(90).resize(size)
    blue = Image.radial_gradient("L").resize(size)
    image = Image.merge("RGB", (red, green, blue))
    if mode == "P":
        return image.quantize(64)
    return image.convert(mode)


def animated(format: str, frames: int = 3, size: tuple[int, int] = (64, 48)) -> bytes:
    images = [Image.new("RGB", size, colour) for colour in ("red", "green", "blue")[:frames]]
    return encode(images[0], format, save_all=True, append_images=images[1:], duration=100)


NOT_IMAGES = {
    "pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
    "text": b"this is not an image, whatever its name says\n" * 20,
    "html": b"<!doctype html><html><body><img src=x></body></html>",
    "empty": b"",
    "bmp": encode(Image.new("RGB", (8, 8)), "BMP"),
    "tiff": encode(Image.new("RGB", (8, 8)), "TIFF"),
    "png signature only": b"\x89PNG\r\n\x1a\n",
}
