"""docs/guarantees.md names, for each promise, the tests that check it: every name there must be a test that
exists, so that renaming or deleting a test a promise rests on fails here instead of leaving the list stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
GUARANTEES = TESTS.parent / "docs" / "guarantees.md"


def _named_tests(text: str) -> list[tuple[str, str]]:
    """(file under tests/, test name) for each `file::name` and each `::name` that continues the file before."""
    named, current = [], None
    for cell in re.findall(r"`([\w/]*\.py)?::(\w+)", text):
        path, name = cell
        current = path or current
        assert current is not None, f"`::{name}` in {GUARANTEES.name} follows no test file"
        named.append((current, name))
    return named


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_guarantees_name_exists():
    named = _named_tests(GUARANTEES.read_text())
    assert len(named) >= 40, f"only {len(named)} tests named in {GUARANTEES}: is the table's format still parsed?"
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (TESTS / path).is_file() or name not in _test_names(TESTS / path)
    ]
    assert not missing, f"{GUARANTEES.name} names tests that do not exist: {missing}"
