"""Image helpers (Pillow): checking, shrinking and tiling images, with bounded memory.

Every image kreabot touches (generated results, members' reference uploads, batch grids)
comes from outside, so:

- :func:`probe_image` reads the format (PNG, JPEG, WebP or GIF, by magic bytes) and the
  declared size from the header, without decoding, and raises :class:`ImageRejected` for
  anything else and for more pixels than ``MAX_IMAGE_PIXELS``: a 20 KB PNG declaring
  13000x13000 pixels would cost 645 MiB to decode. It works on the first few KB of a file
  (``partial=True``), so an attachment can be checked before it is downloaded whole.
- every decode is probed first and opens only the probed format; Pillow's own guard
  (``Image.MAX_IMAGE_PIXELS``) is set to the same limit (:func:`configure`).
- images are decoded at reduced size when less is needed (``Image.draft`` for JPEG, integer
  ``reduce`` on strips otherwise), and 8-bit PNGs are decoded in strips of rows and
  re-encoded as one JPEG strip by strip (joined with restart markers), so a re-encode holds
  a strip, not the whole picture: the extra memory of :func:`fit_under` stays under the
  image's byte size.
- :class:`ImageWorker` runs all this on a small thread pool of its own, so that many
  images delivered at once queue instead of multiplying the peak memory.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from PIL import Image

#: Pixels accepted by default (``MAX_IMAGE_PIXELS``): 50 megapixels covers Krea's largest
#: outputs (about 1-4 MP) and phones' high-resolution modes (48-50 MP); decoding one costs
#: at most about 4 bytes per pixel (200 MB) per pool thread, and usually far less.
DEFAULT_MAX_PIXELS = 50_000_000
#: JPEG's largest side; no wider or taller image is decoded.
MAX_SIDE = 65_500
#: The formats kreabot opens, as Pillow names them.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
#: Qualities tried, best first, by :func:`fit_under` and :func:`make_grid`.
FIT_QUALITIES = (92, 85, 75, 60)
GRID_QUALITIES = (90, 85, 75, 60)
THUMBNAIL_QUALITY = 85
#: Integer reduction factors tried once no quality fits at full size.
SHRINK_FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

_max_pixels = DEFAULT_MAX_PIXELS
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


def configure(max_pixels: int) -> None:
    """Set the pixel limit of every probe and decode, and Pillow's own guard with it."""
    global _max_pixels
    _max_pixels = max_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels


def max_pixels() -> int:
    """The pixel limit in force."""
    return _max_pixels


class ImageRejected(ValueError):
    """The bytes are not an image kreabot will decode. ``message`` is a clause without a
    final full stop that is safe to show a member ("the file is not a PNG, …")."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageIncomplete(ImageRejected):
    """``probe_image(..., partial=True)`` was given too few bytes to hold the header."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header of an image declares. ``frames`` is None when the (partial) data
    ends before it could be counted."""

    format: str
    width: int
    height: int
    frames: int | None = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]


NOT_AN_IMAGE = "the file is not a PNG, JPEG, WebP or GIF image"
TRUNCATED = "the image file is truncated"
UNDECODABLE = "the image could not be decoded"
TOO_SMALL_TO_FIT = "the image cannot be made small enough"


# --------------------------------------------------------------------------- probing


def probe_image(data: bytes, *, partial: bool = False, max_pixels: int | None = None) -> ImageInfo:
    """The format and declared size of ``data``, read from its header without decoding.

    Raises :class:`ImageRejected` for anything but a PNG, JPEG, WebP or GIF, for a damaged
    or truncated file, and for more than ``max_pixels`` pixels (default: the configured
    ``MAX_IMAGE_PIXELS``). With ``partial=True`` ``data`` is the start of a file (a few KB
    are enough, except for JPEGs with large metadata): what lies past it is not checked,
    and :class:`ImageIncomplete` says the header itself is not in it yet."""
    view = memoryview(data)
    head = bytes(view[:12])
    if head.startswith(_PNG_SIGNATURE):
        info = _probe_png(view, partial)
    elif head.startswith(b"\xff\xd8\xff"):
        info = _probe_jpeg(view, partial)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        info = _probe_webp(view, partial)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        info = _probe_gif(view, partial, max_pixels)
    elif partial and len(data) < 12 and _could_start_an_image(head):
        raise ImageIncomplete("the image's header is not in the data yet")
    else:
        raise ImageRejected(NOT_AN_IMAGE)
    _check_size(info.width, info.height, max_pixels)
    return info


def _could_start_an_image(head: bytes) -> bool:
    starts = (_PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF", b"GIF87a", b"GIF89a")
    return any(s.startswith(head) or head.startswith(s) for s in starts)


def _check_size(width: int, height: int, limit: int | None) -> None:
    limit = _max_pixels if limit is None else limit
    if width < 1 or height < 1:
        raise ImageRejected("the image declares no pixels")
    if width * height > limit or max(width, height) > MAX_SIDE:
        raise ImageRejected(
            f"the image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {limit / 1e6:g} megapixels and {MAX_SIDE} pixels a side"
        )


def _short(partial: bool, what: str = "the image's header is not in the data yet") -> Exception:
    return ImageIncomplete(what) if partial else ImageRejected(TRUNCATED)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> the bit depths it allows.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


@dataclass(slots=True)
class _Png:
    """A PNG's header and where its image data lies."""

    width: int
    height: int
    depth: int
    colour: int
    interlaced: bool
    frames: int | None = None
    palette: bytes | None = None
    idat: list[tuple[int, int]] | None = None  # (start, end) of each IDAT payload

    @property
    def streamable(self) -> bool:
        """Whether :func:`_png_strips` decodes it (8 bits, not interlaced, palette known)."""
        return (
            self.depth == 8
            and not self.interlaced
            and self.colour in _PNG_RAW
            and (self.colour != 3 or bool(self.palette))
        )


def _png_layout(view: memoryview, partial: bool) -> _Png:
    if len(view) < 33:
        raise _short(partial)
    length, kind = struct.unpack(">I4s", view[8:16])
    if kind != b"IHDR" or length != 13:
        raise ImageRejected(UNDECODABLE)
    if zlib.crc32(view[12:29]) != struct.unpack(">I", view[29:33])[0]:
        raise ImageRejected(UNDECODABLE)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", view[16:29])
    if depth not in _PNG_DEPTHS.get(colour, ()) or interlace > 1:
        raise ImageRejected(UNDECODABLE)
    png = _Png(width, height, depth, colour, interlace == 1, idat=[])
    assert png.idat is not None
    position, ended = 33, False
    while position + 8 <= len(view):
        length, kind = struct.unpack(">I4s", view[position : position + 8])
        start, end = position + 8, position + 8 + length
        if end + 4 > len(view):
            if not partial:
                raise ImageRejected(TRUNCATED)
            if kind == b"IDAT" and png.frames is None:
                png.frames = 1
            break
        if kind == b"acTL" and length >= 8 and not png.idat:
            png.frames = max(1, struct.unpack(">I", view[start : start + 4])[0])
        elif kind == b"PLTE":
            png.palette = bytes(view[start:end])
        elif kind == b"IDAT":
            png.idat.append((start, end))
        elif kind == b"IEND":
            ended = True
            break
        position = end + 4
    if png.idat and png.frames is None:
        png.frames = 1
    if not partial and (not ended or not png.idat):
        raise ImageRejected(TRUNCATED)
    return png


def _probe_png(view: memoryview, partial: bool) -> ImageInfo:
    png = _png_layout(view, partial)
    return ImageInfo("PNG", png.width, png.height, png.frames)


#: Start-of-frame markers (their segment holds the size); C4, C8 and CC are not frames.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _probe_jpeg(view: memoryview, partial: bool) -> ImageInfo:
    position, size = 2, None
    while True:
        if position + 4 > len(view):
            if partial and size is not None:
                return ImageInfo("JPEG", *size)
            raise _short(partial)
        if view[position] != 0xFF:
            raise ImageRejected(UNDECODABLE)
        marker = view[position + 1]
        if marker == 0xFF:  # a fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            position += 2
            continue
        if marker == 0xD9:  # the end, before any scan
            raise ImageRejected(UNDECODABLE)
        if marker in _JPEG_FRAMES and size is None:
            if position + 9 > len(view):
                raise _short(partial)
            height, width = struct.unpack(">HH", view[position + 5 : position + 9])
            if height == 0:  # the height comes later, in a DNL segment: not supported
                raise ImageRejected(UNDECODABLE)
            size = (width, height)
            if partial:
                return ImageInfo("JPEG", width, height)
        elif marker == 0xDA:  # the first scan: the image data starts
            if size is None:
                raise ImageRejected(UNDECODABLE)
            return ImageInfo("JPEG", *size)
        position += 2 + struct.unpack(">H", view[position + 2 : position + 4])[0]


def _le(view: memoryview, start: int, size: int) -> int:
    return int.from_bytes(view[start : start + size], "little")


def _probe_webp(view: memoryview, partial: bool) -> ImageInfo:
    if len(view) < 30:
        raise _short(partial)
    if not partial and _le(view, 4, 4) + 8 > len(view):
        raise ImageRejected(TRUNCATED)
    kind, body = bytes(view[12:16]), 20
    if kind == b"VP8 ":
        if bytes(view[body + 3 : body + 6]) != b"\x9d\x01\x2a":
            raise ImageRejected(UNDECODABLE)
        return ImageInfo("WEBP", _le(view, body + 6, 2) & 0x3FFF, _le(view, body + 8, 2) & 0x3FFF)
    if kind == b"VP8L":
        if view[body] != 0x2F:
            raise ImageRejected(UNDECODABLE)
        bits = _le(view, body + 1, 4)
        return ImageInfo("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        width, height = _le(view, body + 4, 3) + 1, _le(view, body + 7, 3) + 1
        if not view[body] & 0x02:  # not animated
            return ImageInfo("WEBP", width, height)
        end = min(len(view), 8 + _le(view, 4, 4))
        frames, position = 0, 12
        while position + 8 <= end:
            size = _le(view, position + 4, 4)
            frames += bytes(view[position : position + 4]) == b"ANMF"
            position += 8 + size + (size & 1)
        if not partial and not frames:
            raise ImageRejected(TRUNCATED)
        return ImageInfo("WEBP", width, height, frames if position >= end else None)
    raise ImageRejected(UNDECODABLE)


def _probe_gif(view: memoryview, partial: bool, limit: int | None) -> ImageInfo:
    if len(view) < 13:
        raise _short(partial)
    width, height, flags = _le(view, 6, 2), _le(view, 8, 2), view[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, right, bottom, ended = 0, width, height, False

    def skip_blocks(at: int) -> int:
        while at < len(view) and view[at]:
            at += view[at] + 1
        return at + 1

    while position < len(view):
        block = view[position]
        if block == 0x3B:
            ended = True
            break
        if block == 0x21:
            position = skip_blocks(position + 2)
        elif block == 0x2C:
            if position + 10 > len(view):
                break
            left, top = _le(view, position + 1, 2), _le(view, position + 3, 2)
            right = max(right, left + _le(view, position + 5, 2))
            bottom = max(bottom, top + _le(view, position + 7, 2))
            packed = view[position + 9]
            position += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0) + 1
            position = skip_blocks(position)
            if position <= len(view):
                frames += 1
        elif frames:
            break  # stray bytes after the frames: Pillow ignores them too
        else:
            raise ImageRejected(UNDECODABLE)
    if not partial and frames == 0:
        raise ImageRejected(TRUNCATED)
    # Pillow may make room for frames reaching past the logical screen: count those too.
    _check_size(right, bottom, limit)
    return ImageInfo("GIF", width, height, frames if ended or not partial else None)


# --------------------------------------------------------------------------- decoding


_T = TypeVar("_T")
_P = ParamSpec("_P")


def _decoding(function: Callable[_P, _T]) -> Callable[_P, _T]:
    """Report any failure of Pillow or zlib on untrusted bytes as :class:`ImageRejected`."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return function(*args, **kwargs)
        except ImageRejected:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
            raise ImageRejected(UNDECODABLE) from exc
        except Image.DecompressionBombError as exc:
            raise ImageRejected(str(exc)) from exc

    return wrapper


def _open(data: bytes, info: ImageInfo, limit: int | None) -> Image.Image:
    """Pillow's lazy image of probed ``data``, opening only the probed format."""
    image = Image.open(io.BytesIO(data), formats=[info.format])
    _check_size(image.width, image.height, limit)
    return image


#: PNG colour type -> (Pillow mode, raw mode, bytes per pixel) for 8-bit images.
_PNG_RAW = {
    0: ("L", "L", 1),
    2: ("RGB", "RGB", 3),
    3: ("P", "P", 1),
    4: ("LA", "LA", 2),
    6: ("RGBA", "RGBA", 4),
}


def _png_strips(data: bytes, png: _Png, rows: int) -> Iterator[Image.Image]:
    """The RGB pixels of an 8-bit, non-interlaced PNG, ``rows`` rows at a time, top down.

    The IDAT stream is inflated a strip at a time; Pillow's own PNG row decoder (``zip``)
    undoes the filters of each strip, given the strip's rows behind the previous strip's
    last row (unfiltered, as a row of filter type 0) for the filters that look up."""
    mode, rawmode, channels = _PNG_RAW[png.colour]
    stride = 1 + png.width * channels
    view = memoryview(data)
    chunks = iter(png.idat or [])
    inflater = zlib.decompressobj()
    pending = bytearray()
    previous: bytes | None = None
    y = 0
    while y < png.height:
        count = min(rows, png.height - y)
        need = count * stride
        while len(pending) < need:
            piece: bytes | memoryview
            if inflater.unconsumed_tail:
                piece = inflater.unconsumed_tail
            else:
                start, end = next(chunks, (0, 0))
                if end == 0 or inflater.eof:
                    raise ImageRejected(TRUNCATED)
                piece = view[start:end]
            pending += inflater.decompress(piece, need - len(pending))
        filtered = b"\x00" + previous + pending[:need] if previous else bytes(pending[:need])
        del pending[:need]
        extra = 1 if previous else 0
        strip = Image.frombytes(
            mode, (png.width, count + extra), zlib.compress(filtered, 0), "zip", rawmode
        )
        del filtered
        previous = strip.crop((0, count + extra - 1, png.width, count + extra)).tobytes(
            "raw", rawmode
        )
        if extra:
            strip = strip.crop((0, 1, png.width, count + 1))
        if png.colour == 3:
            assert png.palette is not None
            strip.putpalette(png.palette)
        yield strip if strip.mode == "RGB" else strip.convert("RGB")
        y += count


class _Source:
    """Where the RGB pixels of one probed image come from: an 8-bit PNG is decoded again
    strip by strip for each pass (never whole); anything else is decoded once, at reduced
    size where that is all that is needed (``draft`` for JPEG)."""

    def __init__(
        self, data: bytes, info: ImageInfo, limit: int | None, image: Image.Image | None = None
    ) -> None:
        self.data, self.info, self.limit = data, info, limit
        self.width, self.height = info.width, info.height
        self.png: _Png | None = None
        if info.format == "PNG" and image is None:
            png = _png_layout(memoryview(data), partial=False)
            self.png = png if png.streamable else None
        self._image = image

    @classmethod
    def of_image(cls, image: Image.Image) -> _Source:
        info = ImageInfo("PNG", image.width, image.height)
        return cls(b"", info, None, image=image)

    def _decoded(self) -> Image.Image:
        if self._image is None:
            image = _open(self.data, self.info, self.limit)
            image.load()
            self._image = image
        return self._image

    def strips(self, rows: int) -> Iterator[Image.Image]:
        """The full-size RGB pixels, ``rows`` rows at a time."""
        if self.png is not None:
            yield from _png_strips(self.data, self.png, rows)
            return
        image = self._decoded()
        for y in range(0, image.height, rows):
            strip = image.crop((0, y, image.width, min(image.height, y + rows)))
            yield strip if strip.mode == "RGB" else strip.convert("RGB")

    def reduced(self, factor: int) -> Image.Image:
        """The RGB pixels reduced ``factor`` times (box filter), ``ceil(size / factor)``.
        The caller owns the image (it may be the decoded image itself, then forgotten)."""
        size = (-(-self.width // factor), -(-self.height // factor))
        if factor == 1:
            if self.png is not None:
                return _assemble(self.strips(256), self.width, self.height)
            image, self._image = _rgb(self._decoded()), None
            return image
        if self._image is None and self.info.format == "JPEG":
            image = _open(self.data, self.info, self.limit)
            image.draft("RGB", size)  # the decoder scales by 1/2, 1/4 or 1/8 on its own
            image = _rgb(image)
            if image.size == size:
                return image
            gap = (image.width / size[0], image.height / size[1])
            if min(gap) >= 2:
                image = image.reduce(int(min(gap)))
            return image.resize(size, Image.Resampling.LANCZOS)
        rows = factor * max(1, 128 // factor)
        reduced = Image.new("RGB", size)
        for index, strip in enumerate(self.strips(rows)):
            reduced.paste(strip.reduce(factor), (0, index * rows // factor))
        return reduced

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` loaded, as RGB: itself when it is RGB already, else a converted copy (and
    the original closed)."""
    image.load()
    if image.mode == "RGB":
        return image
    converted = image.convert("RGB")
    image.close()
    return converted


def _assemble(strips: Iterator[Image.Image], width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    y = 0
    for strip in strips:
        image.paste(strip, (0, y))
        y += strip.height
    return image


# --------------------------------------------------------------------------- JPEG


def _jpeg(image: Image.Image, quality: int) -> bytes:
    """A baseline JPEG (4:2:0, standard Huffman tables) of a small RGB image, without the
    source's metadata (its comment, which Pillow would copy, may even be too long)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=2, comment=b"")
    return buffer.getvalue()


def _jpeg_header(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The marker segments of a JPEG up to and including SOS, and where its scan starts."""
    segments, position = [], 2
    while True:
        marker = data[position + 1]
        end = position + 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
        segments.append((marker, data[position:end]))
        if marker == 0xDA:
            return segments, end
        position = end


def _strip_rows(width: int) -> int:
    """Rows per encoded strip: a multiple of the 16-row MCU, with at most 65535 MCUs (the
    largest restart interval) per strip."""
    columns = -(-width // 16)
    return 16 * max(1, min(8, 65535 // columns))


def _stitched_jpeg(source: _Source, quality: int, limit: int) -> bytes | None:
    """One baseline JPEG of ``source`` at full size, encoded a strip at a time: each strip
    is a JPEG of its own with the same tables; their entropy-coded scans, which start
    afresh like the interval after a restart marker, are joined by RSTn markers under one
    header (SOF with the full height, DRI with one strip's MCUs). Decoders see one ordinary
    image; the encoder never holds more than a strip. None once it outgrows ``limit``."""
    rows = _strip_rows(source.width)
    out = io.BytesIO()
    header: bytes | None = None
    for index, strip in enumerate(source.strips(rows)):
        encoded = _jpeg(strip, quality)
        segments, scan = _jpeg_header(encoded)
        tables = b"".join(body for marker, body in segments if marker != 0xC0)
        if header is None:
            header = tables
            out.write(b"\xff\xd8")
            interval = (-(-source.width // 16)) * (rows // 16)
            for marker, body in segments:
                if marker == 0xC0:  # baseline SOF0: precision, height, width, ...
                    body = body[:5] + struct.pack(">H", source.height) + body[7:]
                elif marker == 0xDA:
                    out.write(b"\xff\xdd\x00\x04" + struct.pack(">H", interval))
                out.write(body)
        elif tables != header:  # never seen: Pillow writes the same tables for a quality
            raise RuntimeError("JPEG strips were encoded with different tables")
        else:
            out.write(bytes((0xFF, 0xD0 + (index - 1) % 8)))
        out.write(memoryview(encoded)[scan:-2])  # the scan, without EOI
        if out.tell() > limit:
            return None
    out.write(b"\xff\xd9")
    return out.getvalue() if out.tell() <= limit else None


def _fit(source: _Source, limit: int, qualities: tuple[int, ...]) -> bytes:
    """A JPEG of ``source`` no larger than ``limit``: at full size, lowering the quality,
    then reduced 2, 3, 4, 6… times."""
    for quality in qualities:
        encoded = _stitched_jpeg(source, quality, limit)
        if encoded is not None:
            return encoded
    wanted = 2.0
    for factor in SHRINK_FACTORS:
        if factor < wanted:
            continue
        if source.width < 16 * factor or source.height < 16 * factor:
            break
        reduced = source.reduced(factor)
        for quality in qualities:
            small = _jpeg(reduced, quality)
            if len(small) <= limit:
                return small
        reduced.close()
        # The size goes about with the pixels: skip the factors that surely do not fit.
        wanted = factor * math.sqrt(len(small) / limit) * 0.9
    raise ImageRejected(TOO_SMALL_TO_FIT)


# --------------------------------------------------------------------------- entry points


@_decoding
def fit_under(
    data: bytes, limit: int, stem: str, *, max_pixels: int | None = None
) -> tuple[bytes, str]:
    """Return ``(bytes, filename)`` no larger than ``limit``: the image as is when it fits
    (named by its format: ``stem.png`` for a PNG), otherwise re-encoded as JPEG, lowering
    quality and then the pixel size until it fits.

    Raises :class:`ImageRejected` (a ``ValueError``) when ``data`` is no image kreabot
    decodes (even when it fits) or cannot be made small enough."""
    info = probe_image(data, max_pixels=max_pixels)
    if len(data) <= limit:
        return data, f"{stem}.{info.extension}"
    source = _Source(data, info, max_pixels)
    try:
        return _fit(source, limit, FIT_QUALITIES), f"{stem}.jpg"
    finally:
        source.close()


def _thumbnail_size(width: int, height: int, edge: int) -> tuple[int, int]:
    """The size ``Image.thumbnail((edge, edge))`` gives (aspect kept, never larger)."""
    if width <= edge and height <= edge:
        return width, height
    aspect, x, y = width / height, edge, edge

    def round_aspect(number: float, key: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _reduced_to(source: _Source, size: tuple[int, int], gap: float = 2.0) -> Image.Image:
    """``source`` resized to ``size`` (Lanczos), decoded at reduced size down to ``gap``
    times ``size`` first (Pillow's ``reducing_gap``)."""
    if source.info.format == "JPEG" and source.png is None and source._image is None:
        # The decoder scales by 1/2, 1/4 or 1/8 itself, to no less than ``gap`` times size.
        image = _open(source.data, source.info, source.limit)
        image.draft("RGB", (math.ceil(size[0] * gap), math.ceil(size[1] * gap)))
        image = _rgb(image)
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
    factor = max(1, int(min(source.width / size[0], source.height / size[1]) / gap))
    if factor == 1 and source.png is not None and size[0] < source.width:
        # Lanczos works a pass per axis: the horizontal pass, row by row, on each strip,
        # keeps a narrow image instead of the whole one.
        narrow = (
            s.resize((size[0], s.height), Image.Resampling.LANCZOS) for s in source.strips(128)
        )
        image = _assemble(narrow, size[0], source.height)
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
    image = source.reduced(factor)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


@_decoding
def thumbnail(data: bytes, edge: int, *, max_pixels: int | None = None) -> bytes:
    """A JPEG copy of an image whose long edge is at most ``edge`` pixels (the first frame
    of an animation). Raises :class:`ImageRejected` for what :func:`probe_image` refuses."""
    info = probe_image(data, max_pixels=max_pixels)
    source = _Source(data, info, max_pixels)
    try:
        image = _reduced_to(source, _thumbnail_size(info.width, info.height, edge))
    finally:
        source.close()
    return _jpeg(image, THUMBNAIL_QUALITY)


@_decoding
def make_grid(images: list[bytes | None], limit: int, *, max_pixels: int | None = None) -> bytes:
    """A JPEG grid (two columns) of half-size tiles; a missing image is a dark tile.

    The tiles take the first image's half size; each image is decoded at reduced size, one
    at a time. Raises :class:`ImageRejected` when an image is refused by :func:`probe_image`
    (or none is given)."""
    infos = [None if data is None else probe_image(data, max_pixels=max_pixels) for data in images]
    sample = next((info for info in infos if info is not None), None)
    if sample is None:
        raise ImageRejected("there is no image to show")
    tile_w, tile_h = max(1, sample.width // 2), max(1, sample.height // 2)
    columns, gap = 2, 4
    rows = (len(images) + columns - 1) // columns
    size = (columns * tile_w + (columns - 1) * gap, rows * tile_h + (rows - 1) * gap)
    grid = Image.new("RGB", size, "#111111")
    for index, (data, info) in enumerate(zip(images, infos, strict=True)):
        x, y = (index % columns) * (tile_w + gap), (index // columns) * (tile_h + gap)
        if data is None or info is None:
            grid.paste(Image.new("RGB", (tile_w, tile_h), "#2a2a2a"), (x, y))
            continue
        source = _Source(data, info, max_pixels)
        try:
            grid.paste(_reduced_to(source, (tile_w, tile_h), gap=1.0), (x, y))
        finally:
            source.close()
    return _fit(_Source.of_image(grid), limit, GRID_QUALITIES)


@_decoding
def decode_image(
    data: bytes, *, at_least: tuple[int, int] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """The RGB pixels of probed ``data`` (the first frame); with ``at_least``, decoded at the
    smallest reduced size that is still at least that large: JPEG's own 1/2, 1/4 and 1/8
    scales (``Image.draft``), integer reductions of other formats."""
    info = probe_image(data, max_pixels=max_pixels)
    if at_least is not None and info.format == "JPEG":
        image = _open(data, info, max_pixels)
        image.draft("RGB", at_least)
        return _rgb(image)
    factor = 1
    if at_least is not None:
        factor = max(1, min(info.width // max(1, at_least[0]), info.height // max(1, at_least[1])))
    source = _Source(data, info, max_pixels)
    try:
        return source.reduced(factor)
    finally:
        source.close()


# --------------------------------------------------------------------------- the pool


class ImageWorker:
    """Runs the image helpers on a small pool of threads of its own: at most ``threads``
    decodes at once, the rest wait in line, so a burst of large images costs the memory
    of ``threads`` of them, not of all. Probing (no decoding) runs beside the pool.

    One per bot: ``worker = ImageWorker(settings.IMAGE_THREADS,
    max_pixels=settings.MAX_IMAGE_PIXELS)``; ``worker.close()`` on shutdown."""

    def __init__(self, threads: int = 2, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if threads < 1:
            raise ValueError("an ImageWorker needs at least one thread")
        configure(max_pixels)
        self.threads = threads
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kreabot-image")

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        call = functools.partial(function, *args, max_pixels=self.max_pixels)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def probe(self, data: bytes, *, partial: bool = False) -> ImageInfo:
        """:func:`probe_image` off the event loop (it walks the file's chunks)."""
        call = functools.partial(probe_image, data, partial=partial, max_pixels=self.max_pixels)
        if len(data) <= 64 * 1024:
            return call()
        return await asyncio.to_thread(call)

    async def fit_under(self, data: bytes, limit: int, stem: str) -> tuple[bytes, str]:
        """:func:`fit_under` on the pool."""
        return await self._run(fit_under, data, limit, stem)

    async def thumbnail(self, data: bytes, edge: int) -> bytes:
        """:func:`thumbnail` on the pool."""
        return await self._run(thumbnail, data, edge)

    async def make_grid(self, images: list[bytes | None], limit: int) -> bytes:
        """:func:`make_grid` on the pool."""
        return await self._run(make_grid, images, limit)

    def close(self) -> None:
        """Stop the threads; work not started is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
