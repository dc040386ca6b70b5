"""Shared fixtures: the end-to-end world (both fakes) and the fake Discord fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.support.stage import stage
from tests.support.world import World, make_world

__all__ = ["stage", "world"]  # ``stage``: bot processes against both fakes


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Both fakes running, discord.py pointed at the fake Discord, a fresh database path."""
    async with make_world(tmp_path) as created:
        yield created
