"""Live updates: one server-sent-event stream per open page, proxied by the console.

The browser connects to the console only (CSP connect-src 'self'; the token stays in the
HttpOnly session): the console opens the notifications stream with the user's token and
re-emits each event as ``event: live`` carrying the id-only notification, with its id so
a reconnecting browser resumes (``Last-Event-ID``). Streams end after a few minutes (the
browser reconnects), so a closed tab never holds a server thread for long.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context

from ..client import ApiClient, ApiError, Unavailable
from ..security import api, roles

bp = Blueprint("live", __name__)
STREAM_SECONDS = 300


def _event(data: Any, event_id: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"id: {event_id}\n" if event_id and "\n" not in event_id else ""
    return head + "event: live\n" + "".join(f"data: {ln}\n" for ln in text.splitlines()) + "\n"


def sse_events(chunks: Iterable[bytes]) -> Iterator[tuple[str | None, str]]:
    """Parse an upstream SSE byte stream into (id, data) per event; comments dropped."""
    buffer, event_id = "", None
    data: list[str] = []
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            line = line.rstrip("\r")
            if not line:
                if data:
                    yield event_id, "\n".join(data)
                data, event_id = [], None
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("id:"):
                event_id = line[3:].strip()


def _relay(client: ApiClient, deadline: float, last_id: str | None) -> Iterator[str]:
    headers = {"Last-Event-ID": last_id} if last_id else None
    for event_id, data in sse_events(client.stream("notifications", "/v1/stream", headers)):
        yield _event(data, event_id)
        if time.monotonic() > deadline:
            return


@bp.get("/live")
@roles("officer", "provider", "supervisor", "admin")
def live() -> Response:
    client = api()
    deadline = time.monotonic() + current_app.config.get("LIVE_STREAM_SECONDS", STREAM_SECONDS)
    last_id = request.headers.get("Last-Event-ID")

    def generate() -> Iterator[str]:
        yield "retry: 2000\n: connected\n\n"
        try:
            yield from _relay(client, deadline, last_id)
        except Unavailable:
            yield "retry: 60000\n: no live stream offered\n\n"  # pages still poll
        except ApiError:
            return  # the browser reconnects after `retry`

    resp = Response(stream_with_context(generate()), mimetype="text/event-stream")
    resp.headers["X-Accel-Buffering"] = "no"
    return resp
