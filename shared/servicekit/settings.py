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
    # --- referral-intake settings ---
    # --- end referral-intake ---
    # --- provider-registry settings ---
    # --- end provider-registry ---
    # --- matching settings ---
    # --- end matching ---
    # --- notifications settings ---
    # --- end notifications ---
    # --- console settings ---
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
