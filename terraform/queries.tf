# The Firestore indexes, derived from the one declaration of the queries that need them:
# shared/sluice/adapters/queries.yaml, which the adapters build those queries from. Firestore's
# rules: a query filtering on one field and ordered by another, or ordered by two, is served only
# by a composite index (its equality fields, then its order, then the document name); a query
# over a collection group, even on one field, only by indexes of collection-group scope.
# Nothing here needs the provider; firestore.tf creates the indexes.
locals {
  query_declarations = yamldecode(file("${path.module}/../shared/sluice/adapters/queries.yaml"))
  # Every other operator is a range, which Firestore orders the results by.
  equality_operators = ["==", "in"]

  queries = {
    for name, q in local.query_declarations : name => {
      collection  = q.collection
      query_scope = lookup(q, "group", false) ? "COLLECTION_GROUP" : "COLLECTION"
      equal       = distinct([for f in q.where : f.field if contains(local.equality_operators, f.op)])
      ranges      = distinct([for f in q.where : f.field if !contains(local.equality_operators, f.op)])
      order_by = [
        for o in lookup(q, "order_by", []) : { field = o.field, order = lookup(o, "direction", "ASCENDING") }
      ]
    }
  }

  # How Firestore orders each query's results: by its order_by, then by each range field not in
  # it (ascending), then by the document name.
  query_orders = {
    for name, q in local.queries : name => concat(
      [for o in q.order_by : o if o.field != "__name__"],
      [for f in q.ranges : { field = f, order = "ASCENDING" } if !contains([for o in q.order_by : o.field], f)],
    )
  }

  query_shapes = {
    for name, q in local.queries : name => {
      collection  = q.collection
      query_scope = q.query_scope
      ordered     = local.query_orders[name]
      # Equality fields it is not also ordered by.
      equal = [for f in q.equal : f if !contains([for o in local.query_orders[name] : o.field], f)]
      # The document name's direction: as ordered, or else the last field's.
      name_order = concat(
        [for o in q.order_by : o.order if o.field == "__name__"],
        [for o in reverse(local.query_orders[name]) : o.order],
        ["ASCENDING"],
      )[0]
    }
  }

  composite_indexes = {
    for name, q in local.query_shapes : name => {
      collection  = q.collection
      query_scope = q.query_scope
      fields = concat(
        [for f in q.equal : [f, "ASCENDING"]],
        [for o in q.ordered : [o.field, o.order]],
        [["__name__", q.name_order]],
      )
    }
    if length(q.ordered) > 1 || (length(q.ordered) == 1 && length(q.equal) > 0)
  }

  # A collection-group query that needs no composite index needs each field it filters on indexed
  # across the group, as "collection/field".
  group_field_indexes = {
    for key in distinct(flatten([
      for name, q in local.query_shapes : [for f in concat(q.equal, [for o in q.ordered : o.field]) : "${q.collection}/${f}"]
      if q.query_scope == "COLLECTION_GROUP" && !contains(keys(local.composite_indexes), name)
    ])) : key => { collection = split("/", key)[0], field = split("/", key)[1] }
  }
}
