# topology.yaml is the single source of truth: every topic, subscription, trigger, function limit
# and schedule below comes from it, so the cloud and the local cloud cannot drift apart.
locals {
  topology = yamldecode(file("${path.module}/../topology.yaml"))

  functions          = local.topology.functions
  subscriptions      = local.topology.subscriptions
  firestore_triggers = local.topology.firestore_triggers
  schedules          = local.topology.schedules
  parking_lot        = local.topology.parking_lot

  # Work topics, their dead-letter topics and the parking lot: one google_pubsub_topic each.
  dead_letter_topics = {
    for name, topic in local.topology.topics : topic.dead_letter => name
    if try(topic.dead_letter, null) != null
  }
  topics = merge(
    { for name, topic in local.topology.topics : name => { kind = "work" } },
    { for name, source in local.dead_letter_topics : name => { kind = "dead-letter" } },
    { (local.parking_lot.topic) = { kind = "parking-lot" } },
  )

  # Where each subscription's undeliverable messages go (as Topology.dead_letter_of does).
  dead_letter_of = {
    for name, sub in local.subscriptions :
    name => coalesce(try(local.topology.topics[sub.topic].dead_letter, null), local.parking_lot.topic)
  }

  # Functions behind a push subscription or a Firestore trigger: never invokable publicly.
  event_functions = { for name, fn in local.functions : name => fn if !try(fn.public, false) }
  http_functions  = { for name, fn in local.functions : name => fn if try(fn.public, false) }

  # Settings that are secrets (SecretStr in shared/sluice/settings.py): from Secret Manager.
  secret_settings = toset([
    "ai_provider_api_key",
    "whatsapp_access_token",
    "whatsapp_app_secret",
    "whatsapp_verify_token",
  ])

  # (function, topic) pairs: the function's service account may publish there and nowhere else.
  publishers = merge([
    for name, fn in local.functions : {
      for topic in try(fn.publishes, []) : "${name}/${topic}" => { function = name, topic = topic }
    }
  ]...)

  # (function, secret) pairs: each function may read the secrets it needs and no others.
  secret_readers = merge([
    for name, fn in local.functions : {
      for setting in try(fn.needs, []) : "${name}/${setting}" => { function = name, setting = setting }
      if contains(local.secret_settings, setting)
    }
  ]...)
}
