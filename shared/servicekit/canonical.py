"""``schema.dump(schema.load(data))`` in one pass of plain checks, for data that is already in
the form the dump gives.

Events reach consumers in exactly that form (``events.new_event`` dumps what it validated),
and every consumer decodes each event with a load and a dump: marshmallow's per-field
bookkeeping (getters, error stores, a validator composite built per call) was a fifth of the
consumers' CPU. ``compile_schema`` turns a schema, once, into nested closures that check each
field's type and validators and return the dumped form, or raise ``NotCanonical``: for
invalid data, for valid data the load would change (an int in a Float field, a UUID in
capitals, a time with an offset), for anything unusual. The caller then takes marshmallow's
own path, which stays the source of truth and words the errors. Validators of known kinds
(OneOf, Length, Range, Regexp) become direct comparisons; others are called as they are.

Keys the schema does not know are ignored at every level, as the events' ``decode`` drops
them before loading. Schemas and fields using what this does not know (load or dump
processors, ``@validates``, ``data_key``/``attribute``, dump defaults, other field classes,
validators on fields whose loaded value is not their JSON value, schema validators on a
schema with such fields) compile to ``None``: always marshmallow's path.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from marshmallow import Schema, ValidationError, fields, missing, validate
from marshmallow.decorators import (
    POST_DUMP,
    POST_LOAD,
    PRE_DUMP,
    PRE_LOAD,
    VALIDATES,
    VALIDATES_SCHEMA,
)

Convert = Callable[[Any], Any]
# field class -> whether a JSON value is one that field loads and dumps back unchanged
Canonical = Mapping[type, Callable[[Any], bool]]


class NotCanonical(Exception):
    """The data is not one the compiled form vouches for: ask marshmallow."""


class _Unsupported(Exception):
    """Raised while compiling: the schema uses something the compiled form does not know."""


# what a Field of this class loads a JSON value of this type to, unchanged, and dumps as is
_SCALARS: dict[type[fields.Field[Any]], type] = {
    fields.String: str, fields.Integer: int, fields.Float: float, fields.Boolean: bool,
}
# str(uuid.UUID(text)) == text exactly for these
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def compile_schema(schema: Schema, canonical: Canonical | None = None) -> Convert | None:
    """``data -> schema.dump(schema.load(data))`` for canonical data, raising
    ``NotCanonical`` otherwise; ``None`` if ``schema`` uses what this does not know.
    ``canonical`` adds field classes whose loaded value is not JSON (such as a datetime)."""
    try:
        return _schema(schema, canonical or {})[0]
    except _Unsupported:
        return None


def _schema(schema: Schema, canonical: Canonical) -> tuple[Convert, bool]:
    """The schema's converter and whether it is plain (what it loads is what it dumps)."""
    hooks = schema._hooks  # marshmallow's registry of decorated methods
    if (hooks[PRE_LOAD] or hooks[POST_LOAD] or hooks[PRE_DUMP] or hooks[POST_DUMP]
            or hooks[VALIDATES] or schema.many or schema.partial
            or schema.dict_class is not dict
            or list(schema.load_fields) != list(schema.fields)
            or list(schema.dump_fields) != list(schema.fields)):
        raise _Unsupported
    steps: list[tuple[str, type, Callable[[Any], Any] | None, Convert,
                      Callable[[], Any] | None]] = []
    plain = True
    for name, field in schema.fields.items():
        field_convert, field_plain = _field(field, canonical)
        plain = plain and field_plain
        shape, check = _shape(field)
        steps.append((name, shape, check, field_convert, _absent(field, field_convert)))
    hooked = hooks[VALIDATES_SCHEMA]
    if hooked and (not plain or any(kw.get("pass_original") for _, _, kw in hooked)):
        raise _Unsupported  # the validators want the loaded data: only here it is the dumped
    # in the order Schema.load calls them: those registered for collections first
    validators = tuple(getattr(schema, name) for collection in (True, False)
                       for name, many, _ in hooked if many == collection)
    partial, unknown = schema.partial, schema.unknown
    checked = tuple(steps)

    def convert(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise NotCanonical
        out: dict[str, Any] = {}
        for name, shape, check, convert_field, absent in checked:
            item = value.get(name, missing)
            if type(item) is shape and (check is None or check(item)):
                out[name] = item  # a scalar, checked here: a call less per field
            elif item is not missing:
                out[name] = convert_field(item)
            elif absent is not None:
                out[name] = absent()
        for validator in validators:  # as Schema.load calls them, on the loaded data
            try:
                validator(out, partial=partial, many=False, unknown=unknown)
            except ValidationError:
                raise NotCanonical from None
        return out

    return convert, plain


def _absent(field: fields.Field[Any], convert: Convert) -> Callable[[], Any] | None:
    """What a missing key adds to the dump: nothing, the dumped default, or (required) a
    fall back to marshmallow for its error."""
    if field.required:
        def required() -> Any:
            raise NotCanonical
        return required
    default = field.load_default
    if default is missing:
        return None
    return lambda: convert(default() if callable(default) else default)


def _field(field: fields.Field[Any], canonical: Canonical) -> tuple[Convert, bool]:
    """The field's converter (raising ``NotCanonical``) and whether it is plain."""
    if (field.data_key is not None or field.attribute is not None or field.load_only
            or field.dump_only or field.dump_default is not missing
            or field.pre_load or field.post_load):
        raise _Unsupported
    kind = type(field)
    allow_none = field.allow_none
    if kind in _SCALARS and _scalar_ok(field):
        return _scalar(*_shape(field), allow_none), True
    if field.validators:
        raise _Unsupported  # below, the loaded value is not the JSON one the checks see
    if kind in canonical:
        return _custom(canonical[kind], allow_none), False
    if kind is fields.UUID:
        return _custom(lambda v: type(v) is str and _CANONICAL_UUID.match(v) is not None,
                       allow_none), False
    if kind is fields.Nested:
        nested = cast(fields.Nested, field)
        if nested.many or nested.only is not None or nested.exclude:
            raise _Unsupported
        return _nullable(*_schema(nested.schema, canonical), allow_none)
    if kind is fields.List:
        return _list(*_field(cast(fields.List[Any], field).inner, canonical), allow_none)
    if kind is fields.Dict:
        return _dict(cast(fields.Dict, field), canonical, allow_none)
    raise _Unsupported


def _scalar_ok(field: fields.Field[Any]) -> bool:
    if isinstance(field, fields.Number) and field.as_string:
        return False
    if isinstance(field, fields.Boolean):  # customised truthy/falsy may refuse True/False
        return field.truthy is fields.Boolean.truthy and field.falsy is fields.Boolean.falsy
    return True


class _Never:
    """The type of no value: the shape of fields the schemas' loops do not check themselves."""


def _shape(field: fields.Field[Any]) -> tuple[type, Callable[[Any], Any] | None]:
    """For a scalar field, the type its canonical values have and their check (so that a
    schema's loop checks it without a call to its converter); ``_Never`` for others."""
    kind = type(field)
    if kind not in _SCALARS or not _scalar_ok(field):
        return _Never, None
    checks = [_predicate(v) for v in field.validators]
    if kind is fields.Float and not cast(fields.Float, field).allow_nan:
        checks.append(math.isfinite)  # infinities: JSON's 1e400
    return _SCALARS[kind], _all(checks)


def _scalar(expected: type, check: Callable[[Any], Any] | None, allow_none: bool) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is expected and (check is None or check(value)):
            return value
        if value is None and allow_none:
            return None
        raise NotCanonical

    return convert


def _custom(accepts: Callable[[Any], bool], allow_none: bool) -> Convert:
    def convert(value: Any) -> Any:
        if accepts(value):
            return value
        if value is None and allow_none:
            return None
        raise NotCanonical

    return convert


def _nullable(convert: Convert, plain: bool, allow_none: bool) -> tuple[Convert, bool]:
    if not allow_none:
        return convert, plain

    def nullable(value: Any) -> Any:
        return None if value is None else convert(value)

    return nullable, plain


def _list(inner: Convert, plain: bool, allow_none: bool) -> tuple[Convert, bool]:
    def convert(value: Any) -> Any:
        if type(value) is list:
            return [inner(item) for item in value]
        if value is None and allow_none:
            return None
        raise NotCanonical

    return convert, plain


def _dict(field: fields.Dict, canonical: Canonical, allow_none: bool) -> tuple[Convert, bool]:
    keys, keys_plain = (None, True) if field.key_field is None else \
        _field(field.key_field, canonical)
    values, values_plain = (None, True) if field.value_field is None else \
        _field(field.value_field, canonical)
    if not keys_plain:
        raise _Unsupported  # keys of one load could collide in another form

    def convert(value: Any) -> Any:
        if type(value) is dict:
            if keys is None and values is None:
                return dict(value)
            if values is None:
                return {keys(k): v for k, v in value.items()}  # type: ignore[misc]
            if keys is None:
                return {k: values(v) for k, v in value.items()}
            return {keys(k): values(v) for k, v in value.items()}
        if value is None and allow_none:
            return None
        raise NotCanonical

    return convert, values_plain


def _all(checks: list[Callable[[Any], Any]]) -> Callable[[Any], Any] | None:
    """One predicate for all of ``checks`` (``None``: there are none)."""
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _predicate(validator: Callable[[Any], Any]) -> Callable[[Any], Any]:
    kind = type(validator)  # exactly: a subclass may validate otherwise
    if kind is validate.OneOf:
        try:
            return frozenset(cast(validate.OneOf, validator).choices).__contains__
        except TypeError:  # unhashable choices
            pass
    if kind is validate.Length:
        length = cast(validate.Length, validator)
        low, high, equal = length.min, length.max, length.equal
        if equal is not None:
            return lambda value: len(value) == equal
        return lambda value: (low is None or len(value) >= low) and (
            high is None or len(value) <= high)
    if kind is validate.Range:
        return _range(cast(validate.Range, validator))
    if kind is validate.Regexp:
        match: Callable[[Any], Any] = cast(validate.Regexp, validator).regex.match
        return match

    def passes(value: Any) -> bool:
        try:
            validator(value)
        except ValidationError:
            return False
        return True

    return passes


def _range(r: validate.Range) -> Callable[[Any], bool]:
    low, high, low_in, high_in = r.min, r.max, r.min_inclusive, r.max_inclusive

    def within(value: Any) -> bool:
        if low is not None and (value < low if low_in else value <= low):
            return False
        return high is None or (value <= high if high_in else value < high)

    return within
