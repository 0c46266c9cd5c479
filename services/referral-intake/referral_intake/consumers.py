"""Kafka: map incoming events to referral-intake handlers."""
from __future__ import annotations

from sqlalchemy.orm import Session

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers


class Proposed:
    """``routing.proposed``: a lone event through ``__call__``, a run of a consumer batch
    through ``handle_many`` (a handful of statements per run instead of about seven per
    event); both leave what handling each event in turn would."""

    def __init__(self, ctx: handlers.Context) -> None:
        self.ctx = ctx

    def __call__(self, session: Session, env: events.Envelope) -> None:
        handlers.on_routing_proposed(session, self.ctx, env)

    def handle_many(self, session: Session, envs: list[events.Envelope]) -> None:
        handlers.on_routing_proposed_many(session, self.ctx, envs)


def consumer_specs(ctx: handlers.Context) -> list[ConsumerSpec]:
    proposed = Proposed(ctx)

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
