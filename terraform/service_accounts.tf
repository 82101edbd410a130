# One service account per function; one that Pub/Sub pushes as, one that Eventarc delivers as,
# and one that owns the spreadsheets. What each may do is in iam.tf.

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = each.value.account_id
  display_name = "Sluice ${each.value.name}"
  description  = "Runs the ${each.value.name} function."

  lifecycle {
    precondition {
      condition     = length(each.value.account_id) <= 30
      error_message = "The service account id ${each.value.account_id} is over 30 characters: shorten var.prefix or the function's name."
    }
  }
}

resource "google_service_account" "pusher" {
  account_id   = local.account_ids.pusher
  display_name = "${local.title} Pub/Sub push"
  description  = "Signs the OIDC tokens of Pub/Sub push deliveries to the event functions."
}

resource "google_service_account" "eventarc" {
  account_id   = local.account_ids.eventarc
  display_name = "${local.title} Eventarc"
  description  = "Delivers Firestore change events to sheets-writer and backfill."
}

resource "google_service_account" "sheets" {
  account_id   = local.account_ids.sheets
  display_name = "${local.title} Sheets"
  description  = "Owns the exported spreadsheets; the functions that touch Sheets act as it."
}
