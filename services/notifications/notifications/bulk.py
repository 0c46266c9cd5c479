"""Set-based statements whose text does not grow with the number of rows.

psycopg re-parses every statement with more than 50 parameters each time it runs (it caches
only small ones), and a multi-row ``VALUES`` or an ``IN`` list of a batch of events has
hundreds: that parse was a quarter of the consumer's client CPU per event. On PostgreSQL
these helpers pass rows as one JSON text (``json_to_recordset``: encoded by the json
module's C encoder, where psycopg would adapt arrays value by value in Python) and lists as
one array (``= ANY``); elsewhere (SQLite) they fall back to a multi-row insert and ``IN``.
(The kit's inbox does the same for its claims: ``servicekit.inbox._insert_rows``.)
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

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
from sqlalchemy.orm import Session

from servicekit.db import upsert


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def one_of(session: Session, column_: Any, values: Iterable[str]) -> ColumnElement[bool]:
    """``column IN values``: on PostgreSQL ``= ANY(array)``, one parameter."""
    values = sorted(set(values))
    if _postgres(session):
        return column_ == any_(bindparam(None, values, type_=ARRAY(String)))  # type: ignore[no-any-return]
    return column_.in_(values)  # type: ignore[no-any-return]


def insert_new(session: Session, table: Table, rows: Sequence[dict[str, Any]],
               conflict: Sequence[Any], returning: Sequence[Any]) -> list[Any]:
    """``INSERT rows ON CONFLICT (conflict) DO NOTHING RETURNING returning``: the rows that
    were new. Every row has the same keys. On PostgreSQL ``INSERT ... SELECT * FROM
    json_to_recordset(:rows)``: fixed text, one parameter."""
    if not rows:
        return []
    stmt = upsert(session, table)
    if not _postgres(session):
        return list(session.execute(stmt.on_conflict_do_nothing(index_elements=conflict)
                                    .returning(*returning), list(rows)).all())
    names = list(rows[0])
    source = func.json_to_recordset(cast(bindparam(
        "rows", json.dumps(list(rows), default=_json_time, separators=(",", ":")),
        type_=Text), JSON)).table_valued(*[column(name, table.c[name].type) for name in names]
                                         ).render_derived(with_types=True)
    stmt = stmt.from_select(names, select(*source.c))
    return list(session.execute(stmt.on_conflict_do_nothing(index_elements=conflict)
                                .returning(*returning)).all())


def _json_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot pass {type(value).__name__} through JSON")
