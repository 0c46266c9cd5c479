"""Request-schema building blocks every service api shares."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

LANGUAGE_TAG = validate.Regexp(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z",
                               error="Not a BCP 47 language tag.")


class Strict(Schema):
    """Unknown fields are errors (DESIGN §8), in bodies and query strings alike."""

    class Meta:
        unknown = RAISE


class PageArgs(Strict):
    """``limit``/``offset`` pagination; subclasses add their own filters."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))
