"""Helpers shared by the Pixazo client tests."""

from __future__ import annotations

API_KEY = "sk-test-7f3a9c2e-do-not-leak"
