# One secret per setting topology.yaml lists as a secret; mounted as SLUICE_<NAME> only in the
# functions that need it (functions.tf), readable only by them (iam.tf).
resource "google_secret_manager_secret" "setting" {
  for_each = local.secrets

  secret_id = each.value.secret_id

  replication {
    auto {}
  }

  lifecycle {
    precondition {
      condition     = alltrue([for name in keys(var.secrets) : contains(keys(local.secrets), name)])
      error_message = "var.secrets: the names are the topology's secrets: ${join(", ", keys(local.secrets))}."
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "setting" {
  # Only the secrets given a value here; the others get theirs with `gcloud secrets versions add`.
  for_each = nonsensitive(toset([
    for name, secret in var.secrets : name if secret.value != null && contains(keys(local.secrets), name)
  ]))

  secret      = google_secret_manager_secret.setting[each.key].id
  secret_data = var.secrets[each.key].value
}
