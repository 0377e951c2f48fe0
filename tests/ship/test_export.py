"""Export: one real fine-tuned run -> ONNX (parity with PyTorch on its test images, metadata),
static INT8, Captum attributions, model card, export.json; prediction with ONNX Runtime only
(PNG, JPEG, grayscale, folders, unreadable files), without importing torch."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.errors import ExportError
from lib.files import read_json
from lib.ship.export import export_run
from lib.train.run import main

KIND = "training"   # real training in this process: in `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while this module runs: on a small machine shared with other jobs,
    a two-thread PyTorch step waits for a preempted partner thread (measured: a batch-1
    MobileNetV2 call took 0.1-0.7 s with 2 threads vs 0.01 s with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(animals, tmp_path_factory):
    """A real pretrained MobileNetV2, head trained for 2 epochs at 64 px on 4 classes."""
    runs = tmp_path_factory.mktemp("export-runs")
    cache = tmp_path_factory.getbasetemp() / "weights-cache"   # shared with conftest's cache_dir
    args = [f"--data_dir={animals}", f"--runs_dir={runs}", f"--cache_dir={cache}", "--min_image_side=16",
            "--batch_size=16", "--augment=none", "--val_fraction=0.25", "--test_fraction=0.25", "--device=cpu",
            "--model=mobilenetv2_100", "--strategy=freeze", "--epochs=2", "--lr=0.02", "--image_size=64",
            "--run_id=exp1"]
    assert main(args) == 0
    return runs / "exp1"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-out")
    result = export_run(trained, out, quantize=True, attributions=2, calibration_images=48)
    return trained, out, result


def test_onnx_parity_and_metadata(exported):
    import onnx
    import onnxruntime as ort

    run_dir, out, result = exported
    record = read_json(run_dir / "run.json")
    assert result["parity_max_abs_diff"] < 1e-4
    assert result["parity_top1_agreement"] == 1.0
    assert result["parity_images"] == len(record["split"]["test"]) > 0
    assert result["fp32_test_acc"] == pytest.approx(record["summary"]["test_acc"], abs=1e-6)
    assert result["exporter"] == "dynamo"

    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["export.json", "model.int8.onnx", "model.onnx", "model_card.md"]   # one file, no .data
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == record["classes"]
    assert meta["run_id"] == "exp1" and meta["model"] == "mobilenetv2_100"
    pre = json.loads(meta["preprocessing"])
    assert pre["input_size"] == [3, 64, 64] and pre["resize_side"] == 73
    assert pre["mean"] == record["data_config"]["mean"] and pre["interpolation"] == "bicubic"

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):  # dynamic batch
        logits = session.run(None, {"input": np.zeros((batch, 3, 64, 64), np.float32)})[0]
        assert logits.shape == (batch, 4)


def test_int8_is_smaller_and_about_as_accurate(exported):
    _, out, result = exported
    assert result["int8_test_acc"] is not None
    assert abs(result["int8_test_acc"] - result["fp32_test_acc"]) <= 0.1
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    assert result["int8"]["calibration_images"] == 48
    assert set(result["latency_ms_per_image"]) == {"pytorch", "onnx_fp32", "onnx_int8"}
    assert all(v > 0 for v in result["latency_ms_per_image"].values())


def test_attribution_grids_are_real_images(exported):
    run_dir, out, result = exported
    att = result["attributions"]
    assert att["cam_layer"] == "bn2"                        # MobileNetV2's last feature map
    assert att["correct"] + att["misclassified"] == 2
    record = read_json(run_dir / "run.json")
    wrong = sum(t != p for t, p in zip(*record["test_predictions"].values(), strict=True))
    assert (att["misclassified"] > 0) == (wrong > 0)       # misclassified ones shown when there are any
    names = ["correct.png"] + (["misclassified.png"] if wrong else [])
    assert sorted(p.name for p in (out / "attributions").iterdir()) == names
    for name in names:
        with Image.open(out / "attributions" / name) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32)
        assert arr.shape[0] > 200 and arr.shape[1] > 500    # 3 panels a row
        assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 500


def test_export_json_and_model_card(exported):
    run_dir, out, result = exported
    saved = read_json(out / "export.json")
    assert saved == json.loads(json.dumps(result))
    for key in ("run_id", "config", "metrics", "files", "latency_ms_per_image", "parity_max_abs_diff",
                "parity_top1_agreement", "fp32_test_acc", "int8_test_acc"):
        assert key in saved, key
    assert saved["run_id"] == "exp1" and saved["config"]["model"] == "mobilenetv2_100"
    assert saved["metrics"]["test_acc"] == read_json(run_dir / "run.json")["summary"]["test_acc"]
    for name, size in saved["files"].items():
        assert (out / name).stat().st_size == size
    assert {"model.onnx", "model.int8.onnx", "model_card.md", "attributions/correct.png"} <= set(saved["files"])
    card = (out / "model_card.md").read_text()
    n_test = len(read_json(run_dir / "run.json")["split"]["test"])
    for text in ("exp1", "mobilenetv2_100", "freeze", "bear", "macro F1", f"only {n_test} images", "int8"):
        assert text in card, text


def test_predict_png_jpeg_grayscale_and_folder(exported, tmp_path):
    from lib.ship.predict import format_table, predict, write_csv

    run_dir, out, _ = exported
    record = read_json(run_dir / "run.json")
    data_dir = Path(record["config"]["data_dir"])
    test_paths = [str(data_dir / p) for p in record["split"]["test"]]

    # every test image: ONNX top-1 == the PyTorch prediction the run recorded
    results = predict(out / "model.onnx", test_paths, top_k=3)
    assert [r["path"] for r in results] == test_paths
    names = record["classes"]
    assert [names.index(r["top"][0][0]) for r in results] == record["test_predictions"]["y_pred"]
    for r in results:
        probs = [p for _, p in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6

    source = Image.open(test_paths[0])                      # the fixture images are grayscale PNGs
    assert source.mode == "L"
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    source.convert("RGB").save(folder / "rgb.png")
    source.convert("RGB").resize((96, 80)).save(folder / "photo.jpg", quality=90)
    source.save(folder / "gray.png")
    (folder / "notes.txt").write_text("not an image")          # skipped by the folder walk
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")

    got = predict(out, [tmp_path / "photos", tmp_path / "empty.jpg", tmp_path / "missing.png"], top_k=10)
    by_name = {Path(r["path"]).name: r for r in got}
    assert sorted(by_name) == ["broken.png", "empty.jpg", "gray.png", "missing.png", "photo.jpg", "rgb.png"]
    assert "error" in by_name["broken.png"] and "error" in by_name["empty.jpg"]
    assert by_name["missing.png"]["error"] == "no such file"
    for name in ("rgb.png", "photo.jpg", "gray.png"):
        assert len(by_name[name]["top"]) == 4               # top_k capped at the class count
    assert by_name["gray.png"]["top"] == by_name["rgb.png"]["top"]   # same pixels, same answer
    assert by_name["rgb.png"]["top"][0] == pytest.approx(results[0]["top"][0])

    table = format_table(got)
    assert "gray.png" in table and "error" in table and "top1" in table
    csv_path = write_csv(got, tmp_path / "pred.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("path,top1,top1_prob") and len(lines) == 1 + len(got)


def test_predict_does_not_import_torch(exported):
    _, out, _ = exported
    image = next((Path(read_json(exported[0] / "run.json")["config"]["data_dir"])).rglob("*.png"))
    code = ("import json, sys; import lib.ship.predict as p; r = p.predict(sys.argv[1], [sys.argv[2]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "model.onnx"), str(image)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["top"]


def test_missing_weights_is_one_line_error(trained, tmp_path):
    broken = tmp_path / "run-without-weights"
    broken.mkdir()
    shutil.copy(trained / "run.json", broken / "run.json")
    with pytest.raises(ExportError) as e:
        export_run(broken, tmp_path / "out")
    message = str(e.value)
    assert "model.safetensors" in message and "\n" not in message
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_unfinished_run_and_not_a_run(trained, tmp_path):
    with pytest.raises(ExportError, match="no run.json"):
        export_run(tmp_path, tmp_path / "out")
    running = tmp_path / "running"
    running.mkdir()
    record = read_json(trained / "run.json")
    (running / "run.json").write_text(json.dumps({**record, "state": "running"}))
    with pytest.raises(ExportError, match="not finished"):
        export_run(running, tmp_path / "out")


def test_grad_cam_layer_rule_is_generic():
    import timm
    import torch

    import lib.train.models  # noqa: F401 - small_cnn
    from lib.ship.attribution import choose, find_cam_layer

    x = torch.zeros(1, 3, 64, 64)
    for name, layer in (("small_cnn", "blocks"), ("resnet18", "layer4"), ("mobilenetv3_small_100", "blocks")):
        model = timm.create_model(name, pretrained=False, num_classes=3).eval()
        assert find_cam_layer(model, x)[0] == layer, name
    # half misclassified when possible; classes spread
    right, wrong = choose(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]), 4)
    assert len(wrong) == 2 and len(right) == 2 and right == [0, 2]
    right, wrong = choose(np.array([0, 1]), np.array([0, 1]), 4)
    assert right == [0, 1] and wrong == []


def test_fallback_exporter_and_parity_failure_leave_files(base_args, monkeypatch, tmp_path):
    """A model torch.export cannot take goes through the TorchScript exporter (dynamic batch kept);
    a parity failure raises a one-line ExportError and leaves the files to look at."""
    import torch

    import lib.ship.export as export

    assert main(base_args + ["--model=small_cnn", "--strategy=full", "--epochs=1", "--run_id=cnn"]) == 0
    original = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("torch.export failed\nsecond line")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    monkeypatch.setattr(export, "PARITY_MAX_ABS_DIFF", -1.0)   # nothing can pass
    out = tmp_path / "out"
    with pytest.raises(ExportError) as e:
        export_run(tmp_path / "runs" / "cnn", out, quantize=True, attributions=2)
    assert "disagrees with PyTorch" in str(e.value) and "\n" not in str(e.value)
    saved = read_json(out / "export.json")
    assert saved["exporter"] == "torchscript" and saved["dynamo_error"] == "RuntimeError: torch.export failed"
    assert saved["parity_top1_agreement"] == 1.0 and saved["parity_max_abs_diff"] < 1e-4 and saved["error"]
    assert not (out / "model.int8.onnx").exists() and not (out / "attributions").exists()

    from lib.ship.predict import predict
    image = Path(read_json(tmp_path / "runs" / "cnn" / "run.json")["config"]["data_dir"])
    results = predict(out / "model.onnx", [image], top_k=1)            # a whole folder: batches of 32
    assert len(results) > 32 and all(len(r["top"]) == 1 for r in results)


def test_the_best_run_under_constraints_is_chosen(tmp_path):
    """Selection: best metric first, ties to the smaller model, runs over the size limit left out,
    unfinished runs and runs without weights never chosen."""
    from lib.files import write_json
    from lib.selection import Selection, rank
    from lib.ship.select import candidates
    from lib.sources import resolve

    def fake(run_id, acc, size, state="finished", weights=True):
        d = tmp_path / "runs" / run_id
        d.mkdir(parents=True)
        write_json(d / "run.json", {"id": run_id, "state": state, "config": {"model": "m", "strategy": "s"},
                                    "summary": {"best_val_acc": acc, "model_size_mb": size}})
        if weights:
            (d / "model.safetensors").write_bytes(b"x")

    fake("big", 0.90, 90.0)
    fake("small", 0.90, 9.0)
    fake("worse", 0.85, 2.0)
    fake("crashed", 0.99, 1.0, state="failed")
    fake("no-weights", 0.95, 1.0, weights=False)
    sel, source = Selection("best_val_acc", "maximize"), resolve(tmp_path / "runs")
    assert [r["id"] for r in rank(candidates(source, sel), sel)] == ["small", "big", "worse"]
    assert [r["id"] for r in candidates(source, sel, max_size_mb=5)] == ["worse"]


def test_export_from_a_wandb_sweep_fetches_the_artifact_and_logs_back(trained, tmp_path, monkeypatch):
    """The W&B server is the one stand-in (tests/fakes/wandb_api.py); the SDK is real, offline."""
    from lib.ship.export import export_best
    from tests.fakes.wandb_api import FakeApi, FakeArtifact, FakeRun, logged_artifacts, offline_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    record = read_json(trained / "run.json")
    summary = {**record["summary"], "classes": record["classes"]}
    worse = {**summary, "best_val_acc": summary["best_val_acc"] - 0.1}
    api = FakeApi([FakeRun("exp1", "finished", record["config"], summary, []),
                   FakeRun("other", "finished", record["config"], worse, []),
                   FakeRun("crash", "crashed", record["config"], {}, [])],
                  {"ent/proj/model-exp1:best": FakeArtifact([trained / "model.safetensors", trained / "run.json"])})
    out = tmp_path / "wb-export"
    result = export_best("ent/proj/sw1", out, attributions=2, api=api, data_dir=record["config"]["data_dir"])
    assert result["run_id"] == "exp1" and ("ent/proj/model-exp1:best", "model") in api.asked
    assert (out / "source_run" / "exp1" / "model.safetensors").is_file()
    assert result["parity_top1_agreement"] == 1.0
    export_id = read_json(out / "export.json")["wandb_export_run"]
    (run_file,) = out.glob(f"wandb/offline-run-*/run-{export_id}.wandb")
    art = logged_artifacts(run_file)["export-exp1"]
    assert art["type"] == "model" and {"model.onnx", "model_card.md", "export.json"} <= set(art["files"])
    records = offline_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.job_type == "export" and run.project == "proj" and run.entity == "ent"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["source_run"] == "exp1" and config["source_artifact"] == "ent/proj/model-exp1:best"
    summary_keys = {u.key for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert {"parity_max_abs_diff", "fp32_test_acc", "latency_ms_onnx_fp32"} <= summary_keys
    images = sorted(p.name for p in run_file.parent.glob("files/media/images/attributions/*.png"))
    assert len(images) == len(result["attributions"]["files"]) >= 1


def test_export_from_wandb_without_the_artifact_is_one_line(trained, tmp_path):
    from lib.ship.export import export_best
    from tests.fakes.wandb_api import FakeApi, FakeRun

    record = read_json(trained / "run.json")
    api = FakeApi([FakeRun("exp1", "finished", record["config"], record["summary"], [])])
    with pytest.raises(ExportError, match=r"cannot fetch ent/proj/model-exp1:best for run exp1: .*log_model=false"):
        export_best("ent/proj/sw1", tmp_path / "o", api=api, data_dir=record["config"]["data_dir"])


def test_a_record_from_wandb_does_not_choose_the_images_read(trained, tmp_path, monkeypatch, capsys):
    """A W&B record's config.data_dir once chose which local files export read for parity and drew into the
    attribution grids it uploads (`data_dir: /` read 9 files from outside the data folder). Now the images
    come from --data_dir only: without it, one line before anything is fetched; with it, the record's own
    data_dir (here a folder of other images) is never opened."""
    record = read_json(trained / "run.json")
    data_dir = Path(record["config"]["data_dir"])
    decoy = tmp_path / "decoy"
    shutil.copytree(data_dir, decoy)
    for image in decoy.rglob("*.png"):       # same names, unreadable: the export fails if it reads them
        image.write_bytes(b"not an image")
    record["config"]["data_dir"] = str(decoy)
    api = wandb_serves(record, trained, tmp_path, monkeypatch)
    out = tmp_path / "out"
    code, _, err = cli(["export", "ent/proj/sw1", "--out", out], capsys)
    assert code == 2 and len(err) == 1 and "pass --data_dir" in err[0], err
    assert not api.asked and not out.exists()                                     # nothing fetched, nothing written
    code, _, err = cli(["export", "ent/proj/sw1", "--out", out, "--data_dir", data_dir], capsys)
    assert code == 0, err
    assert read_json(out / "export.json")["parity_images"] == len(record["split"]["test"])


def wandb_serves(record: dict, trained: Path, tmp_path: Path, monkeypatch):
    """A W&B project (the fake public API) whose sweep ent/proj/sw1 has one run, exp1, with ``record`` as
    its run.json and ``trained``'s weights in its model artifact; the API, to ask what was fetched."""
    import lib.runs
    from tests.fakes.wandb_api import FakeApi, FakeArtifact, FakeRun

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(record))
    shutil.copy(trained / "model.safetensors", folder)
    api = FakeApi([FakeRun("exp1", "finished", record["config"], record["summary"], [])],
                  {"ent/proj/model-exp1:best": FakeArtifact([folder / "model.safetensors", folder / "run.json"])})
    monkeypatch.setattr(lib.runs, "public_api", lambda: api)
    return api


# ------------------------------------------------- inputs nobody should trust, messages a person can act on
def cli(args, capsys):
    """finetune_sweep.py as a user runs it: exit code, stdout, stderr lines."""
    import finetune_sweep

    code = finetune_sweep.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.mark.parametrize("tamper, message", ids=["absolute", "dotdot", "hub model"], argvalues=[
    ("absolute", r"test image path '/.*' is not relative to data_dir \(absolute or with '\.\.'\): refused"),
    ("dotdot", r"test image path '\.\./.*' is not relative to data_dir"),
    ("hub model", r"model 'hf-hub:timm/mobilenetv2_100\.ra_in1k' is not a timm architecture name .*: refused"),
])
def test_export_from_wandb_refuses_a_tampered_record(trained, tmp_path, monkeypatch, capsys, tamper, message):
    """The run.json in a W&B artifact is only as trustworthy as everyone who can write to the project:
    split paths that leave data_dir (the images would be read and uploaded as attribution grids) and
    model names timm would fetch from the hub are refused before anything is read."""
    record = read_json(trained / "run.json")
    data_dir, first = Path(record["config"]["data_dir"]), record["split"]["test"][0]
    if tamper == "absolute":
        record["split"]["test"][0] = str(data_dir / first)          # a real image: old code read it
    elif tamper == "dotdot":
        record["split"]["test"][0] = f"../{data_dir.name}/{first}"
    else:
        record["config"]["model"] = "hf-hub:timm/mobilenetv2_100.ra_in1k"
    wandb_serves(record, trained, tmp_path, monkeypatch)
    out = tmp_path / "out"
    code, _, err = cli(["export", "ent/proj/sw1", "--out", out, "--attributions", "2", "--data_dir", data_dir],
                       capsys)
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not (out / "model.onnx").exists() and not (out / "wandb").exists()    # nothing exported, nothing logged


def test_model_card_keeps_names_as_text(exported):
    """Class names and config values from the record stay one cell of their table row, never HTML."""
    from lib.ship.card import model_card

    run_dir, _, result = exported
    record = read_json(run_dir / "run.json")
    names = ["a|b", "<script>alert(1)</script>", "two\nlines", "back`tick"]
    record = {**record, "classes": names, "name": "x\n# injected heading",
              "per_class": [{**p, "class": n} for p, n in zip(record["per_class"], names, strict=True)],
              "config": {**record["config"], "augment": "none | <b>x</b>"}}
    card = model_card(result, record)
    from markdown_it import MarkdownIt

    page = MarkdownIt("commonmark").enable("table").render(card)   # as a Markdown viewer shows it
    assert "<script" not in page and "<b>" not in page and "\n# injected" not in card
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page   # the name, as text
    assert "`<script>alert(1)</script>`" in card
    for block in re.findall(r"(?:^\|.*\|$\n?)+", card, flags=re.M):     # every table keeps its columns
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(widths) == 1, block
    assert "| a\\|b |" in card and "| \\<script>alert(1)\\</script> |" in card and "| two lines |" in card
    assert "``back`tick``" in card


def test_attribution_grid_takes_any_class_name(tmp_path):
    """Two `$` in a class name are text, not TeX (matplotlib would fail the figure on a bad formula)."""
    from lib.ship.attribution import save_grid

    images = np.zeros((1, 3, 8, 8), np.uint8)
    maps = {"ig": np.ones((1, 3, 8, 8), np.float32), "cam": None}
    path = save_grid(tmp_path / "g.png", images, maps, [0], [0], [1], [0.5], ["cost $\\frac{ $", "b"], "t", None)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_predict_csv_cells_are_never_formulas(exported, tmp_path, monkeypatch):
    """Class names (the model's metadata) and file names are text in the CSV a spreadsheet opens."""
    import csv

    import onnx

    from lib.ship.predict import predict, write_csv

    run_dir, out, _ = exported
    proto = onnx.load(str(out / "model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["classes"] = json.dumps(["=HYPERLINK(\"http://x\")", "+1+1", "-cmd", "@SUM(A1)"])
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(tmp_path / "hostile.onnx"))
    record = read_json(run_dir / "run.json")
    image = Path(record["config"]["data_dir"]) / record["split"]["test"][0]
    shutil.copy(image, tmp_path / "=evil.png")
    monkeypatch.chdir(tmp_path)
    results = predict(tmp_path / "hostile.onnx", ["=evil.png"], top_k=4)
    with open(write_csv(results, tmp_path / "p.csv"), newline="") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert "'=evil.png" in cells and {"'=HYPERLINK(\"http://x\")", "'+1+1", "'-cmd", "'@SUM(A1)"} <= set(cells)
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@"))]


@pytest.mark.parametrize("case, message", ids=["missing model", "corrupt model", "folder without a model",
                                                "damaged metadata", "no images", "top 0", "missing image",
                                                "csv is a folder"], argvalues=[
    ("missing model", r"no ONNX model at .*nope\.onnx"),
    ("corrupt model", r".*corrupt\.onnx is not a usable ONNX model: "),
    ("folder without a model", r"no ONNX model at .*empty \(the folder has no model\.onnx\)"),
    ("damaged metadata", r".*damaged\.onnx: the model has 4 outputs but its metadata names 3 classes"),
    ("no images", r"no images in .*empty: looked for .*\.png"),
    ("--top 0", r"--top 0: expected an integer >= 1"),
    ("missing image", r"no such file or folder: .*nothere\.png"),
    ("--csv is a folder", r"--csv .* is a folder"),
])
def test_predict_bad_requests_are_one_line(exported, tmp_path, capsys, case, message):
    import onnx

    _, out, _ = exported
    image = str(next(Path(read_json(exported[0] / "run.json")["config"]["data_dir"]).rglob("*.png")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    if case == "damaged metadata":
        proto = onnx.load(str(out / "model.onnx"))
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            "classes": json.dumps(["a", "b", "c"])})
        onnx.save(proto, str(tmp_path / "damaged.onnx"))
    args = {"missing model": [tmp_path / "nope.onnx", image], "corrupt model": [tmp_path / "corrupt.onnx", image],
            "folder without a model": [tmp_path / "empty", image],
            "damaged metadata": [tmp_path / "damaged.onnx", image], "no images": [out, tmp_path / "empty"],
            "--top 0": [out, image, "--top", "0"], "missing image": [out, image, tmp_path / "nothere.png"],
            "--csv is a folder": [out, image, "--csv", tmp_path]}[case]
    code, stdout, err = cli(["predict", *args], capsys)
    assert code == 2 and len(err) == 1 and re.match("error: " + message, err[0]), err
    assert stdout == ""


@pytest.mark.parametrize("args, message", ids=["missing", "empty", "out is a file", "attributions -1", "size 0",
                                                "size below every run"],
                         argvalues=[
    (["MISSING", "--out", "OUT"], r"no such folder: .*missing_sweep"),
    (["EMPTY", "--out", "OUT"], r"no finished run with best_val_acc and weights in .*empty"),
    (["RUN", "--out", "A_FILE"], r"--out .* is a file, not a folder"),
    (["RUN", "--out", "OUT", "--attributions", "-1"], r"--attributions -1: expected 0"),
    (["RUN", "--out", "OUT", "--max-size-mb", "0"], r"--max_size_mb 0.0: expected a number > 0"),
    (["RUN", "--out", "OUT", "--max_size_mb", "0.001"],   # names the smallest size there is, and its run
     r"no finished run with best_val_acc and weights within 0.001 MB in .*exp1: the smallest is [0-9.]+ MB "
     r"\(run exp1; --max_size_mb [0-9.]+ or more exports it\)"),
])
def test_export_bad_requests_are_one_line(trained, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")
    where = {"MISSING": tmp_path / "missing_sweep", "EMPTY": tmp_path / "empty", "RUN": trained,
             "OUT": tmp_path / "out", "A_FILE": tmp_path / "a_file"}
    code, stdout, err = cli(["export", *[where.get(a, a) for a in args]], capsys)
    assert code == 2 and len(err) == 1 and re.match("error: " + message, err[0]), err
    assert not (tmp_path / "out").exists()


def test_export_without_out_writes_into_the_source_and_says_where(trained, tmp_path, capsys):
    """As `report SOURCE` writes SOURCE/report, `export SOURCE` writes SOURCE/export (it used to need --out)."""
    source = tmp_path / "sweep" / "runs" / "exp1"
    shutil.copytree(trained, source)
    code, stdout, err = cli(["export", tmp_path / "sweep"], capsys)
    assert code == 0, err
    assert (tmp_path / "sweep" / "export" / "model.onnx").is_file()
    assert f"exported run exp1 -> {tmp_path / 'sweep' / 'export' / 'model.onnx'}" in stdout


# ---------------------------------------------------------------- the run it ships: the report's recommendation
@pytest.fixture(scope="module")
def three(trained, tmp_path_factory):
    """A sweep dir of three configurations of the real run (its weights and test predictions, so the test
    set cannot tell them apart), ranked by the sweep's own metric test_loss: A < B < C, sizes 3:2:1."""
    root = tmp_path_factory.mktemp("three")
    (root / "sweep.json").write_text(json.dumps({"name": "three", "metric": "test_loss", "goal": "minimize"}))
    size = read_json(trained / "run.json")["summary"]["model_size_mb"]
    for run_id, lr, loss, val, times in (("A", 0.03, 0.30, 0.99, 3), ("B", 0.02, 0.31, 0.98, 2),
                                         ("C", 0.01, 0.5, 0.97, 1)):
        shutil.copytree(trained, root / "runs" / run_id)
        record = read_json(trained / "run.json")
        record.update(id=run_id, config={**record["config"], "run_id": run_id, "lr": lr},
                      summary={**record["summary"], "test_loss": loss, "best_val_acc": val,
                               "model_size_mb": times * size})
        (root / "runs" / run_id / "run.json").write_text(json.dumps(record))
    return root, size


def test_export_ships_the_run_the_report_recommends(three, tmp_path, capsys):
    """By the sweep's own metric (not best_val_acc), the top two A and B tie on the test set: the report
    says prefer the cheaper B, and export ships B, says why, and records it; with no report it makes the
    same recommendation itself; within a size limit it is the recommendation among the runs that fit."""
    from lib.selection import selection
    from lib.ship.select import recommended
    from lib.sources import resolve

    root, size = three
    code, out, err = cli(["export", root, "--out", tmp_path / "e1"], capsys)
    assert code == 0, err
    shipped = read_json(tmp_path / "e1" / "export.json")
    assert shipped["run_id"] == "B" and shipped["recommended_by"] == "made by export: no report.json"
    assert shipped["reason"].startswith("the top two by test_loss, `A` and `B`, are not distinguishable on the "
                                        "test set (McNemar p = 1, Holm-corrected p = 1): a tie, and `B` is the cheaper")
    assert f"ships run B: {shipped['reason']} [recommendation: made by export: no report.json]" in out.splitlines()
    card = (tmp_path / "e1" / "model_card.md").read_text()
    assert "## Why this run" in card and "a tie, and `B` is the cheaper" in card

    code, out, err = cli(["report", root], capsys)
    assert code == 0, err
    report = read_json(root / "report" / "report.json")
    assert report["recommended"] == {"run_id": "B", "reason": shipped["reason"]}     # the same function
    assert f"recommended: run B: {shipped['reason']}" in out.splitlines()
    choice = recommended(resolve(root), selection(resolve(root).meta()))
    assert choice.run["id"] == "B" and choice.recommended_by == str(root / "report" / "report.json")

    code, out, err = cli(["export", root, "--out", tmp_path / "e2", "--max-size-mb", 2.5 * size], capsys)
    assert code == 0, err
    shipped = read_json(tmp_path / "e2" / "export.json")
    assert shipped["run_id"] == "C" and "`B` and `C`, are not distinguishable" in shipped["reason"]
    assert shipped["reason"].endswith(f"(among the runs within {2.5 * size:g} MB)")


def test_export_run_ships_that_run(three, tmp_path, capsys):
    root, _ = three
    code, out, err = cli(["export", root, "--out", tmp_path / "nope", "--run", "nope"], capsys)
    assert code == 2 and err == [f"error: --run nope: {root} has no such run; its runs: A, B, C"] and out == ""
    assert not (tmp_path / "nope").exists()
    code, out, err = cli(["export", root, "--out", tmp_path / "a", "--run", "A"], capsys)
    assert code == 0, err
    shipped = read_json(tmp_path / "a" / "export.json")
    assert shipped["run_id"] == "A" and shipped["reason"] == "asked for with --run"
    assert "ships run A: asked for with --run [recommendation: --run]" in out
