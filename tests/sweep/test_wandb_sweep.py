"""W&B sweeps on the server side: creating a sweep (server faked) and running one agent per GPU.

The agents are real child processes that stand in for `wandb agent`; signal forwarding is tested on a
real process, since Python only runs signal handlers in the main thread.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lib.sweep import wandb_sweep
from tests.procs import started

SWEEP = {
    "program": "finetune_resnet.py",
    "method": "grid",
    "metric": {"name": "best_val_acc", "goal": "maximize"},
    "parameters": {"lr": {"values": [1e-3, 1e-4]}, "strategy": {"values": ["freeze", "partial"]}},
}


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    return str(path)


@pytest.fixture
def no_key(tmp_path, monkeypatch):
    """No credentials anywhere wandb looks: env, netrc, settings files under HOME."""
    netrc = tmp_path / "empty_netrc"
    netrc.write_text("")
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    # wandb caches settings (a key read from the environment included) and the session's credentials
    # per process: forget both, or a key seen earlier in this test session would still count.
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.wbauth import authenticate

    monkeypatch.setattr(wandb_setup, "_singleton", None)
    monkeypatch.setattr(authenticate, "_session_auth", None)


def fake_sweep(calls):
    def sweep(sweep, project=None, entity=None):
        calls.append((sweep, project, entity))
        return "abc123"
    return sweep


# --- create ---------------------------------------------------------------------------------------

def test_create_sends_the_yaml_and_prints_the_agent_commands(sweep_file, no_key, capsys):
    calls = []
    path = wandb_sweep.create(sweep_file, "dogs", "me", sweep_fn=fake_sweep(calls))
    assert calls == [(SWEEP, "dogs", "me")]
    assert path == "me/dogs/abc123"
    out = capsys.readouterr().out
    assert "abc123" in out
    assert "python finetune_sweep.py agent me/dogs/abc123 --gpus" in out
    assert "wandb agent me/dogs/abc123" in out


def test_create_takes_project_from_the_yaml(tmp_path, no_key):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "project": "cats"}))
    calls = []
    assert wandb_sweep.create(str(path), None, None, sweep_fn=fake_sweep(calls)) == "cats/abc123"
    assert calls[0][1:] == ("cats", None)


def test_create_rejects_a_schema_violation_before_calling_wandb(tmp_path, no_key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "method": "nonsense"}))
    calls = []
    with pytest.raises(wandb_sweep.SweepError, match="nonsense") as e:
        wandb_sweep.create(str(path), "dogs", None, sweep_fn=fake_sweep(calls))
    assert calls == [] and "\n" not in str(e.value)


def test_create_explains_1e_5_read_as_text(tmp_path, no_key):
    path = tmp_path / "s.yaml"  # PyYAML, like wandb, reads 1e-5 as a string; the schema then rejects it
    path.write_text("method: random\nparameters:\n  lr: {distribution: log_uniform_values, min: 1e-5, max: 0.1}\n")
    with pytest.raises(wandb_sweep.SweepError, match=r"lr.*YAML reads 1e-5 as text: write 1.0e-5"):
        wandb_sweep.create(str(path), "dogs", None, sweep_fn=fake_sweep([]))


@pytest.mark.parametrize("text, problem", [(None, "not found"), ("a: [1,", "not valid YAML"),
                                           ("- a\n- b\n", "mapping")])
def test_bad_sweep_files_are_one_line_errors(tmp_path, text, problem):
    path = tmp_path / "s.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(wandb_sweep.SweepError, match=problem) as e:
        wandb_sweep.create(str(path), "dogs", None, sweep_fn=fake_sweep([]))
    assert "\n" not in str(e.value)


def test_create_without_api_key_fails_fast(sweep_file, no_key):
    t = time.monotonic()
    with pytest.raises(wandb_sweep.SweepError, match="wandb login") as e:
        wandb_sweep.create(sweep_file, "dogs", None)
    assert time.monotonic() - t < 5
    assert "finetune_sweep.py local" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("command", ["report", "export"])
def test_reading_a_wandb_sweep_without_api_key_is_one_line(command, no_key, tmp_path, capsys):
    import finetune_sweep

    t = time.monotonic()
    assert finetune_sweep.main([command, "ent/proj/abc123", "--out", str(tmp_path / "o")]) == 2
    assert time.monotonic() - t < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: reading a W&B sweep needs an API key: run `wandb login` (or set WANDB_API_KEY); "
                   "offline, pass the local sweep dir instead"]


def test_create_turns_wandb_errors_into_one_line(sweep_file, no_key):
    import wandb

    def unreachable(**_):
        raise wandb.errors.CommError("Failed to execute API request:\nconnection refused")

    with pytest.raises(wandb_sweep.SweepError, match="could not create the sweep: Failed.*connection refused") as e:
        wandb_sweep.create(sweep_file, "dogs", None, sweep_fn=unreachable)
    assert "\n" not in str(e.value)


# --- agent_commands -------------------------------------------------------------------------------

def test_agent_commands_one_per_gpu():
    cmds = wandb_sweep.agent_commands("me/dogs/abc123", ["0", "1"], 5)
    assert [env for _, env in cmds] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    for argv, _ in cmds:
        assert argv[:4] == [sys.executable, "-m", "wandb", "agent"]
        assert argv[-1] == "me/dogs/abc123"
        assert argv[argv.index("--count") + 1] == "5"
        assert "--forward-signals" in argv  # else the run never hears of a SIGTERM


def test_agent_commands_without_gpus_leave_devices_alone():
    [(argv, env)] = wandb_sweep.agent_commands("abc123", None, None)
    assert env == {} and "--count" not in argv and argv[-1] == "abc123"


def test_agent_command_is_a_working_wandb_cli():
    argv, _ = wandb_sweep.agent_commands("abc123", None, None)[0]
    out = subprocess.run([*argv[:-1], "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--forward-signals" in out.stdout and "--count" in out.stdout


# --- agent: real child processes stand in for `wandb agent` ---------------------------------------

CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    log = sys.argv[1]
    def write(**kw):
        with open(log, "a") as f:
            f.write(json.dumps(kw) + "\\n")
    def on_signal(signum, frame):  # what a run does: checkpoint, then exit
        write(event="got " + signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    write(event="start", gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), spawned=float(os.environ["FAKE_SPAWNED"]),
          pid=os.getpid(), pgid=os.getpgid(0))
    code = int(os.environ.get("FAKE_EXIT", "-1"))
    if code >= 0:
        sys.exit(code)
    while True:
        time.sleep(0.05)
""")


def fake_popen(log_dir, exit_codes=None):
    """A popen that runs CHILD instead of `wandb agent`, keeping the env and kwargs agent() chose."""
    def popen(argv, env, **kwargs):
        assert "shell" not in kwargs and argv[-1] == "me/dogs/abc123"
        gpu = env.get("CUDA_VISIBLE_DEVICES", "all")
        # When agent() started it, by the parent's clock: the child's own start time adds interpreter jitter.
        env = {**env, "FAKE_EXIT": str((exit_codes or {}).get(gpu, -1)), "FAKE_SPAWNED": repr(time.monotonic())}
        return subprocess.Popen([sys.executable, "-c", CHILD, str(Path(log_dir) / f"gpu{gpu}.jsonl")],
                                env=env, **kwargs)
    return popen


def events(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def test_agent_returns_the_worst_exit_code(tmp_path, capsys):
    code = wandb_sweep.agent("me/dogs/abc123", 1, ["0", "1", "2"], stagger_s=0.0,
                       popen=fake_popen(tmp_path, {"0": 0, "1": 3, "2": 0}))
    assert code == 3
    out = capsys.readouterr()
    assert out.out.count("pid") == 3 and "gpu 1" in out.out
    assert "code 3" in out.err


def test_agent_all_zero_is_zero(tmp_path):
    assert wandb_sweep.agent("me/dogs/abc123", None, None, stagger_s=0.0, popen=fake_popen(tmp_path, {"all": 0})) == 0
    [start] = events(tmp_path / "gpuall.jsonl")
    assert start["gpu"] == os.environ.get("CUDA_VISIBLE_DEVICES")  # untouched without --gpus


RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from lib.sweep import wandb_sweep
    from tests.sweep.test_wandb_sweep import fake_popen
    print("ready", flush=True)
    sys.exit(wandb_sweep.agent("me/dogs/abc123", None, ["0", "1"], stagger_s=0.5, popen=fake_popen({logs!r})))
""")


def test_agent_staggers_and_forwards_sigterm_to_every_child(tmp_path):
    root = Path(__file__).resolve().parents[2]
    script = RUNNER.format(root=str(root), tests=str(root / "tests"), logs=str(tmp_path))
    logs = [tmp_path / "gpu0.jsonl", tmp_path / "gpu1.jsonl"]
    with started([sys.executable, "-c", script], ready=lambda: all(events(p) for p in logs), timeout=30) as parent:
        assert parent.stop(signal.SIGTERM, timeout=30) == 0, parent.err  # both children exited 0 after SIGTERM
        out = parent.out
    starts = [events(p)[0] for p in logs]
    assert [s["gpu"] for s in starts] == ["0", "1"]
    assert starts[1]["spawned"] - starts[0]["spawned"] >= 0.5
    assert all(events(p)[-1]["event"] == "got SIGTERM" for p in logs)
    # Own process groups: a terminal's Ctrl-C reaches the agents once, through the parent.
    assert all(s["pgid"] == s["pid"] for s in starts)
    assert out.count("pid") == 2


def test_agent_signal_while_staggering_starts_no_more_agents(tmp_path):
    root = Path(__file__).resolve().parents[2]
    script = RUNNER.format(root=str(root), tests=str(root / "tests"), logs=str(tmp_path)).replace(
        "stagger_s=0.5", "stagger_s=30")
    with started([sys.executable, "-c", script], ready=lambda: events(tmp_path / "gpu0.jsonl"), timeout=30) as parent:
        t = time.monotonic()
        assert parent.stop(signal.SIGINT, timeout=10) == 0, parent.err
    assert time.monotonic() - t < 5
    assert not (tmp_path / "gpu1.jsonl").exists()
    assert events(tmp_path / "gpu0.jsonl")[-1]["event"] == "got SIGINT"


# --- agent: bad requests stop before any agent starts ----------------------------------------------

@pytest.mark.parametrize("mode", [None, "offline", "disabled"])
def test_agent_without_api_key_is_one_line_and_starts_nothing(no_key, monkeypatch, capsys, mode):
    """`wandb agent` needs the server in every WANDB_MODE: without a key each agent failed after its
    stagger (20 s apart), or waited at a login prompt on a terminal."""
    import finetune_sweep

    if mode:
        monkeypatch.setenv("WANDB_MODE", mode)
    started, real_popen = [], subprocess.Popen

    def popen(argv, *args, **kwargs):   # wandb itself runs git: only `wandb agent` must not start
        if "agent" in argv:
            started.append(argv)
        return real_popen(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    t = time.monotonic()
    assert finetune_sweep.main(["agent", "ent/proj/abc123", "--gpus", "0,1"]) == 2
    assert time.monotonic() - t < 5 and started == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no W&B API key: `wandb agent` needs the W&B server") \
        and "finetune_sweep.py local" in err[0]


@pytest.mark.parametrize("args, message", [(["--count", "0"], "--count 0: expected an integer >= 1"),
                                           (["--gpus", "0,,1"], "--gpus '0,,1': expected comma-separated")])
def test_agent_bad_arguments_are_one_line(args, message, capsys):
    import finetune_sweep

    assert finetune_sweep.main(["agent", "ent/proj/abc123", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
