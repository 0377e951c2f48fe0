"""The Kaggle worker notebook, executed top to bottom (nbclient) on the CPU with Kaggle simulated: its
input and working folders are temporary ones, its secrets a stand-in ``kaggle_secrets`` module that returns
a key, and its internet off. So it takes the offline branch: the real `local` runs a tiny sweep on real
images, then the report. Plus the helpers it calls (lib/sweep/kaggle.py)."""
import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from lib.records import read_json
from lib.sweep import kaggle as kg

KIND = "notebook"   # the Kaggle notebook, executed: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "kaggle_agent.ipynb"
KEY = "kagglefake" + "0123456789abcdef" * 2   # a stand-in W&B key: must appear in no output


def _with_parameters(nb, **values):
    """Papermill's convention: a cell after the one tagged `parameters` overrides its values."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") if out.output_type == "stream" else json.dumps(out, default=str))
    return "\n".join(text)


def test_notebook_runs_offline_on_kaggle_paths(tmp_path, animals, cache_dir, monkeypatch):
    inp, working = tmp_path / "kaggle" / "input", tmp_path / "kaggle" / "working"
    (inp / "animals").parent.mkdir(parents=True)
    (inp / "animals").symlink_to(animals)            # attached dataset: the only one, so data_dir is found
    fakes = tmp_path / "site"
    fakes.mkdir()
    (fakes / "kaggle_secrets.py").write_text(
        "class UserSecretsClient:\n"
        f"    def get_secret(self, name):\n        return {KEY!r} if name == 'WANDB_API_KEY' else None\n")
    monkeypatch.setenv("PYTHONPATH", str(fakes))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "program": "finetune_resnet.py", "method": "grid", "metric": {"name": "best_val_acc", "goal": "maximize"},
        "parameters": {"model": {"value": "small_cnn"}, "strategy": {"value": "full"}, "lr": {"values": [3e-3]}}}))
    settings = {"image_size": 32, "min_image_side": 16, "epochs": 1, "batch_size": 16, "augment": "none",
                "val_fraction": 0.25, "test_fraction": 0.25, "device": "cpu", "cache_dir": cache_dir}
    nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), kit_dir=str(ROOT), input_dir=str(inp),
                          working_dir=str(working), sweep_yaml=str(sweep), settings=settings, require_gpu=False,
                          probe_url="http://127.0.0.1:9", time_budget="20m")   # port 9: refused, i.e. offline
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    out = _outputs(nb)
    assert "no internet" in out and "W&B key: Kaggle secrets" in out and "local: done" in out
    assert "wandb sync" in out and "report" in out
    assert KEY not in out                                          # never printed
    sweep_dir = working / "sweep"
    [run] = [read_json(p) for p in (sweep_dir / "runs").glob("*/run.json")]
    assert run["state"] == "finished" and run["config"]["data_dir"] == str(inp / "animals")
    assert (sweep_dir / "runs" / ".cache").is_dir() and (sweep_dir / "report" / "report.html").exists()
    assert list(sweep_dir.glob("runs/*/wandb/offline-run-*"))       # what the printed `wandb sync` uploads
    assert not (ROOT / "runs" / run["id"]).exists()                # nothing written into the kit
    for f in working.rglob("*"):                                    # nor the key into any file
        assert not f.is_file() or KEY.encode() not in f.read_bytes(), f


def test_worker_requirements_are_requirements_without_torch():
    text = (ROOT / "requirements-worker.txt").read_text()
    assert text == kg.worker_requirements((ROOT / "requirements.txt").read_text()), "run `make worker`"
    names = [line.split("=")[0].split(">")[0].strip() for line in text.splitlines() if line and line[0] != "#"]
    assert "torch" not in names and "torchvision" not in names and "timm>" in text


@pytest.mark.parametrize("cap, arch, ok", [
    ((7, 5), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], True),   # T4
    ((6, 0), ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], False),  # P100, newer torch
    ((8, 9), ["sm_80", "sm_86"], True),                       # a cubin runs on a later minor of its major
    ((9, 0), ["sm_80", "compute_80"], True),                  # PTX is compiled by the driver for newer cards
    ((9, 0), ["sm_80", "sm_86"], False)])
def test_arch_check(cap, arch, ok):
    assert kg.arch_covers(cap, arch) is ok


def _fake_torch(cap, arch):
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1, get_arch_list=lambda: arch,
                                 get_device_capability=lambda i: cap, get_device_name=lambda i: "Tesla P100-PCIE-16GB")
    return types.SimpleNamespace(cuda=cuda, __version__="2.9.0+cu128")


def test_gpu_check_says_what_to_do():
    with pytest.raises(kg.KaggleError, match=r"sm_60, but torch 2.9.0\+cu128 here has kernels for sm_70 sm_75"):
        kg.gpu_check(torch_module=_fake_torch((6, 0), ["sm_70", "sm_75"]))
    assert kg.gpu_check(torch_module=_fake_torch((6, 0), ["sm_60", "sm_70"]))[0] == 1
    none = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False), __version__="2.9.0")
    with pytest.raises(kg.KaggleError, match="Accelerator"):
        kg.gpu_check(torch_module=none)
    assert kg.gpu_check(require_gpu=False, torch_module=none)[0] == 0


def test_key_from_environment_then_kaggle_secrets(monkeypatch, tmp_path):
    assert kg.api_key({"WANDB_API_KEY": "k1"}) == ("k1", "the environment")
    secrets = types.ModuleType("kaggle_secrets")

    class Client:
        def get_secret(self, name):
            raise RuntimeError("secret not attached")     # what Kaggle does when it is not ticked
    secrets.UserSecretsClient = Client
    monkeypatch.setitem(sys.modules, "kaggle_secrets", secrets)
    key, where = kg.api_key({})
    assert key is None and "Add-ons -> Secrets" in where
    Client.get_secret = lambda self, name: "k2"
    assert kg.api_key({}) == ("k2", "Kaggle secrets")


def test_internet_off_is_one_line():
    ok, line = kg.internet("http://127.0.0.1:9", timeout_s=2)
    assert not ok and line.startswith("no internet (127.0.0.1:9") and "\n" not in line and "Internet" in line


def test_data_dir_is_the_one_attached_dataset(tmp_path):
    inp = tmp_path / "input"
    for name in ("kit", "dogs"):
        (inp / name).mkdir(parents=True)
    (inp / "kit" / "finetune_sweep.py").write_text("")
    assert kg.pick_data_dir(inp, "", inp / "kit") == inp / "dogs"
    (inp / "cats").mkdir()
    with pytest.raises(kg.KaggleError, match="set data_dir: 2 dataset"):
        kg.pick_data_dir(inp, "", inp / "kit")
    with pytest.raises(kg.KaggleError, match="is not a folder"):
        kg.pick_data_dir(inp, str(inp / "nope"), inp / "kit")


def test_offline_install_without_wheels_says_so(tmp_path):
    (tmp_path / "requirements-worker.txt").write_text("surely-not-installed-pkg>=1\n")
    (tmp_path / "requirements-assets.txt").write_text("")
    with pytest.raises(kg.KaggleError, match="surely-not-installed-pkg.*wheels_dir"):
        kg.install(tmp_path, tmp_path / "s", online=False)
    calls = []
    lines = kg.install(tmp_path, tmp_path / "s", online=True,
                       run=lambda argv, **kw: calls.append(argv) or types.SimpleNamespace(returncode=0))
    pins = (tmp_path / "s" / "image-torch.txt").read_text()
    assert "torch==" in pins and all(["-c", str(tmp_path / "s" / "image-torch.txt")] == a[5:7] for a in calls)
    assert "installed 1 missing" in lines[0]


def test_agents_run_the_kits_trainer_from_a_folder_under_working(tmp_path):
    """`wandb agent` runs the sweep's program from its own folder: a link there to the kit's trainer must
    still import the kit (Python resolves the link for sys.path[0]), and write nothing into the kit."""
    folder = kg.agent_dir(tmp_path / "working", ROOT)
    assert folder == tmp_path / "working" / "agent" and kg.agent_dir(tmp_path / "working", ROOT) == folder
    done = subprocess.run([sys.executable, "finetune_resnet.py", "--help"], cwd=folder, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "data_dir" in done.stdout, done.stderr


def test_sweep_for_create_points_at_this_machines_data(tmp_path):
    out = kg.sweep_for_create(ROOT / "sweeps" / "quickstart.yaml", tmp_path / "dogs", {"epochs": 2},
                              tmp_path / "w" / "sweep.yaml")
    spec = yaml.safe_load(out.read_text())
    assert spec["parameters"]["data_dir"] == {"value": str(tmp_path / "dogs")}
    assert spec["parameters"]["epochs"] == {"value": 2} and spec["method"] == "grid"


def test_restore_sweep_copies_an_earlier_output_once(tmp_path):
    prev = tmp_path / "input" / "nb" / "sweep"
    prev.mkdir(parents=True)
    (prev / "sweep.json").write_text("{}")
    assert kg.restore_sweep("", tmp_path / "w" / "sweep") == ""
    assert "continuing the sweep" in kg.restore_sweep(str(prev), tmp_path / "w" / "sweep")
    assert (tmp_path / "w" / "sweep" / "sweep.json").exists()
    assert "already exists" in kg.restore_sweep(str(prev), tmp_path / "w" / "sweep")
    with pytest.raises(kg.KaggleError, match="no sweep.json"):
        kg.restore_sweep(str(tmp_path), tmp_path / "w2")


def test_a_joined_sweeps_data_dir_is_found_or_linked_here(tmp_path):
    data, folder = tmp_path / "input" / "dogs", tmp_path / "working" / "agent"
    data.mkdir(parents=True)
    line = kg.joined_sweep_data({"parameters": {"data_dir": {"value": "data/dogs"}}}, folder, data)
    assert (folder / "data" / "dogs").resolve() == data.resolve() and "data/dogs" in line
    assert "the sweep's" in kg.joined_sweep_data({"parameters": {"data_dir": {"value": str(data)}}}, folder, data)
    with pytest.raises(kg.KaggleError, match="not on this machine"):
        kg.joined_sweep_data({"parameters": {"data_dir": {"value": "/nowhere/dogs"}}}, folder, data)
    with pytest.raises(kg.KaggleError, match="does not fix data_dir"):
        kg.joined_sweep_data({"parameters": {"lr": {"values": [0.1]}}}, folder, data)
