"""Memory: what decoding costs, measured as the growth of the peak resident memory of a
fresh process around one call (Linux: the peak is reset through ``/proc/self/clear_refs``
and read as ``VmHWM``, as bench/relay.py does). These are bounds far from the failures they
guard against (a bomb decoded is hundreds of MB), not timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bot.imaging import DEFAULT_MAX_PIXELS
from fake_pixazo import GenerationParams, render_png
from tests.bot.images import bomb_png

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20

pytestmark = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs"
)

#: Runs ``CALLS`` (Python expressions over ``data``, ``small`` and ``imaging``) and prints,
#: for each, the growth of the peak resident memory (KiB) and the error raised, if any.
MEASURE = textwrap.dedent(
    """
    import asyncio, json, sys
    from bot import imaging
    from tests.bot.images import encode, picture

    data = open(sys.argv[1], "rb").read()
    small = encode(picture((64, 48)), "PNG")
    imaging.thumbnail(small, 32), imaging.fit_under(small, len(small) // 2, "w")  # warm up
    imaging.make_grid([small, small], 10_000)

    async def burst(count, threads):
        worker = imaging.ImageWorker(threads)

        async def one(index):  # keeps the size of the result only, as an upload would
            fitted, _ = await worker.fit_under(data, 10 << 20, f"x{index}")
            return len(fitted)

        assert all(await asyncio.gather(*(one(i) for i in range(count))))
        worker.close()

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) for line in lines if line.startswith(field))

    results = []
    for call in json.loads(sys.argv[2]):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the peak (VmHWM) starts again from the memory in use now
        before = status("VmRSS:")
        try:
            eval(call)
            error = None
        except Exception as exc:
            error = type(exc).__name__ + ": " + str(exc)
        results.append({"call": call, "kib": status("VmHWM:") - before, "error": error})
    print(json.dumps(results))
    """
)


def measure(path: Path, calls: list[str]) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MALLOC_MMAP_THRESHOLD_": "131072",  # large blocks go back to the system at once
    }
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), json.dumps(calls)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A noisy (nearly incompressible) 2048x2048 PNG of about 12 MB, like bench/relay.py's."""
    path = tmp_path_factory.mktemp("images") / "noisy-2048.png"
    path.write_bytes(
        render_png(GenerationParams(prompt="relay", seed=1), long_edge=2048, noisy=True)
    )
    return path


def test_the_bomb_is_refused_by_every_entry_point_with_memory_flat(tmp_path: Path) -> None:
    """The 20 KB PNG declaring 13000x13000 pixels (645 MiB as RGB, 161 MiB as Pillow's
    1-bit mode): refused everywhere while the process grows by less than 16 MB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    calls = [
        "imaging.probe_image(data)",
        "imaging.probe_image(data[:64], partial=True)",
        "imaging.fit_under(data, 10 << 20, 'x')",
        "imaging.fit_under(data, 4096, 'x')",
        "imaging.thumbnail(data, 768)",
        "imaging.make_grid([small, data, None], 1 << 20)",
        "imaging.decode_image(data)",
        "asyncio.run(imaging.ImageWorker(2).fit_under(data, 4096, 'x'))",
        "asyncio.run(imaging.ImageWorker(2).thumbnail(data, 768))",
        "asyncio.run(imaging.ImageWorker(2).make_grid([data], 1 << 20))",
        "asyncio.run(imaging.ImageWorker(2).probe(data))",
    ]
    results = measure(path, calls)
    for result in results:
        assert result["error"] is not None, result
        assert result["error"].startswith("ImageRejected: the image is 13000×13000"), result
        assert result["kib"] * 1024 < 16 * MB, result


def test_fit_under_adds_less_than_the_image_size_at_its_peak(big_png: Path) -> None:
    """Over the upload limit, the PNG is re-encoded as a JPEG a strip at a time: the extra
    memory stays under the image's own size (it was 2.6x when it was decoded whole), so
    a delivery holding the download stays under 2x (issue 16)."""
    size = big_png.stat().st_size
    (result,) = measure(big_png, ["imaging.fit_under(data, 10 << 20, 'x')"])
    assert result["error"] is None
    assert result["kib"] * 1024 < 1.0 * size, (result, size)


def test_twenty_images_at_once_cost_what_the_pool_runs_at_once(big_png: Path) -> None:
    """Twenty 12 MB results re-encoded at once through a two-thread ImageWorker peak at
    about two re-encodes' worth, not twenty."""
    size = big_png.stat().st_size
    (result,) = measure(big_png, ["asyncio.run(burst(20, 2))"])
    assert result["error"] is None, result
    single = 0.8 * size  # what one re-encode adds (the test above)
    assert result["kib"] * 1024 < 2.5 * single, (result, size)


def test_a_big_jpeg_thumbnail_never_decodes_the_whole_photo(tmp_path: Path) -> None:
    """A 48-megapixel phone photo (192 MB decoded) thumbnailed at 768 px: the JPEG decoder
    scales by 1/4 itself (``draft``), so the process grows by a few MB."""
    path = tmp_path / "phone.jpg"
    make = (
        "from PIL import Image; import sys; "
        "Image.new('RGB', (8000, 6000), (200, 120, 40)).save(sys.argv[1], quality=90)"
    )
    subprocess.run([sys.executable, "-c", make, str(path)], check=True, timeout=120)
    assert 8000 * 6000 < DEFAULT_MAX_PIXELS
    calls = ["imaging.thumbnail(data, 768)", "imaging.make_grid([data, data], 1 << 20)"]
    thumb, grid = measure(path, calls)
    assert thumb["error"] is None and grid["error"] is None
    assert thumb["kib"] * 1024 < 30 * MB, thumb
    # Half-size tiles of 4000x3000 (48 MB each, decoded at 1/2 one at a time) on a grid of
    # 96 MB: about 144 MB; decoding a photo whole would add 192 MB to the grid.
    assert grid["kib"] * 1024 < 200 * MB, grid
