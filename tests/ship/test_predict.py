"""Prediction (lib.ship.predict) on its own, with a tiny small_cnn exported to ONNX here: top-k classes
and probabilities equal PyTorch's on the training pipeline's preprocessing of real images, batches keep
the order, each unusable path gets its own error, the CSV is readable back cell for cell, and damaged
metadata or a bad request is refused before any work. (tests/ship/test_export.py covers a real fine-tuned
export end to end, its command line and formula-proof CSV cells.)"""
import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from lib.errors import PredictError
from lib.ship import predict as P
from lib.train import data, models  # noqa: F401 - models registers small_cnn

CLASSES = ["bear", "big, cat", 'say "hi"', "=1+1"]   # a comma, quotes and a formula for the CSV
DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
               "interpolation": "bilinear", "crop_pct": 0.875}


def preprocessing() -> dict:
    return {**DATA_CONFIG, "crop_mode": "center", "resize_side": data.resize_side(DATA_CONFIG)}


def export(model: torch.nn.Module, path: Path, meta: dict) -> Path:
    """The TorchScript exporter (0.6 s; the dynamo one lib.ship.export tries first takes 10 s here) and
    the metadata lib.ship.export writes."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, meta)
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="module")
def images(animals):
    return sorted(Path(animals).rglob("*.png"))[::16]                 # 10 real images, all 4 classes


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    torch.manual_seed(0)
    model = timm.create_model("small_cnn", num_classes=len(CLASSES)).eval()
    with torch.no_grad():   # spread the logits and centre them on these images: no near ties, several winners
        model.head.weight.mul_(20)
        logits = torch.stack([torch.log(torch.from_numpy(torch_probs(model, p))).float() for p in images])
        model.head.bias -= logits.mean(0)
    out = tmp_path_factory.mktemp("predict-model")
    export(model, out / "model.onnx", {"classes": json.dumps(CLASSES), "preprocessing": json.dumps(preprocessing())})
    return model, out


def torch_probs(model, path: Path, side: int = 37, size: int = 32) -> np.ndarray:
    """The training pipeline: lib.train.data's decode and eval transform, then the PyTorch model."""
    arr, _ = data.decode(path, side, "bilinear", 1)
    cfg = {**DATA_CONFIG, "input_size": (3, size, size)}
    x = data.transforms(cfg, "none", train=False)(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
    with torch.no_grad():
        return torch.softmax(model(x.unsqueeze(0)), 1)[0].double().numpy()


# --- what it answers ---------------------------------------------------------------------------------
def test_top_k_is_pytorchs_ranking_and_probabilities(exported, images):
    model, out = exported
    results = P.predict(out / "model.onnx", [str(p) for p in images], top_k=3)
    assert [r["path"] for r in results] == [str(p) for p in images]
    for r, path in zip(results, images, strict=True):
        probs = torch_probs(model, path)
        order = np.argsort(-probs)[:3]
        assert [c for c, _ in r["top"]] == [CLASSES[i] for i in order], path
        assert [p for _, p in r["top"]] == pytest.approx(probs[order], abs=1e-5)
    assert len({r["top"][0][0] for r in results}) > 1                   # not one class for everything


def test_k_is_capped_at_the_class_count_and_the_folder_is_accepted(exported, images):
    _, out = exported
    (r,) = P.predict(out, str(images[0]), top_k=10)                    # the export folder, one path as str
    assert len(r["top"]) == len(CLASSES) and sorted(c for c, _ in r["top"]) == sorted(CLASSES)
    probs = [p for _, p in r["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-6)
    with pytest.raises(PredictError, match="top_k=0: expected an integer >= 1"):
        P.predict(out, [str(images[0])], top_k=0)


def test_preprocessing_is_the_training_decode_and_eval_transform(exported, images, tmp_path):
    _, out = exported
    m = P.Model(out)
    gray = Image.open(images[0])
    assert gray.mode == "L"
    gray.convert("RGB").resize((90, 52)).save(tmp_path / "wide.jpg", quality=90)   # not square, RGB, JPEG
    for path in (images[0], tmp_path / "wide.jpg"):
        arr, _ = data.decode(path, 37, "bilinear", 1)
        expected = data.transforms(DATA_CONFIG, "none", False)(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
        got = m.prepare(path)
        assert got.shape == (3, 32, 32) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)


def test_a_resize_side_below_the_input_size_is_padded_like_torchvision(exported, images, tmp_path):
    model, out = exported
    meta = {"classes": json.dumps(CLASSES), "preprocessing": json.dumps({**preprocessing(), "resize_side": 27})}
    export(model, tmp_path / "padded.onnx", meta)
    got = P.Model(tmp_path / "padded.onnx").prepare(images[0])
    arr, _ = data.decode(images[0], 27, "bilinear", 1)
    expected = data.transforms(DATA_CONFIG, "none", False)(torch.from_numpy(arr.transpose(2, 0, 1).copy()))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)      # CenterCrop pads 27 -> 32 with zeros
    assert P.center_offset(37, 32) == 2 and P.center_offset(39, 32) == 4   # round half to even, as torchvision


def test_batches_keep_the_order_and_each_bad_path_gets_its_own_error(exported, images, tmp_path, monkeypatch):
    _, out = exported
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    paths = [str(p) for p in images[:3]] + [str(tmp_path / "empty.png")] + [str(p) for p in images[3:7]] + \
        [str(tmp_path / "missing.png"), str(tmp_path / "text.jpg")] + [str(p) for p in images[7:]]
    alone = {str(p): P.predict(out, [str(p)], top_k=2)[0]["top"] for p in images}
    monkeypatch.setattr(P, "BATCH", 3)                                 # batches of 3 across the bad paths
    results = P.predict(out, paths, top_k=2)
    assert [r["path"] for r in results] == paths
    errors = {Path(r["path"]).name: r["error"] for r in results if "error" in r}
    assert errors == {"empty.png": "empty file", "missing.png": "no such file", "text.jpg": "not a readable image"}
    for r in results:
        if "error" not in r:
            assert "top" in r and [c for c, _ in r["top"]] == [c for c, _ in alone[r["path"]]]
            assert [p for _, p in r["top"]] == pytest.approx([p for _, p in alone[r["path"]]], abs=1e-6)


def test_folders_are_walked_for_image_files_only(tmp_path, images):
    root = tmp_path / "photos"
    (root / "b" / "deeper").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ("b/deeper/z.png", "a/y.PNG", "a/x.jpg", "top.webp", "a/.hidden.png"):
        shutil.copy(images[0], root / rel)
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)  # not followed
    got = P.expand([root, tmp_path / "nope.png", images[1]])
    assert got == [str(root / "top.webp"), str(root / "a" / "x.jpg"), str(root / "a" / "y.PNG"),
                   str(root / "b" / "deeper" / "z.png"), str(tmp_path / "nope.png"), str(images[1])]


# --- what it writes ----------------------------------------------------------------------------------
RESULTS = [
    {"path": "photos/a,b.png", "top": [("big, cat", 0.8125), ('say "hi"', 0.1875)]},
    {"path": "broken\nname.png", "error": "corrupt or truncated: broken data stream"},
    {"path": "-one.png", "top": [("=1+1", 1.0)]},
]


def test_csv_rows_read_back_cell_for_cell(tmp_path):
    (tmp_path / "out").mkdir()
    path = P.write_csv(RESULTS, tmp_path / "out" / "pred.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["path", "top1", "top1_prob", "top2", "top2_prob", "error"],
        ["photos/a,b.png", "big, cat", "0.812500", 'say "hi"', "0.187500", ""],
        ["broken\nname.png", "", "", "", "", "corrupt or truncated: broken data stream"],
        ["'-one.png", "'=1+1", "1.000000", "", "", ""],                 # never a spreadsheet formula
    ]
    assert not list(tmp_path.glob("out/.*"))                            # written whole: no temp file left
    only_errors = P.write_csv([{"path": "x.png", "error": "no such file"}], tmp_path / "e.csv")
    assert only_errors.read_text().splitlines() == ["path,error", "x.png,no such file"]


def test_table_aligns_columns_and_lets_an_error_span_them():
    results = [RESULTS[0], {"path": "long/folder/broken.png", "error": "empty file"}, RESULTS[2]]
    w0, w1, w2 = len("long/folder/broken.png"), len("big, cat 0.812"), len('say "hi" 0.188')   # 0.8125 -> 0.812
    assert P.format_table(results).splitlines() == [
        f"{'path'.ljust(w0)}  {'top1'.ljust(w1)}  top2",
        f"{'-' * w0}  {'-' * w1}  {'-' * w2}",
        f"{'photos/a,b.png'.ljust(w0)}  {'big, cat 0.812'.ljust(w1)}  say \"hi\" 0.188",
        f"{'long/folder/broken.png'.ljust(w0)}  error: empty file",
        f"{'-one.png'.ljust(w0)}  =1+1 1.000",
    ]
    assert P.format_table([]) == "no images"


# --- what it refuses ---------------------------------------------------------------------------------
def test_check_request_refuses_before_loading_anything(tmp_path, images):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "texts" / ".b.png").write_bytes(b"")
    assert P.check_request([images[0], tmp_path / "texts"], 1, tmp_path / "p.csv") is None
    cases = [
        (([images[0]], 0), r"--top 0: expected an integer >= 1"),
        (([images[0]], -2), r"--top -2: expected an integer >= 1"),
        (([tmp_path / "a.png", images[0], tmp_path / "b.png", tmp_path / "c.png"], 1),
         r"no such file or folder: .*a\.png \(and 2 more\)$"),
        (([tmp_path / "empty", tmp_path / "texts"], 1), r"no images in .*empty, .*texts: looked for \.bmp, "),
        (([images[0]], 1, tmp_path), r"--csv .* is a folder: name the CSV file to write"),
    ]
    for args, message in cases:
        with pytest.raises(PredictError, match=message):
            P.check_request(*args)


GOOD = {"classes": json.dumps(["a", "b"]), "preprocessing": json.dumps(
    {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_side": 37})}


@pytest.mark.parametrize("change, message", [
    ({"classes": None}, "has no classes metadata"),
    ({"classes": None, "preprocessing": None}, "has no classes or preprocessing metadata"),
    ({"classes": "not json"}, "metadata is damaged"),
    ({"classes": json.dumps("ab")}, "metadata is damaged"),
    ({"classes": json.dumps([])}, "metadata is damaged"),
    ({"classes": json.dumps(["a", 2])}, "metadata is damaged"),
    ({"preprocessing": json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25, 0, 0.25],
                                   "resize_side": 37})}, "metadata is damaged"),
    ({"preprocessing": json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 2, "std": [0.25] * 2,
                                   "resize_side": 37})}, "metadata is damaged"),
    ({"preprocessing": json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                                   "resize_side": P.MAX_SIDE + 1})}, "metadata is damaged"),
    ({"preprocessing": json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3})},
     "metadata is damaged"),
    ({}, "the model has 3 outputs but its metadata names 2 classes"),
])
def test_damaged_metadata_is_refused_with_what_to_do(change, message):
    meta = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(PredictError, match=message):
        P._metadata(Path("m.onnx"), meta, 3)


def test_good_metadata_and_a_symbolic_output_count_pass():
    classes, pre = P._metadata(Path("m.onnx"), GOOD, 2)
    assert classes == ["a", "b"] and pre["resize_side"] == 37
    assert P._metadata(Path("m.onnx"), GOOD, "num_classes")[0] == ["a", "b"]   # a dynamic dimension: no count


def test_softmax_is_stable_for_large_logits():
    logits = np.array([[1000.0, 1000.0, 0.0], [1.0, 2.0, 3.0]])
    got = P.softmax(logits)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], [0.5, 0.5, 0.0], atol=1e-12)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(got[1], e / e.sum())


# --- the command line: what could not be classified is said on stderr, and the exit code says how much ------
def predict_cli(capsys, *args) -> tuple[int, str, list[str]]:
    """`finetune_sweep.py predict` as a user runs it: exit code, stdout, stderr lines."""
    import finetune_sweep

    code = finetune_sweep.main(["predict", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def test_a_text_file_is_bad_input_said_on_stderr(exported, tmp_path, capsys):
    _, out = exported
    (tmp_path / "notes.txt").write_text("not an image")
    code, stdout, err = predict_cli(capsys, out, tmp_path / "notes.txt", "--csv", tmp_path / "p.csv")
    assert (code, stdout) == (2, "")
    assert err == [f"error: nothing could be classified: {tmp_path / 'notes.txt'}: not a readable image"]
    assert not (tmp_path / "p.csv").exists()                             # bad input: nothing written


def test_a_folder_of_unreadable_images_is_bad_input_with_each_reason(exported, tmp_path, capsys):
    _, out = exported
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_text("a text file named .png")
    (folder / "b.jpg").write_text("a text file named .jpg")
    (folder / "c.png").write_bytes(b"")
    code, stdout, err = predict_cli(capsys, out, folder)
    assert (code, stdout) == (2, "")
    assert err[:3] == [f"skipped {folder / 'a.png'}: not a readable image",
                       f"skipped {folder / 'b.jpg'}: not a readable image", f"skipped {folder / 'c.png'}: empty file"]
    assert err[3:] == [("error: nothing could be classified: all 3 files were skipped "
                       "(2 not a readable image, 1 empty file)")]


def test_good_and_bad_files_classify_the_good_list_the_bad_and_exit_1(exported, images, tmp_path, capsys):
    _, out = exported
    (tmp_path / "notes.txt").write_text("x")
    code, stdout, err = predict_cli(capsys, out, images[0], tmp_path / "notes.txt", images[1],
                                    "--csv", tmp_path / "p.csv")
    assert code == 1
    assert err == [f"skipped {tmp_path / 'notes.txt'}: not a readable image"]
    rows = stdout.strip().splitlines()[2:]
    assert [r.split()[0] for r in rows] == [str(images[0]), str(images[1])]   # the table: what was classified
    assert "not a readable image" in (tmp_path / "p.csv").read_text()          # the CSV: every file
    code, stdout, err = predict_cli(capsys, out, images[0])
    assert code == 0 and err == []


def test_unicode_file_names_keep_the_table_aligned(exported, images, tmp_path, capsys):
    """CJK and emoji take two terminal columns, a decomposed accent none: the columns still line up."""
    import re
    import unicodedata

    def display_width(text):   # the oracle: what a terminal gives these names (wide 2, combining marks 0)
        return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
                   for c in text)

    _, out = exported
    names = ["猫の写真.png", "😀 smile.png", unicodedata.normalize("NFD", "café crème.png"), "plain.png"]
    for name, src in zip(names, images, strict=False):   # the first 4 of the 10 images
        shutil.copy(src, tmp_path / name)
    code, stdout, _ = predict_cli(capsys, out, *[tmp_path / n for n in names])
    assert code == 0
    lines = stdout.rstrip("\n").splitlines()
    header = lines[0]
    starts = [display_width(header[:header.index(c)]) for c in ("top1", "top2", "top3")]
    for line in lines[2:]:
        cells = re.split(r" {2,}", line)
        assert len(cells) == 4, line
        at = [display_width(line[:line.index(c)]) for c in cells[1:]]
        assert at == starts, (line, at, starts)
