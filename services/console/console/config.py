"""The console's configuration, read once from the environment (servicekit.settings).

The console owns no database and no broker connection; it is a client of the four
services' HTTP APIs, so its settings are the APIs' base URLs, sign-in and cookie keys.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from servicekit.crypto import write_file_once
from servicekit.settings import SERVICE_INFO, Settings

from . import geocode

SERVICE = "console"
_URL_VARS = {
    "referral-intake": "CONSOLE_INTAKE_URL",
    "provider-registry": "CONSOLE_REGISTRY_URL",
    "matching": "CONSOLE_MATCHING_URL",
    "notifications": "CONSOLE_NOTIFICATIONS_URL",
}


@dataclass(frozen=True)
class ConsoleConfig:
    settings: Settings  # the kit's settings (JWT_*, DEV_KEYS, LOG_LEVEL, ...)
    urls: dict[str, str]
    secret_key: str
    public_url: str
    api_timeout_s: float
    oidc_issuer: str
    oidc_client_id: str
    oidc_client_secret: str
    oidc_scopes: str
    geocoder: geocode.Geocoder | None = None  # None: address lookup is off

    @property
    def demo_sign_in(self) -> bool:
        """Demo users only where the dev key exists on purpose (the embedded default)."""
        return self.settings.get("DEV_KEYS") == "1"

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")


def _secret_key(settings: Settings) -> str:
    configured = settings.get("CONSOLE_SECRET_KEY")
    if configured:
        return configured
    if settings.get("DEV_KEYS") != "1":
        raise RuntimeError("CONSOLE_SECRET_KEY is required when DEV_KEYS=0")
    # shared by every console process on this machine, so sessions survive restarts
    path = settings.var_dir / "keys" / "console-secret"
    if not path.exists():
        write_file_once(path, secrets.token_urlsafe(48).encode(), 0o600)
    return Path(path).read_text().strip()


def load_config(environ: Mapping[str, str] | None = None) -> ConsoleConfig:
    base = Settings.from_env("cli", environ)
    settings = Settings(service=SERVICE, database_url="", port=base.int("CONSOLE_PORT"),
                        var_dir=base.var_dir, kafka_bootstrap_servers=base.kafka_bootstrap_servers,
                        values=base.values)
    urls = {}
    for service, var in _URL_VARS.items():
        port = settings.get(f"{SERVICE_INFO[service][0]}_PORT")
        urls[service] = (settings.get(var) or f"http://127.0.0.1:{port}").rstrip("/")
    return ConsoleConfig(
        settings=settings, urls=urls, secret_key=_secret_key(settings),
        public_url=settings.get("CONSOLE_PUBLIC_URL").rstrip("/"),
        api_timeout_s=float(settings.get("CONSOLE_API_TIMEOUT_S")),
        oidc_issuer=settings.get("CONSOLE_OIDC_ISSUER").rstrip("/"),
        oidc_client_id=settings.get("CONSOLE_OIDC_CLIENT_ID"),
        oidc_client_secret=settings.get("CONSOLE_OIDC_CLIENT_SECRET"),
        oidc_scopes=settings.get("CONSOLE_OIDC_SCOPES"),
        geocoder=geocode.from_settings(settings.get("CONSOLE_GEOCODER"),
                                       settings.get("CONSOLE_GEOCODER_URL"),
                                       settings.get("CONSOLE_GAZETTEER"),
                                       float(settings.get("CONSOLE_API_TIMEOUT_S"))),
    )
