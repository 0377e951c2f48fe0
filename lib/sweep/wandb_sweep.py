"""The W&B-server side of sweeps: create a sweep there, then run one ``wandb agent`` per GPU.

W&B sweeps need the server (the search runs there); ``finetune_sweep.py local`` is the offline path.
Nothing here prints or logs an API key, and children are started from argv lists, never a shell.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from lib.errors import SweepError
from lib.records import ExitCode
from lib.runs import has_credentials
from lib.sweep import spec as sweep_spec
from lib.sweep.budget import budget_line, format_duration
from lib.sweep.gpus import gpu_list, resolve_gpus


def create(sweep_file: str, project: str | None, entity: str | None, *, sweep_fn=None) -> str:
    """Create the sweep on W&B, print its id and the agent commands; return ENTITY/PROJECT/ID."""
    import wandb  # imported here: `finetune_sweep.py local` never needs it

    config = sweep_spec.load(sweep_file).raw  # W&B's schema and our config keys, checked offline
    project, entity = project or config.get("project"), entity or config.get("entity")
    if sweep_fn is None:
        if not has_credentials():
            raise SweepError("no W&B API key: run `wandb login` (or set WANDB_API_KEY), "
                             f"or run the sweep offline with `python finetune_sweep.py local {sweep_file}`")
        sweep_fn = wandb.sweep
    try:
        sweep_id = sweep_fn(sweep=config, project=project, entity=entity)
    except wandb.errors.Error as e:  # no server, rejected key, unknown entity: one line, no traceback
        raise SweepError(f"W&B could not create the sweep: {' '.join(str(e).split())}") from None
    # wandb.sweep leaves the entity and project the server chose in these variables.
    entity, project = entity or os.environ.get("WANDB_ENTITY"), project or os.environ.get("WANDB_PROJECT")
    path = "/".join(p for p in ((entity if project else None), project, sweep_id) if p)
    q = shlex.quote(path)
    print(f"Created sweep {sweep_id}: {path}\n"
          f"On each GPU machine, one agent per GPU (or list them: --gpus 0,1):\n"
          f"  python finetune_sweep.py agent {q} --gpus all\n"
          f"or with W&B's own CLI, one agent per GPU:\n"
          f"  CUDA_VISIBLE_DEVICES=0 wandb agent {q}", flush=True)
    return path


def _wandb_cli() -> list[str]:
    # `python -m wandb` runs the same click CLI as the `wandb` script, and is tied to this interpreter.
    if importlib.util.find_spec("wandb.__main__"):
        return [sys.executable, "-m", "wandb"]
    return [str(Path(sys.executable).with_name("wandb"))]


def agent_commands(sweep_id: str, gpus: list[str] | None, count: int | None) -> list[tuple[list[str], dict]]:
    """(argv, env overrides) of one `wandb agent` per GPU; gpus None: one agent, devices untouched.

    --forward-signals: without it the agent answers a first SIGINT/SIGTERM by waiting for the current run
    to finish (which never hears of it); with it the run gets the signal and can checkpoint and exit.
    """
    argv = [*_wandb_cli(), "agent", "--forward-signals", *(["--count", str(count)] if count else []), sweep_id]
    if not gpus:
        return [(argv, {})]
    return [(list(argv), {"CUDA_VISIBLE_DEVICES": g.strip()}) for g in gpus if g.strip()]


# Agents in their own process group (process_group=0 needs Python 3.11; setpgrp is the older spelling).
_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: 128+N, as a shell reports it


def _check_agent_request(sweep_id: str, count: int | None, gpus: str | list[str] | None) -> None:
    if count is not None and count < 1:
        raise SweepError(f"--count {count}: expected an integer >= 1 (leave it out to run until the sweep ends)")
    if gpus is not None:
        gpu_list(gpus if isinstance(gpus, str) else ",".join(gpus))
    if not sweep_id.strip() or len(sweep_id.split("/")) > 3:
        raise SweepError(f"{sweep_id!r} is not a sweep id: expected ENTITY/PROJECT/SWEEP_ID (as `create` prints)")


def agent(sweep_id: str, count: int | None, gpus: str | list[str] | None, *, stagger_s: float = 20.0,
          popen=None, time_budget_s: float | None = None, trial_estimate_s: float | None = None) -> int:
    """Run one `wandb agent` per GPU until all end; return the worst exit code.

    ``gpus``: ``--gpus`` as typed (``all`` or ``0,1``: checked against this machine's GPUs), or a list
    taken as given. Starts are stagger_s apart: agents that asked the controller at the same moment got
    the same first parameters (wandb#597). SIGINT/SIGTERM are forwarded to every agent, each time they
    arrive, so a second Ctrl-C escalates as it does for a single `wandb agent` (terminate the runs, then
    kill). With ``time_budget_s`` no agent starts with less than ``trial_estimate_s`` left, and at the
    deadline every agent gets SIGTERM (its run checkpoints, is marked preempted and W&B hands its config
    to another agent); the return code is then ExitCode.BUDGET_SPENT.
    ``popen`` stands in for subprocess.Popen (tests); with the real one, credentials are checked first.
    """
    t0 = time.monotonic()
    _check_agent_request(sweep_id, count, gpus)
    if popen is None:
        # `wandb agent` needs the server in every WANDB_MODE: without a key each agent fails after its
        # stagger (minutes with several GPUs), or waits at a login prompt on a terminal.
        if not has_credentials():
            raise SweepError("no W&B API key: `wandb agent` needs the W&B server; run `wandb login` (or set "
                             "WANDB_API_KEY), or run the sweep offline with "
                             "`python finetune_sweep.py local SWEEP.yaml`")
        popen = subprocess.Popen
    if isinstance(gpus, str):
        gpus = resolve_gpus(gpus)
    deadline = t0 + time_budget_s if time_budget_s else None
    if deadline is not None:
        print(budget_line(time_budget_s, trial_estimate_s, "--trial_estimate" if trial_estimate_s else None,
                          "the agents get SIGTERM"), flush=True)
    procs: list[tuple[str, subprocess.Popen]] = []
    signals: list[tuple[int, int]] = []  # (signal, how many agents it was forwarded to)
    expired = []

    def forward(signum, _frame):
        signals.append((signum, len(procs)))
        for _, p in procs:
            p.send_signal(signum)  # a no-op for an agent that has already exited

    def check_deadline():
        if deadline is not None and not expired and time.monotonic() >= deadline:
            expired.append(True)
            print("time budget spent: SIGTERM to the agents (their runs checkpoint and are marked preempted)",
                  flush=True)
            forward(signal.SIGTERM, None)

    def too_late(i: int) -> bool:
        """Less time left than one trial takes: starting an agent would only waste the GPU."""
        if deadline is None or deadline - time.monotonic() >= (trial_estimate_s or 0):
            return False
        print(f"time budget: {format_duration(deadline - time.monotonic())} left, below one trial "
              f"(--trial_estimate {format_duration(trial_estimate_s)}): "
              f"{'no agent started' if not i else 'no more agents started'}", file=sys.stderr, flush=True)
        return True

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, (argv, env) in enumerate(agent_commands(sweep_id, gpus, count)):
            start_at = time.monotonic() + (stagger_s if i else 0)
            while not signals and time.monotonic() < start_at:  # polled: stop staggering once signalled
                time.sleep(min(0.1, max(0.0, start_at - time.monotonic())))
                check_deadline()
            if signals or too_late(i):
                break
            # Own process group: a terminal's Ctrl-C reaches the agents only through forward(), once,
            # not twice (directly and forwarded), which the agent would take as "terminate now".
            p = popen(argv, env={**os.environ, **env}, **_OWN_GROUP)
            gpu = env.get("CUDA_VISIBLE_DEVICES", "all")
            procs.append((gpu, p))
            for signum, heard_by in signals:  # arrived while this agent was starting, so it missed it
                if heard_by < len(procs):
                    p.send_signal(signum)
            print(f"agent {i + 1}: gpu {gpu}, pid {p.pid}", flush=True)
        while any(p.poll() is None for _, p in procs):
            check_deadline()
            time.sleep(0.1)
        codes = [_exit_code(p.wait()) for _, p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for (gpu, p), code in zip(procs, codes, strict=True):
        if code:
            print(f"agent on gpu {gpu} (pid {p.pid}) exited with code {code}", file=sys.stderr, flush=True)
    if expired or (not procs and not signals):
        return ExitCode.BUDGET_SPENT
    return max(codes, default=128 + signals[0][0] if signals else 0)
