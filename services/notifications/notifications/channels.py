"""External channels: e-mail over SMTP, signed webhooks, and the SMS adapter interface.

Senders raise :class:`SendError` saying whether a retry can help. Error texts are our own
(status codes, exception class names), never a server's reply, which could echo an address.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests

SIGNATURE_HEADER = "X-Referrals-Signature"
TIMESTAMP_HEADER = "X-Referrals-Timestamp"
DELIVERY_HEADER = "X-Referrals-Delivery"


class SendError(Exception):
    def __init__(self, error: str, *, retry: bool, status_code: int | None = None) -> None:
        super().__init__(error)
        self.error, self.retry, self.status_code = error, retry, status_code


@dataclass(frozen=True)
class Message:
    """What every channel sends: the id-only notification, with an absolute link."""

    delivery_id: str
    notification_id: str
    kind: str
    referral_id: str
    short_id: str
    title: str
    body: str
    link: str
    created_at: str

    def as_json(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "notification": {
            "id": self.notification_id, "kind": self.kind, "referral_id": self.referral_id,
            "short_id": self.short_id, "title": self.title, "body": self.body,
            "link": self.link, "created_at": self.created_at}}


# ---- e-mail ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str  # none | starttls | tls
    username: str
    password: str
    sender: str
    ca_file: str
    timeout_s: float


class EmailSender:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file or None)

    def send(self, to: str, message: Message) -> None:
        c = self.config
        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = c.sender, to, message.title
        mail["Message-ID"] = make_msgid(idstring=message.delivery_id[:8])
        mail.set_content(f"{message.body}\n\n{message.link}\n")
        try:
            if c.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout_s,
                                                      context=self._context())
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout_s)
            with smtp:
                if c.security == "starttls":
                    smtp.starttls(context=self._context())
                if c.username:
                    smtp.login(c.username, c.password)
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            code = min(int(reply[0]) for reply in exc.recipients.values())
            raise SendError(f"SMTP {code} recipient refused", retry=400 <= code < 500,
                            status_code=code) from None
        except smtplib.SMTPResponseException as exc:
            code = int(exc.smtp_code)
            raise SendError(f"SMTP {code}", retry=not 500 <= code < 600,
                            status_code=code) from None
        except (OSError, smtplib.SMTPException) as exc:  # refused, timeout, TLS, protocol
            raise SendError(f"SMTP {type(exc).__name__}", retry=True) from None


# ---- webhooks --------------------------------------------------------------------------------

Resolver = Callable[[str], list[str]]


def resolve(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def check_webhook_url(url: str, *, allow_http: bool, allow_private: bool,
                      resolver: Resolver = resolve) -> str:
    """Return the problem with ``url`` as a webhook target, or "" when it is acceptable.

    https only (http when configured), no credentials in the URL, no fragment, and every
    address the host resolves to must be public unless private targets are allowed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return f"scheme must be {' or '.join(schemes)}"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed"
    if not parts.hostname:
        return "a host is required"
    if parts.fragment:
        return "a fragment is not allowed"
    if port == 0:
        return "invalid port"
    if allow_private:
        return ""
    try:
        addresses = resolver(parts.hostname)
    except OSError:
        return "host does not resolve"
    if not addresses or any(not ipaddress.ip_address(a.split("%")[0]).is_global
                            for a in addresses):
        return "private, loopback or link-local targets are not allowed"
    return ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does: check the signature and refuse stale timestamps (replays)."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookSender:
    def __init__(self, *, timeout_s: float, allow_http: bool, allow_private: bool,
                 resolver: Resolver = resolve) -> None:
        self.timeout_s, self.allow_http, self.allow_private = timeout_s, allow_http, allow_private
        self.resolver = resolver
        self._local = threading.local()  # requests.Session is not thread-safe: one per thread

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session  # type: ignore[no-any-return]

    def send(self, url: str, secret: str, message: Message) -> int:
        # Checked again at send time: DNS may have changed since registration.
        problem = check_webhook_url(url, allow_http=self.allow_http,
                                    allow_private=self.allow_private, resolver=self.resolver)
        if problem:
            raise SendError(f"target refused: {problem}", retry=False)
        body = json.dumps(message.as_json(), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(secret, timestamp, body),
                   DELIVERY_HEADER: message.delivery_id, "User-Agent": "referrals-webhooks/1"}
        try:
            resp = self.session.post(url, data=body, headers=headers, timeout=self.timeout_s,
                                     allow_redirects=False)
        except requests.Timeout:
            raise SendError("timeout", retry=True) from None
        except requests.RequestException as exc:
            raise SendError(f"connection failed: {type(exc).__name__}", retry=True) from None
        resp.close()
        code = resp.status_code
        if 200 <= code < 300:
            return code
        if code >= 500 or code in (408, 429):
            raise SendError(f"HTTP {code}", retry=True, status_code=code)
        raise SendError(f"HTTP {code}", retry=False, status_code=code)  # 3xx/4xx: ours to fix


# ---- SMS (interface only) --------------------------------------------------------------------

class SmsSender(Protocol):
    """An SMS vendor adapter: send ``text`` to ``to`` (E.164) or raise :class:`SendError`.
    None ships; SMS_ENABLED=1 with an adapter passed to the dispatcher turns SMS on."""

    def send(self, to: str, text: str) -> None: ...


class NoSms:
    """The default: SMS is off, so a stray SMS delivery fails instead of vanishing."""

    def send(self, to: str, text: str) -> None:
        raise SendError("SMS is not configured", retry=False)
