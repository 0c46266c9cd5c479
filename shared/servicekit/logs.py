"""JSON-lines logging with correlation ids.

The correlation id travels in a context variable: the web layer sets it from the
``X-Correlation-ID``/``X-Request-ID`` header (or a new one), the consumer runner from the
event envelope, and the outbox stamps it on every event it writes, so one referral can be
followed across services. The PII scrubber is a backstop only: code never logs PII.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None)
causation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "causation_id", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")
# Neither pattern can match a text without an "@" and without a phone-like run: one scan
# tells most log values (words, paths, ids without such runs) apart from candidates.
_CANDIDATE = re.compile(r"@|\d[\d ()-]{7,}\d")
_ENCODER = json.JSONEncoder(default=str)  # json.dumps(..., default=str), built once


def scrub(text: str) -> str:
    """Mask things that look like e-mail addresses or phone numbers."""
    if _CANDIDATE.search(text) is None:
        return text
    return _PHONE.sub("[redacted-phone]", _EMAIL.sub("[redacted-email]", text))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, var in (("correlation_id", correlation_id), ("request_id", request_id),
                         ("causation_id", causation_id)):
            value = var.get()
            if value:
                out[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update({k: scrub(str(v)) if isinstance(v, str) else v for k, v in extra.items()})
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages of driver errors can carry parameters.
            out["error_type"] = record.exc_info[0].__name__
        return _ENCODER.encode(out)


def configure(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("kafka", "alembic", "werkzeug", "gunicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def correlation(corr: str | None, cause: str | None = None) -> Iterator[None]:
    t1 = correlation_id.set(corr)
    t2 = causation_id.set(cause)
    try:
        yield
    finally:
        correlation_id.reset(t1)
        causation_id.reset(t2)


def log_fields(**fields: Any) -> dict[str, Any]:
    """``logger.info("msg", extra=log_fields(referral_id=...))`` — ids only, never PII."""
    return {"fields": fields}
