"""Build one deployable source archive per function: `make package` → dist/<function>.zip.

Each archive is what Cloud Run functions builds from: the function's `main.py` at the root, the
shared `sluice` package beside it (with the data it reads, such as `adapters/queries.yaml`, and
without the operator CLI, which no function imports; the local cloud is a package apart,
`shared/localcloud/`, never part of it), `topology.yaml` (read at run time, found beside the
package), and a `requirements.txt` pinned, with hashes, from uv.lock. Entries are sorted and
dated 1980-01-01, so the same source gives the same bytes: Terraform names each upload by its
hash and redeploys only what changed.

Every `.py` also comes compiled (`__pycache__/*.cpython-3XX.pyc`), so that a new instance does not
parse Sluice's source before its first request. The bytecode is checked against a hash of its
source, not its time (the archive's times are all 1980): a source edited after packaging is
compiled again as usual, and a runtime on another Python version looks for its own tag and
ignores these.
"""

from __future__ import annotations

import argparse
import importlib.util
import py_compile
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shared" / "sluice"
# Parts of the package that only run on a developer's machine.
LEFT_OUT = {"cli.py"}


def package_files() -> Iterator[tuple[Path, str]]:
    for path in sorted(PACKAGE.rglob("*")):
        relative = path.relative_to(PACKAGE)
        if path.is_dir() or relative.parts[0] in LEFT_OUT or "__pycache__" in relative.parts:
            continue
        # The code, and the data it reads (the Firestore queries' declaration).
        if path.suffix in {".py", ".typed", ".yaml"}:
            yield path, f"sluice/{relative.as_posix()}"


def archive_entries(function: str, requirements: Path) -> list[tuple[Path, str]]:
    return sorted(
        [
            (ROOT / "services" / function / "main.py", "main.py"),
            (ROOT / "topology.yaml", "topology.yaml"),
            (requirements, "requirements.txt"),
            *package_files(),
        ],
        key=lambda entry: entry[1],
    )


def compiled(entries: list[tuple[Path, str]], scratch: Path) -> list[tuple[Path, str]]:
    """The bytecode of every Python entry, named where the import system looks for it."""
    out = []
    for source, name in entries:
        if not name.endswith(".py"):
            continue
        cached = importlib.util.cache_from_source(name)
        target = scratch / cached
        mode = py_compile.PycInvalidationMode.CHECKED_HASH
        py_compile.compile(str(source), str(target), name, doraise=True, invalidation_mode=mode)
        out.append((target, cached))
    return out


def write_archive(target: Path, entries: list[tuple[Path, str]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        entries = sorted([*entries, *compiled(entries, Path(scratch))], key=lambda e: e[1])
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for source, name in entries:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, source.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, required=True, help="pinned from uv.lock")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    if not args.requirements.is_file():
        parser.error(f"{args.requirements} does not exist (make package exports it from uv.lock)")
    args.out.mkdir(parents=True, exist_ok=True)
    functions = sorted(p.parent.name for p in (ROOT / "services").glob("*/main.py"))
    for function in functions:
        target = args.out / f"{function}.zip"
        write_archive(target, archive_entries(function, args.requirements))
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
