variable "project_id" {
  description = "The Google Cloud project Sluice runs in."
  type        = string
}

variable "prefix" {
  description = <<-EOT
    Put before every name that must be unique in the project, so that two deployments can share
    one: with "stg", the function stg-webhook-ingest, the topic stg-work-items, the service
    account stg-webhook-ingest, the secret stg-whatsapp-app-secret, the Firestore database
    stg-sluice. Unset (null), a deployment alone in its project: the topology's own names, and
    "sluice-" where the prefix would go otherwise. At most 9 characters: a service account's id
    (the prefix, "-" and the longest function's name) takes at most 30.
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.prefix == null || can(regex("^[a-z]([a-z0-9-]{0,7}[a-z0-9])?$", var.prefix))
    error_message = "prefix: 1 to 9 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "region" {
  description = "Where the functions, the source bucket and the scheduler run."
  type        = string
  default     = "us-central1"
}

variable "firestore_location" {
  description = "The Firestore database's location (its Eventarc triggers live there too): a multi-region such as nam5 or eur3, or a region."
  type        = string
  default     = "nam5"
}

variable "labels" {
  description = "Labels added to every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "dist_dir" {
  description = "Where `make package` put the functions' archives."
  type        = string
  default     = "../dist"
}

variable "runtime" {
  description = "The Cloud Run functions runtime: the Python version the code is tested on."
  type        = string
  default     = "python311"
}

# Values the functions read as SLUICE_* settings. Which function gets which is declared in
# topology.yaml (`needs`); the status-api URL and the Sheets service account are Terraform's own.
variable "settings" {
  description = "Plain (not secret) settings: the AI provider's URL and model, the WhatsApp Graph API."
  type = object({
    ai_provider_url      = optional(string, "https://api.openai.com")
    ai_model             = optional(string, "gpt-4o-mini")
    whatsapp_graph_url   = optional(string, "https://graph.facebook.com")
    whatsapp_api_version = optional(string, "v21.0")
  })
  default = {}
}

variable "provider_urls" {
  description = "The base URL of each provider the kinds' steps call (topology.yaml's providers with an endpoint), by provider name; the ai provider's is settings.ai_provider_url."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = <<-EOT
    Secret Manager secrets, by setting name: the settings topology.yaml lists as `secrets` (any
    other name is refused at plan). Terraform always creates the secret; give `value` to have it
    store a version too (the value then lands in the Terraform state), or leave it out and add the
    version with `gcloud secrets versions add`.
  EOT
  type = map(object({
    value = optional(string)
  }))
  default   = {}
  sensitive = true
}

variable "functions" {
  description = "Per-function deployment settings that are not limits (those are in topology.yaml)."
  type = map(object({
    min_instances = optional(number, 0)
    cpu           = optional(string, "1")
  }))
  default = {}
}

variable "alerts" {
  description = "Alert policies: where they notify and when they fire."
  type = object({
    notification_channels      = optional(list(string), [])
    dead_letter_backlog        = optional(number, 0)
    oldest_unacked_age_seconds = optional(number, 900)
  })
  default = {}
}
