"""Prebuilt statements of the hot paths, sent together.

A statement built per request (``insert(t).values(**row)``) costs more CPU than the database
spends running it: every value becomes a bound-parameter object and the whole tree is walked
for its cache key. The hot paths therefore bind their values to statements built once at
import (``bindparam`` placeholders, so SQLAlchemy compiles each of them once) and pass the
values as parameters. ``execute_all`` sends several such INSERT/UPDATE statements that do not
read each other's results in one round trip on PostgreSQL: all but the last become
data-modifying CTEs of the last (foreign keys are checked at the end of the statement, so a
parent and its children may share it); elsewhere (SQLite) they run one by one.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.orm import Session

_COMBINED: dict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = {}
_NAMES: dict[int, tuple[Any, frozenset[str]]] = {}
_LOCK = threading.Lock()


def insert_bound(table: Table, prefix: str, columns: Sequence[str], **fixed: Any) -> Any:
    """``INSERT INTO table (columns)`` bound to parameters ``{prefix}{column}``; a column named
    in ``fixed`` takes that expression instead (a parameter shared with other statements,
    or a constant)."""
    return insert(table).values({
        c: fixed[c] if c in fixed else bindparam(f"{prefix}{c}", type_=table.c[c].type)
        for c in [*columns, *(c for c in fixed if c not in columns)]})


def bound(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as the parameters of a statement made by ``insert_bound(..., prefix, ...)``."""
    return {f"{prefix}{k}": v for k, v in values.items()}


def combined(statements: Sequence[Any]) -> Any:
    """``statements`` as one PostgreSQL statement (built once per sequence of statements)."""
    key = tuple(map(id, statements))
    found = _COMBINED.get(key)
    if found is None:
        with _LOCK:
            ctes = [stmt.cte(f"w{i}") for i, stmt in enumerate(statements[:-1])]
            # the statements are kept with it, so their ids cannot be reused while cached
            found = _COMBINED.setdefault(key, (tuple(statements),
                                               statements[-1].add_cte(*ctes)))
    return found[1]


def names(stmt: Any) -> frozenset[str]:
    """The parameter names ``stmt`` binds (computed once per statement)."""
    found = _NAMES.get(id(stmt))
    if found is None:
        with _LOCK:  # the statement is kept with it, so its id cannot be reused
            found = _NAMES.setdefault(id(stmt), (stmt, frozenset(stmt.compile().params)))
    return found[1]


def execute_all(session: Session, statements: Sequence[Any], params: Mapping[str, Any]
                ) -> None:
    """Run prebuilt INSERT/UPDATE ``statements`` with ``params`` (each takes the names it
    binds; parameter names carry a prefix, so none is taken for a column of its own):
    one round trip on PostgreSQL, one per statement elsewhere."""
    conn = session.connection()
    if len(statements) > 1 and conn.dialect.name == "postgresql":
        conn.execute(combined(statements), params)
        return
    for stmt in statements:
        conn.execute(stmt, {k: params[k] for k in names(stmt)})
