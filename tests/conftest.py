"""Shared fixtures: real images (Animal-MNIST silhouettes, shipped by pip), W&B kept offline, and no
process of the kit left running when the suite ends (tests/procs.py)."""
from __future__ import annotations

import os
import uuid

import pytest

from tests import procs

# Fixtures shared across folders, registered once (a test names them; no import): a real PostgreSQL
# server and database (pg_server, pg_url), the guide's sweep for the report tests (guide_sweep, guide_report).
pytest_plugins = ["tests.pg", "tests.report.guide"]

# W&B must never reach the network from tests; set before anything imports wandb.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: fail in 0.1 s, not after retries
# Every process this session starts inherits the mark: what is left at the end is ours, not another suite's.
SESSION = os.environ[procs.SESSION_VAR] = uuid.uuid4().hex
LEAKED: dict[int, str] = {}   # pid -> the test after which it was first seen running

# The tiers (issue 20): `make check` runs every test not marked slow, in under 3 minutes; `make test` all.
# A test is slow by what it uses (a fixture below) or by its file's declared kind: a module-level
# KIND = "training" (real runs in-process), "subprocess" (the real trainer or runner in a child
# process), "server" (PostgreSQL, the dashboard) or "notebook"; a file without KIND is "unit".
SLOW_KINDS = {"training", "subprocess", "server", "notebook"}
SLOW_FIXTURES = {"base_args", "imbalanced", "pg_server", "pg_url"}   # a real run's arguments; a real database
KINDS = SLOW_KINDS | {"unit"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        kind = getattr(item.module, "KIND", "unit")
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.module.__file__}: KIND = {kind!r}, expected one of {sorted(KINDS)}")
        if kind in SLOW_KINDS or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("opt_in") and not os.environ.get("RUN_SLOW"):
            item.add_marker(pytest.mark.skip(reason="opt-in (minutes of one-off work): RUN_SLOW=1 runs it"))


@pytest.fixture(scope="session", autouse=True)
def no_kit_process_left():
    """The suite fails (an error at its last teardown) if a process of the kit it started outlives it:
    a dashboard or a runner left behind holds a port, a journal, or the CPU of whatever runs next."""
    yield
    left = procs.left_over(SESSION)
    if left:
        pytest.fail("processes of the kit started by the tests were still running (now killed):\n" + "\n".join(
            f"  pid {pid}, left by {LEAKED.get(pid, 'a session fixture')}: {cmd}" for pid, cmd in left.items()),
            pytrace=False)


@pytest.fixture(autouse=True)
def _who_left_it(request):
    """Which test a left-over process comes from (checked once the test has ended; the failure is the
    session's, since a process on its way out may still be listed for a moment)."""
    yield
    for pid in procs.kit_processes(SESSION):
        LEAKED.setdefault(pid, request.node.nodeid)


@pytest.fixture(scope="session")
def animals(tmp_path_factory):
    """4 classes x 40 real images, class folders only (the run carves val and test)."""
    from lib.train.demo_data import prepare

    return prepare(tmp_path_factory.mktemp("animals"), per_class=40, classes=4, seed=1)


@pytest.fixture(scope="session")
def imbalanced(tmp_path_factory):
    """2 classes of real images at 4:1 (Animal-MNIST cat 240, dog 60, which look alike at 28 px), class
    folders only: a frozen backbone's head trained unweighted predicts the majority class."""
    import numpy as np
    from PIL import Image

    from lib.train.demo_data import CLASSES, load_arrays

    out = tmp_path_factory.mktemp("imbalanced")
    images, labels = load_arrays()
    rng = np.random.default_rng(0)
    for name, n in (("cat", 240), ("dog", 60)):
        (out / name).mkdir()
        for i in rng.permutation(np.flatnonzero(labels == CLASSES.index(name)))[:n]:
            Image.fromarray(images[i], mode="L").save(out / name / f"{name}_{i:05d}.png")
    return out


@pytest.fixture
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp() / "weights-cache")


@pytest.fixture
def base_args(animals, tmp_path, cache_dir):
    """Command-line arguments of a tiny, fast, real run on the fixture images."""
    return [f"--data_dir={animals}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
            "--image_size=32", "--min_image_side=16", "--batch_size=16", "--augment=none",
            "--val_fraction=0.25", "--test_fraction=0.25", "--epochs=2", "--device=cpu"]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """The working folder of a machine that ran nothing (study_db and study_input tests read from it)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
