"""`sluice`: the operator's command line.

It talks to the running local cloud when `.sluice/local.json` exists (or SLUICE_LOCAL_JSON names
one), otherwise to the Google Cloud project in GOOGLE_CLOUD_PROJECT with the ambient credentials,
and there to the Firestore database SLUICE_FIRESTORE_DATABASE names (`terraform output
firestore_database`; unset, the project's default database).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from google.cloud import firestore

from sluice.adapters.tenants_store import PhoneTaken, TenantExists, TenantNotFound, TenantStore
from sluice.domain.callbacks import callback_url_refusal

LOCAL_JSON = Path(".sluice/local.json")


def connect() -> tuple[firestore.Client, str]:
    local = Path(os.environ.get("SLUICE_LOCAL_JSON", LOCAL_JSON))
    if local.is_file():
        info = json.loads(local.read_text())
        os.environ["FIRESTORE_EMULATOR_HOST"] = info["emulators"]["FIRESTORE_EMULATOR_HOST"]
        return firestore.Client(project=info["project"]), f"local cloud ({local})"
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise SystemExit(
            "sluice: no local cloud (.sluice/local.json) and GOOGLE_CLOUD_PROJECT is not set"
        )
    database = os.environ.get("SLUICE_FIRESTORE_DATABASE") or "(default)"
    where = f"project {project}" + ("" if database == "(default)" else f", database {database}")
    return firestore.Client(project=project, database=database), where


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description="Operate a Sluice deployment.")
    sub = p.add_subparsers(dest="command", required=True)
    tenant = sub.add_parser("tenant", help="manage tenants and their API keys")
    tsub = tenant.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a tenant and print its API key once")
    create.add_argument("name")
    create.add_argument("--sheets", action="store_true", help="allow Google Sheets export")
    create.add_argument("--callback-url", help="where completed batches are reported")
    tsub.add_parser("list", help="list tenants")
    rotate = tsub.add_parser("rotate-key", help="replace a tenant's API key; the old one stops")
    rotate.add_argument("name")
    sheets = tsub.add_parser("sheets", help="turn a tenant's Google Sheets export on or off")
    sheets.add_argument("name")
    sheets.add_argument("state", choices=["on", "off"])
    phone = tsub.add_parser("add-phone", help="route a WhatsApp phone number id to a tenant")
    phone.add_argument("name")
    phone.add_argument("phone_number_id")
    phone.add_argument(
        "--move", action="store_true", help="take the number from the tenant that has it"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    db, where = connect()
    tenants = TenantStore(db)
    try:
        if args.action == "create":
            # The same rule as a batch's callback_url: loopback only in the local cloud.
            local = where.startswith("local cloud")
            refused = args.callback_url and callback_url_refusal(
                args.callback_url, allow_loopback=local
            )
            if refused:
                raise ValueError(f"--callback-url {args.callback_url}: {refused}")
            created = tenants.create(args.name, sheets=args.sheets, callback_url=args.callback_url)
            print(f"tenant {created.id} created in {where}")
            print(f"api key (shown once): {created.api_key}")
            print(f"callback signing secret: {created.signing_secret}")
        elif args.action == "list":
            for tid, doc in tenants.list():
                sheets = "sheets" if doc.get("sheets_enabled") else "-"
                print(f"{tid}\t{doc.get('name')}\t{sheets}\t{doc.get('callback_url') or '-'}")
        elif args.action == "add-phone":
            moved_from = tenants.add_phone(args.name, args.phone_number_id, move=args.move)
            moved = f" (moved from {moved_from})" if moved_from else ""
            print(f"phone number id {args.phone_number_id} now routes to {args.name}{moved}")
        elif args.action == "sheets":
            tenants.set_sheets(args.name, enabled=args.state == "on")
            print(f"Google Sheets export {args.state} for {args.name}")
        elif args.action == "rotate-key":
            print(f"new api key (shown once): {tenants.rotate_key(args.name)}")
    except (TenantExists, TenantNotFound, PhoneTaken, ValueError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
