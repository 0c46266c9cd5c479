"""The kit's pre-parse nesting check: right on valid JSON, linear on hostile text."""
from __future__ import annotations

import time

import pytest

from servicekit.web import json_depth

pytestmark = pytest.mark.security


@pytest.mark.parametrize(("body", "depth"), [
    (b"{}", 1), (b"[]", 1), (b"42", 0), (b'{"a": [1, {"b": 2}]}', 3),
    (b'{"a": "[[[[{{{{"}', 1), (b'{"a": "quote \\" then [[["}', 1),
    (b'{"a": "backslash \\\\", "b": [[1]]}', 3), (b"[" * 100 + b"]" * 100, 100),
    (b'"unterminated [[[', 0),
])
def test_depth_counts_brackets_outside_strings(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth


@pytest.mark.parametrize("body", [
    b'"' + b'\\"' * 30000,  # one string that never ends: once quadratic (100 s)
    b'"' * 65000, b'["' * 30000, b"\\" * 65000, b"[" * 65536,
])
def test_hostile_bodies_are_scanned_in_linear_time(body: bytes) -> None:
    started = time.perf_counter()
    json_depth(body)
    assert time.perf_counter() - started < 1.0
