"""The run record: ``<runs_dir>/<run_id>/`` with ``run.json``, ``metrics.jsonl`` and
``model.safetensors``. Readable without W&B; every file is written atomically (temp + rename), so a
crash leaves the previous version, never half a file."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


STATES = ("running", "finished", "failed", "preempted", "pruned")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


class RunRecord:
    """Owns one run folder. ``data`` mirrors run.json; ``update`` rewrites it."""

    def __init__(self, runs_dir: str, run_id: str):
        self.dir = Path(runs_dir) / run_id
        self.path = self.dir / "run.json"
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {}
        self.metrics: list[dict] = []
        if (self.dir / "metrics.jsonl").exists():
            lines = (self.dir / "metrics.jsonl").read_text().splitlines()
            self.metrics = [json.loads(line) for line in lines if line.strip()]

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
