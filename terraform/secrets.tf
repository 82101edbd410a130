# One secret per secret setting; mounted as SLUICE_<NAME> in the functions that need it.
resource "google_secret_manager_secret" "setting" {
  for_each = local.secret_settings

  secret_id = "sluice-${replace(each.key, "_", "-")}"

  replication {
    auto {}
  }

  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "setting" {
  # Only the secrets given a value here; the others get theirs with `gcloud secrets versions add`.
  for_each = nonsensitive(toset([for name, secret in var.secrets : name if secret.value != null]))

  secret      = google_secret_manager_secret.setting[each.key].id
  secret_data = var.secrets[each.key].value
}
