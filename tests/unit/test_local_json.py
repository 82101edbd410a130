"""`.sluice/local.json` holds the local cloud's secrets: only its owner may read it."""

import json
import stat

from localcloud.cloud import write_local_json


def test_local_json_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / ".sluice" / "local.json"
    write_local_json(path, {"whatsapp": {"app_secret": "s"}})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"whatsapp": {"app_secret": "s"}}


def test_a_local_json_left_readable_by_an_older_run_is_made_private(tmp_path):
    path = tmp_path / "local.json"
    path.write_text("{}")
    path.chmod(0o644)
    write_local_json(path, {"project": "p"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"project": "p"}
