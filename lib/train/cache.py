"""A study's shared cache: work that every run of a sweep would repeat, done once and reused.

Decoded images and frozen-backbone outputs live in ``<runs_dir>/.cache`` (``shared_cache_dir``),
one folder per entry, named by a fingerprint of everything that decides its content (the image
files' sizes and modification times, the model's frozen weights, the preprocessing, ...). A changed
input gives a new fingerprint, so an entry is never stale; old entries are only disk space and the
folder can be deleted at any time.

Several runs (threads, processes, machines on a shared disk) may ask for the same entry at once:
the first takes a lock file and builds it, the others wait and read it. An entry appears by one
atomic rename of a finished folder, so a writer killed half way leaves nothing that could be read.
The memory budget (``cache_memory_mb``) bounds everything one run holds in memory, not each array:
an entry that does not fit in what is left of it is memory-mapped from disk instead of loaded.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (and bytes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def tensors_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Hash of tensors' names, shapes, dtypes and values (the frozen weights a cached output came from)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(state[name].shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def files_fingerprint(root: Path, items: list[tuple[str, int]]) -> str:
    """Paths, labels, sizes and modification times: what `make` would look at, without reading the files."""
    rows = []
    for rel, label in items:
        try:
            st = (root / rel).stat()
            rows.append((rel, label, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((rel, label, None, None))  # decoding will skip and list it
    return fingerprint(str(root.resolve()), rows)


@dataclass
class Entry:
    arrays: dict[str, np.ndarray]
    meta: dict
    reused: bool           # read from the cache (True) or built by this call (False)
    path: Path | None


class Space:
    """Where a builder puts a large array: over the memory budget, a memory-mapped file inside the entry
    being written (a split larger than memory is decoded straight to disk); otherwise memory."""

    def __init__(self, folder: Path | None, memory_bytes: float):
        self.folder, self.memory_bytes, self.mapped = folder, memory_bytes, {}

    def empty(self, name: str, shape: tuple, dtype) -> np.ndarray:
        if self.folder is None or np.prod(shape) * np.dtype(dtype).itemsize <= self.memory_bytes:
            return np.empty(shape, dtype)
        self.mapped[name] = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        return self.mapped[name]


Builder = Callable[[Space], tuple[dict[str, np.ndarray], dict]]


class SharedCache:
    """``root=None`` turns sharing off: entries are built in memory every time. One per run: it keeps
    account of what the run holds in memory (``held``), which the budget bounds as a whole."""

    def __init__(self, root: Path | None, memory_mb: float):
        self.root, self.memory_bytes = root, memory_mb * 2**20
        self.held: dict[str, int] = {}   # entry name -> bytes of it this run holds in memory

    def room(self, replacing: str = "") -> float:
        """What is left of the budget for the entry ``replacing`` (its own earlier holding set free)."""
        return self.memory_bytes - sum(n for name, n in self.held.items() if name != replacing)

    def release(self, kind: str) -> None:
        """Set free the holdings of one kind (a phase's frozen outputs, replaced by the next phase's)."""
        self.held = {name: n for name, n in self.held.items() if not name.startswith(f"{kind}-")}

    def get(self, kind: str, key, build: Builder) -> Entry:
        """The entry for ``key``, read, or made by ``build(space)`` -> (arrays, meta) and stored."""
        name = f"{kind}-{fingerprint(kind, key)}"
        entry = self._get(name, build)
        self.held[name] = sum(a.nbytes for a in entry.arrays.values() if not isinstance(a, np.memmap))
        return entry

    def _get(self, name: str, build: Builder) -> Entry:
        if self.root is None:
            return Entry(*build(Space(None, self.room(name))), reused=False, path=None)
        final = self.root / name
        if (final / "meta.json").exists():
            return self._load(final)
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{name}.lock"):
            if (final / "meta.json").exists():   # another run built it while we waited
                return self._load(final)
            tmp = final.with_name(f".tmp-{final.name}")
            shutil.rmtree(tmp, ignore_errors=True)   # a writer killed earlier; we hold the lock
            tmp.mkdir()
            space = Space(tmp, self.room(name))
            try:
                arrays, meta = build(space)
                self._write(tmp, final, arrays, meta, space)
            except BaseException:   # interrupted (SIGTERM) or failed: leave no half-built entry behind
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if space.mapped:   # read back as the copy-on-write map every later run gets
            return Entry(self._load(final).arrays, meta, reused=False, path=final)
        return Entry(arrays, meta, reused=False, path=final)

    @staticmethod
    def _write(tmp: Path, final: Path, arrays: dict[str, np.ndarray], meta: dict, space: Space) -> None:
        rows = {}
        for k, a in arrays.items():
            if k in space.mapped:   # already in its file; a builder may use only the first rows
                space.mapped[k].flush()
                if len(a) != len(space.mapped[k]):
                    rows[k] = len(a)
            else:
                np.save(tmp / f"{k}.npy", np.ascontiguousarray(a))
        (tmp / "meta.json").write_text(json.dumps({**meta, "arrays": sorted(arrays), "rows": rows}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, final)

    def _load(self, path: Path) -> Entry:
        meta = json.loads((path / "meta.json").read_text())
        files = {k: path / f"{k}.npy" for k in meta.pop("arrays")}
        rows = meta.pop("rows", {})
        big = sum(f.stat().st_size for f in files.values()) > self.room(path.name)
        # Copy-on-write maps: pages come from disk on demand and are shared by the runs of this machine.
        arrays = {k: np.load(f, mmap_mode="c" if big else None) for k, f in files.items()}
        arrays = {k: a[:rows[k]] if k in rows else a for k, a in arrays.items()}
        return Entry(arrays, {**meta, "memory_mapped": big}, reused=True, path=path)


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
