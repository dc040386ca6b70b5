"""Shared fixtures: the fake gateway on loopback, a real aiohttp session, a fast client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.pixazo import PixazoClient
from fake_pixazo import FakePixazo

from .helpers import API_KEY


@pytest.fixture
async def fake() -> AsyncIterator[FakePixazo]:
    async with FakePixazo(api_key=API_KEY, queued_seconds=0.01, processing_seconds=0.02) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def client(fake: FakePixazo, session: aiohttp.ClientSession) -> PixazoClient:
    return PixazoClient(
        session, API_KEY, base_url=fake.base_url, request_timeout=2.0, submit_timeout=2.0
    )
