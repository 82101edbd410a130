"""The repository's topology with some values changed, for tests of what a change does."""

from __future__ import annotations

from typing import Any

import yaml

from sluice.topology import REPO_TOPOLOGY


def mutated(changes: dict[str, Any]) -> str:
    """topology.yaml as text, with each dotted path in `changes` set to its value."""
    raw = yaml.safe_load(REPO_TOPOLOGY.read_text())
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return yaml.safe_dump(raw)
