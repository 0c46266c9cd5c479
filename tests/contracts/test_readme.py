"""The README keeps its promises: two commands first, and the full configuration table."""
from __future__ import annotations

from pathlib import Path

from servicekit.settings import ENVIRONMENT, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    first = [line.split("#")[0].strip() for line in README.read_text().splitlines()[:2]]
    assert first == ["make up", "make test"]


def test_readme_configuration_table_lists_every_variable_the_code_reads() -> None:
    text = README.read_text()
    assert markdown_table() in text
    for var in ENVIRONMENT:
        assert f"`{var.name}`" in text
