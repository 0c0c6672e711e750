"""No module of the package over ~400 lines without a reason in its docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 400
MODULES = sorted(p for d in ("atomistic", "tasks", "flows") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_long_modules_say_why(path):
    text = path.read_text()
    n = text.count("\n")
    if n <= LIMIT:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "Why one module" in doc, (
        f"{path.relative_to(ROOT)} has {n} lines: split it, or say in its docstring "
        "'Why one module ...'"
    )


def test_the_check_sees_the_package():
    assert len(MODULES) > 50
    assert any(p.name == "fused.py" for p in MODULES)
