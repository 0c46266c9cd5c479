"""Prints the fault suite's figures at the end of the run, whatever the outcome."""
from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .test_faults import RESULTS, table

    if RESULTS:
        terminalreporter.write_sep("=", "fault suite figures")
        for line in table(RESULTS):
            terminalreporter.write_line(line)
