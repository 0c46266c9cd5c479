"""Schemathesis against each service's own /openapi.json, in process (WSGI).

Positive cases (valid by the schema) and negative ones (deliberately invalid), each sent
as a random role: no 5xx ever, and every 4xx is application/problem+json. The number of
examples is bounded so the four services take well under two minutes together.
"""
from __future__ import annotations

import os
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servicekit.auth import ROLES

from .conftest import Services, fresh_address

pytestmark = pytest.mark.security

# FUZZ_EXAMPLES raises the count for a longer hunt (the suite's default keeps CI quick)
_N = int(os.environ.get("FUZZ_EXAMPLES", "60"))
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: _N, schemathesis.GenerationMode.NEGATIVE: _N}


def _streaming_paths(spec: dict[str, Any]) -> list[str]:
    """Paths documented as text/event-stream: a live stream never ends on its own, so
    the fuzzer would wait out each one; their auth is covered by the other tests."""
    return [path for path, ops in spec["paths"].items() for op in ops.values()
            if isinstance(op, dict) for resp in op.get("responses", {}).values()
            if "text/event-stream" in resp.get("content", {})]


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: str(m.value))
@pytest.mark.parametrize("service", ["referral-intake", "provider-registry", "matching",
                                     "notifications"])
def test_fuzzed_requests_never_5xx_and_errors_are_problem_json(
        services: Services, service: str, mode: schemathesis.GenerationMode) -> None:
    app = services.apps[service]
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    streams = _streaming_paths(app.test_client().get("/openapi.json").get_json())
    if streams:
        schema = schema.exclude(path=streams)
    tokens = {role: services.token(role) for role in ROLES}
    seen: dict[int, int] = {}
    failures: list[str] = []
    spent = [0.0]

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(generation_mode=mode), role=st.sampled_from(ROLES))
    def run(case: schemathesis.Case, role: str) -> None:
        t0 = time.perf_counter()
        resp = case.call(headers={"Authorization": f"Bearer {tokens[role]}"},
                         environ_base={"REMOTE_ADDR": fresh_address()})
        spent[0] += time.perf_counter() - t0
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        where = f"{case.method} {case.formatted_path} as {role} -> {resp.status_code}"
        if resp.status_code >= 500:
            failures.append(where + f" {resp.content[:300]!r}")
        elif resp.status_code >= 400:
            ctype = (resp.headers.get("content-type") or [""])[0]
            if not ctype.startswith("application/problem+json"):
                failures.append(where + f" content-type {ctype!r}")

    run()
    print(f"\n{service} {mode.value}: status counts {dict(sorted(seen.items()))}, {spent[0]:.1f} s in calls")
    assert not failures, "\n".join(sorted(set(failures))[:30])
    assert sum(seen.values()) >= EXAMPLES[mode] // 2  # the fuzzer really sent requests
