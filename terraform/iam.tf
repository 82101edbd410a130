# Who may do what: each function's service account only what its topology entry says it does,
# the push and Eventarc identities only the invocations they deliver, Pub/Sub's service agent
# only the dead-letter moves and the OIDC tokens, and the two HTTP functions open to anyone.

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # (function, topic) pairs: the function's service account may publish there and nowhere else.
  publishers = merge([
    for name, fn in local.functions : {
      for topic in fn.publishes : "${name}/${topic}" => { function = name, topic = topic }
    }
  ]...)

  # (function, secret) pairs: each function may read the secrets it needs and no others.
  secret_readers = merge([
    for name, fn in local.functions : {
      for setting in fn.needs : "${name}/${setting}" => { function = name, setting = setting }
      if contains(keys(local.secrets), setting)
    }
  ]...)

  # The push identity may invoke exactly the functions subscriptions push to; the Eventarc
  # identity the ones Firestore triggers go to.
  invokers = merge(
    { for fn in toset([for sub in local.subscriptions : sub.push_to]) : "${fn}/pusher" => {
      function = fn, member = google_service_account.pusher.member }
    },
    { for fn in toset([for t in local.firestore_triggers : t.function]) : "${fn}/eventarc" => {
      function = fn, member = google_service_account.eventarc.member }
    },
  )
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
  for_each = toset([for name, fn in local.functions : name if contains(fn.needs, "sheets_service_account")])

  service_account_id = google_service_account.sheets.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = google_service_account.function[each.key].member
}

# Pub/Sub's service agent moves undeliverable messages: it publishes to every dead-letter topic
# and the parking lot, and acknowledges on every subscription it moves messages from.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = toset([for sub in local.subscriptions : sub.dead_letter])

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
