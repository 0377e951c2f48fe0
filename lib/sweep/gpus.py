"""The GPUs of this machine, shared by both engines (``local --gpus`` and ``agent --gpus``: one worker
or agent per GPU, each seeing only its own through CUDA_VISIBLE_DEVICES)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
from pathlib import Path

from lib.errors import SweepError


def gpu_devices() -> list[str]:
    """The GPUs a child may be given, as CUDA_VISIBLE_DEVICES names them. Found without importing torch
    (seconds, and memory in every worker): the parent's own CUDA_VISIBLE_DEVICES when set (the children
    then get its entries, not physical indices), else ``nvidia-smi -L``, else the driver's /proc entries,
    else torch. Tests patch this function."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        found = re.findall(r"^GPU (\d+):", out.stdout, flags=re.M)
        if out.returncode == 0 and found:
            return found
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir() and any(proc.iterdir()):
        return [str(i) for i in range(len(list(proc.iterdir())))]
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpu_list(spec: str) -> list[str]:
    """The syntax of ``--gpus``, checked before anything slower (credentials, discovery)."""
    wanted = [g.strip() for g in spec.split(",")]
    if not spec.strip() or not all(wanted):
        raise SweepError(f"--gpus {spec!r}: expected comma-separated GPU indices, e.g. 0,1 (or all)")
    if len(set(wanted)) < len(wanted):
        raise SweepError(f"--gpus {spec!r}: a GPU listed twice (one worker per GPU)")
    return wanted


def resolve_gpus(spec: str | None) -> list[str] | None:
    """``--gpus all|0,1,...`` -> the devices, checked against this machine's; None: devices untouched."""
    if spec is None:
        return None
    wanted = gpu_list(spec)
    here = gpu_devices()
    if not here:
        raise SweepError(f"--gpus {spec}: no GPU on this machine (nvidia-smi, the NVIDIA driver and torch find "
                         f"none, or CUDA_VISIBLE_DEVICES hides them); leave --gpus out to run on the CPU")
    if wanted == ["all"]:
        return here
    missing = [g for g in wanted if g not in here]
    if missing:
        raise SweepError(f"--gpus {spec}: no GPU {', '.join(missing)} here; this machine has "
                         f"{len(here)}: {','.join(here)} (or pass --gpus all)")
    return wanted
