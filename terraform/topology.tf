# topology.yaml is the single source of truth: every topic, subscription, trigger, function limit,
# schedule and secret below comes from it, so the cloud and the local cloud cannot drift apart.
#
# It is read once, here, and normalised: every optional field gets its default (the one
# shared/sluice/topology.py gives it), and every resource its name in the project. The other files
# read only these locals, never the file. Nothing here needs the provider.
locals {
  raw = yamldecode(file("${path.module}/../topology.yaml"))

  # Names that must be unique in the project begin with var.prefix, so that two deployments can
  # share one. Unset, they are the names of a deployment alone in its project: the topology's own
  # (functions, topics, subscriptions, triggers), and "sluice-" before the rest (service
  # accounts, secrets, scheduler jobs, the sources bucket).
  prefix        = var.prefix == null ? "" : "${var.prefix}-"
  sluice_prefix = var.prefix == null ? "sluice-" : "${var.prefix}-"

  functions = {
    for name, fn in local.raw.functions : name => {
      name        = "${local.prefix}${name}"
      account_id  = "${local.sluice_prefix}${name}"
      entry_point = fn.entry_point
      trigger     = fn.trigger
      public      = lookup(fn, "public", false)
      limits      = fn.limits
      publishes   = lookup(fn, "publishes", [])
      needs       = lookup(fn, "needs", [])
      uses        = lookup(fn, "uses", [])
      # Deployment settings that are not limits (var.functions).
      min_instances = local.function_settings[name].min_instances
      cpu           = local.function_settings[name].cpu
    }
  }
  # var.functions for every function: one it leaves out gets what an entry given as {} gets.
  function_settings = {
    for name in keys(local.raw.functions) : name => lookup(var.functions, name, { min_instances = 0, cpu = "1" })
  }
  # The providers a kind's steps call, each with the settings that hold its URL and its key
  # (topology.yaml's providers.<name>.endpoint; the key is one of the secrets).
  endpoint_providers = {
    for name, provider in local.raw.providers : name => provider.endpoint
    if lookup(provider, "endpoint", null) != null
  }
  # Functions behind a push subscription or a Firestore trigger are never invokable publicly.
  http_functions = { for name, fn in local.functions : name => fn if fn.public }

  # Each work topic's dead-letter topic (null for a topic without one).
  dead_letter_of_topic = { for name, topic in local.raw.topics : name => lookup(topic, "dead_letter", null) }
  # Dead-letter topic => the work topic it serves.
  dead_letter_topics = { for name, dead in local.dead_letter_of_topic : dead => name if dead != null }

  parking_lot = {
    topic             = local.raw.parking_lot.topic
    subscription      = local.raw.parking_lot.subscription
    retention_days    = local.raw.parking_lot.retention_days
    subscription_name = "${local.prefix}${local.raw.parking_lot.subscription}"
  }

  # Work topics, their dead-letter topics and the parking lot: one google_pubsub_topic each.
  topics = merge(
    { for name in keys(local.raw.topics) : name => { name = "${local.prefix}${name}", kind = "work" } },
    { for name in keys(local.dead_letter_topics) : name => { name = "${local.prefix}${name}", kind = "dead-letter" } },
    { (local.parking_lot.topic) = { name = "${local.prefix}${local.parking_lot.topic}", kind = "parking-lot" } },
  )

  subscriptions = {
    for name, sub in local.raw.subscriptions : name => {
      name                  = "${local.prefix}${name}"
      topic                 = sub.topic
      push_to               = sub.push_to
      ack_deadline_seconds  = sub.ack_deadline_seconds
      retry                 = sub.retry
      max_delivery_attempts = sub.max_delivery_attempts
      ordering              = lookup(sub, "ordering", false)
      # Where its undeliverable messages go (as Topology.dead_letter_of says): its topic's
      # dead-letter topic, or the parking lot for a topic without one.
      dead_letter = coalesce(lookup(local.dead_letter_of_topic, sub.topic, null), local.parking_lot.topic)
    }
  }

  firestore_triggers = {
    for name, trigger in local.raw.firestore_triggers : name => {
      name       = "${local.prefix}${name}"
      function   = trigger.function
      event_type = trigger.event_type
      document   = trigger.document
    }
  }

  schedules = {
    for name, schedule in lookup(local.raw, "schedules", {}) : name => {
      name          = "${local.sluice_prefix}${name}"
      topic         = schedule.topic
      every_seconds = schedule.every_seconds
      message       = lookup(schedule, "message", {})
    }
  }

  # The settings that are secrets (topology.yaml's `secrets`, which shared/sluice/settings.py
  # reads too): one Secret Manager secret each.
  secrets = {
    for setting in lookup(local.raw, "secrets", []) : setting => {
      secret_id = "${local.sluice_prefix}${replace(setting, "_", "-")}"
    }
  }

  # The service accounts that are not a function's own.
  account_ids = {
    pusher   = "${local.sluice_prefix}pubsub-push"
    eventarc = "${local.sluice_prefix}eventarc"
    sheets   = "${local.sluice_prefix}sheets"
  }

  # One Firestore database per deployment: its data, triggers and indexes are its own.
  database_name  = var.prefix == null ? "(default)" : "${var.prefix}-sluice"
  sources_bucket = "${var.project_id}-${local.sluice_prefix}sources"
  title          = var.prefix == null ? "Sluice" : "Sluice ${var.prefix}"
}
