"""``schemas.FastLoad``: the request schemas' shortcut for valid bodies gives exactly what
marshmallow's ``load`` gives, and every other body gets marshmallow's own errors."""
from __future__ import annotations

import copy
import random
import uuid
from typing import Any

import pytest
from marshmallow import ValidationError

from referral_intake import schemas

VALID: list[dict[str, Any]] = [
    {"need": "housing", "urgency": "urgent",
     "subject": {"given_name": "Bench", "family_name": "Resident", "age": 34,
                 "phone": "+15550100000", "email": "bench@example.org"},
     "location": {"lat": 47.61, "lon": -122.33}, "notes": "bench note",
     "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                 "contact_methods": ["phone"], "obtained_via": "verbal"}},
    {"need": "food", "urgency": "routine", "flags": ["veteran", "youth"],
     "subject": {"given_name": "A", "birth_date": "1987-06-05", "preferred_language": "en-GB",
                 "gender": "f", "needs_interpreter": True},
     "location": {"lat": -1, "lon": 2},
     "consent": {"share_with_provider": False, "referrer_updates": "none",
                 "contact_methods": [], "obtained_via": "written",
                 "expires_at": "2030-01-01T00:00:00Z"}},
    {"need": "legal", "urgency": "emergency", "same_subject_as": str(uuid.uuid4()),
     "consent": {"share_with_provider": True, "referrer_updates": "full",
                 "contact_methods": ["sms", "email"], "obtained_via": "electronic"}},
]
ODD_VALUES: list[Any] = [None, "", " ", "x" * 101, 0, -1, 121, 34.0, 34.5, "34", True, False,
                         "true", 1, [], ["phone"], ["fax"], {}, {"a": 1}, "2999-01-01",
                         "1850-01-01", "not-a-date", "en\n", "+1555", "a@b", "bench@example.org",
                         float("nan"), 91.0, -181, "housing", "verbal", str(uuid.uuid4()),
                         "2030-01-01T00:00:00", "2030-01-01T00:00:00+01:00"]


def _outcome(schema: Any, body: Any) -> tuple[str, Any]:
    try:
        return "ok", schema.load(copy.deepcopy(body))
    except ValidationError as error:
        return "error", error.messages


def _mutations(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        target = body
        if rng.random() < 0.6:
            nested = [k for k, v in body.items() if isinstance(v, dict)]
            if nested:
                target = body[rng.choice(nested)]
        roll = rng.random()
        keys = list(target)
        if roll < 0.25 and keys:
            del target[rng.choice(keys)]
        elif roll < 0.35:
            target[rng.choice(["unknown", "id", "age", "notes", "subject", "flags"])] = \
                rng.choice(ODD_VALUES)
        elif keys:
            target[rng.choice(keys)] = rng.choice(ODD_VALUES)
    return body


@pytest.fixture
def plain_marshmallow(monkeypatch: pytest.MonkeyPatch) -> Any:
    def use(enabled: bool) -> None:
        if enabled:
            monkeypatch.setattr(schemas.FastLoad, "_load_plain", lambda self, data: None)
        else:
            monkeypatch.undo()
    return use


def test_the_shortcut_agrees_with_marshmallow_on_every_body(plain_marshmallow: Any) -> None:
    rng = random.Random(20261127)
    bodies: list[Any] = [*VALID, [], "x", None]
    bodies += [_mutations(rng, rng.choice(VALID)) for _ in range(3000)]
    schema = schemas.ReferralCreateIn()
    fast = [_outcome(schema, b) for b in bodies]
    plain_marshmallow(True)
    slow = [_outcome(schemas.ReferralCreateIn(), b) for b in bodies]
    plain_marshmallow(False)
    assert sum(kind == "ok" for kind, _ in fast) > 50  # valid bodies are among them
    for body, got, want in zip(bodies, fast, slow, strict=True):
        assert got == want, body


def test_valid_bodies_take_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = schemas.Strict.load

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(type(self).__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(schemas.Strict, "load", spy)
    assert schemas.ReferralCreateIn().load(copy.deepcopy(VALID[0]))["need"] == "housing"
    assert calls == []  # marshmallow's own load never ran, nested schemas included
    with pytest.raises(ValidationError):
        schemas.ReferralCreateIn().load({**VALID[0], "urgency": "soon"})
    assert calls == ["ReferralCreateIn"]
