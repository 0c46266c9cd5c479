"""Process runtime: the worker loop (outbox relay, consumers, timers) and the api server.

A worker runs each component in a thread; SIGTERM/SIGINT set one stop event, every
component finishes the message in hand, commits its offsets and returns. If a component
dies, the others are stopped and the process exits non-zero so a supervisor restarts it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import failpoints
from . import kafka as kafkakit
from .consumer import ConsumerRunner, Handler, RunnerConfig
from .db import Database, is_unavailable
from .outbox import OutboxRelay
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ConsumerSpec:
    name: str  # inbox consumer name and consumer group id
    topics: list[str]
    handlers: Mapping[str, Handler]


@dataclass
class WorkerSpec:
    consumers: list[ConsumerSpec] = field(default_factory=list)
    timers: list[Callable[[threading.Event], None]] = field(default_factory=list)
    relay: bool = True


def runner_config(settings: Settings) -> RunnerConfig:
    return RunnerConfig(max_retries=settings.int("CONSUMER_MAX_RETRIES"),
                        backoff_s=settings.int("CONSUMER_RETRY_BACKOFF_MS") / 1000,
                        dlq_max_per_minute=settings.int("CONSUMER_DLQ_MAX_PER_MINUTE"),
                        batch_size=settings.int("CONSUMER_BATCH_SIZE"))


def build_components(settings: Settings, db: Database, spec: WorkerSpec
                     ) -> tuple[list[tuple[str, Callable[[threading.Event], None]]], Any]:
    """The worker's components and the producer they share (the caller closes it)."""
    kafkakit.wait_for_broker(settings.kafka_bootstrap_servers, timeout_s=60)
    kafkakit.bootstrap_topics(settings.kafka_bootstrap_servers,
                              settings.int("KAFKA_TOPIC_PARTITIONS"),
                              settings.int("KAFKA_REPLICATION_FACTOR"))
    producer = kafkakit.make_producer(settings.kafka_bootstrap_servers,
                                      client_id=f"{settings.service}-producer")
    parts: list[tuple[str, Callable[[threading.Event], None]]] = []
    if spec.relay:
        relay = OutboxRelay(db, producer, batch_size=settings.int("OUTBOX_BATCH_SIZE"),
                            poll_interval_s=settings.int("OUTBOX_POLL_INTERVAL_MS") / 1000)
        if failpoints.armed():
            relay.after_send = lambda _done: failpoints.hit("outbox.after_send")
        parts.append(("outbox-relay", relay.run))
    for c in spec.consumers:
        handlers = c.handlers
        if failpoints.armed():
            handlers = {t: failpoints.wrap("consumer.before_db_commit", h)
                        for t, h in handlers.items()}
        runner = ConsumerRunner(name=c.name, db=db,
                                consumer=kafkakit.make_consumer(settings, c.name),
                                producer=producer, topics=c.topics, handlers=handlers,
                                config=runner_config(settings))
        if failpoints.armed():
            runner.after_db_commit = lambda _record: failpoints.hit("consumer.after_db_commit")
        parts.append((f"consumer-{c.name}", runner.run))
    for timer in spec.timers:
        parts.append((f"timer-{getattr(timer, '__name__', 'timer')}", timer))
    return parts, producer


def run_worker(settings: Settings, db: Database, spec: WorkerSpec) -> int:
    stop = threading.Event()
    failed = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"fields": {"signal": signum}})
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)

    def _guard(name: str, target: Callable[[threading.Event], None]) -> None:
        """Run a component. A timer stopped by a database outage starts again after a
        pause (its next round re-reads the database); anything else stops the worker so
        its supervisor restarts it. (Consumers wait out an outage on the message in hand:
        restarting one here would resume from its fetch position, past unhandled records.
        The relay retries its own rounds.)"""
        outages = 0
        while not stop.is_set():
            try:
                target(stop)
                return
            except Exception as exc:
                if not (name.startswith("timer-") and is_unavailable(exc)):
                    log.exception("worker component died", extra={"fields": {"component": name}})
                    failed.set()
                    stop.set()
                    return
                outages += 1
                log.warning("database unavailable; component restarts", exc_info=True,
                            extra={"fields": {"component": name, "attempt": outages}})
                stop.wait(min(5.0, 0.2 * 2 ** min(outages, 5)))

    metrics_server = serve_worker_metrics(settings)
    parts, producer = build_components(settings, db, spec)
    threads = [threading.Thread(target=_guard, args=(n, t), name=n, daemon=True)
               for n, t in parts]
    for t in threads:
        t.start()
    log.info("worker started", extra={"fields": {"components": [t.name for t in threads]}})
    while not stop.wait(0.5):
        pass
    for t in threads:
        t.join(timeout=30)
    producer.close(timeout=10)
    db.dispose()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 1 if failed.is_set() else 0


def serve_worker_metrics(settings: Settings) -> Any:
    """Prometheus /metrics of a worker (consumer lag, outbox backlog, dead letters,
    processing latency) on the service's port plus WORKER_METRICS_PORT_OFFSET."""
    offset = settings.int("WORKER_METRICS_PORT_OFFSET")
    if offset <= 0:
        return None
    from prometheus_client import start_http_server

    port = settings.port + offset
    try:
        server, _thread = start_http_server(port, addr=settings.get("API_HOST"))
    except OSError:  # the worker's job matters more than its metrics
        log.warning("worker metrics port unavailable", extra={"fields": {"port": port}})
        return None
    log.info("worker metrics", extra={"fields": {"port": port}})
    return server


def serve_api(app_factory: Callable[[], Any], settings: Settings) -> None:
    """Serve a Flask app under gunicorn (gthread workers)."""
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            host = settings.get("API_HOST")
            self.cfg.set("bind", f"{host}:{settings.port}")
            self.cfg.set("workers", settings.int("WEB_CONCURRENCY"))
            self.cfg.set("threads", settings.int("WEB_THREADS"))
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            self.cfg.set("control_socket_disable", True)

            if failpoints.armed():  # a crash takes the master down too (failpoints)
                self.cfg.set("post_fork", lambda _server, _worker: failpoints.set_supervisor(
                    os.getppid()))

        def load(self) -> Any:
            app = app_factory()
            if failpoints.armed():
                failpoints.install_flask(app)
            return app

    sys.argv = sys.argv[:1]
    _App().run()
