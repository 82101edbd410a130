"""The Firestore queries that need an index Firestore does not make by itself, built from their one
declaration, `queries.yaml` beside this module, which terraform/firestore.tf reads to declare
their indexes. An adapter runs such a query only through `declared(name).on(...)`, so the query
it sends is the query the index was made for.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

QUERIES_FILE = Path(__file__).with_name("queries.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(_Strict):
    field: str = Field(min_length=1)
    # Equality (==, in) or a range (< <= > >=): what terraform/firestore.tf tells apart.
    op: Literal["==", "in", "<", "<=", ">", ">="]


class Order(_Strict):
    field: str = Field(min_length=1)
    direction: Literal["ASCENDING", "DESCENDING"] = "ASCENDING"


class DeclaredQuery(_Strict):
    collection: str = Field(min_length=1)
    # Every collection with this id (a collection group), not one parent's collection.
    group: bool = False
    where: list[Filter] = Field(min_length=1)
    order_by: list[Order] = Field(default_factory=list)

    def on(self, parent: firestore.Client | firestore.DocumentReference,
           values: Mapping[str, Any]) -> firestore.Query:  # fmt: skip
        """The query under `parent` (the client for a top-level collection or a group, else the
        parent document), with each filter's value from `values`, by field."""
        if set(values) != {f.field for f in self.where}:
            raise ValueError(
                f"values for {sorted(values)}; the query filters on "
                f"{sorted(f.field for f in self.where)}"
            )
        if self.group:
            if not isinstance(parent, firestore.Client):
                raise TypeError("a collection group is queried from the client")
            query: firestore.Query = parent.collection_group(self.collection)
        else:
            query = parent.collection(self.collection)  # type: ignore[assignment]
        for f in self.where:
            query = query.where(filter=FieldFilter(f.field, f.op, values[f.field]))
        for o in self.order_by:
            query = query.order_by(o.field, direction=o.direction)
        return query


@cache
def declarations(path: Path = QUERIES_FILE) -> dict[str, DeclaredQuery]:
    adapter = TypeAdapter(dict[str, DeclaredQuery])
    return adapter.validate_python(yaml.safe_load(path.read_text()))


def declared(name: str) -> DeclaredQuery:
    """The declared query `name`; a name not in queries.yaml fails when the adapter is imported."""
    found = declarations().get(name)
    if found is None:
        raise KeyError(f"no query {name!r} in {QUERIES_FILE.name}")
    return found
