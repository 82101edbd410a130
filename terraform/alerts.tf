locals {
  # Subscriptions whose backlog means failures not yet recorded: the dead-letter topics' consumers
  # and the parking lot (which nobody consumes: anything in it needs a person).
  dead_letter_subscriptions = concat(
    [for name, sub in local.subscriptions : name if contains(keys(local.dead_letter_topics), sub.topic)],
    [local.parking_lot.subscription],
  )
}

resource "google_monitoring_alert_policy" "dead_letter_backlog" {
  display_name          = "Sluice: dead letters waiting"
  combiner              = "OR"
  notification_channels = var.alerts.notification_channels

  conditions {
    display_name = "Undelivered dead letters or parked messages"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.label.subscription_id = one_of(${join(", ", [for s in local.dead_letter_subscriptions : "\"${s}\""])})"
      comparison      = "COMPARISON_GT"
      threshold_value = var.alerts.dead_letter_backlog
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    content = "Messages are waiting on a dead-letter subscription or in the parking lot (${local.parking_lot.subscription}). Dead letters are recorded as failed items by batch-item-processor; parked messages are ones even that could not handle: pull them to see why."
  }

  depends_on = [google_project_service.api]
}

resource "google_monitoring_alert_policy" "oldest_unacked" {
  display_name          = "Sluice: deliveries falling behind"
  combiner              = "OR"
  notification_channels = var.alerts.notification_channels

  conditions {
    display_name = "Oldest unacknowledged message"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.label.subscription_id = one_of(${join(", ", [for name in keys(local.subscriptions) : "\"${name}\""])})"
      comparison      = "COMPARISON_GT"
      threshold_value = var.alerts.oldest_unacked_age_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    content = "A push subscription has had a message unacknowledged for longer than expected: the function is failing, throttled at max instances, or waiting on a provider's limit."
  }

  depends_on = [google_project_service.api]
}
