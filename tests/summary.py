"""The fault suite's summary lines, repeated at the end of the run: pytest hides what a passing test prints."""

from __future__ import annotations

SUMMARIES: list[str] = []
"""Every summary line of this process; under xdist the workers' lines are gathered by the controller
(`tests/conftest.py`)."""


def report(line: str) -> None:
    """Prints a test's summary line, and keeps it for the end of the run."""
    print(line)
    SUMMARIES.append(line)
