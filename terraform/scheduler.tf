# Cloud Scheduler publishes each schedule's message to its topic; a cron has whole minutes, so a
# period is rounded up to one.
resource "google_cloud_scheduler_job" "schedule" {
  for_each = local.schedules

  name      = each.value.name
  region    = var.region
  time_zone = "Etc/UTC"
  schedule = (each.value.every_seconds <= 3540
    ? "*/${ceil(each.value.every_seconds / 60)} * * * *"
  : "0 */${ceil(each.value.every_seconds / 3600)} * * *")

  pubsub_target {
    topic_name = google_pubsub_topic.topic[each.value.topic].id
    data       = base64encode(jsonencode(each.value.message))
  }

  depends_on = [google_project_service.api]
}
