"""What `finetune_sweep.py local` says while and after it runs (fake trainer, real runner and CLI): its exit
code when nothing succeeded, a progress line per trial a log file can be followed by, the table it prints
after Ctrl-C (the same as `status`), and what an edited sweep changed."""
import re
import signal
import subprocess
import sys
from pathlib import Path

from finetune_sweep import main
from lib.sweep import status as sweep_status
from tests.procs import started, wait_for
from tests.sweep.test_sweep_local import ROOT, fake_sweep, local, trials, write

KIND = "subprocess"   # the real trainer or runner in child processes: in `make test`, not `make check`


def test_a_study_whose_every_trial_failed_exits_1(tmp_path, capsys):
    """Two failed trials, fewer than --max_failures in a row: the sweep used to end with exit code 0."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "fail": {"value": True}}))
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out"), "--max_failures", "5"]) == 1
    out = capsys.readouterr().out
    assert "failed: no trial of the study completed (2 failed)" in out
    assert "failed: trial 1" in out and "--retry_failed" in out             # the status table says why, and what next
    assert set(trials(tmp_path / "out")["state"]) == {"fail"}
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out")]) == 1   # still nothing: still 1
    # one success is a result: the failures are reported, the exit code is 0
    ok = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1]}, "fail": {"values": [True, False]}}), "ok.yaml")
    assert local(ok, tmp_path / "ok", max_failures=5) == 0


def _elapsed(line: str) -> int:
    h, m, s = re.search(r", (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$", line.strip()).groups()
    return 3600 * int(h or 0) + 60 * int(m or 0) + int(s or 0)


def test_progress_lines_name_the_trial_count_the_total_and_keep_the_clock(tmp_path, capsys):
    """Off a terminal, one line per trial: its recipe (the keys that vary), `N of TOTAL`, and the time since
    the command started, which goes on through the confirm pass (a second runner: it used to restart)."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.2, 0.4]}, "model": {"values": ["a", "b"]},
                                            "epochs": {"value": 2}, "sleep": {"value": 0.3}}))
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out"), "--confirm_top", "1", "--repeats", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ") and " | " in line]
    assert len(lines) == 5, lines
    assert re.match(r"trial 0 complete best_val_acc=0\.2000 \[lr=0\.2 model=a\] \| 1 of 4 \+ confirm runs finished "
                    r"\(complete 1, failed 0, pruned 0\), running 0, best 0\.2000, \d+s$", lines[0]), lines[0]
    assert "[lr=0.4 model=b] | 4 of 4 + confirm runs finished" in lines[3]
    # the confirm run: the best configuration with seed 43 (seed now varies too), of 5 in all
    assert re.match(r"trial 4 complete best_val_acc=0\.4000 \[lr=0\.4 model=[ab] seed=43\] \| 5 of 5 finished",
                    lines[4]), lines[4]
    times = [_elapsed(line) for line in lines]
    assert times == sorted(times) and times[-1] >= 2, lines                 # one clock for both passes


def test_a_progress_line_names_only_the_keys_its_strategy_reads(tmp_path, capsys):
    """A freeze trial's line showed `backbone_lr_mult=...`, a key freeze never reads (lib.recipes)."""
    f = write(tmp_path, fake_sweep("grid", {"strategy": {"values": ["freeze", "partial"]},
                                            "backbone_lr_mult": {"values": [0.1, 0.01]}, "epochs": {"value": 1}}))
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("trial ") and " | " in line]
    recipes = sorted(line.split("[", 1)[1].split("]", 1)[0] for line in lines)
    assert recipes == ["backbone_lr_mult=0.01 strategy=partial", "backbone_lr_mult=0.1 strategy=partial",
                       "strategy=freeze", "strategy=freeze"], lines


def test_after_ctrl_c_the_runner_prints_the_table_status_prints(tmp_path):
    """The runner used to print its table while the interrupted trial was still `running` (Python 3.11's
    Thread.join, interrupted by Ctrl-C, calls a running thread stopped); `status` then said `interrupted`."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1, 0.2]}, "epochs": {"value": 20},
                                            "sleep": {"value": 0.1}}))
    cmd = [sys.executable, str(ROOT / "finetune_sweep.py"), "local", f, "--sweep_dir", str(tmp_path / "out")]
    with started(cmd, group=True, stderr=subprocess.DEVNULL) as proc:
        wait_for(lambda: list((tmp_path / "out" / "runs").glob("*/metrics.jsonl")), 120, "a first epoch", proc)
        proc.send(signal.SIGINT)                                              # Ctrl-C: runner and trainer
        assert proc.wait(120) == 130
    said = proc.out.split("interrupted: run the same command again to continue the sweep\n", 1)[1]
    table = sweep_status.status_table(tmp_path / "out")
    assert said.strip() == table.strip()
    assert "running" not in table and "trials: waiting 2" in table            # requeued, under its run id
    assert local(f, tmp_path / "out") == 0                                    # and it resumes
    assert set(trials(tmp_path / "out")["state"]) == {"complete"}


def test_the_extend_refusal_lists_only_what_changed(tmp_path, capsys):
    """A --set added to a study run without one was listed twice: `--set: {} -> (absent)` and the change."""
    f = write(tmp_path, fake_sweep("grid", {"lr": {"values": [0.1]}, "epochs": {"value": 1}}))
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["local", f, "--sweep_dir", str(tmp_path / "out"), "--set", "sleep=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "--extend" in err[0]
    assert [line.strip() for line in err[1:]] == ['--set.sleep: (absent) -> "0"']
    assert Path(tmp_path / "out" / "sweep.yaml").exists()
