"""`make package`: each function's archive runs on its own, from its own requirements.txt.

Each archive is unpacked into an empty folder and given a fresh virtual environment made only from
the archive's `requirements.txt`; its `main.py` must import there and functions-framework must find
its entry point with the right signature, with nothing of the repository on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from sluice.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"

PROBE = """
import importlib.util, json, sys, functions_framework, main, sluice
from functions_framework import _function_registry as registry
from sluice.topology import REPO_TOPOLOGY, load_topology
target, kind = "{target}", "{kind}"
app = functions_framework.create_app(target=target, source="main.py", signature_type=kind)
try:
    import localcloud
    local = True
except ModuleNotFoundError:
    local = False
def compiled(module):
    # What the import system checks before it uses a module's bytecode instead of its source.
    try:
        with open(module.__cached__, "rb") as pyc:
            header = pyc.read(16)
    except OSError:
        return False
    with open(module.__file__, "rb") as source:
        digest = importlib.util.source_hash(source.read())
    magic, flags = header[:4] == importlib.util.MAGIC_NUMBER, int.from_bytes(header[4:8], "little")
    return magic and flags == 0b11 and header[8:16] == digest
ours = [m for n, m in sys.modules.items() if n == "main" or n.startswith("sluice")]
print(json.dumps({{
    "not_compiled": sorted(m.__name__ for m in ours if not compiled(m)),
    "modules": len(ours),
    "sluice": sluice.__file__,
    "topology": str(REPO_TOPOLOGY),
    "functions": sorted(load_topology().functions),
    "signature": registry.get_func_signature_type(target, kind),
    "localcloud": local,
    "has_app": app is not None,
}}))
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(["make", "--no-print-directory", "package", f"DIST={dist}"], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    return dist


def test_one_archive_per_function_with_only_what_runs_in_the_cloud(archives: Path):
    functions = load_topology().functions
    assert sorted(p.stem for p in archives.glob("*.zip")) == sorted(functions)
    with zipfile.ZipFile(archives / "status-api.zip") as archive:
        names = set(archive.namelist())
    assert {"main.py", "requirements.txt", "topology.yaml", "sluice/routes.py"} <= names
    assert not [n for n in names if "localcloud" in n or n == "sluice/cli.py"]
    requirements = (archives / "requirements.txt").read_text()
    # Pinned from the lock, runtime dependencies only.
    assert "functions-framework==3.10.2" in requirements and "--hash=sha256:" in requirements
    pinned = {line.split("==")[0] for line in requirements.splitlines() if "==" in line}
    assert {"google-cloud-firestore", "pydantic", "httpx"} <= pinned
    assert not pinned & {"pytest", "openpyxl", "hypothesis", "sluice", "localcloud"}
    assert "localcloud" not in requirements


def test_the_same_source_builds_the_same_bytes(archives: Path, tmp_path: Path):
    again = tmp_path / "again"
    subprocess.run(["make", "--no-print-directory", "package", f"DIST={again}"], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    for archive in archives.glob("*.zip"):
        assert (again / archive.name).read_bytes() == archive.read_bytes(), archive.name


@pytest.mark.parametrize("function", sorted(load_topology().functions))
def test_main_imports_in_a_fresh_environment_made_from_the_archive(
    archives: Path, tmp_path: Path, function: str
):
    spec = load_topology().functions[function]
    source = tmp_path / "source"
    with zipfile.ZipFile(archives / f"{function}.zip") as archive:
        archive.extractall(source)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    subprocess.run([UV, "venv", "--quiet", "--python", "python3", venv], check=True, env=env)
    subprocess.run(
        [UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python",
         "-r", source / "requirements.txt"],
        check=True, env=env,
    )  # fmt: skip
    probe = PROBE.format(target=spec.entry_point, kind=spec.signature_type)
    run = subprocess.run([venv / "bin" / "python", "-E", "-s", "-c", probe], cwd=source, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert Path(found["sluice"]).is_relative_to(source)
    assert Path(found["topology"]) == source / "topology.yaml"
    assert found["functions"] == sorted(load_topology().functions)
    assert found["signature"] == spec.signature_type
    assert found["localcloud"] is False
    assert found["has_app"] is True
    # A new instance runs Sluice's bytecode from the archive, rather than parsing its source.
    assert found["modules"] > 10 and found["not_compiled"] == []
