# Cloud Run functions (2nd gen), one per topology entry, built from `make package`'s archives.

resource "google_storage_bucket" "sources" {
  # checkov:skip=CKV_GCP_62: it holds only build archives written by Terraform; Cloud Audit Logs record who touched them, and a usage-log bucket would have no reader
  name                        = local.sources_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  # Old archives are kept a while for a rollback, then deleted.
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket_object" "source" {
  for_each = local.functions

  # Named by content: a changed archive is a new object, and that is what redeploys the function.
  name   = "${each.key}-${filemd5("${path.module}/${var.dist_dir}/${each.key}.zip")}.zip"
  bucket = google_storage_bucket.sources.name
  source = "${path.module}/${var.dist_dir}/${each.key}.zip"
}

locals {
  # Settings that are not secrets, by name; each function gets the ones it needs and uses.
  # Each provider's URL setting has its value in var.provider_urls, but the ai provider's, which
  # is var.settings.ai_provider_url.
  plain_settings = merge({
    for name, endpoint in local.endpoint_providers : endpoint.url => lookup(var.provider_urls, name, null)
    if name != "ai"
    }, {
    status_api_url         = "https://${local.functions["status-api"].name}-${data.google_project.this.number}.${var.region}.run.app"
    ai_provider_url        = var.settings.ai_provider_url
    ai_model               = var.settings.ai_model
    whatsapp_graph_url     = var.settings.whatsapp_graph_url
    whatsapp_api_version   = var.settings.whatsapp_api_version
    sheets_service_account = google_service_account.sheets.email
  })
}

resource "google_cloudfunctions2_function" "function" {
  # checkov:skip=CKV_GCP_124: only webhook-ingest and status-api allow all ingress (Meta's and the CRMs' calls come from the internet; they check signatures and API keys); event functions are ALLOW_INTERNAL_ONLY, tested in tests/deploy/test_terraform.py
  for_each = local.functions

  name        = each.value.name
  location    = var.region
  description = "${local.title} ${each.key}"

  build_config {
    runtime     = var.runtime
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source[each.key].name
      }
    }
  }

  service_config {
    max_instance_count               = each.value.limits.max_instances
    min_instance_count               = each.value.min_instances
    max_instance_request_concurrency = each.value.limits.concurrency
    available_cpu                    = each.value.cpu
    available_memory                 = each.value.limits.memory
    timeout_seconds                  = each.value.limits.timeout_seconds
    service_account_email            = google_service_account.function[each.key].email
    # Pub/Sub and Eventarc reach event functions as internal traffic; only the HTTP functions
    # take requests from the internet.
    ingress_settings               = each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true

    environment_variables = merge(
      {
        GOOGLE_CLOUD_PROJECT = var.project_id
        LOG_EXECUTION_ID     = "true"
        # functions-framework's gunicorn serves this many requests at once per instance: the
        # same number Cloud Run sends it.
        THREADS = tostring(each.value.limits.concurrency)
        # The deployment's own database and topics (var.prefix).
        SLUICE_FIRESTORE_DATABASE = google_firestore_database.database.name
        SLUICE_TOPIC_PREFIX       = local.prefix
      },
      {
        for setting in each.value.needs : "SLUICE_${upper(setting)}" => local.plain_settings[setting]
        if !contains(keys(local.secrets), setting)
      },
      # The settings it reads when set: every one of them has a value in var.settings.
      { for setting in each.value.uses : "SLUICE_${upper(setting)}" => local.plain_settings[setting] },
    )

    # The secrets it needs, and only those (topology.yaml's `secrets`).
    dynamic "secret_environment_variables" {
      for_each = toset([for setting in each.value.needs : setting if contains(keys(local.secrets), setting)])
      content {
        key        = "SLUICE_${upper(secret_environment_variables.value)}"
        project_id = var.project_id
        secret     = google_secret_manager_secret.setting[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = alltrue([for name in keys(local.endpoint_providers) : name == "ai" || lookup(var.provider_urls, name, null) != null])
      error_message = "var.provider_urls: give the URL of every provider the kinds call (${join(", ", [for name in keys(local.endpoint_providers) : name if name != "ai"])})."
    }
  }

  depends_on = [
    google_project_service.api,
    google_secret_manager_secret_iam_member.reader,
    google_project_iam_member.firestore,
  ]
}
