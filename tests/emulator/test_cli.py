"""The operator's `sluice` command against a local cloud found through its local.json."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from sluice.adapters.tenants_store import PhoneTaken, TenantStore
from sluice.cli import main
from sluice.domain.tenants import hash_api_key


@pytest.fixture
def local_json(tmp_path, project, monkeypatch):
    path = tmp_path / "local.json"
    emulators = {"FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"]}
    path.write_text(json.dumps({"project": project, "emulators": emulators}))
    monkeypatch.setenv("SLUICE_LOCAL_JSON", str(path))
    return path


def key_in(output: str) -> str:
    return next(line.split(": ")[1] for line in output.splitlines() if "api key" in line)


def test_create_list_and_rotate_a_tenant(local_json, db, capsys):
    assert (
        main(["tenant", "create", "Acme CRM", "--sheets", "--callback-url", "https://a.b/c"]) == 0
    )
    key = key_in(capsys.readouterr().out)
    doc = db.collection("tenants").document("acme-crm").get().to_dict()
    assert doc["api_key_hashes"] == [hash_api_key(key)] and doc["sheets_enabled"] is True
    assert key not in json.dumps(doc, default=str)  # only the digest is stored

    assert main(["tenant", "list"]) == 0
    assert "acme-crm\tAcme CRM\tsheets\thttps://a.b/c" in capsys.readouterr().out

    assert main(["tenant", "rotate-key", "Acme CRM"]) == 0
    new_key = key_in(capsys.readouterr().out)
    hashes = db.collection("tenants").document("acme-crm").get().get("api_key_hashes")
    assert hashes == [hash_api_key(new_key)] and new_key != key


def test_mistakes_are_reported_and_change_nothing(local_json, db, capsys):
    assert main(["tenant", "create", "acme"]) == 0
    before = db.collection("tenants").document("acme").get().to_dict()
    assert main(["tenant", "create", "ACME"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["tenant", "rotate-key", "nobody"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert db.collection("tenants").document("acme").get().to_dict() == before
    assert len(list(db.collection("tenants").stream())) == 1


def test_a_whatsapp_phone_number_is_routed_to_a_tenant(local_json, db, capsys):
    assert main(["tenant", "create", "shop"]) == 0
    assert main(["tenant", "add-phone", "shop", "100000000000001"]) == 0
    assert main(["tenant", "add-phone", "shop", "100000000000001"]) == 0  # idempotent
    doc = db.collection("tenants").document("shop").get().to_dict()
    assert doc["phone_number_ids"] == ["100000000000001"]
    assert main(["tenant", "add-phone", "shop", "not-a-number"]) == 1
    assert main(["tenant", "add-phone", "nobody", "1"]) == 1
    assert db.collection("tenants").document("shop").get().get("phone_number_ids") == [
        "100000000000001"
    ]


def test_a_tenant_is_put_on_the_sheets_whitelist_and_taken_off(local_json, db, capsys):
    assert main(["tenant", "create", "shop"]) == 0
    assert main(["tenant", "sheets", "shop", "on"]) == 0
    assert db.collection("tenants").document("shop").get().get("sheets_enabled") is True
    assert main(["tenant", "sheets", "shop", "off"]) == 0
    assert db.collection("tenants").document("shop").get().get("sheets_enabled") is False
    assert main(["tenant", "sheets", "nobody", "on"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not db.collection("tenants").document("nobody").get().exists


def phones(db, tenant: str) -> list[str]:
    return db.collection("tenants").document(tenant).get().get("phone_number_ids")


def test_a_phone_number_belongs_to_one_tenant_and_moves_only_when_asked(local_json, db, capsys):
    assert main(["tenant", "create", "shop"]) == 0
    assert main(["tenant", "create", "rival"]) == 0
    assert main(["tenant", "add-phone", "shop", "100000000000001"]) == 0
    capsys.readouterr()

    assert main(["tenant", "add-phone", "rival", "100000000000001"]) == 1
    err = capsys.readouterr().err
    assert "belongs to tenant shop" in err and "--move" in err
    assert phones(db, "shop") == ["100000000000001"] and phones(db, "rival") == []

    assert main(["tenant", "add-phone", "rival", "100000000000001", "--move"]) == 0
    assert "moved from shop" in capsys.readouterr().out
    assert phones(db, "shop") == [] and phones(db, "rival") == ["100000000000001"]


def test_a_number_routed_before_owner_records_existed_is_still_refused(local_json, db, capsys):
    assert main(["tenant", "create", "shop"]) == 0
    assert main(["tenant", "create", "rival"]) == 0
    # As an older release left it: in the tenant's list, with no owner record.
    db.collection("tenants").document("shop").update({"phone_number_ids": ["100000000000001"]})
    assert main(["tenant", "add-phone", "rival", "100000000000001"]) == 1
    assert phones(db, "rival") == []
    assert main(["tenant", "add-phone", "rival", "100000000000001", "--move"]) == 0
    assert phones(db, "shop") == [] and phones(db, "rival") == ["100000000000001"]


def test_of_concurrent_add_phones_for_one_number_one_wins(db):
    store = TenantStore(db)
    names = [f"tenant{n}" for n in range(4)]
    for name in names:
        store.create(name)

    def add(name: str) -> str:
        try:
            store.add_phone(name, "100000000000009")
        except PhoneTaken:
            return "refused"
        return "added"

    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(add, names))
    assert sorted(results) == ["added", "refused", "refused", "refused"]
    holders = [name for name in names if phones(db, name)]
    assert len(holders) == 1 and results[names.index(holders[0])] == "added"
