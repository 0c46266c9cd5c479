"""Database plumbing: engine and session factory, unit of work, kit tables, Alembic helpers.

Each service owns one database (PostgreSQL, or one SQLite file in embedded mode). The kit's
own tables (outbox, inbox, aggregate sequences, idempotency keys) are added to each service's
``MetaData`` by :func:`add_kit_tables` so they live in the service's database and migrations.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    exc,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING)


def add_kit_tables(metadata: MetaData) -> None:
    """Define the service kit's tables on a service's metadata."""
    Table(
        "outbox", metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("last_error", Text, nullable=True),
        Index("ix_outbox_unsent", "key", "id", postgresql_where=text("sent_at IS NULL"),
              sqlite_where=text("sent_at IS NULL")),
    )
    Table(
        "inbox", metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(36), primary_key=True),
        Column("event_type", String(100), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "aggregate_sequence", metadata,
        Column("consumer", String(100), primary_key=True),
        Column("source", String(100), primary_key=True),
        Column("subject", String(100), primary_key=True),
        Column("last_sequence", BigInteger, nullable=False),
    )
    Table(
        "idempotency_key", metadata,
        Column("principal", String(200), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("status_code", Integer, nullable=False),
        Column("response_body", Text, nullable=False),
        Column("resource_id", String(100), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "event_sequence", metadata,
        Column("subject", String(100), primary_key=True),
        Column("last_sequence", BigInteger, nullable=False),
    )


def upsert(session: Session, table: Table) -> Any:
    """``INSERT`` for ``table`` offering ``ON CONFLICT`` on PostgreSQL and SQLite alike."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(table)


def locked(session: Session, query: Any) -> Any:
    """``query`` with a row lock on PostgreSQL; SQLite already serialises writers (each
    transaction starts with ``BEGIN IMMEDIATE``)."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update()
    return query


def write_all(session: Session, statements: list[Any]) -> None:
    """Run INSERT/UPDATE statements that do not read each other's results, in one round trip
    on PostgreSQL (all but the last become data-modifying CTEs of the last; foreign keys are
    checked at the end of the statement, so a parent and its children may share it); one by
    one elsewhere. Cuts per-request statement counts without changing what is written."""
    if not statements:
        return
    if len(statements) == 1 or session.get_bind().dialect.name != "postgresql":
        for stmt in statements:
            session.execute(stmt)
        return
    ctes = [stmt.cte(f"w{i}") for i, stmt in enumerate(statements[:-1])]
    session.execute(statements[-1].add_cte(*ctes))


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine if isinstance(url_or_engine, str) else str(url_or_engine.url)
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Build an engine. SQLite files get WAL, a busy timeout and foreign keys."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               hide_parameters=True, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            dbapi_conn.isolation_level = None  # let the "begin" listener issue BEGIN itself

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # Take the write lock at BEGIN so concurrent writers queue instead of failing.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("hide_parameters", True)  # driver errors must not echo PII
    kwargs.setdefault("pool_size", 10)
    if "pool_pre_ping" in kwargs:
        return create_engine(url, **kwargs)
    engine = create_engine(url, **kwargs)
    _ping_when_idle(engine)
    return engine


PING_IDLE_S = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for connections idle more than ``PING_IDLE_S``: a busy
    api reuses a connection within milliseconds, and pinging it on every checkout cost one
    round trip per request. A dead connection (server restart, idle timeout) is still
    caught before use, and the pool replaces it (``DisconnectionError`` makes it retry)."""

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= PING_IDLE_S:
            return  # a fresh connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            raise exc.DisconnectionError("connection failed the idle ping") from err


class UnitOfWork:
    """One database transaction. Handlers add state changes and outbox events to
    ``uow.session``; only the caller that opened the unit of work commits it."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self._factory = session_factory
        self.session: Session

    def __enter__(self) -> "UnitOfWork":
        self.session = self._factory()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is not None:
                self.session.rollback()
        finally:
            self.session.close()

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()


class Database:
    """Engine + session factory of one service."""

    def __init__(self, url: str, metadata: MetaData, **engine_kwargs: Any):
        self.url = url
        self.metadata = metadata
        self.engine = make_engine(url, **engine_kwargs)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False,
                                            info={"metadata": metadata})

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Run a block in a transaction that commits on success, rolls back on error."""
        with self.uow() as uow:
            yield uow.session
            uow.commit()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def run_migrations(url: str, migrations_dir: Path, revision: str = "head") -> None:
    """Upgrade a database with a service's Alembic scripts (no alembic.ini needed)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["database_url"] = url
    if is_sqlite(url):
        make_engine(url).dispose()  # creates the parent directory
    command.upgrade(cfg, revision)


def alembic_env(metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py`` (online and offline modes)."""
    from alembic import context

    cfg = context.config
    url = cfg.attributes.get("database_url") or cfg.get_main_option("sqlalchemy.url")
    batch = is_sqlite(url)
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True,
                          render_as_batch=batch)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, hide_parameters=True)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=batch)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (a restart, a failover,
    a network cut): worth waiting for, never a reason to give up on a message."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
