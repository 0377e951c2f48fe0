"""The run folder: one process at a time (an flock held for the whole run), a finished run is never
trained over without --overwrite, and its files honour the umask like any file the user makes."""
import os
import signal
import sys
from pathlib import Path

from lib.files import read_json, write_json
from lib.train.run import main
from tests.procs import started, wait_for

KIND = "training"   # real training in this process: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict:
    """Every file's bytes and modification time; the lock (which names its latest holder) left out."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_second_process_on_the_same_run_id_is_refused(base_args, tmp_path, capsys):
    """The holder is a real finetune_resnet.py process; the second one is this test's own process."""
    args = [*base_args, "--model=small_cnn", "--epochs=200", "--run_id=one"]
    lock = tmp_path / "runs" / "one" / ".lock"
    with started([sys.executable, "finetune_resnet.py", *args]) as first:
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 180, "the run's lock", first)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"in use by process {first.pid}" in err[0]
        assert first.returncode is None                   # the holder goes on, untouched
        assert first.stop(signal.SIGTERM, timeout=120) == 3, first.err[-1500:]   # preempted, resumable


def test_a_finished_run_is_not_trained_over_without_overwrite(base_args, tmp_path, capsys):
    args = base_args + ["--model=small_cnn", "--epochs=1", "--run_id=done"]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / "done"
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run done already finished" in err[0] and "--overwrite" in err[0]
    assert snapshot(run_dir) == before                    # nothing changed
    assert main(args + ["--overwrite"]) == 0
    assert read_json(run_dir / "run.json")["state"] == "finished"
    assert snapshot(run_dir) != before


def test_records_honour_the_umask(base_args, tmp_path):
    saved = os.umask(0o022)
    try:
        assert main(base_args + ["--model=small_cnn", "--epochs=1", "--run_id=modes"]) == 0
        files = [p for p in (tmp_path / "runs" / "modes").iterdir()
                 if p.is_file() and p.name in ("run.json", "metrics.jsonl", "model.safetensors")]
        assert len(files) == 3
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}
        os.umask(0o077)
        write_json(tmp_path / "private.json", {"a": 1})
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(saved)
