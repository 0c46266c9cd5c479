"""``servicekit.canonical``: a compiled schema gives exactly marshmallow's dump of its load,
or refuses; the dump of anything valid takes the shortcut; schemas using what the compiler
does not know compile to ``None``. (The event schemas themselves: test_events.py.)"""
from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from servicekit.canonical import NotCanonical, compile_schema
from servicekit.events import _known_only
from servicekit.testing import exact


def _even(value: int) -> None:
    if value % 2:
        raise ValidationError("odd")


class Inner(Schema):
    class Meta:
        unknown = RAISE

    n = fields.Integer(validate=validate.Range(0, 10, min_inclusive=False, max_inclusive=False))
    tag = fields.String(validate=validate.Length(equal=2))

    @validates_schema
    def _not_five_and_xx(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("n") == 5 and data.get("tag") == "xx":
            raise ValidationError("not both", "n")


class Sample(Schema):
    class Meta:
        unknown = RAISE

    flag = fields.Boolean(required=True)
    count = fields.Integer(validate=[validate.Range(min=0), _even])
    ratio = fields.Float(load_default=None, allow_none=True, validate=validate.Range(max=1))
    ident = fields.UUID()
    word = fields.String(validate=validate.OneOf(["a", "b"]), load_default="a")
    inner = fields.Nested(Inner, allow_none=True)
    inners = fields.List(fields.Nested(Inner), load_default=list)
    scores = fields.Dict(keys=fields.String(validate=validate.Regexp(r"[a-z]+\Z")),
                         values=fields.Float(allow_nan=True))
    labels = fields.Dict()


ODD = st.sampled_from([None, True, False, 0, 1, -1, 2, 4, 5, 10, 0.5, 1.0, 2.0, "", "a", "b",
                       "xx", "1", "true", [], {}, {"n": 5}, str(uuid.uuid4()),
                       str(uuid.uuid4()).upper()])
INNER = st.fixed_dictionaries({}, optional={
    "n": st.integers(0, 10), "tag": st.sampled_from(["xx", "ab", "ab", "abc"]), "extra": ODD})
FIELDS = {  # mostly valid values, and some just past each rule
    "count": st.sampled_from([0, 2, 4, 3, -2]),
    "ratio": st.one_of(st.none(), st.floats(-2, 1), st.floats(),
                       st.sampled_from([-math.inf, math.nan])),
    "ident": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper())),
    "word": st.sampled_from(["a", "b", "c"]),
    "inner": st.one_of(st.none(), INNER),
    "inners": st.lists(INNER, max_size=3),
    "scores": st.dictionaries(st.sampled_from(["a", "zz", "zz", "A", ""]), st.floats(),
                              max_size=2),
    "labels": st.dictionaries(st.text(max_size=2), ODD, max_size=2),
    "unknown": ODD,
}


@st.composite
def samples(draw: st.DrawFn) -> Any:
    """Data for ``Sample`` near its rules; sometimes a key is dropped or gets an odd value."""
    data = {"flag": draw(st.booleans()), **draw(st.fixed_dictionaries({}, optional=FIELDS))}
    change = draw(st.sampled_from(["none", "none", "drop", "odd"]))
    if change == "drop":
        del data[draw(st.sampled_from(sorted(data)))]
    elif change == "odd":
        data[draw(st.sampled_from(["flag", *sorted(FIELDS)]))] = draw(ODD)
    return data

def _reference(schema: Schema, data: Any) -> Any:
    try:
        return schema.dump(schema.load(_known_only(schema, data)))
    except ValidationError:
        return NotCanonical


def _compiled(convert: Any, data: Any) -> Any:
    try:
        return convert(data)
    except NotCanonical:
        return NotCanonical


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(samples())
def test_the_compiled_schema_agrees_with_marshmallow_and_takes_every_dump(data: Any) -> None:
    schema = Sample()
    convert = compile_schema(schema)
    assert convert is not None
    got, want = _compiled(convert, data), _reference(schema, data)
    if got is not NotCanonical:
        assert exact(got) == exact(want)
    if want is not NotCanonical:  # a dump is canonical: it must take the shortcut, unchanged
        assert exact(_compiled(convert, want)) == exact(want)


def test_valid_canonical_data_and_its_refusals() -> None:
    convert = compile_schema(Sample())
    assert convert is not None
    ident = str(uuid.uuid4())
    data = {"flag": True, "count": 4, "ident": ident, "inner": None,
            "inners": [{"n": 9, "tag": "ab"}], "scores": {"zz": 0.5}, "labels": {"k": [1]}}
    assert list(convert(data)) == ["flag", "count", "ratio", "ident", "word", "inner", "inners",
                                   "scores", "labels"]
    for change in ({"count": 3}, {"count": 4.0}, {"ratio": 1}, {"ident": ident.upper()},
                   {"flag": 1}, {"inners": [{"n": 10}]}, {"inners": [{"n": 5, "tag": "xx"}]},
                   {"scores": {"A": 0.5}}, {"inner": {"tag": "abc"}}):
        with pytest.raises(NotCanonical):
            convert({**data, **change})
    with pytest.raises(NotCanonical):
        convert({key: value for key, value in data.items() if key != "flag"})  # required


class _Loaded(Schema):
    at = fields.UUID()

    @validates_schema
    def _check(self, data: dict[str, Any], **kwargs: Any) -> None:
        pass


class _PassOriginal(Schema):
    n = fields.Integer()

    @validates_schema(pass_original=True)
    def _check(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        pass


class _PostLoad(Schema):
    n = fields.Integer()

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return data


class _PreLoad(Schema):
    n = fields.Integer()

    @pre_load
    def _fix(self, data: dict[str, Any], **kwargs: Any) -> Any:
        return data


@pytest.mark.parametrize("schema", [
    _Loaded(), _PassOriginal(), _PostLoad(), _PreLoad(),
    Schema.from_dict({"n": fields.Integer(data_key="N")})(),
    Schema.from_dict({"n": fields.Integer(attribute="m")})(),
    Schema.from_dict({"n": fields.Integer(dump_default=1)})(),
    Schema.from_dict({"n": fields.Integer(as_string=True)})(),
    Schema.from_dict({"d": fields.Date()})(),
    Schema.from_dict({"e": fields.Email()})(),
    Schema.from_dict({"u": fields.UUID(validate=lambda value: True)})(),
    Schema.from_dict({"b": fields.Boolean(truthy={"yes"})})(),
    Schema.from_dict({"i": fields.Nested(Inner, many=True)})(),
    Schema.from_dict({"i": fields.List(fields.Date())})(),
], ids=lambda schema: type(schema).__name__)
def test_what_the_compiler_does_not_know_compiles_to_none(schema: Schema) -> None:
    assert compile_schema(schema) is None
