"""HTTP request/response schemas of notifications (marshmallow; unknown fields rejected)."""
from __future__ import annotations

from marshmallow import Schema, fields

from servicekit.schemas import PageArgs


class FeedArgs(PageArgs):
    unread = fields.Boolean(load_default=False)


class NotificationOut(Schema):
    """Id-only: short id, need, urgency, deadline and a link; never personal data."""

    id = fields.String()
    kind = fields.String()
    channel = fields.String()
    referral_id = fields.String()
    short_id = fields.String()
    title = fields.String(allow_none=True)  # null once the referral was erased
    body = fields.String(allow_none=True)
    link = fields.String()
    created_at = fields.DateTime()
    read_at = fields.DateTime(allow_none=True)


class NotificationPage(Schema):
    items = fields.List(fields.Nested(NotificationOut))
    total = fields.Integer()
    unread = fields.Boolean()
    limit = fields.Integer()
    offset = fields.Integer()
