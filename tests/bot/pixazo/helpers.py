"""Helpers shared by the Pixazo client tests."""

from __future__ import annotations

API_KEY = "sk-test-7f3a9c2e-do-not-leak"


class SleepRecorder:
    """An injected ``sleep`` that records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
