"""Start the four services' real processes (api + worker each) for end-to-end tests and the
benchmark, on databases and a broker the caller provides."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from .broker import free_port
from .settings import SERVICE_INFO, SERVICE_MODULES
from .testing import wait_for


@dataclass
class Stack:
    env: dict[str, str]
    urls: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, module: str, kind: str,
              extra_env: dict[str, str] | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen([sys.executable, "-m", module, kind],
                                            env={**self.env, **(extra_env or {})},
                                            stdout=log, stderr=subprocess.STDOUT)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> dict[str, int]:
        codes = {name: self.stop(name) for name in list(self.procs)}
        for log in self._logs:
            log.close()
        return codes

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def base_env(var_dir: Path, kafka: str, database_urls: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
    env.update(VAR_DIR=str(var_dir), KAFKA_BOOTSTRAP_SERVERS=kafka, PYTHONUNBUFFERED="1",
               CONSUMER_RETRY_BACKOFF_MS="50")
    for service, url in database_urls.items():
        prefix = SERVICE_INFO[service][0]
        env[f"{prefix}_DATABASE_URL"] = url
        env[f"{prefix}_PORT"] = str(free_port())
    env["CONSOLE_PORT"] = str(free_port())
    return env


def start_stack(env: dict[str, str], log_dir: Path, timeout: float = 60) -> Stack:
    """Start every api and worker; return when every api answers /healthz.

    If they do not within ``timeout`` seconds, every process started is stopped before the
    error is raised (a failed start must not leave servers running)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    urls = {s: f"http://127.0.0.1:{env[SERVICE_INFO[s][0] + '_PORT']}" for s in SERVICE_MODULES}
    stack = Stack(env=env, urls=urls, log_dir=log_dir)
    for service, module in SERVICE_MODULES.items():
        for kind in ("api", "worker"):
            stack.start(f"{service}-{kind}", module, kind)
    if env.get("CONSOLE_PORT"):  # the web console (no worker, no database)
        urls["console"] = f"http://127.0.0.1:{env['CONSOLE_PORT']}"
        stack.start("console-api", "console", "api")

    def healthy() -> bool:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{stack.logs()[-4000:]}")
        try:
            return all(requests.get(u + "/healthz", timeout=1).ok for u in urls.values())
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, timeout=timeout, interval=0.2, message="every api to answer /healthz")
    except BaseException:
        for name in list(stack.procs):
            stack.stop(name, signal.SIGKILL)
        raise
    return stack
