"""ImageWorker: the image helpers on a small pool of their own, at most N at once."""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

import pytest
from PIL import Image

from bot import imaging
from bot.imaging import ImageInfo, ImageRejected, ImageWorker
from tests.bot.images import bomb_png, encode, picture


class Gate:
    """Stands in for an image helper: counts the calls running at once and holds each
    until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            assert self.release.wait(30), "never released"
            return b"done", "done.jpg"
        finally:
            with self.lock:
                self.running -= 1


async def until(condition: Any, what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("method", ["fit_under", "thumbnail", "make_grid"])
async def test_never_more_than_n_decodes_at_once(
    monkeypatch: pytest.MonkeyPatch, threads: int, method: str
) -> None:
    gate = Gate()
    monkeypatch.setattr(imaging, method, gate)
    worker = ImageWorker(threads)
    args = {"fit_under": (b"x", 100, "s"), "thumbnail": (b"x", 768), "make_grid": ([b"x"], 100)}
    try:
        tasks = [asyncio.create_task(getattr(worker, method)(*args[method])) for _ in range(20)]
        await until(lambda: gate.running == threads, f"{threads} calls running")
        for _ in range(20):  # let the loop hand out more work, if it would
            await asyncio.sleep(0)
        assert gate.running == threads and gate.calls == threads
        gate.release.set()
        await asyncio.gather(*tasks)
    finally:
        gate.release.set()
        worker.close()
    assert gate.most == threads and gate.calls == 20


async def test_the_worker_passes_its_pixel_limit_and_sets_pillows() -> None:
    worker = ImageWorker(1, max_pixels=10_000)
    try:
        assert Image.MAX_IMAGE_PIXELS == 10_000
        data = encode(picture((300, 200)), "PNG")
        with pytest.raises(ImageRejected, match="300×200"):
            await worker.fit_under(data, 1 << 20, "x")
        with pytest.raises(ImageRejected, match="300×200"):
            await worker.probe(data)
    finally:
        worker.close()
        imaging.configure(imaging.DEFAULT_MAX_PIXELS)


async def test_the_worker_does_the_real_work() -> None:
    worker = ImageWorker(2)
    try:
        png = encode(picture((600, 400)), "PNG")
        assert await worker.probe(png) == ImageInfo("PNG", 600, 400, 1)
        # the image data starts in the first 100 bytes, with no animation chunk before it
        assert await worker.probe(png[:100], partial=True) == ImageInfo("PNG", 600, 400, 1)
        assert await worker.probe(png[:40], partial=True) == ImageInfo("PNG", 600, 400, None)
        big = encode(picture((2000, 1500)), "PNG")
        assert len(big) > 64 * 1024  # probed off the event loop
        assert (await worker.probe(big)).width == 2000
        fitted, name = await worker.fit_under(png, len(png) // 3, "krea-1")
        assert name == "krea-1.jpg" and len(fitted) <= len(png) // 3
        with Image.open(io.BytesIO(await worker.thumbnail(png, 300))) as small:
            assert small.size == (300, 200)
        with Image.open(io.BytesIO(await worker.make_grid([png, None], 1 << 20))) as grid:
            assert grid.size == (604, 200)
        with pytest.raises(ImageRejected, match="13000×13000"):
            await worker.thumbnail(bomb_png(), 768)
    finally:
        worker.close()


def test_a_worker_needs_a_thread() -> None:
    with pytest.raises(ValueError):
        ImageWorker(0)
