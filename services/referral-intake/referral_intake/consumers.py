"""Kafka: map incoming events to referral-intake handlers."""
from __future__ import annotations

from functools import partial

from servicekit import events
from servicekit.runtime import ConsumerSpec

from . import handlers


def consumer_specs(ctx: handlers.Context) -> list[ConsumerSpec]:
    return [ConsumerSpec(
        name="referral-intake",
        topics=[events.ROUTING_DECISIONS],
        handlers={
            events.ROUTING_PROPOSED: partial(handlers.on_routing_proposed, ctx=ctx),
            events.ROUTING_EXHAUSTED: partial(handlers.on_routing_exhausted, ctx=ctx),
        },
    )]
