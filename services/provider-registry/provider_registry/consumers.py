"""Kafka: the registry consumes no events yet (it only produces ``provider.events``)."""
from __future__ import annotations

from servicekit.runtime import ConsumerSpec


def consumer_specs() -> list[ConsumerSpec]:
    return []
