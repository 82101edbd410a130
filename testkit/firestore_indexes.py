"""Firestore's index rules, applied to the structured queries a process sends: which index each
query needs, and whether terraform/ declares one that serves it.

The Firestore emulator serves every query without an index, so a query the cloud would refuse
(`FAILED_PRECONDITION: The query requires an index`) passes every local test. These rules are the
cloud's, from its documentation ("Index types", "Manage indexes"):

- Results are ordered by the explicit order, then by each range field (<, <=, >, >=, !=, not-in)
  not in it, ascending, then by the document name (`__name__`).
- A query ordered by two fields, or ordered by one and filtering another by equality, needs a
  composite index: its equality fields (any order among themselves; `CONTAINS` for an array
  filter), then its order, field by field, in the same directions, then the document name.
- Any other query (equality filters only, merged; or one field, filtered and ordered) is served by
  single-field indexes, one per field. Firestore makes them itself (ascending, descending,
  array-contains) for one collection, unless a field override replaces them; for a collection
  group it makes none, so each must be declared (a `google_firestore_field` index of
  COLLECTION_GROUP scope).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.cloud.firestore_v1.types import StructuredQuery

from testkit.hcl import Config

RANGE_OPERATORS = {"LESS_THAN", "LESS_THAN_OR_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL",
                   "NOT_EQUAL", "NOT_IN", "IS_NOT_NAN", "IS_NOT_NULL"}  # fmt: skip
ARRAY_OPERATORS = {"ARRAY_CONTAINS", "ARRAY_CONTAINS_ANY"}
NAME = "__name__"
# What Firestore makes by itself for every field of one collection.
AUTOMATIC = {("COLLECTION", "ASCENDING"), ("COLLECTION", "DESCENDING"), ("COLLECTION", "CONTAINS")}


@dataclass(frozen=True)
class Shape:
    """What choosing an index depends on, for one query."""

    collection: str
    scope: str  # COLLECTION or COLLECTION_GROUP
    # (field, EQUAL or CONTAINS) of the fields filtered by equality (CONTAINS: an array filter)
    # and not also ordered by.
    equal: tuple[tuple[str, str], ...]
    # (field, direction) as Firestore orders the results, without the document name.
    ordered: tuple[tuple[str, str], ...]
    name_order: str

    @property
    def needs_composite(self) -> bool:
        return len(self.ordered) > 1 or (len(self.ordered) == 1 and bool(self.equal))

    def __str__(self) -> str:
        where = " ".join(f"{f} {kind.lower()}" for f, kind in self.equal)
        order = ", ".join(f"{f} {d[:3].lower()}" for f, d in self.ordered)
        scope = "group " if self.scope == "COLLECTION_GROUP" else ""
        return f"{scope}{self.collection} [{where}] order by [{order}]"


def shape(query: StructuredQuery) -> Shape:
    (source,) = query.from_
    equal: dict[str, str] = {}
    ranges: list[str] = []
    for kind, name in _filters(query.where) if _has(query, "where") else []:
        if kind in RANGE_OPERATORS:
            ranges.append(name)
        else:
            equal[name] = "CONTAINS" if kind in ARRAY_OPERATORS else "EQUAL"
    explicit = [(o.field.field_path, o.direction.name) for o in query.order_by]
    ordered = [(f, d) for f, d in explicit if f != NAME]
    ordered += [(f, "ASCENDING") for f in dict.fromkeys(ranges) if f not in dict(ordered)]
    name_order = dict(explicit).get(NAME) or (ordered[-1][1] if ordered else "ASCENDING")
    return Shape(
        collection=source.collection_id,
        scope="COLLECTION_GROUP" if source.all_descendants else "COLLECTION",
        equal=tuple(sorted((f, k) for f, k in equal.items() if f not in dict(ordered))),
        ordered=tuple(ordered),
        name_order=name_order,
    )


def _has(message: Any, name: str) -> bool:
    return type(message).pb(message).HasField(name)


def _filters(node: StructuredQuery.Filter) -> list[tuple[str, str]]:
    """(operator, field) of every filter under `node`, which must be a conjunction."""
    which = StructuredQuery.Filter.pb(node).WhichOneof("filter_type")
    if which == "composite_filter":
        if node.composite_filter.op.name != "AND":
            raise NotImplementedError("an OR query needs an index per disjunct: not modelled")
        return [f for inner in node.composite_filter.filters for f in _filters(inner)]
    if which == "field_filter":
        return [(node.field_filter.op.name, node.field_filter.field.field_path)]
    return [(node.unary_filter.op.name, node.unary_filter.field.field_path)]


@dataclass
class Indexes:
    """The indexes terraform/ declares for the database."""

    composite: set[tuple[str, str, tuple[tuple[str, str], ...]]] = field(default_factory=set)
    # (collection, field) -> its (scope, order) single-field indexes, where overridden.
    overrides: dict[tuple[str, str], set[tuple[str, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, tf: Config) -> Indexes:
        indexes = cls()
        for index in tf.resources("google_firestore_index", "composite").values():
            fields = tuple(
                (f["field_path"], f.get("order") or f.get("array_config")) for f in index["fields"]
            )
            indexes.composite.add((index["collection"], index["query_scope"], fields))
        for block in tf.blocks_of("resource", "google_firestore_field"):
            for override in tf.resources(*block.labels).values():
                config = override.get("index_config", [{}])[0]
                indexes.overrides[(override["collection"], override["field"])] = {
                    (i["query_scope"], i.get("order") or i.get("array_config"))
                    for i in config.get("indexes", [])
                }
        return indexes

    def single(self, collection: str, field: str) -> set[tuple[str, str]]:
        return self.overrides.get((collection, field), AUTOMATIC)

    def missing(self, query: Shape) -> str | None:
        """None when a declared index serves `query`; otherwise the index it needs."""
        if query.needs_composite:
            for collection, scope, fields in self.composite:
                if (collection, scope) != (query.collection, query.scope):
                    continue
                if fields and fields[-1][0] == NAME:
                    if fields[-1][1] != query.name_order:
                        continue
                    fields = fields[:-1]
                # The equality fields first, in any order and direction, then the order exactly.
                n = len(query.equal)
                equal = {(f, "CONTAINS" if k == "CONTAINS" else "EQUAL") for f, k in fields[:n]}
                if equal == set(query.equal) and fields[n:] == query.ordered:
                    return None
            needed = [*query.equal, *query.ordered, (NAME, query.name_order)]
            return f"a composite index ({query.scope}) on {query.collection}: {needed}"
        for f, kind in [*query.equal, *query.ordered]:
            have = {order for scope, order in self.single(query.collection, f)
                    if scope == query.scope}  # fmt: skip
            if not (have & {"ASCENDING", "DESCENDING"} if kind == "EQUAL" else kind in have):
                return f"a single-field index ({query.scope}, {kind}) on {query.collection}.{f}"
        return None


def unserved(queries: Iterable[StructuredQuery], indexes: Indexes) -> list[str]:
    """Each query no declared index serves, with the index it needs."""
    problems = []
    for query in queries:
        found = shape(query)
        if (need := indexes.missing(found)) is not None:
            problems.append(f"{found}: needs {need}")
    return problems
