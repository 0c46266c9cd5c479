"""Repeated failed authentication from one address is slowed down with 429 + Retry-After."""
from __future__ import annotations

import pytest

from servicekit.ratelimit import AuthFailureLimiter

from .conftest import Services, fresh_address

pytestmark = pytest.mark.security

# service -> an authentication-sensitive GET and a role allowed on it
PROBE = {"referral-intake": ("/v1/referrals", "supervisor"),
         "provider-registry": ("/v1/services", "admin"),
         "matching": ("/v1/load", "admin"),
         "notifications": ("/v1/notifications", "supervisor")}


@pytest.mark.parametrize("service", sorted(PROBE))
def test_repeated_401s_from_one_address_get_429_with_retry_after(
        services: Services, service: str) -> None:
    limit = int(services.env.get("AUTH_FAILURE_LIMIT", "20"))
    address = fresh_address()
    client = services.client(service, address)
    bad = {"Authorization": "Bearer not.a.jwt"}
    path, role = PROBE[service]
    codes = [client.get(path, headers=bad).status_code for _ in range(limit)]
    assert codes == [401] * limit
    limited = client.get(path, headers=bad)
    assert limited.status_code == 429
    assert limited.mimetype == "application/problem+json"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # a valid token does not reset the count (it could be a guesser's own account) ...
    valid = client.get(path, headers=services.auth(role))
    assert valid.status_code == 429
    # ... the operational routes stay open, and other clients are not affected
    assert client.get("/healthz").status_code == 200
    assert services.client(service).get(path, headers=bad).status_code == 401


def test_the_window_slides_and_memory_is_bounded() -> None:
    now = [1000.0]
    limiter = AuthFailureLimiter(limit=3, window_s=10, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 10
    now[0] += 4
    assert limiter.retry_after("a") == 6
    now[0] += 6
    assert limiter.retry_after("a") == 0  # the oldest failures left the window
    limiter.record_failure("b")
    limiter.record_failure("c")
    limiter.record_failure("d")
    assert len(limiter._failures) == 2  # the stalest client was forgotten


def test_a_limit_of_zero_disables_the_limiter() -> None:
    limiter = AuthFailureLimiter(limit=0, window_s=60)
    for _ in range(100):
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 0
