"""The W&B-server side of sweeps: create a sweep there, then run one ``wandb agent`` per GPU.

W&B sweeps need the server (the search runs there); ``finetune_sweep.py local`` is the offline path.
Nothing here prints or logs an API key, and children are started from argv lists, never a shell.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from lib import sweep_spec
from lib.sweep_spec import SweepError  # noqa: F401 - raised here too


def _has_credentials() -> bool:
    """Whether wandb would find credentials without prompting (env, settings file, netrc, identity token).

    Asked before wandb.sweep because, without credentials, wandb.sweep prompts for a key on a terminal
    (and waits) instead of failing. update_session=False: only look, change nothing, print nothing.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)  # a self-hosted server has its own netrc entry
    try:
        return wbauth.authenticate_session(host=host, source="finetune_sweep.py", prompt=False,
                                           update_session=False) is not None
    except AuthenticationError:  # a malformed key: let wandb.sweep report it in its own words
        return True


def is_sweep_path(source) -> bool:
    """``entity/project/sweep_id`` that is not a local path (report and export take either)."""
    return isinstance(source, str) and not Path(source).exists() and \
        re.fullmatch(r"[^/\s]+/[^/\s]+/[^/\s]+", source) is not None


def public_api():
    """``wandb.Api()`` for reading sweeps, runs and artifacts, or a one-line SweepError without a key
    (where wandb.Api would raise deep in its auth code)."""
    import wandb

    if not _has_credentials():
        raise SweepError("reading a W&B sweep needs an API key: run `wandb login` (or set WANDB_API_KEY); "
                         "offline, pass the local sweep dir instead")
    try:
        return wandb.Api()
    except wandb.errors.Error as e:
        raise SweepError(f"W&B: {' '.join(str(e).split())}") from None


def create(sweep_file: str, project: str | None, entity: str | None, *, sweep_fn=None) -> str:
    """Create the sweep on W&B, print its id and the agent commands; return ENTITY/PROJECT/ID."""
    import wandb  # imported here: `finetune_sweep.py local` never needs it

    config = sweep_spec.load(sweep_file).raw  # W&B's schema and our config keys, checked offline
    project, entity = project or config.get("project"), entity or config.get("entity")
    if sweep_fn is None:
        if not _has_credentials():
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
          f"On each GPU machine, one agent per GPU (list that machine's GPUs):\n"
          f"  python finetune_sweep.py agent {q} --gpus 0,1\n"
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


def _check_agent_request(sweep_id: str, count: int | None, gpus: list[str] | None) -> None:
    if count is not None and count < 1:
        raise SweepError(f"--count {count}: expected an integer >= 1 (leave it out to run until the sweep ends)")
    if gpus is not None and (not gpus or not all(g.strip() for g in gpus)):
        raise SweepError(f"--gpus {','.join(gpus)!r}: expected comma-separated GPU indices, e.g. 0,1")
    if not sweep_id.strip() or len(sweep_id.split("/")) > 3:
        raise SweepError(f"{sweep_id!r} is not a sweep id: expected ENTITY/PROJECT/SWEEP_ID (as `create` prints)")


def agent(sweep_id: str, count: int | None, gpus: list[str] | None, *, stagger_s: float = 20.0,
          popen=None) -> int:
    """Run one `wandb agent` per GPU until all end; return the worst exit code.

    Starts are stagger_s apart: agents that asked the controller at the same moment got the same first
    parameters (wandb#597). SIGINT/SIGTERM are forwarded to every agent, each time they arrive, so a
    second Ctrl-C escalates as it does for a single `wandb agent` (terminate the runs, then kill).
    ``popen`` stands in for subprocess.Popen (tests); with the real one, credentials are checked first.
    """
    _check_agent_request(sweep_id, count, gpus)
    if popen is None:
        # `wandb agent` needs the server in every WANDB_MODE; without a key each agent fails after its
        # stagger (minutes with several GPUs), or waits at a login prompt on a terminal.
        if not _has_credentials():
            raise SweepError("no W&B API key: `wandb agent` needs the W&B server; run `wandb login` (or set "
                             "WANDB_API_KEY), or run the sweep offline with `python finetune_sweep.py local SWEEP.yaml`")
        popen = subprocess.Popen
    procs: list[tuple[str, subprocess.Popen]] = []
    signals: list[tuple[int, int]] = []  # (signal, how many agents it was forwarded to)

    def forward(signum, _frame):
        signals.append((signum, len(procs)))
        for _, p in procs:
            p.send_signal(signum)  # a no-op for an agent that has already exited

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, (argv, env) in enumerate(agent_commands(sweep_id, gpus, count)):
            deadline = time.monotonic() + (stagger_s if i else 0)
            while not signals and time.monotonic() < deadline:  # polled: stop staggering once signalled
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if signals:
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
        codes = [_exit_code(p.wait()) for _, p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for (gpu, p), code in zip(procs, codes):
        if code:
            print(f"agent on gpu {gpu} (pid {p.pid}) exited with code {code}", file=sys.stderr, flush=True)
    return max(codes, default=128 + signals[0][0] if signals else 0)
