"""Helpers of the console's tests: real apis served on local ports, demo sign-in."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from console.config import ConsoleConfig, load_config
from servicekit.settings import Settings


class Served:
    """A WSGI app on a real local port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)


@dataclass
class Backend:
    urls: dict[str, str]
    settings: dict[str, Settings]
    env: dict[str, str]

    def console_config(self, **overrides: str) -> ConsoleConfig:
        return load_config({**self.env, **overrides})


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


def sign_in(client: FlaskClient, role_index: int) -> str:
    """Demo sign-in as DEMO_USERS[role_index]; returns the session's CSRF token."""
    page = client.get("/signin")
    resp = client.post("/signin/demo", data={"user": str(role_index),
                                             "csrf_token": csrf_of(page.text)})
    assert resp.status_code == 303
    return csrf_of(client.get("/signin").text)
