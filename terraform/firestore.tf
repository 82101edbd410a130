resource "google_firestore_database" "database" {
  name                              = "(default)"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  # `terraform destroy` leaves the data: deleting it is a decision made by hand.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.api]
}

locals {
  # Composite indexes, each named after the query that needs it.
  composite_indexes = {
    # The backfill: a job's succeeded items that finished before the export, in (finished_at, id)
    # order (JobStore.succeeded_before).
    items-succeeded-before = {
      collection  = "items"
      query_scope = "COLLECTION"
      fields      = [["state", "ASCENDING"], ["finished_at", "ASCENDING"], ["__name__", "ASCENDING"]]
    }
    # The sweeper: export rows queued and unwritten for too long, across jobs
    # (ExportStore.stranded_rows).
    rows-stranded = {
      collection  = "rows"
      query_scope = "COLLECTION_GROUP"
      fields      = [["written", "ASCENDING"], ["queued_at", "ASCENDING"], ["__name__", "ASCENDING"]]
    }
  }
}

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

# The sweeper's query for stalled backfills runs across jobs (a collection group), which the
# automatic single-field indexes do not cover (ExportStore.stalled_backfills).
resource "google_firestore_field" "exports_backfill_state" {
  database   = google_firestore_database.database.name
  collection = "exports"
  field      = "backfill_state"

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
