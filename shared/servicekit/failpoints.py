"""Failpoints: crash a process at an exact point, for the fault suite.

``FAILPOINTS="outbox.after_send=40"`` makes the process die by SIGKILL the 40th time it
passes ``outbox.after_send``, as if the machine had lost power there. Unset (the default,
and always in production) every check is a dictionary lookup that finds nothing.

The points the kit passes:

| name | where |
|---|---|
| ``api.before_response`` | an api request whose handler returned 2xx for a POST (its transaction is committed), before the response leaves |
| ``outbox.after_send`` | the relay's batch was acknowledged by the broker, not yet marked sent |
| ``consumer.before_db_commit`` | a consumer handled an event inside its transaction, not yet committed |
| ``consumer.after_db_commit`` | the consumer's transaction committed, its offset not yet committed |

Under gunicorn the worker kills its master first, so the whole api dies the way the fault
suite's process supervisor sees a crash (and no fresh worker hides it).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_armed: dict[str, int] = {}
_passes: dict[str, int] = {}
_supervisor_pid: int | None = None


def configure(spec: str) -> None:
    """Arm the points of ``spec`` (``name=N[,name=N]``); an empty spec disarms all."""
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, count = part.partition("=")
        if not (sep and name.strip() and count.strip().isdigit() and int(count) >= 1):
            raise ValueError(f"FAILPOINTS: expected name=N (N >= 1), got {part!r}")
        armed[name.strip()] = int(count)
    with _lock:
        _armed.clear()
        _armed.update(armed)
        _passes.clear()


def armed() -> bool:
    return bool(_armed)


def set_supervisor(pid: int) -> None:
    """Under a pre-forking server: the parent to take down with this process."""
    global _supervisor_pid
    _supervisor_pid = pid


def hit(name: str) -> None:
    """Pass the point ``name``; crash if this is the armed pass."""
    if name not in _armed:
        return
    with _lock:
        _passes[name] = _passes.get(name, 0) + 1
        due = _passes[name] == _armed[name]
    if due:
        log.warning("failpoint hit", extra={"fields": {"failpoint": name}})
        for handler in logging.getLogger().handlers:
            handler.flush()
        if _supervisor_pid is not None:
            os.kill(_supervisor_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


class _Wrapped:
    """A consumer handler passing a point after each call (inside the caller's
    transaction); a batch handler's ``handle_many`` passes it once per event, so an armed
    count means the same number of events either way."""

    def __init__(self, name: str, func: Callable[..., Any]):
        self.name, self.func = name, func
        many = getattr(func, "handle_many", None)
        if many is not None:
            def handle_many(session: Any, envs: list[Any]) -> None:
                many(session, envs)
                for _ in envs:
                    hit(self.name)

            self.handle_many = handle_many

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.func(*args, **kwargs)
        hit(self.name)
        return result


def wrap(name: str, func: F) -> F:
    """``func`` passing ``name`` after it returns (inside the caller's transaction)."""
    return _Wrapped(name, func)  # type: ignore[return-value]


def install_flask(app: Any) -> None:
    """Pass ``api.before_response`` after every successful POST handled by ``app``."""
    @app.after_request
    def _failpoint(response: Any) -> Any:
        from flask import request

        if request.method == "POST" and 200 <= response.status_code < 300:
            hit("api.before_response")
        return response
