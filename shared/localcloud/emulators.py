"""Google's Pub/Sub and Firestore emulators, from the Google Cloud CLI, on free ports.

The emulators serve many projects at once, so one pair serves a whole test session while each test
deploys into a fresh project id.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.processes import free_port, http_ok, spawn, stop, wait_until


def sdk_platform() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise RuntimeError("the Google Cloud CLI (gcloud) is not on PATH")
    platform = Path(gcloud).resolve().parent.parent / "platform"
    for launcher in _launchers(platform):
        if not launcher.exists():
            raise RuntimeError(
                f"{launcher} is missing: install the emulators "
                "(gcloud components install pubsub-emulator cloud-firestore-emulator, or the "
                "google-cloud-cli-pubsub-emulator and -firestore-emulator packages)"
            )
    return platform


def _launchers(platform: Path) -> tuple[Path, Path]:
    return (
        platform / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator",
        platform / "cloud-firestore-emulator" / "cloud_firestore_emulator",
    )


@dataclass
class Emulators:
    """Both emulators. `functions_host` is where the Firestore emulator posts trigger events."""

    log_dir: Path
    functions_host: str
    pubsub_port: int = 0
    firestore_port: int = 0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pubsub_host(self) -> str:
        return f"127.0.0.1:{self.pubsub_port}"

    @property
    def firestore_host(self) -> str:
        return f"127.0.0.1:{self.firestore_port}"

    def start(self) -> None:
        pubsub, firestore = _launchers(sdk_platform())
        self.pubsub_port = self.pubsub_port or free_port()
        self.firestore_port = self.firestore_port or free_port()
        ps = spawn(
            [str(pubsub), "--host=127.0.0.1", f"--port={self.pubsub_port}"],
            log_path=self.log_dir / "pubsub-emulator.log",
        )
        self._procs.append(ps)
        fs = spawn(
            [
                str(firestore),
                "start",
                "--host=127.0.0.1",
                f"--port={self.firestore_port}",
                f"--functions_emulator={self.functions_host}",
            ],
            log_path=self.log_dir / "firestore-emulator.log",
        )
        self._procs.append(fs)
        wait_until(
            http_ok(f"http://{self.pubsub_host}/"), timeout=60, what="Pub/Sub emulator", proc=ps
        )
        wait_until(
            http_ok(f"http://{self.firestore_host}/"),
            timeout=60,
            what="Firestore emulator",
            proc=fs,
        )

    def env(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
        }

    def stop(self) -> None:
        while self._procs:
            stop(self._procs.pop())
