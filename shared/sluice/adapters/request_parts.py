"""Cutting many writes or messages into requests a service accepts: at most so many, so large."""

from __future__ import annotations

from collections.abc import Sequence


def request_ranges(sizes: Sequence[int], *, max_count: int, max_bytes: int) -> list[range]:
    """Consecutive ranges of entries, each at most `max_count` long and `max_bytes` in sum (a
    single entry larger than that gets a range of its own)."""
    ranges, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_count or total + size > max_bytes):
            ranges.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        ranges.append(range(start, len(sizes)))
    return ranges
