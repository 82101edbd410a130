# One service account per function, with only the roles it needs; one that Pub/Sub pushes as, one
# that Eventarc delivers as, and one that owns the spreadsheets.

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = "sluice-${each.key}"
  display_name = "Sluice ${each.key}"
  description  = "Runs the ${each.key} function."
}

resource "google_service_account" "pusher" {
  account_id   = "sluice-pubsub-push"
  display_name = "Sluice Pub/Sub push"
  description  = "Signs the OIDC tokens of Pub/Sub push deliveries to the event functions."
}

resource "google_service_account" "eventarc" {
  account_id   = "sluice-eventarc"
  display_name = "Sluice Eventarc"
  description  = "Delivers Firestore change events to sheets-writer and backfill."
}

resource "google_service_account" "sheets" {
  account_id   = "sluice-sheets"
  display_name = "Sluice Sheets"
  description  = "Owns the exported spreadsheets; the functions that touch Sheets act as it."
}

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# Every function reads and writes Firestore (Firestore has no narrower role than the database).
resource "google_project_iam_member" "firestore" {
  for_each = local.functions

  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.function[each.key].member
}

# Publish only to the topics the topology says it publishes to; viewer for the health check's
# topic lookup.
resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = {
    for pair in setproduct(keys(local.publishers), ["roles/pubsub.publisher", "roles/pubsub.viewer"]) :
    "${pair[0]}/${pair[1]}" => merge(local.publishers[pair[0]], { role = pair[1] })
  }

  topic  = google_pubsub_topic.topic[each.value.topic].id
  role   = each.value.role
  member = google_service_account.function[each.value.function].member
}

resource "google_secret_manager_secret_iam_member" "reader" {
  for_each = local.secret_readers

  secret_id = google_secret_manager_secret.setting[each.value.setting].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.value.function].member
}

# The functions that need Sheets may mint tokens for the Sheets service account, and only they.
resource "google_service_account_iam_member" "sheets_user" {
  for_each = toset([for name, fn in local.functions : name if contains(try(fn.needs, []), "sheets_service_account")])

  service_account_id = google_service_account.sheets.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.function[each.key].member
}

# Pub/Sub's service agent moves undeliverable messages: it publishes to every dead-letter topic
# and the parking lot, and acknowledges on every subscription it moves messages from.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = toset(values(local.dead_letter_of))

  topic  = google_pubsub_topic.topic[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.subscriptions

  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The push identity may invoke exactly the functions subscriptions push to; the Eventarc identity
# the ones Firestore triggers go to.
locals {
  invokers = merge(
    { for fn in toset([for sub in local.subscriptions : sub.push_to]) : "${fn}/pusher" => {
      function = fn, member = google_service_account.pusher.member }
    },
    { for fn in toset([for t in local.firestore_triggers : t.function]) : "${fn}/eventarc" => {
      function = fn, member = google_service_account.eventarc.member }
    },
  )
}

resource "google_cloud_run_service_iam_member" "invoker" {
  for_each = local.invokers

  location = var.region
  service  = google_cloudfunctions2_function.function[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member
}

resource "google_project_iam_member" "eventarc_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.eventarc.member
}

# Pub/Sub's service agent signs the push OIDC tokens as the push identity.
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# The two HTTP functions answer anyone on the internet: they check signatures and API keys.
resource "google_cloud_run_service_iam_member" "public" {
  # checkov:skip=CKV_GCP_102: Meta's webhooks and the CRMs cannot send Google identity tokens; webhook-ingest checks X-Hub-Signature-256 or the tenant's API key, status-api the API key. Event functions are never public (tested)
  for_each = local.http_functions

  location = var.region
  service  = google_cloudfunctions2_function.function[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}
