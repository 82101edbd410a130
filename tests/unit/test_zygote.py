"""The zygote: each local process forked from it is the program `python -m` would have started,
in its own session, with exactly the environment it is given."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcloud.processes import spawn_module, stop
from localcloud.zygote import Zygote

PROBE = """
import json, os, sys
print(json.dumps({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd(),
                  "session": os.getsid(0), "pid": os.getpid()}), flush=True)
if sys.argv[1:] == ["--wait"]:
    import time
    time.sleep(60)
sys.exit(3)
"""


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote") / "zygote.log")
    z.start()
    yield z
    z.stop()


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "zygote_probe.py").write_text(PROBE)
    return tmp_path / "probe"


def test_a_child_runs_the_module_as_python_m_would_with_exactly_its_environment(
    zygote, probe_dir, tmp_path
):
    log = tmp_path / "child.log"
    child = zygote.spawn("zygote_probe", ["--flag", "x"], log_path=log,
                         env={"ONLY": "this", "PATH": "/usr/bin"}, cwd=probe_dir)  # fmt: skip
    assert log.exists()  # as with Popen: its log is there once it has a pid, to be read at once
    assert child.wait(30) == 3  # its own exit code
    seen = json.loads(log.read_text())
    assert seen["argv"] == ["--flag", "x"]
    assert seen["cwd"] == str(probe_dir)
    assert seen["pid"] == child.pid
    assert seen["session"] == child.pid  # its own session: stopped by signalling its group
    # Exactly what it was given: nothing of the zygote's or the test's environment.
    assert seen["env"] == {"ONLY": "this", "PATH": "/usr/bin"}


def test_spawn_module_withholds_the_settings_of_whoever_started_the_local_cloud(
    zygote, probe_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("SLUICE_STATUS_API_URL", "http://from-the-shell")
    monkeypatch.chdir(probe_dir)
    log = tmp_path / "child.log"
    child = spawn_module("zygote_probe", [], log_path=log, env={"SLUICE_GIVEN": "yes"},
                         withhold=("SLUICE_",), zygote=zygote)  # fmt: skip
    assert child.wait(30) == 3
    seen = json.loads(log.read_text())["env"]
    assert [k for k in seen if k.startswith("SLUICE_")] == ["SLUICE_GIVEN"]
    assert seen["PATH"] == os.environ["PATH"]  # the rest is inherited, as spawn() does


def test_a_child_stopped_by_a_signal_reports_it_and_its_group_is_gone(zygote, probe_dir, tmp_path):
    log = tmp_path / "child.log"
    child = zygote.spawn("zygote_probe", ["--wait"], log_path=log, env={}, cwd=probe_dir)
    assert child.poll() is None
    stop(child, grace=0.1, sig=signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)


def test_a_module_that_fails_to_import_exits_1_with_its_traceback_in_its_log(zygote, tmp_path):
    log = tmp_path / "child.log"
    child = zygote.spawn("no_such_module_here", [], log_path=log, env={}, cwd=tmp_path)
    assert child.wait(30) == 1
    assert "No module named no_such_module_here" in log.read_text()
