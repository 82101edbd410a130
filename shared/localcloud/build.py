"""What the cloud's build does to the functions' code before an instance runs it: compile it.

Cloud Run runs the bytecode its build left (`make package` puts Sluice's in each archive; pip
compiles the libraries'). Locally the functions run from the checkout, and on machines that set
PYTHONDONTWRITEBYTECODE every process would parse Sluice's source again before its first request.
Compiling is skipped for files whose bytecode is current, so a start after an edit recompiles only
what changed.
"""

from __future__ import annotations

import compileall
from pathlib import Path


def compile_functions(repo: Path) -> None:
    for folder in (repo / "shared" / "sluice", repo / "services"):
        if not compileall.compile_dir(folder, quiet=1):
            raise RuntimeError(f"{folder} does not compile (see the errors above)")
