"""The W&B server side, which cannot exist here: a stand-in for ``wandb.Api()`` (sweeps, runs,
artifacts), and a reader of the records an offline run writes, to check what we logged exactly."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path


class FakeSummary:
    """Like wandb's HTTPSummary: a mapping over _json_dict, plus W&B's own keys and media."""

    def __init__(self, d):
        self._json_dict = d


class FakeRun:
    def __init__(self, rid, state, config, summary, history):
        self.id, self.name, self.state = rid, f"name-{rid}", state
        self.config, self.summary, self._history = config, FakeSummary(summary), history

    def history(self, pandas=True):
        assert pandas is False
        return self._history


class FakeArtifact:
    """``download(root)`` puts the files where W&B would and returns that folder."""

    def __init__(self, files: list[Path]):
        self.files = files

    def download(self, root: str) -> str:
        Path(root).mkdir(parents=True, exist_ok=True)
        for f in self.files:
            shutil.copy(f, Path(root) / f.name)
        return root


class FakeApi:
    def __init__(self, runs, artifacts: dict[str, FakeArtifact] | None = None, config: dict | None = None):
        self.runs, self.artifacts, self.config, self.asked = runs, artifacts or {}, config, []

    def sweep(self, path):
        """W&B's Sweep: its runs and, where given, its config (the sweep YAML as the server keeps it)."""
        self.asked.append(path)
        return type("Sweep", (), {"runs": self.runs, **({"config": self.config} if self.config else {})})()

    def artifact(self, name, type=None):
        self.asked.append((name, type))
        if name not in self.artifacts:
            raise ValueError(f"artifact '{name}' not found")   # wandb.errors.CommError in the real API
        return self.artifacts[name]


BLOCK, HEADER = 32768, 7   # W&B's transaction log: LevelDB-style 32 KiB blocks, 7-byte headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_records(path: Path) -> list:
    """Every protobuf ``Record`` in an offline run's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:           # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:
            break
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def logged_artifacts(run_file: Path) -> dict[str, dict]:
    """name -> {type, aliases, files: {path: W&B digest (base64 md5)}} of the artifacts an offline run logged."""
    out = {}
    for rec in offline_records(run_file):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out[a.name] = {"type": a.type, "aliases": list(a.aliases),
                           "files": {e.path: e.digest for e in a.manifest.contents}}
    return out
