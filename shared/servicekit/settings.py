"""Settings from the environment (12-factor): one frozen object per service process.

Every variable the system reads is declared here, in ``ENVIRONMENT``, so the README's
configuration table and the docker-compose contract test have one source of truth.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

SERVICES = ("referral-intake", "provider-registry", "matching", "notifications")

# service name -> import name of its package
SERVICE_MODULES: dict[str, str] = {
    "referral-intake": "referral_intake",
    "provider-registry": "provider_registry",
    "matching": "matching",
    "notifications": "notifications",
}

# service name -> (environment prefix, default HTTP port)
SERVICE_INFO: dict[str, tuple[str, int]] = {
    "referral-intake": ("INTAKE", 8001),
    "provider-registry": ("REGISTRY", 8002),
    "matching": ("MATCHING", 8003),
    "notifications": ("NOTIFICATIONS", 8004),
}


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    services: str  # which services read it ("all" or a comma-separated list)
    description: str


def _service_vars() -> list[EnvVar]:
    out = []
    for service, (prefix, port) in SERVICE_INFO.items():
        out.append(EnvVar(f"{prefix}_DATABASE_URL", f"sqlite:///$VAR_DIR/{service}.db", service,
                          "SQLAlchemy URL of the service's own database"))
        out.append(EnvVar(f"{prefix}_PORT", str(port), service, "HTTP port of the service's api"))
    return out


ENVIRONMENT: list[EnvVar] = [
    EnvVar("VAR_DIR", "./var", "all", "where embedded databases, dev keys and logs live"),
    EnvVar("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "all",
           "Kafka bootstrap servers; `referrals up` starts the embedded broker when unset"),
    EnvVar("EMBEDDED_KAFKA_PORT", "9092", "cli (up)",
           "port of the embedded broker `referrals up` starts when KAFKA_BOOTSTRAP_SERVERS is unset"),
    EnvVar("KAFKA_TOPIC_PARTITIONS", "6", "all", "partitions for topics created at bootstrap"),
    EnvVar("KAFKA_REPLICATION_FACTOR", "1", "all", "replication factor for topics created at bootstrap"),
    EnvVar("KAFKA_SESSION_TIMEOUT_MS", "6000", "all", "consumer group session timeout"),
    EnvVar("KAFKA_HEARTBEAT_INTERVAL_MS", "1000", "all", "consumer group heartbeat interval"),
    EnvVar("KAFKA_FETCH_MAX_WAIT_MS", "50", "all",
           "longest a fetch waits on the broker for data (bounds delivery latency on brokers "
           "that hold fetches for the full wait)"),
    EnvVar("CONSUMER_MAX_RETRIES", "5", "all", "attempts before a failing message is dead-lettered"),
    EnvVar("CONSUMER_RETRY_BACKOFF_MS", "200", "all", "first retry backoff (doubles per attempt, capped at 5 s)"),
    EnvVar("CONSUMER_DLQ_MAX_PER_MINUTE", "60", "all",
           "dead-letters per minute after which a consumer stops instead of dead-lettering everything"),
    EnvVar("CONSUMER_BATCH_SIZE", "100", "all",
           "events of one poll that may share a database transaction (1: one per event)"),
    EnvVar("OUTBOX_POLL_INTERVAL_MS", "10", "all", "how often an idle outbox relay looks for new rows"),
    EnvVar("OUTBOX_BATCH_SIZE", "200", "all", "rows one relay claims per round"),
    EnvVar("DEV_KEYS", "1", "all",
           "1: create the dev JWT keypair and PII keyring when missing; 0 (production): "
           "refuse to start without the configured keys"),
    EnvVar("JWT_ISSUER", "referrals-dev", "all", "expected `iss` of access tokens"),
    EnvVar("JWT_AUDIENCE", "referrals", "all", "expected `aud` of access tokens"),
    EnvVar("JWT_ALGORITHMS", "EdDSA,ES256,RS256", "all", "allow-list of asymmetric JWT algorithms"),
    EnvVar("JWT_PUBLIC_KEY_FILE", "$VAR_DIR/keys/dev-jwt-public.pem", "all",
           "PEM public key(s) that verify tokens; the dev key is created on first use"),
    EnvVar("JWT_PRIVATE_KEY_FILE", "$VAR_DIR/keys/dev-jwt-private.pem", "cli (token, seed, up)",
           "dev signing key used only by `referrals token` and the demo sign-in"),
    EnvVar("PII_KEYRING_FILE", "$VAR_DIR/keys/pii-keyring.json", "referral-intake",
           "JSON keyring of key-encryption keys {active, keys: {kid: base64}}; created in dev"),
    EnvVar("PII_KEYRING", "", "referral-intake",
           "the same keyring given inline (wins over the file); use a secret store in production"),
    EnvVar("OFFER_TTL_EMERGENCY_S", "900", "referral-intake", "offer expiry for emergencies"),
    EnvVar("OFFER_TTL_URGENT_S", "14400", "referral-intake", "offer expiry for urgent referrals"),
    EnvVar("OFFER_TTL_ROUTINE_S", "172800", "referral-intake", "offer expiry for routine referrals"),
    EnvVar("PUBLIC_BASE_URL", "http://127.0.0.1:8000", "notifications", "base of links in notifications"),
    EnvVar("LOG_LEVEL", "INFO", "all", "log level of the JSON logs"),
    EnvVar("API_HOST", "127.0.0.1", "all", "address the apis bind (0.0.0.0 in containers)"),
    EnvVar("WEB_CONCURRENCY", "1", "all", "gunicorn worker processes per api"),
    EnvVar("WEB_THREADS", "8", "all", "gunicorn threads per worker"),
    *_service_vars(),
    # --- security settings ---
    EnvVar("AUTH_FAILURE_LIMIT", "20", "all",
           "failed authentications (401) from one client address within the window before its "
           "requests get 429 with Retry-After; 0 disables"),
    EnvVar("AUTH_FAILURE_WINDOW_S", "60", "all", "sliding window of AUTH_FAILURE_LIMIT, seconds"),
    EnvVar("WORKER_METRICS_PORT_OFFSET", "100", "all",
           "a worker serves Prometheus /metrics on its service's HTTP port plus this; 0 disables"),
    EnvVar("FAILPOINTS", "", "all",
           "fault suite only: `name=N,...` kills the process at the Nth pass of a named point "
           "(see servicekit.failpoints); empty in production"),
    # --- end security ---
    # --- referral-intake settings ---
    EnvVar("FIRST_CONTACT_EMERGENCY_S", "7200", "referral-intake",
           "first contact due after acceptance, emergencies"),
    EnvVar("FIRST_CONTACT_URGENT_S", "86400", "referral-intake",
           "first contact due after acceptance, urgent referrals"),
    EnvVar("FIRST_CONTACT_ROUTINE_S", "259200", "referral-intake",
           "first contact due after acceptance, routine referrals"),
    EnvVar("SLA_BUSINESS_DAYS", "routine", "referral-intake",
           "comma-separated urgencies whose offer and first-contact clocks skip weekends"),
    EnvVar("INTAKE_TIMER_INTERVAL_S", "5", "referral-intake",
           "how often the worker checks offer expiry and first-contact deadlines"),
    EnvVar("BREAK_GLASS_MINUTES", "15", "referral-intake",
           "how long a supervisor's break-glass PII access lasts"),
    # --- end referral-intake ---
    # --- provider-registry settings ---
    EnvVar("REGISTRY_STALE_AFTER_DAYS", "90", "provider-registry",
           "a listing not confirmed (edited, capacity set or re-imported) for this many days "
           "is flagged stale in search and to admins"),
    EnvVar("REGISTRY_DEFAULT_RADIUS_KM", "25", "provider-registry",
           "service-area radius given to imported HSDS services that name no usable service "
           "area but have a location"),
    EnvVar("REGISTRY_MAX_IMPORT_MB", "50", "provider-registry",
           "largest HSDS upload `POST /v1/import/hsds` accepts (the CLI has no limit)"),
    # --- end provider-registry ---
    # --- matching settings ---
    EnvVar("MATCHING_WEIGHT_DISTANCE", "0.40", "matching", "score weight of proximity to the resident's area"),
    EnvVar("MATCHING_WEIGHT_HEADROOM", "0.20", "matching", "score weight of free places / capacity"),
    EnvVar("MATCHING_WEIGHT_LANGUAGE", "0.10", "matching", "score weight of speaking the resident's language"),
    EnvVar("MATCHING_WEIGHT_ACCEPTANCE", "0.15", "matching", "score weight of the service's historic acceptance rate"),
    EnvVar("MATCHING_WEIGHT_RESPONSE", "0.10", "matching", "score weight of the service's historic response time"),
    EnvVar("MATCHING_WEIGHT_SPREADING", "0.05", "matching",
           "score weight of spreading offers across organizations (fewer awaiting answers)"),
    EnvVar("MATCHING_DISTANCE_SCALE_KM", "5", "matching", "distance at which proximity scores 0.5"),
    EnvVar("MATCHING_RESPONSE_SCALE_H", "4", "matching", "mean answer time at which the response factor scores 0.5"),
    EnvVar("MATCHING_RETRY_BATCH", "50", "matching",
           "unmatched referrals looked at when a place frees or a fitting service appears"),
    # --- end matching ---
    # --- notifications settings ---
    EnvVar("PSEUDONYM_KEY_FILE", "$VAR_DIR/keys/officer-pseudonym.key", "referral-intake, notifications",
           "base64 key of the officer pseudonym (officer_ref = HMAC of the token's sub); created in dev"),
    EnvVar("PSEUDONYM_KEY", "", "referral-intake, notifications",
           "the same key given inline (wins over the file); use a secret store in production"),
    EnvVar("SMTP_HOST", "", "notifications", "SMTP server for e-mail notifications; empty: e-mail off"),
    EnvVar("SMTP_PORT", "25", "notifications", "SMTP port (587 for STARTTLS, 465 for TLS)"),
    EnvVar("SMTP_SECURITY", "none", "notifications", "none | starttls | tls"),
    EnvVar("SMTP_USERNAME", "", "notifications", "SMTP AUTH user; empty: no AUTH"),
    EnvVar("SMTP_PASSWORD", "", "notifications", "SMTP AUTH password"),
    EnvVar("SMTP_FROM", "notifications@referrals.invalid", "notifications", "sender address of e-mails"),
    EnvVar("SMTP_CA_FILE", "", "notifications",
           "extra CA bundle that verifies the SMTP server's certificate; empty: system CAs"),
    EnvVar("SMTP_TIMEOUT_S", "10", "notifications", "SMTP connect/command timeout"),
    EnvVar("WEBHOOK_TIMEOUT_S", "5", "notifications", "webhook request timeout (a timeout is retried)"),
    EnvVar("WEBHOOK_ALLOW_HTTP", "0", "notifications", "1: accept http:// webhook URLs (default https only)"),
    EnvVar("WEBHOOK_ALLOW_PRIVATE_TARGETS", "0", "notifications",
           "1: allow webhook targets on loopback/private/link-local networks (refused by default)"),
    EnvVar("DELIVERY_MAX_ATTEMPTS", "6", "notifications", "attempts before an e-mail/webhook/SMS delivery is failed"),
    EnvVar("DELIVERY_BACKOFF_S", "10", "notifications",
           "first retry delay; doubles per attempt, full jitter, capped by DELIVERY_BACKOFF_MAX_S"),
    EnvVar("DELIVERY_BACKOFF_MAX_S", "3600", "notifications", "longest delay between delivery attempts"),
    EnvVar("DELIVERY_POLL_INTERVAL_MS", "500", "notifications",
           "how often the idle dispatcher (and the reminder timer) looks for due work"),
    EnvVar("DELIVERY_BATCH_SIZE", "50", "notifications", "deliveries one dispatcher claims per round"),
    EnvVar("DELIVERY_CONCURRENCY", "8", "notifications",
           "sends one dispatcher keeps in flight (a slow receiver does not stall the others)"),
    EnvVar("DELIVERY_LEASE_S", "120", "notifications",
           "a claimed delivery is retried by any dispatcher after this long if its claimer died"),
    EnvVar("SMS_ENABLED", "0", "notifications", "1: deliver SMS through the configured adapter (none ships)"),
    EnvVar("STREAM_HEARTBEAT_S", "15", "notifications", "SSE heartbeat comment interval"),
    EnvVar("STREAM_POLL_MS", "1000", "notifications", "how often an open SSE stream looks for new notifications"),
    EnvVar("STREAM_MAX_S", "300", "notifications",
           "an SSE stream ends after this long (frees the gthread; EventSource reconnects with Last-Event-ID)"),
    # --- end notifications ---
    # --- console settings ---
    EnvVar("CONSOLE_PORT", "8000", "console", "HTTP port of the web console"),
    EnvVar("CONSOLE_SECRET_KEY", "", "console",
           "key that signs session cookies; empty with DEV_KEYS=1: created under $VAR_DIR/keys"),
    EnvVar("CONSOLE_INTAKE_URL", "", "console",
           "referral-intake base URL; empty: http://127.0.0.1:$INTAKE_PORT"),
    EnvVar("CONSOLE_REGISTRY_URL", "", "console",
           "provider-registry base URL; empty: http://127.0.0.1:$REGISTRY_PORT"),
    EnvVar("CONSOLE_MATCHING_URL", "", "console",
           "matching base URL; empty: http://127.0.0.1:$MATCHING_PORT"),
    EnvVar("CONSOLE_NOTIFICATIONS_URL", "", "console",
           "notifications base URL; empty: http://127.0.0.1:$NOTIFICATIONS_PORT"),
    EnvVar("CONSOLE_API_TIMEOUT_S", "10", "console", "timeout of the console's calls to the apis"),
    EnvVar("CONSOLE_OIDC_ISSUER", "", "console",
           "OpenID Connect issuer for sign-in (authorization code + PKCE); empty: no OIDC"),
    EnvVar("CONSOLE_OIDC_CLIENT_ID", "", "console", "the console's OIDC client id"),
    EnvVar("CONSOLE_OIDC_CLIENT_SECRET", "", "console",
           "the console's OIDC client secret (confidential client)"),
    EnvVar("CONSOLE_OIDC_SCOPES", "openid", "console", "scopes the console asks the issuer for"),
    EnvVar("CONSOLE_PUBLIC_URL", "http://127.0.0.1:8000", "console",
           "the console's own URL: OIDC redirect base; https here makes cookies Secure"),
    EnvVar("CONSOLE_GEOCODER", "gazetteer", "console",
           "typed address -> coordinates: gazetteer (address-points CSV, offline), nominatim "
           "or off"),
    EnvVar("CONSOLE_GAZETTEER", "", "console",
           "OpenAddresses-layout CSV for the gazetteer; empty: the demo city's landmarks"),
    EnvVar("CONSOLE_GEOCODER_URL", "", "console",
           "Nominatim base URL (one the agency runs: the address is sent to it)"),
    # --- end console ---
    EnvVar("TEST_DATABASE_URL", "", "tests, bench",
           "PostgreSQL server for tests (admin URL); else testcontainers, else 127.0.0.1:5432"),
]


def _expand(value: str, var_dir: str) -> str:
    return value.replace("$VAR_DIR", var_dir)


@dataclass(frozen=True)
class Settings:
    """Everything one service process needs, read once from the environment."""

    service: str
    database_url: str
    port: int
    var_dir: Path
    kafka_bootstrap_servers: str
    values: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold secrets

    def get(self, name: str) -> str:
        return self.values[name]

    def int(self, name: str) -> int:
        return int(self.values[name])

    @property
    def consumer_group(self) -> str:
        return self.service

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        if service not in SERVICE_INFO and service != "cli":
            raise ValueError(f"unknown service {service!r}")
        var_dir = env.get("VAR_DIR", "./var")
        values = {v.name: _expand(env.get(v.name, v.default), var_dir) for v in ENVIRONMENT}
        prefix, _port = SERVICE_INFO.get(service, ("INTAKE", 0))
        return cls(
            service=service,
            database_url=values[f"{prefix}_DATABASE_URL"],
            port=int(values[f"{prefix}_PORT"]),
            var_dir=Path(var_dir),
            kafka_bootstrap_servers=values["KAFKA_BOOTSTRAP_SERVERS"],
            values=values,
        )


def markdown_table() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    lines = ["| variable | default | read by | what it does |", "|---|---|---|---|"]
    for v in ENVIRONMENT:
        default = f"`{v.default}`" if v.default else "(empty)"
        lines.append(f"| `{v.name}` | {default} | {v.services} | {v.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
