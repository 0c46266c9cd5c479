"""Set-based statements whose text does not grow with the number of rows.

psycopg re-parses every statement with more than 50 parameters each time it runs (it caches
only small ones), and a multi-row ``VALUES`` or an ``IN`` list of a batch of events has
hundreds: that parse was a quarter of the consumer's client CPU per event. On PostgreSQL
these helpers pass rows as one JSON text (``json_to_recordset``: encoded by the json
module's C encoder, where psycopg would adapt arrays value by value in Python) and lists as
one array (``= ANY``); elsewhere (SQLite) they fall back to a multi-row insert and ``IN``.
(The kit's inbox does the same for its claims: ``servicekit.inbox.claim_many``.)

The statements are built once per shape and bound per call (``bindparam`` without a value,
so SQLAlchemy compiles each once): building one per call cost more CPU than PostgreSQL spent
running it. They run on the session's connection: ``Session.execute`` adds ORM work a Core
statement has no use for.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    JSON,
    ColumnElement,
    String,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    select,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

_BUILT: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def built(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement ``build()`` makes, built once per ``key`` (which names its shape and
    dialect; the tables are module-level, so their names identify them)."""
    found = _BUILT.get(key)
    if found is None:
        with _LOCK:
            found = _BUILT.setdefault(key, build())
    return found


def one_of_param(postgresql: bool, column_: Any, name: str) -> ColumnElement[bool]:
    """``column IN :name`` for a statement built once; pass ``name`` a list of strings. On
    PostgreSQL ``= ANY(:name)``, one array parameter."""
    if postgresql:
        return column_ == any_(bindparam(name, type_=ARRAY(String)))  # type: ignore[no-any-return]
    return column_.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


def _names(columns: Sequence[Any]) -> tuple[str, ...]:
    return tuple(c.name for c in columns)


def _from_rows(table: Table, names: Sequence[str], param: str) -> Any:
    """``SELECT * FROM json_to_recordset(:param)`` with ``table``'s types for ``names``."""
    source = func.json_to_recordset(cast(bindparam(param, type_=Text), JSON)).table_valued(
        *[column(name, table.c[name].type) for name in names]).render_derived(with_types=True)
    return select(*source.c)


def _insert_new(postgresql: bool, table: Table, names: Sequence[str], conflict: Sequence[Any],
                returning: Sequence[Any]) -> Any:
    stmt: Any
    if not postgresql:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict)
    else:
        stmt = pg.insert(table).from_select(list(names), _from_rows(table, names, "rows")
                                            ).on_conflict_do_nothing(index_elements=conflict)
    return stmt.returning(*returning) if returning else stmt


def insert_new(session: Session, table: Table, rows: Sequence[dict[str, Any]],
               conflict: Sequence[Any], returning: Sequence[Any]) -> list[Any]:
    """``INSERT rows ON CONFLICT (conflict) DO NOTHING RETURNING returning``: the rows that
    were new. Every row has the same keys. On PostgreSQL ``INSERT ... SELECT * FROM
    json_to_recordset(:rows)``: fixed text, one parameter."""
    if not rows:
        return []
    return list(run(session, _insert(session, table, rows, conflict, returning)).all())


class Write(NamedTuple):
    """A statement built once (``key`` names it) and its parameters: an INSERT or UPDATE
    to ``run`` alone, or on PostgreSQL to send as a CTE of a later statement (``also`` of
    ``handlers.store_many``) when nothing between them reads what it writes."""

    key: tuple[Any, ...]
    statement: Any
    params: Any  # a dict; on SQLite a list of rows for an insert (executemany)


def run(session: Session, write: Write) -> Any:
    return session.connection().execute(write.statement, write.params)


def insert_write(session: Session, table: Table, rows: Sequence[dict[str, Any]],
                 conflict: Sequence[Any]) -> Write:
    """``insert_new`` of ``rows`` (not empty), returning nothing, as a ``Write``."""
    return _insert(session, table, rows, conflict, ())


def _insert(session: Session, table: Table, rows: Sequence[dict[str, Any]],
            conflict: Sequence[Any], returning: Sequence[Any]) -> Write:
    postgresql = _postgres(session)
    names = tuple(rows[0])
    key = ("insert_new", postgresql, table.name, names, _names(conflict), _names(returning))
    stmt = built(key, lambda: _insert_new(postgresql, table, names, conflict, returning))
    return Write(key, stmt, {"rows": _json(rows)} if postgresql else list(rows))


def insert_new_with_children(session: Session, table: Table, rows: Sequence[dict[str, Any]],
                             conflict: Sequence[Any], children: Table,
                             child_rows: Sequence[dict[str, Any]], link: Any,
                             child_conflict: Sequence[Any]) -> int:
    """``insert_new`` of ``rows`` (which have an ``id``), then of the ``child_rows`` whose
    ``link`` column names a row that was new: a child of a row already there is not
    written. Returns how many rows were new. On PostgreSQL one statement (the rows'
    insert is a CTE of the children's; foreign keys are checked at the end of the
    statement)."""
    if not rows:
        return 0
    if not _postgres(session):
        new = {r.id for r in insert_new(session, table, rows, conflict, [table.c.id])}
        insert_new(session, children, [c for c in child_rows if c[link.name] in new],
                   child_conflict, [children.c.id])
        return len(new)
    names = tuple(rows[0])
    child_names = tuple(child_rows[0]) if child_rows else ()

    def build() -> Any:
        parents = _insert_new(True, table, names, conflict, [table.c.id]).cte("parents")
        if not child_names:
            return select(parents.c.id)
        linked = _from_rows(children, child_names, "children")
        linked = linked.where(linked.selected_columns[link.name].in_(select(parents.c.id)))
        written = pg.insert(children).from_select(list(child_names), linked
                                                  ).on_conflict_do_nothing(
            index_elements=child_conflict).cte("children_written")
        return select(parents.c.id).add_cte(written)

    stmt = built(("insert_new_with_children", table.name, names, _names(conflict),
                  children.name, child_names, link.name, _names(child_conflict)), build)
    params = {"rows": _json(rows)}
    if child_names:
        params["children"] = _json(child_rows)
    return len(session.connection().execute(stmt, params).all())


def _json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), default=_json_time, separators=(",", ":"))


def _json_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot pass {type(value).__name__} through JSON")
