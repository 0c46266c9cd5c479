"""notifications' own configuration objects, built from Settings in one place."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from servicekit import crypto
from servicekit.settings import Settings

from .channels import EmailSender, SmtpConfig, WebhookSender
from .dispatch import DispatchConfig
from .handlers import Options
from .stream import StreamConfig


@dataclass(frozen=True)
class ApiConfig:
    pseudonym_key: bytes
    stream: StreamConfig
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    sms_enabled: bool = False


def current() -> ApiConfig:
    """The running app's configuration."""
    return current_app.extensions["notifications"]  # type: ignore[no-any-return]


def _flag(settings: Settings, name: str) -> bool:
    return settings.get(name) == "1"


def api_config(settings: Settings) -> ApiConfig:
    return ApiConfig(
        pseudonym_key=crypto.load_pseudonym_key(settings),
        stream=StreamConfig(poll_s=settings.int("STREAM_POLL_MS") / 1000,
                            heartbeat_s=float(settings.get("STREAM_HEARTBEAT_S")),
                            max_s=float(settings.get("STREAM_MAX_S"))),
        webhook_allow_http=_flag(settings, "WEBHOOK_ALLOW_HTTP"),
        webhook_allow_private=_flag(settings, "WEBHOOK_ALLOW_PRIVATE_TARGETS"),
        sms_enabled=_flag(settings, "SMS_ENABLED"))


def options(settings: Settings) -> Options:
    """Which external channels get delivery rows at all."""
    return Options(email=bool(settings.get("SMTP_HOST")), sms=_flag(settings, "SMS_ENABLED"))


def dispatch_config(settings: Settings) -> DispatchConfig:
    return DispatchConfig(
        max_attempts=settings.int("DELIVERY_MAX_ATTEMPTS"),
        backoff_s=float(settings.get("DELIVERY_BACKOFF_S")),
        backoff_max_s=float(settings.get("DELIVERY_BACKOFF_MAX_S")),
        batch_size=settings.int("DELIVERY_BATCH_SIZE"),
        lease_s=float(settings.get("DELIVERY_LEASE_S")),
        poll_interval_s=settings.int("DELIVERY_POLL_INTERVAL_MS") / 1000,
        public_base_url=settings.get("PUBLIC_BASE_URL"),
        concurrency=settings.int("DELIVERY_CONCURRENCY"))


def email_sender(settings: Settings) -> EmailSender | None:
    if not settings.get("SMTP_HOST"):
        return None
    security = settings.get("SMTP_SECURITY")
    if security not in ("none", "starttls", "tls"):
        raise ValueError("SMTP_SECURITY must be none, starttls or tls")
    return EmailSender(SmtpConfig(
        host=settings.get("SMTP_HOST"), port=settings.int("SMTP_PORT"), security=security,
        username=settings.get("SMTP_USERNAME"), password=settings.get("SMTP_PASSWORD"),
        sender=settings.get("SMTP_FROM"), ca_file=settings.get("SMTP_CA_FILE"),
        timeout_s=float(settings.get("SMTP_TIMEOUT_S"))))


def webhook_sender(settings: Settings) -> WebhookSender:
    return WebhookSender(timeout_s=float(settings.get("WEBHOOK_TIMEOUT_S")),
                         allow_http=_flag(settings, "WEBHOOK_ALLOW_HTTP"),
                         allow_private=_flag(settings, "WEBHOOK_ALLOW_PRIVATE_TARGETS"))
