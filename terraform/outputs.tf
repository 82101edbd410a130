output "webhook_ingest_url" {
  description = "CRM batches: POST {url}/v1/batches. WhatsApp's callback URL: {url}/whatsapp/webhook."
  value       = google_cloudfunctions2_function.function["webhook-ingest"].service_config[0].uri
}

output "status_api_url" {
  description = "Batch status, retry-failed, cancel and Sheets export."
  value       = google_cloudfunctions2_function.function["status-api"].service_config[0].uri
}

output "sheets_service_account" {
  description = "The service account that owns the exported spreadsheets."
  value       = google_service_account.sheets.email
}

output "parking_lot_subscription" {
  description = "Pull it to see messages that could not be handled even as dead letters."
  value       = google_pubsub_subscription.parking_lot.id
}

output "firestore_database" {
  description = "The deployment's Firestore database: `sluice tenant ...` reaches it with SLUICE_FIRESTORE_DATABASE set to it."
  value       = google_firestore_database.database.name
}
