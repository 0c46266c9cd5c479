"""Real local servers for the delivery tests: an HTTP webhook receiver and an SMTP server
(aiosmtpd), optionally with STARTTLS and AUTH. Mocks only at the edge: these are real
sockets speaking real protocols."""
from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then 200); ``delay_s`` stalls."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else 200


@contextmanager
def webhook_receiver(script: list[int] | None = None) -> Iterator[Receiver]:
    state = Receiver(script=list(script or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.received.append(Received(self.path, dict(self.headers.items()), body))
            if state.delay_s:
                time.sleep(state.delay_s)
            status = state.next_status()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/referrals"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """aiosmtpd handler keeping every message; ``reject`` answers DATA with that code."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reject: int | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reject:
            return f"{self.reject} rejected by test"
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "content": envelope.content, "tls": session.ssl is not None or server.transport.get_extra_info(
                                  "ssl_object") is not None,
                              "authenticated": session.authenticated})
        return "250 OK"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 (also its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def smtp_server(*, starttls_cert: tuple[Path, Path] | None = None,
                implicit_tls_cert: tuple[Path, Path] | None = None,
                login: tuple[str, str] | None = None) -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on 127.0.0.1; STARTTLS required when ``starttls_cert`` is given,
    TLS from the first byte with ``implicit_tls_cert``; AUTH required (LOGIN/PLAIN) when
    ``login`` is given."""
    mailbox, port = Mailbox(), free_port()
    kwargs: dict[str, Any] = {}
    if implicit_tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(implicit_tls_cert[0]), str(implicit_tls_cert[1]))
        kwargs.update(ssl_context=ctx)
    if starttls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(starttls_cert[0]), str(starttls_cert[1]))
        kwargs.update(tls_context=ctx, require_starttls=True)
    if login:
        def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str,
                          data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (
                data.login.decode(), data.password.decode()) == login
            return AuthResult(success=ok)

        kwargs.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=bool(starttls_cert))
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            server_hostname="localhost", **kwargs)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()
