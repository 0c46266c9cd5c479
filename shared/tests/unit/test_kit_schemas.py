"""Shared field rules."""
from __future__ import annotations

import pytest
from marshmallow import ValidationError

from servicekit.schemas import LANGUAGE_TAG


@pytest.mark.parametrize("tag", ["en", "es-MX", "zh-Hant-TW"])
def test_language_tags_accepted(tag: str) -> None:
    assert LANGUAGE_TAG(tag) == tag


@pytest.mark.parametrize("tag", ["en\n", "e", "english!", "en-", ""])
def test_language_tags_refused_including_a_trailing_newline(tag: str) -> None:
    with pytest.raises(ValidationError):
        LANGUAGE_TAG(tag)
