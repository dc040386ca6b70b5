"""Image helpers (Pillow): fitting a result under Discord's upload limit."""

from __future__ import annotations

import io

from PIL import Image


def fit_under(data: bytes, limit: int, stem: str) -> tuple[bytes, str]:
    """Return ``(bytes, filename)`` no larger than ``limit``: the PNG as is when it fits,
    otherwise re-encoded as JPEG, lowering quality and then the pixel size until it fits."""
    if len(data) <= limit:
        return data, f"{stem}.png"
    image = _rgb(data)
    scale = 1.0
    while True:
        frame = image
        if scale < 1.0:
            size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
            frame = image.resize(size, Image.Resampling.LANCZOS)
        for quality in (92, 85, 75, 60):
            buffer = io.BytesIO()
            frame.save(buffer, format="JPEG", quality=quality, optimize=True)
            if buffer.tell() <= limit:
                return buffer.getvalue(), f"{stem}.jpg"
        if frame.width <= 16 or frame.height <= 16:
            raise ValueError("the image cannot be made small enough")
        scale *= 0.75


def _rgb(data: bytes) -> Image.Image:
    """Decode ``data`` as RGB pixels, without an extra copy when it already is RGB."""
    opened = Image.open(io.BytesIO(data))
    opened.load()
    if opened.mode == "RGB":
        return opened
    converted = opened.convert("RGB")
    opened.close()
    return converted


def thumbnail(data: bytes, edge: int) -> bytes:
    """A JPEG copy of an image whose long edge is at most ``edge`` pixels."""
    image = _rgb(data)
    image.thumbnail((edge, edge), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def make_grid(images: list[bytes | None], limit: int) -> bytes:
    """A JPEG grid (two columns) of half-size tiles; a missing image is a dark tile."""
    opened: list[Image.Image | None] = []
    for data in images:
        if data is None:
            opened.append(None)
            continue
        with Image.open(io.BytesIO(data)) as source:
            opened.append(source.convert("RGB"))
    sample = next(image for image in opened if image is not None)
    tile_w, tile_h = max(1, sample.width // 2), max(1, sample.height // 2)
    columns, gap = 2, 4
    rows = (len(opened) + columns - 1) // columns
    size = (columns * tile_w + (columns - 1) * gap, rows * tile_h + (rows - 1) * gap)
    grid = Image.new("RGB", size, "#111111")
    for index, tile in enumerate(opened):
        x, y = (index % columns) * (tile_w + gap), (index // columns) * (tile_h + gap)
        if tile is None:
            grid.paste(Image.new("RGB", (tile_w, tile_h), "#2a2a2a"), (x, y))
        else:
            grid.paste(tile.resize((tile_w, tile_h), Image.Resampling.LANCZOS), (x, y))
    buffer = io.BytesIO()
    grid.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    if len(data) > limit:
        data, _ = fit_under(data, limit, "grid")
    return data
