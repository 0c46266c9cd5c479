"""Kafka: map incoming events to notifications handlers."""
from __future__ import annotations

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers


def consumer_specs(options: handlers.Options = handlers.DEFAULT_OPTIONS) -> list[ConsumerSpec]:
    on_referral_event = handlers.ReferralEvents(options)  # takes runs of events at once
    return [ConsumerSpec(
        name="notifications",
        topics=[events.REFERRAL_EVENTS, events.PROVIDER_EVENTS],
        handlers={
            events.REFERRAL_SUBMITTED: on_referral_event,
            events.REFERRAL_STATUS_CHANGED: on_referral_event,
            events.REFERRAL_SLA_BREACHED: on_referral_event,
            events.REFERRAL_CONSENT_CHANGED: handlers.on_consent_changed,
            events.REFERRAL_ERASED: handlers.on_referral_erased,
            events.PROVIDER_SERVICE_UPSERTED: handlers.on_service_upserted,
        },
    )]
