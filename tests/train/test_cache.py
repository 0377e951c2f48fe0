"""The study's shared cache (lib.train.cache) on its own: fingerprints that stay put for the same
inputs and move for any change that matters, entries built once and read back equal, and the memory
budget (cache_memory_mb) bounding what one run holds, with what does not fit memory-mapped."""
import os

import numpy as np
import pytest
import torch

from lib.train.cache import SharedCache, files_fingerprint, fingerprint, tensors_fingerprint

KB = 2**10


# --- fingerprints ------------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_sees_every_part():
    key = {"side": 37, "interpolation": "bilinear", "files": "abc"}
    fp = fingerprint("decoded", key)
    assert len(fp) == 24 and int(fp, 16) >= 0
    assert fingerprint("decoded", dict(reversed(list(key.items())))) == fp       # key order does not matter
    assert fingerprint("decoded", {**key, "side": 38}) != fp
    assert fingerprint("features", key) != fp
    assert fingerprint("a", "b") != fingerprint("ab") != fingerprint("a", "", "b")  # parts are separated
    assert fingerprint(b"\x00\x01") == fingerprint(b"\x00\x01") != fingerprint(b"\x00\x02")


def test_tensors_fingerprint_sees_names_shapes_dtypes_and_values():
    g = torch.Generator().manual_seed(0)
    state = {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "bn.bias": torch.zeros(4)}
    fp = tensors_fingerprint(state)
    assert tensors_fingerprint({k: v.clone() for k, v in reversed(list(state.items()))}) == fp
    nudged = state["conv.weight"].clone()
    nudged[0, 0, 0, 0] = torch.nextafter(nudged[0, 0, 0, 0], torch.tensor(1e9))   # one ulp
    assert tensors_fingerprint({**state, "conv.weight": nudged}) != fp
    assert tensors_fingerprint({"conv.w": state["conv.weight"], "bn.bias": state["bn.bias"]}) != fp
    assert tensors_fingerprint({**state, "conv.weight": state["conv.weight"].reshape(4, 27)}) != fp
    same_bits = state["conv.weight"].view(torch.int32)                                 # same bytes, other dtype
    assert tensors_fingerprint({**state, "conv.weight": same_bits}) != fp
    param = torch.nn.Parameter(state["conv.weight"].clone())                          # a parameter with grad
    assert tensors_fingerprint({**state, "conv.weight": param}) == fp


def test_files_fingerprint_follows_size_mtime_label_and_folder(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"12345")
    items = [("a.png", 0), ("b.png", 1)]
    fp = files_fingerprint(tmp_path, items)
    assert files_fingerprint(tmp_path, list(items)) == fp
    st = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))         # touched: like make
    touched = files_fingerprint(tmp_path, items)
    assert touched != fp
    (tmp_path / "a.png").write_bytes(b"123456")
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert files_fingerprint(tmp_path, items) not in (fp, touched)                  # another size
    now = files_fingerprint(tmp_path, items)
    assert files_fingerprint(tmp_path, [("a.png", 1), ("b.png", 1)]) != now        # a label moved
    assert files_fingerprint(tmp_path, items[::-1]) != now                          # another order
    assert files_fingerprint(tmp_path, items + [("gone.png", 0)]) != now            # a missing file: no error
    other = tmp_path / "copy"
    other.mkdir()
    for name in ("a.png", "b.png"):
        (other / name).write_bytes((tmp_path / name).read_bytes())
        s = (tmp_path / name).stat()
        os.utime(other / name, ns=(s.st_atime_ns, s.st_mtime_ns))
    assert files_fingerprint(other, items) != now                                   # same files, another folder


# --- entries -----------------------------------------------------------------------------------------
def counting(arrays: dict, meta: dict | None = None):
    calls = []

    def build(_space):
        calls.append(1)
        return {k: v.copy() for k, v in arrays.items()}, dict(meta or {})
    return build, calls


def test_an_entry_is_built_once_and_read_back_equal(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([1, 0, 2])}
    build, calls = counting(arrays, {"paths": ["a", "b", "c"]})
    made = SharedCache(tmp_path, memory_mb=1).get("decoded", {"k": 1}, build)
    read = SharedCache(tmp_path, memory_mb=1).get("decoded", {"k": 1}, build)
    assert calls == [1] and (made.reused, read.reused) == (False, True) and made.path == read.path
    assert read.path.name == f"decoded-{fingerprint('decoded', {'k': 1})}"
    for k, a in arrays.items():
        assert np.array_equal(read.arrays[k], a) and read.arrays[k].dtype == a.dtype
    assert read.meta == {"paths": ["a", "b", "c"], "memory_mapped": False}
    SharedCache(tmp_path, memory_mb=1).get("decoded", {"k": 2}, build)              # another key: built
    assert calls == [1, 1]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_without_a_folder_every_get_builds_in_memory(tmp_path):
    build, calls = counting({"x": np.ones(8)})
    cache = SharedCache(None, memory_mb=1)
    a, b = cache.get("features", "k", build), cache.get("features", "k", build)
    assert calls == [1, 1] and not a.reused and not b.reused and a.path is None
    assert cache.held == {f"features-{fingerprint('features', 'k')}": 64}          # counted once, not twice


def test_a_failed_build_leaves_nothing_and_the_next_get_builds(tmp_path):
    def broken(_space):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        SharedCache(tmp_path, memory_mb=1).get("decoded", "k", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    build, calls = counting({"x": np.zeros(3)})
    assert not SharedCache(tmp_path, memory_mb=1).get("decoded", "k", build).reused and calls == [1]


# --- the memory budget -------------------------------------------------------------------------------
def test_the_budget_bounds_what_a_run_holds_not_each_array(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, 60 * KB, dtype=np.uint8)
    b = np.random.default_rng(1).integers(0, 255, 60 * KB, dtype=np.uint8)
    for key, arr in (("a", a), ("b", b)):                                            # written by an earlier run
        SharedCache(tmp_path, memory_mb=1).get("decoded", key, lambda _s, arr=arr: ({"x": arr}, {}))
    cache = SharedCache(tmp_path, memory_mb=100 * KB / 2**20)                        # each fits, both do not
    first = cache.get("decoded", "a", lambda _s: pytest.fail("rebuilt"))
    second = cache.get("decoded", "b", lambda _s: pytest.fail("rebuilt"))
    assert not isinstance(first.arrays["x"], np.memmap) and not first.meta["memory_mapped"]
    assert isinstance(second.arrays["x"], np.memmap) and second.meta["memory_mapped"]
    assert np.array_equal(second.arrays["x"], b)
    assert sum(cache.held.values()) == a.nbytes <= cache.memory_bytes               # the map is not held
    assert cache.room() == cache.memory_bytes - a.nbytes
    assert cache.room(replacing=first.path.name) == cache.memory_bytes              # its own holding set free
    # a copy-on-write map: writing to it never reaches the file other runs read
    second.arrays["x"][:4] = 0
    assert np.array_equal(SharedCache(tmp_path, memory_mb=1).get("decoded", "b", pytest.fail).arrays["x"], b)


def test_release_sets_free_one_kind(tmp_path):
    cache = SharedCache(None, memory_mb=1)
    cache.get("decoded", "d", lambda _s: ({"x": np.zeros(100, np.uint8)}, {}))
    cache.get("features", "f1", lambda _s: ({"x": np.zeros(10, np.float32)}, {}))
    cache.get("features", "f2", lambda _s: ({"x": np.zeros(20, np.float32)}, {}))
    assert sum(cache.held.values()) == 100 + 40 + 80
    cache.release("features")
    assert list(cache.held.values()) == [100] and cache.room() == 2**20 - 100


def test_a_builder_over_the_budget_writes_straight_into_the_entry_file(tmp_path):
    cache = SharedCache(tmp_path, memory_mb=8 * KB / 2**20)
    cache.get("decoded", "small", lambda _s: ({"x": np.ones(6 * KB, np.uint8)}, {}))   # 6 of the 8 kB held
    spaces = []

    def build(space):
        spaces.append(space)
        images = space.empty("images", (4, 1024), np.uint8)                          # 4 kB > the 2 kB left
        images[:3] = np.arange(3, dtype=np.uint8).reshape(3, 1) + 7
        return {"images": images[:3]}, {"rows": "three of four"}                      # only the rows used
    entry = cache.get("decoded", "big", build)
    assert spaces[0].memory_bytes == 2 * KB and isinstance(spaces[0].mapped["images"], np.memmap)
    assert isinstance(entry.arrays["images"], np.memmap) and entry.arrays["images"].shape == (3, 1024)
    assert (entry.arrays["images"][:, 0] == [7, 8, 9]).all()
    assert sum(cache.held.values()) == 6 * KB                                         # the map holds no budget
    roomy = SharedCache(tmp_path, memory_mb=1).get("decoded", "big", pytest.fail)
    assert not isinstance(roomy.arrays["images"], np.memmap) and roomy.arrays["images"].shape == (3, 1024)
    # under the budget the builder gets plain memory
    def small(space):
        spaces.append(space)
        return {"x": space.empty("x", (8,), np.float32)}, {}
    SharedCache(tmp_path, memory_mb=1).get("decoded", "fits", small)
    assert spaces[-1].mapped == {} and not list(tmp_path.glob(".tmp-*/x.npy"))
