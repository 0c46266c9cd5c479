"""Kafka: map incoming events to referral-intake handlers."""
from __future__ import annotations

from sqlalchemy.orm import Session

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers


def consumer_specs(ctx: handlers.Context) -> list[ConsumerSpec]:
    def proposed(session: Session, env: events.Envelope) -> None:
        handlers.on_routing_proposed(session, ctx, env)

    def exhausted(session: Session, env: events.Envelope) -> None:
        handlers.on_routing_exhausted(session, ctx, env)

    def upserted(session: Session, env: events.Envelope) -> None:
        handlers.on_service_upserted(session, ctx, env)

    def removed(session: Session, env: events.Envelope) -> None:
        handlers.on_service_removed(session, ctx, env)

    return [ConsumerSpec(
        name="referral-intake",
        topics=[events.ROUTING_DECISIONS],
        handlers={events.ROUTING_PROPOSED: proposed, events.ROUTING_EXHAUSTED: exhausted},
    ), ConsumerSpec(  # service names and organizations for officer views and manual assignment
        name="referral-intake-directory",
        topics=[events.PROVIDER_EVENTS],
        handlers={events.PROVIDER_SERVICE_UPSERTED: upserted,
                  events.PROVIDER_SERVICE_REMOVED: removed},
    )]
