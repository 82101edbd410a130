resource "google_pubsub_topic" "topic" {
  # checkov:skip=CKV_GCP_83: messages carry ids only (job and item, WhatsApp message metadata), encrypted at rest by Google; a customer key adds a KMS key ring to run and pay for without changing who can read them
  for_each = local.topics

  name   = each.value.name
  labels = { kind = each.value.kind }
  # A message can be replayed (seek) for a day; the parking lot keeps what it holds for longer.
  message_retention_duration = each.value.kind == "parking-lot" ? "${local.parking_lot.retention_days * 86400}s" : "86400s"

  depends_on = [google_project_service.api]
}

# Explicit push subscriptions, one per topology entry: OIDC-authenticated pushes to the function's
# URL, with the topic in the path (functions-framework makes it the CloudEvent's source, as the
# local cloud does), retry backoff, ack deadline, ordering and a dead-letter policy as declared.
# The path names the topic as the topology does, without the prefix: the function tells its
# messages apart by that name.
resource "google_pubsub_subscription" "push" {
  for_each = local.subscriptions

  name                    = each.value.name
  topic                   = google_pubsub_topic.topic[each.value.topic].id
  ack_deadline_seconds    = each.value.ack_deadline_seconds
  enable_message_ordering = each.value.ordering

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.function[each.value.push_to].service_config[0].uri}/projects/${var.project_id}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = google_cloudfunctions2_function.function[each.value.push_to].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.retry.minimum_backoff_seconds}s"
    maximum_backoff = "${each.value.retry.maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic[each.value.dead_letter].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  # Never delete an idle subscription (the default expires it after 31 days without traffic).
  expiration_policy {
    ttl = ""
  }

  depends_on = [google_service_account_iam_member.pubsub_token_creator]
}

# The parking lot is only read by people: a pull subscription keeps its messages.
resource "google_pubsub_subscription" "parking_lot" {
  name                       = local.parking_lot.subscription_name
  topic                      = google_pubsub_topic.topic[local.parking_lot.topic].id
  message_retention_duration = "${local.parking_lot.retention_days * 86400}s"
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = ""
  }
}
