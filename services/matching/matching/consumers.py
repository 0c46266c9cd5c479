"""Kafka: map incoming events to matching handlers (one consumer group, both topics)."""
from __future__ import annotations

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers


def consumer_specs() -> list[ConsumerSpec]:
    return [ConsumerSpec(
        name="matching",
        topics=[events.PROVIDER_EVENTS, events.REFERRAL_EVENTS],
        handlers={
            events.PROVIDER_SERVICE_UPSERTED: handlers.on_service_upserted,
            events.PROVIDER_SERVICE_REMOVED: handlers.on_service_removed,
            events.REFERRAL_SUBMITTED: handlers.on_referral_submitted,
            events.REFERRAL_STATUS_CHANGED: handlers.on_status_changed,
            events.REFERRAL_ERASED: handlers.on_referral_erased,
        },
    )]
