"""Prebuilt statements of the hot paths, sent together.

A statement built per request (``insert(t).values(**row)``) costs more CPU than the database
spends running it: every value becomes a bound-parameter object and the whole tree is walked
for its cache key. The hot paths therefore bind their values to statements built once at
import (``bindparam`` placeholders, so SQLAlchemy compiles each of them once) and pass the
values as parameters. ``execute_all`` sends several such INSERT/UPDATE statements that do not
read each other's results in one round trip on PostgreSQL: all but the last become
data-modifying CTEs of the last (foreign keys are checked at the end of the statement, so a
parent and its children may share it); elsewhere (SQLite) they run one by one.

On PostgreSQL inside a transaction, ``run`` sends such a statement through SQLAlchemy's own
cursor path (``Connection._cursor_execute``: the same events, logging, error wrapping and
invalidation) with the SQL text, bind processors and parameter names taken once from its
compiled form: ``Connection.execute`` spent about as much CPU per statement on building an
execution context and a result as psycopg spent sending it.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

_COMBINED: dict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = {}
_NAMES: dict[int, tuple[Any, frozenset[str]]] = {}
_DIRECT: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
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


def execute_all(session: Session | Connection, statements: Sequence[Any],
                params: Mapping[str, Any]) -> None:
    """Run prebuilt INSERT/UPDATE ``statements`` with ``params`` (each takes the names it
    binds; parameter names carry a prefix, so none is taken for a column of its own):
    one round trip on PostgreSQL, one per statement elsewhere. ``session``: the session or
    its connection."""
    conn = session if isinstance(session, Connection) else session.connection()
    if len(statements) > 1 and conn.dialect.name == "postgresql":
        run(conn, combined(statements), params)
        return
    for stmt in statements:
        conn.execute(stmt, {k: params[k] for k in names(stmt)})


def run(conn: Connection, stmt: Any, params: Mapping[str, Any]) -> list[Any] | None:
    """Execute prebuilt ``stmt`` with ``params`` in ``conn``'s transaction: the rows of a
    SELECT (tuples, in column order), None for other statements. On PostgreSQL the
    statement goes straight to the cursor (see the module's doc); a statement this shortcut
    does not cover (Python-side defaults, expanding or literal parameters, RETURNING, result
    processors), another dialect or a connection outside a transaction takes
    ``conn.execute``."""
    direct = _direct(conn, stmt) if conn.dialect.name == "postgresql" else None
    if direct is None or not conn.in_transaction():
        result = conn.execute(stmt, params)
        return [tuple(r) for r in result] if result.returns_rows else None
    compiled, processors, escaped = direct
    values = compiled.construct_params(params, escape_names=False)  # checks required ones
    values = {escaped.get(k, k) if escaped else k:
              processors[k](v) if k in processors else v for k, v in values.items()}
    cursor = conn.connection.cursor()
    try:
        conn._cursor_execute(cursor, compiled.string, values)
        return cursor.fetchall() if cursor.description is not None else None
    finally:
        cursor.close()


def _direct(conn: Connection, stmt: Any) -> tuple[Any, Any, Any] | None:
    """``stmt`` compiled for ``conn``'s dialect with what ``run`` needs, or None when the
    shortcut does not cover it (computed once per statement and dialect)."""
    dialect = conn.dialect
    found = _DIRECT.get((id(stmt), id(dialect)))
    if found is None:
        compiled = stmt.compile(dialect=dialect)
        covered = not (compiled.positional or compiled.literal_execute_params
                       or compiled.post_compile_params or compiled.insert_prefetch
                       or compiled.update_prefetch or compiled.returning
                       or compiled.schema_translate_map or any(
                           col.type.dialect_impl(dialect).result_processor(dialect, None)
                           is not None for col in compiled._result_columns))
        entry = (compiled, compiled._bind_processors, compiled.escaped_bind_names) \
            if covered else None
        with _LOCK:  # the statement and dialect are kept with it: their ids stay theirs
            found = _DIRECT.setdefault((id(stmt), id(dialect)), (stmt, dialect, entry))
    return found[2]  # type: ignore[no-any-return]
