"""A first end-to-end pass: /imagine through both fakes."""

from __future__ import annotations

from tests.support.world import World


async def test_imagine_posts_a_png(world: World) -> None:
    async with world.bot():
        handle = await world.imagine(prompt="a lighthouse at dusk", seed=42)
        assert handle.response_type == 5
        result = await world.result_of(handle)
        assert result.files[0].startswith(b"\x89PNG")
        assert world.submitted_bodies()[0]["seed"] == 42
