"""Processes a test starts: started in a `with`, always stopped when it ends (SIGTERM, a grace period, then
SIGKILL, to the whole group when it has one), waited on by events (a line on stdout, a file, an answer),
never by fixed sleeps: under load a sleep is too short, and on an idle machine too long.

    with started([sys.executable, "finetune_sweep.py", "dashboard", ...], ready="Ctrl-C stops it") as dash:
        ...
        assert dash.stop(signal.SIGINT) == 0

conftest.py checks at the end of the session that no process of the kit started by the suite is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The kit's processes (command lines holding one of these), and the mark every process of this session
# inherits: another suite running on the same machine leaves processes of its own, which are not ours.
KIT = ("finetune_resnet.py", "finetune_sweep.py", "optuna-dashboard", "optuna_dashboard", "fake_trainer.py",
       "lib.sweep")
SESSION_VAR = "KIT_TEST_SESSION"


class Started:
    """A running process, its stdout and stderr read as they come (no pipe fills up, no line is missed)."""

    def __init__(self, argv, group: bool, **popen):
        for stream in ("stdout", "stderr"):
            popen.setdefault(stream, subprocess.PIPE)
        self.group = group
        self.popen = subprocess.Popen(argv, text=True, start_new_session=group, **popen)
        self.pid = self.popen.pid
        self._text = {"stdout": [], "stderr": []}
        self._seen = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(name, pipe), daemon=True)
                         for name, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr)) if pipe]
        for reader in self._readers:
            reader.start()

    def _read(self, name, pipe):
        for line in pipe:
            with self._seen:
                self._text[name].append(line)
                self._seen.notify_all()
        pipe.close()

    @property
    def out(self) -> str:
        return "".join(self._text["stdout"])

    @property
    def err(self) -> str:
        return "".join(self._text["stderr"])

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait_line(self, needle: str, timeout: float = 120) -> str:
        """The first stdout line holding ``needle``, once printed; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                found = [line for line in self._text["stdout"] if needle in line]
                if found:
                    return found[0]
                if self.popen.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"exited {self.popen.returncode} before printing {needle!r}: {self.tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no {needle!r} on stdout within {timeout} s: {self.tail()}")
                self._seen.wait(timeout=0.2)

    def wait(self, timeout: float = 120) -> int:
        """Its exit code once it ends by itself (the output read to the end); fails after ``timeout``."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s: {self.tail()}")
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def send(self, sig: int) -> None:
        """``sig`` to the process (to its group, when it leads one: runner and trainers alike)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, sig) if self.group else self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code; fails (after a SIGKILL) if it has not ended in ``timeout``."""
        self.send(sig)
        try:
            return self.wait(timeout)
        finally:
            ended(self)

    def tail(self, chars: int = 3000) -> str:
        return f"stdout: {self.out[-chars:]!r} stderr: {self.err[-chars:]!r}"


def ended(proc: Started, grace: float = 10) -> None:
    """SIGTERM, up to ``grace`` seconds to end, then SIGKILL; reaped either way (its group too, if it has one)."""
    if proc.popen.poll() is None:
        proc.send(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.group:   # what the group's leader started may outlive it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.popen.poll() is None:
        proc.popen.kill()
    proc.popen.wait()
    for reader in proc._readers:
        reader.join(timeout=10)


@contextmanager
def started(argv, ready: str | Callable[[], object] | None = None, timeout: float = 120, grace: float = 10,
            group: bool = False, **popen):
    """``argv`` running (cwd: the repository), ready when ``ready`` is: a stdout line holding it, or a
    function that returns something true (polled); stopped when the block ends, however it ends.
    ``group``: its own process group, signalled and killed as one."""
    proc = Started(argv, group, **{"cwd": ROOT, **popen})
    try:
        if isinstance(ready, str):
            proc.wait_line(ready, timeout)
        elif ready is not None:
            wait_for(ready, timeout, f"{Path(str(argv[1])).name} ready", proc)
        yield proc
    finally:
        ended(proc, grace)


def wait_for(condition: Callable[[], object], timeout: float = 120, what: str = "the condition",
             proc: Started | None = None):
    """``condition()``'s first true value, polled; fails after ``timeout`` or when ``proc`` has ended first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.returncode is not None:
            value = condition()   # the event and the exit may come together
            if value:
                return value
            pytest.fail(f"{what}: the process exited {proc.returncode} first: {proc.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s" + (f": {proc.tail()}" if proc else ""))
        time.sleep(0.05)


# --- what is left at the end -------------------------------------------------------------------------------
def kit_processes(session: str) -> dict[int, str]:
    """The processes of the kit that carry this session's mark: {pid: command line}. Linux (/proc) only."""
    mark = f"{SESSION_VAR}={session}".encode()
    mine = {os.getpid(), os.getppid()}
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if pid in mine or not any(k in cmdline for k in KIT):
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found[pid] = cmdline
        except (OSError, ValueError):   # gone meanwhile, or not ours to read
            continue
    return found


def left_over(session: str, grace: float = 5) -> dict[int, str]:
    """The kit's processes of this session still running after ``grace`` seconds (a stopped one may be
    exiting), each killed: a report, not an excuse for one more process to leak."""
    deadline = time.monotonic() + grace
    found = kit_processes(session)
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = kit_processes(session)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found
