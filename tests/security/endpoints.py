"""Every endpoint an app exposes, read from its url_map at test time, so an endpoint added
later is covered by the security tests without anyone remembering to list it."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from flask import Flask

_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_SAMPLES = {"uuid": lambda: str(uuid.uuid4()), "int": lambda: "1", "float": lambda: "1.0",
            "path": lambda: "a/b"}
SKIPPED_METHODS = {"HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Endpoint:
    service: str
    method: str
    rule: str
    endpoint: str
    roles: tuple[str, ...] | None  # from servicekit.auth.requires; None when not declared

    def path(self) -> str:
        """The rule with a well-formed random value for each path parameter."""
        return _PARAM.sub(lambda m: _SAMPLES.get(m.group(1) or "", lambda: "sample")(),
                          self.rule)

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.rule}"


def endpoints(service: str, app: Flask) -> list[Endpoint]:
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/static"):
            continue
        view = app.view_functions[rule.endpoint]
        roles = getattr(view, "required_roles", None)
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            out.append(Endpoint(service, method, rule.rule, rule.endpoint, roles))
    return out
