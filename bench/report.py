"""What every bench reports with: percentiles and Markdown tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table; a column named with a leading ">" is right-aligned (numbers)."""
    names = [c.removeprefix(">") for c in columns]
    rules = ["---:" if c.startswith(">") else "---" for c in columns]
    return [
        f"| {' | '.join(names)} |",
        f"| {' | '.join(rules)} |",
        *(f"| {' | '.join(str(v) for v in row)} |" for row in rows),
    ]
