locals {
  # Subscriptions whose backlog means failures not yet recorded: the dead-letter topics' consumers
  # and the parking lot (which nobody consumes: anything in it needs a person). By their names in
  # the project.
  dead_letter_subscriptions = concat(
    [for name, sub in local.subscriptions : sub.name if contains(keys(local.dead_letter_topics), sub.topic)],
    [local.parking_lot.subscription_name],
  )

  # One alert policy each, on a Pub/Sub subscription metric over the subscriptions named.
  alerts = {
    dead-letter-backlog = {
      title         = "${local.title}: dead letters waiting"
      condition     = "Undelivered dead letters or parked messages"
      metric        = "pubsub.googleapis.com/subscription/num_undelivered_messages"
      subscriptions = local.dead_letter_subscriptions
      threshold     = var.alerts.dead_letter_backlog
      documentation = "Messages are waiting on a dead-letter subscription or in the parking lot (${local.parking_lot.subscription_name}). Dead letters are recorded as failed items by batch-item-processor; parked messages are ones even that could not handle: pull them to see why."
    }
    oldest-unacked = {
      title         = "${local.title}: deliveries falling behind"
      condition     = "Oldest unacknowledged message"
      metric        = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
      subscriptions = [for sub in local.subscriptions : sub.name]
      threshold     = var.alerts.oldest_unacked_age_seconds
      documentation = "A push subscription has had a message unacknowledged for longer than expected: the function is failing, throttled at max instances, or waiting on a provider's limit."
    }
  }
}

resource "google_monitoring_alert_policy" "pubsub" {
  for_each = local.alerts

  display_name          = each.value.title
  combiner              = "OR"
  notification_channels = var.alerts.notification_channels

  conditions {
    display_name = each.value.condition
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"${each.value.metric}\" AND resource.label.subscription_id = one_of(${join(", ", [for s in each.value.subscriptions : "\"${s}\""])})"
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    content = each.value.documentation
  }

  depends_on = [google_project_service.api]
}
