"""``python -m bench`` stopped with SIGTERM leaves nothing running and nothing on disk.

A real run: the bench starts its own broker and the webhooks suite starts its
receiver and dispatcher processes; the run is terminated midway, as ``timeout`` or
a CI runner would, and every process whose command line names the run's working
folder or the suite's children must be gone, and the folder removed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, wait_for


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if text in _cmdline(int(entry.name), whole=True):
            found.append(int(entry.name))
    return found


def _cmdline(pid: int, whole: bool = False) -> str:
    """The command line of ``pid``; cut to 200 characters for messages unless ``whole``.

    The broker's names the working folder after its log4j path, which lies under the
    checkout, so how far in depends on where the repository was cloned.
    """
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
    return text if whole else text[:200]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_broker_and_every_child_and_removes_the_folder(tmp_path) -> None:
    log = tmp_path / "bench.err"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench", "webhooks"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    started: set[int] = set()
    workdir = "/nonexistent-bench-folder"
    try:
        workdir = wait_for(
            lambda: re.search(r"bench: working in (\S+)", log.read_text()),
            timeout=30,
            what="the working folder line",
        ).group(1)
        wait_for(lambda: "ready in" in log.read_text(), timeout=240, what="the bench broker")
        # the suite's own processes (receiver, dispatcher) are up once a child runs uvicorn
        wait_for(
            lambda: len(_descendants(proc.pid)) >= 2, timeout=120, what="the suite's processes"
        )
        started = _descendants(proc.pid)
        assert _processes_mentioning(workdir), "the broker runs from the working folder"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130
        text = log.read_text()
        assert "bench: stopped" in text
        assert "Traceback" not in text
        try:
            wait_for(lambda: not any(_alive(p) for p in started), timeout=30, what="the exits")
        except AssertionError:
            left = [_cmdline(p) for p in started if _alive(p)]
            raise AssertionError(f"processes the bench started still run: {left}") from None
        assert not _processes_mentioning(workdir)
        assert not Path(workdir).exists()
    finally:  # whatever the outcome, leave nothing behind for the rest of the suite
        if proc.poll() is None:
            started |= _descendants(proc.pid)
            proc.kill()
            proc.wait(30)
        for pid in started | set(_processes_mentioning(workdir)):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
