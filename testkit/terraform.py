"""Where the Terraform lives and the variables a deployment of it is read with in the tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
# The values a deployment gives; every other variable takes its default from variables.tf.
VARIABLES = {
    "project_id": "sluice-prod", "region": "europe-west1", "firestore_location": "eur3",
    "provider_urls": {"image-model": "https://images.example", "video-vendor": "https://video.example"},
}  # fmt: skip
