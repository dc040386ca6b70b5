"""The README and .env.example document every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert name in (ROOT / ".env.example").read_text(encoding="utf-8")


def test_security_md_names_only_tests_that_exist() -> None:
    import ast
    import re

    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    references = re.findall(r"`(tests/[\w/]+\.py)((?:::test_\w+)?)`", text)
    assert references
    last_file = None
    for path, test in references:
        source = ROOT / path
        assert source.exists(), path
        last_file = source
        if test:
            names = {
                node.name
                for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert test.removeprefix("::") in names, f"{path}{test}"
    # Continuations (`::test_x` right after a file) name tests of the file before them.
    for test in re.findall(r"`::(test_\w+)`", text):
        assert last_file is not None
        assert any(
            f"def {test}(" in (ROOT / p).read_text(encoding="utf-8") for p, _ in references
        ), test
    assert "SECURITY.md" in (ROOT / "README.md").read_text(encoding="utf-8")
