"""Failpoints crash exactly at the armed pass, and are inert unless armed."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from servicekit import failpoints

SCRIPT = """
import sys
from servicekit import failpoints, logs
logs.configure("probe", "WARNING")
failpoints.configure(sys.argv[1])
for i in range(1, 6):
    print(i, flush=True)
    failpoints.hit("outbox.after_send")
    failpoints.hit("consumer.after_db_commit")
print("survived", flush=True)
"""


def run(spec: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, spec], capture_output=True,
                          text=True, timeout=60)


def test_the_armed_pass_kills_the_process_and_says_where() -> None:
    done = run("outbox.after_send=3")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1", "2", "3"]
    assert '"failpoint": "outbox.after_send"' in done.stderr


def test_unarmed_points_do_nothing() -> None:
    for spec in ("", "consumer.before_db_commit=1", "outbox.after_send=9"):
        done = run(spec)
        assert done.returncode == 0, (spec, done.stderr)
        assert done.stdout.split()[-1] == "survived"


@pytest.mark.parametrize("spec", ["outbox.after_send", "outbox.after_send=0", "x=two", "=3"])
def test_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="FAILPOINTS"):
        failpoints.configure(spec)
    failpoints.configure("")
    assert not failpoints.armed()


def test_wrap_passes_the_point_after_the_call_returns() -> None:
    calls: list[str] = []
    failpoints.configure("")
    wrapped = failpoints.wrap("consumer.before_db_commit", lambda x: calls.append(x) or x)
    assert wrapped("a") == "a" and calls == ["a"]


def test_wrap_keeps_a_batch_handler_batched() -> None:
    seen: list[list[str]] = []

    class Batch:
        def __call__(self, session: object, env: str) -> None:
            seen.append([env])

        def handle_many(self, session: object, envs: list[str]) -> None:
            seen.append(list(envs))

    failpoints.configure("")
    wrapped = failpoints.wrap("consumer.before_db_commit", Batch())
    wrapped.handle_many(None, ["a", "b"])
    wrapped(None, "c")
    assert seen == [["a", "b"], ["c"]]
    assert not hasattr(failpoints.wrap("x", lambda s, e: None), "handle_many")
