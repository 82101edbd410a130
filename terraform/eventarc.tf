# Eventarc Firestore triggers, one per topology entry: every write matching the document pattern
# in the deployment's database reaches the function as a CloudEvent with protobuf data, as the
# local cloud's emulator sends it.
resource "google_eventarc_trigger" "firestore" {
  for_each = local.firestore_triggers

  name                    = each.value.name
  location                = var.firestore_location
  service_account         = google_service_account.eventarc.email
  event_data_content_type = "application/protobuf"

  matching_criteria {
    attribute = "type"
    value     = each.value.event_type
  }
  matching_criteria {
    attribute = "database"
    value     = google_firestore_database.database.name
  }
  matching_criteria {
    attribute = "document"
    value     = each.value.document
    operator  = "match-path-pattern"
  }

  destination {
    cloud_run_service {
      service = google_cloudfunctions2_function.function[each.value.function].service_config[0].service
      region  = var.region
    }
  }

  depends_on = [google_project_iam_member.eventarc_receiver]
}
