"""Small file helpers every layer uses: atomic writes (temp + fsync + rename), JSON and JSON lines,
the tail of a log, and locks (an flock on a run folder, a lock file around a critical section).
Standard library only."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib.errors import RunBusy


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic).
    The file is fsynced before the rename and the folder after it: a power cut or a killed machine
    leaves the old version or the new one, never an empty file under the new name (ext4 and XFS
    may commit a rename before the data it points to). Mode 0666 less the umask, like ``open()``:
    mkstemp's 0600 would hide records and exports from the rest of a team."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())   # after write(): a writer may have replaced the file
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, folder=True)


def _fsync(path, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not folder:   # some file systems cannot sync a folder (EINVAL); the file itself must be synced
            raise
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask, read without changing it: ``os.umask`` can only be read by setting it, which
    would race with files other threads create meanwhile. Linux says it in /proc (kernel >= 4.7)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=json_default) + "\n"))


def json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@contextmanager
def run_lock(folder: Path, name: str):
    """Hold ``<folder>/<name>`` (lib.records.LOCK_FILE) exclusively for the whole run: two processes
    never write one run folder (a requeued trial whose first trainer still runs, a run id given twice). An
    flock, so the kernel drops it when its holder dies: a killed run never leaves a stale lock. The holder
    writes its pid in the file for the refusal message. A folder this lock created and nothing else used is
    removed again."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunBusy(f"run folder {folder} is in use by process {holder} (it holds {path}): "
                          "wait for it to end or stop it; two processes never write one run") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)   # its holder removed the file as we opened it (see below): lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [name]:
            path.unlink()   # still held, so no one else can have locked this file meanwhile
            try:
                folder.rmdir()
            except OSError:   # someone wrote into it meanwhile: theirs now
                pass
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file that parse as objects (a line cut by a crash is skipped); [] if absent."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def tail(path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log, joined on one line: the likely reason a process ended."""
    try:
        text = [x for x in Path(path).read_text(errors="replace").splitlines() if x.strip()]
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


@contextmanager
def locked(path: Path):
    """Hold an exclusive flock on ``path`` (created if missing) for the block: one process at a time."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
