"""The run record: ``<runs_dir>/<run_id>/`` with ``run.json``, ``metrics.jsonl`` and
``model.safetensors``. Readable without W&B; every file is written atomically (temp + rename), so a
crash leaves the previous version, never half a file."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any


STATES = ("running", "finished", "failed", "preempted", "pruned")


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
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, default=_plain) + "\n"))


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class RunBusy(RuntimeError):
    """Another live process holds the run folder; the message is one line naming it."""


LOCK = ".lock"


@contextmanager
def run_lock(folder: Path):
    """Hold ``<folder>/.lock`` exclusively for the whole run: two processes never write one run folder
    (a requeued trial whose first trainer still runs, a run id given twice). An flock, so the kernel
    drops it when its holder dies: a killed run never leaves a stale lock. The holder writes its pid in
    the file for the refusal message. A folder this lock created and nothing else used is removed again."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
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
        if created and [p.name for p in folder.iterdir()] == [LOCK]:
            path.unlink()   # still held, so no one else can have locked this file meanwhile
            try:
                folder.rmdir()
            except OSError:   # someone wrote into it meanwhile: theirs now
                pass
        os.close(fd)


class RunRecord:
    """Owns one run folder. ``data`` mirrors run.json; ``update`` rewrites it."""

    def __init__(self, runs_dir: str, run_id: str):
        self.dir = Path(runs_dir) / run_id
        self.path = self.dir / "run.json"
        # Damage found on opening (a disk that lost a write, a file truncated by hand): the run goes on
        # from what is left, and these lines go to the record's warnings and to stderr.
        self.notes: list[str] = []
        self.data: dict[str, Any] = self._read_record()
        self.metrics: list[dict] = self._read_metrics()

    def _read_record(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = read_json(self.path)
            if isinstance(data, dict):
                return data
            why = f"a JSON {type(data).__name__}, not an object"
        except (OSError, ValueError) as e:   # ValueError: bad JSON or bad UTF-8
            why = " ".join(str(e).split())[:120] or type(e).__name__
        self.notes.append(f"run.json was damaged ({why}): its earlier contents are lost")
        return {}

    def _read_metrics(self) -> list[dict]:
        path = self.dir / "metrics.jsonl"
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        except (OSError, ValueError):
            lines = ["?"]
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
        if len(rows) < len(lines):
            self.notes.append(f"metrics.jsonl was damaged: {len(lines) - len(rows)} unreadable row(s) dropped")
        return rows

    def start_fresh(self) -> None:
        """Forget an earlier attempt with this id (a requeued or repeated run)."""
        self.start_fresh_epochs()
        self.data = {}

    def start_fresh_epochs(self) -> None:
        self.metrics = []
        (self.dir / "metrics.jsonl").unlink(missing_ok=True)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.path, self.data)

    def log_epoch(self, row: dict) -> None:
        self.metrics.append(row)
        text = "".join(json.dumps(r, default=_plain) + "\n" for r in self.metrics)
        atomic_write(self.dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))

    def save_weights(self, state_dict: dict, name: str = "model.safetensors") -> Path:
        from safetensors.torch import save_file  # here: reading records must not need torch

        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        path = self.dir / name
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
        return path

    def load_weights(self, name: str = "model.safetensors") -> dict:
        from safetensors.torch import load_file

        return load_file(self.dir / name)
