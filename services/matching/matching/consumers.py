"""Kafka: map incoming events to matching handlers (one consumer group, both topics)."""
from __future__ import annotations

from functools import partial

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers
from .decide import DEFAULT_POLICY, Policy


def consumer_specs(policy: Policy = DEFAULT_POLICY) -> list[ConsumerSpec]:
    return [ConsumerSpec(
        name="matching",
        topics=[events.PROVIDER_EVENTS, events.REFERRAL_EVENTS],
        handlers={
            events.PROVIDER_SERVICE_UPSERTED: partial(handlers.on_service_upserted,
                                                      policy=policy),
            events.PROVIDER_SERVICE_REMOVED: partial(handlers.on_service_removed,
                                                     policy=policy),
            events.REFERRAL_SUBMITTED: handlers.SubmittedHandler(policy),
            events.REFERRAL_STATUS_CHANGED: handlers.StatusChangedHandler(policy),
            events.REFERRAL_ERASED: partial(handlers.on_referral_erased, policy=policy),
        },
    )]
