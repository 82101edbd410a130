resource "google_firestore_database" "database" {
  name                              = local.database_name
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` leaves the data: deleting it is a decision made by hand.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.api]
}

# The composite indexes, each named after the query that needs it (queries.tf derives them from
# shared/sluice/adapters/queries.yaml).
resource "google_firestore_index" "composite" {
  for_each = local.composite_indexes

  database    = google_firestore_database.database.name
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }
}

# The fields that collection-group queries filter on without a composite index, indexed across the
# group (the automatic single-field indexes cover one collection only). An override replaces
# Firestore's own indexes on the field, so the one-collection ascending index is declared again.
resource "google_firestore_field" "collection_group" {
  for_each = local.group_field_indexes

  database   = google_firestore_database.database.name
  collection = each.value.collection
  field      = each.value.field

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }
}

# Declared by hand before queries.yaml, for ExportStore.stalled_backfills: the same field index.
moved {
  from = google_firestore_field.exports_backfill_state
  to   = google_firestore_field.collection_group["exports/backfill_state"]
}

# WhatsApp message records exist to recognise a repeated delivery; Firestore deletes each one
# after its `expires_at` (retention.whatsapp_message_days in topology.yaml). A TTL field is left
# unindexed: an index on an ever-growing timestamp is a write hot spot.
resource "google_firestore_field" "messages_ttl" {
  database   = google_firestore_database.database.name
  collection = "messages"
  field      = "expires_at"

  ttl_config {}
  index_config {}
}
