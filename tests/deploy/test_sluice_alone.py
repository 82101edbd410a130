"""`sluice` stands without the local cloud: it never imports `localcloud`, and the wheel holds and
requires `sluice` only. The local cloud (`shared/localcloud/`) is a development dependency."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLUICE = ROOT / "shared" / "sluice"
UV = ROOT / ".tools" / "bin" / "uv"

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import sluice
names = [m.name for m in pkgutil.walk_packages(sluice.__path__, "sluice.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names,
                  "localcloud": sorted(m for m in sys.modules if m.split(".")[0] == "localcloud")}))
"""


def imported_roots(path: Path) -> set[str]:
    """The top-level names every import statement of a module names, nested ones included."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_sluice_module_imports_localcloud_anywhere_in_its_code():
    modules = sorted(SLUICE.rglob("*.py"))
    assert len(modules) > 20
    importing = [str(m.relative_to(ROOT)) for m in modules if "localcloud" in imported_roots(m)]
    assert importing == []


def test_importing_every_sluice_module_loads_nothing_of_localcloud():
    run = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert "sluice.bootstrap" in found["imported"] and "sluice.cli" in found["imported"]
    assert found["localcloud"] == []


def test_the_wheel_holds_and_requires_sluice_only(tmp_path: Path):
    subprocess.run([UV, "build", "--wheel", "--quiet", "--out-dir", tmp_path], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    [wheel] = tmp_path.glob("sluice-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]  # fmt: skip
    assert "sluice/bootstrap.py" in names
    assert [n for n in names if not n.startswith(("sluice/", "sluice-"))] == []
    assert not [n for n in names if "localcloud" in n]
    assert requires and not [r for r in requires if "localcloud" in r or "openpyxl" in r]
