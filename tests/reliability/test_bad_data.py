"""Bad data: every odd file a real dataset holds, made here with Pillow, is either used correctly or
skipped and listed with its reason in the run record - never a crash, never a silent drop."""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.files import read_json
from lib.train import data
from lib.train.run import main

KIND = "training"   # real training in this process: in `make test`, not `make check`


def rgb(size=(48, 40), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_messy_tree(root: Path) -> dict[str, str]:
    """class folders with one good image each plus the catalogue; returns {relative path: expected}."""
    a, b = root / "cats", root / "dogs"
    a.mkdir(parents=True)
    b.mkdir()
    (root / "empty_class").mkdir()
    expect = {}
    for folder in (a, b):
        for i in range(4):
            rgb(seed=i + (10 if folder == b else 0)).save(folder / f"ok_{i}.png")
    (a / "zero.jpg").write_bytes(b"")
    expect["cats/zero.jpg"] = "empty file"
    (a / "random.jpg").write_bytes(os.urandom(2048))
    expect["cats/random.jpg"] = "not a readable image"
    full = io.BytesIO()
    rgb((64, 64)).save(full, format="JPEG")
    (a / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    expect["cats/truncated.jpg"] = "corrupt or truncated"
    raw = bytearray(png_bytes(rgb()))
    idat = raw.find(b"IDAT")
    raw[idat + 8] ^= 0xFF                                        # payload byte: the CRC no longer matches
    (a / "badcrc.png").write_bytes(bytes(raw))
    expect["cats/badcrc.png"] = "corrupt or truncated"
    (a / "notes.txt").write_text("not an image")
    (a / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (b / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    for name in ("cats/notes.txt", "cats/.DS_Store", "dogs/Thumbs.db"):
        expect[name] = "not an image file"
    rgb((20, 20)).save(b / "tiny.png")
    expect["dogs/tiny.png"] = "smaller than min_image_side"
    Image.new("L", (12000, 12000)).save(b / "bomb.png")         # 144 Mpx > Pillow's 89 Mpx limit
    expect["dogs/bomb.png"] = "decompression-bomb"
    # usable oddities
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(b / "gray.png")
    rgb().convert("P").save(b / "palette.png")
    rgba = rgb().convert("RGBA")
    rgba.putalpha(0)
    rgba.save(b / "transparent.png")
    rgb().convert("CMYK").save(b / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(b / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6                                               # rotate 90 degrees
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(b / "rotated.jpg", exif=exif)
    frames = [rgb(seed=s) for s in range(3)]
    frames[0].save(b / "anim.gif", save_all=True, append_images=frames[1:])
    rgb().save(b / "pic.webp")
    rgb().save(b / "UPPER.PNG")
    rgb().save(b / "ünïcødé name (1).png")
    os.symlink(b, b / "loop")                                      # a symlink loop is not followed
    return expect


def test_each_odd_file_is_used_or_skipped_with_its_reason(tmp_path):
    expect = make_messy_tree(tmp_path / "messy")
    splits = data.discover(str(tmp_path / "messy"), 0.25, 0.0, seed=0)
    assert splits.classes == ["cats", "dogs"]
    assert any("empty_class" in w for w in splits.warnings)
    items = [it for s in data.SPLITS for it in splits.items[s]]
    decoded = data.decode_split(tmp_path / "messy", items, 32, "bilinear", 32, splits.skipped, "t")
    reasons = {s["path"]: s["reason"] for s in splits.skipped}
    for path, why in expect.items():
        assert why in reasons.get(path, ""), (path, reasons.get(path))
    used = set(decoded.paths)
    for name in ("gray.png", "palette.png", "transparent.png", "cmyk.jpg", "sixteen.png", "rotated.jpg",
                 "anim.gif", "pic.webp", "UPPER.PNG", "ünïcødé name (1).png"):
        assert f"dogs/{name}" in used, name
    assert len(used) + len(reasons) == len(items) + sum(1 for r in reasons.values() if r == "not an image file")
    img = dict(zip(decoded.paths, decoded.images, strict=True))
    assert img["dogs/sixteen.png"].float().mean().round() == 156           # 40000 / 257, not clipped white
    assert img["dogs/transparent.png"].min() == 255                         # alpha composited on white


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((40, 80, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rot-{os.getpid()}.jpg"
    path.write_bytes(buf.getvalue())
    from PIL import ImageOps
    with Image.open(path) as im:
        assert ImageOps.exif_transpose(im).size == (40, 80)
    path.unlink()


def test_a_messy_folder_gives_a_finished_run_and_a_list(tmp_path, cache_dir):
    make_messy_tree(tmp_path / "messy")
    code = main([f"--data_dir={tmp_path / 'messy'}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
                 "--model=small_cnn", "--epochs=1", "--image_size=32", "--val_fraction=0.3", "--test_fraction=0.0",
                 "--batch_size=4", "--run_id=messy", "--device=cpu"])
    assert code == 0
    rec = read_json(tmp_path / "runs" / "messy" / "run.json")
    assert rec["state"] == "finished" and len(rec["skipped"]) == 9
    assert all(set(s) == {"path", "reason"} for s in rec["skipped"])


@pytest.mark.parametrize("layout, needle", [
    ({"only": 3}, "at least two"),
    ({}, "at least two"),
])
def test_unusable_folders_fail_with_one_line_and_exit_2(tmp_path, capsys, layout, needle):
    root = tmp_path / "d"
    root.mkdir()
    for name, n in layout.items():
        (root / name).mkdir()
        for i in range(n):
            rgb(seed=i).save(root / name / f"{i}.png")
    assert main([f"--data_dir={root}", f"--runs_dir={tmp_path / 'runs'}", "--model=small_cnn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith("error: ")


def test_missing_data_dir_fails_before_training(tmp_path, capsys):
    assert main([f"--data_dir={tmp_path / 'nope'}", f"--runs_dir={tmp_path / 'runs'}", "--model=small_cnn"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_split_folders_and_a_missing_one(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(6):
                rgb(seed=i + hash(split + cls) % 100).save(root / split / cls / f"{i}.png")
    splits = data.discover(str(root), 0.34, 0.2, seed=0)
    assert len(splits.items["test"]) == 12                              # the test/ folder, untouched
    assert len(splits.items["val"]) == 4 and len(splits.items["train"]) == 8  # val carved from train/
    assert any("no val/ folder" in w for w in splits.warnings)


def test_imbalance_and_train_test_duplicates_are_warned(tmp_path):
    root = tmp_path / "d"
    for cls, n in (("many", 30), ("few", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            rgb(seed=i + (0 if cls == "many" else 500)).save(root / cls / f"{i}.png")
    (root / "many" / "copy.png").write_bytes((root / "many" / "0.png").read_bytes())
    splits = data.discover(str(root), 0.0, 0.3, seed=1)
    decoded = {s: data.decode_split(root, splits.items[s], 32, "bilinear", 16, [], s) for s in data.SPLITS}
    warnings = data.data_warnings(splits.classes, decoded)
    assert any("imbalance" in w for w in warnings)
    # copy.png and 0.png are one image: wherever they fell, they are either together or reported
    train, test = set(decoded["train"].paths), set(decoded["test"].paths)
    pair = {"many/0.png", "many/copy.png"}
    if pair & train and pair & test:
        assert any("exact copies" in w for w in warnings)


def test_nan_loss_fails_the_run_with_the_reason(base_args, tmp_path):
    assert main(base_args + ["--model=small_cnn", "--lr=1e30", "--optimizer=sgd", "--run_id=nan",
                             "--epochs=3", "--scheduler=constant"]) == 1
    rec = read_json(tmp_path / "runs" / "nan" / "run.json")
    assert rec["state"] == "failed" and "loss became" in rec["error"]


def test_unwritable_runs_dir_is_a_clear_error(base_args, tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    args = [a for a in base_args if not a.startswith("--runs_dir")]
    assert main(args + [f"--runs_dir={blocked}", "--model=small_cnn"]) == 2
    assert "runs_dir" in capsys.readouterr().err.strip().splitlines()[-1]


def test_unwritable_shared_cache_dir_is_a_clear_error(base_args, tmp_path, capsys):
    blocked = tmp_path / "blocked-cache"
    blocked.write_text("a file, not a folder")
    assert main(base_args + [f"--shared_cache_dir={blocked}", "--model=small_cnn"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: shared_cache_dir='{blocked}' is not writable")


def test_out_of_memory_retries_with_half_the_batch(base_args, tmp_path, monkeypatch):
    """CUDA cannot run here: the one thing mocked is the allocator failing above batch 8."""
    from lib.train import training

    real = training.train_epoch

    def tight_memory(model, loader, *a, **k):
        if loader.batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, loader, *a, **k)

    monkeypatch.setattr(training, "train_epoch", tight_memory)
    assert main(base_args + ["--model=small_cnn", "--batch_size=32", "--run_id=oom"]) == 0
    rec = read_json(tmp_path / "runs" / "oom" / "run.json")
    assert rec["state"] == "finished" and rec["config"]["batch_size"] == 8 and rec["oom_retries"] == 2


def test_pipes_devices_and_huge_files_named_like_images_are_skipped(tmp_path, cache_dir):
    """A FIFO blocks its reader for ever, /dev/zero never ends, a huge file fills memory: skipped, with why."""
    from lib.images import MAX_FILE_BYTES, load_rgb

    root = tmp_path / "odd"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            rgb(seed=i + (10 if cls == "dogs" else 0)).save(root / cls / f"ok_{i}.png")
    os.mkfifo(root / "cats" / "pipe.png")
    os.symlink("/dev/zero", root / "dogs" / "zero.png")
    with open(root / "dogs" / "huge.png", "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)                     # sparse: no disk used
    expect = {"cats/pipe.png": "FIFO", "dogs/zero.png": "character device", "dogs/huge.png": "MB cap"}
    # Found when the folder is listed, before any file is opened (opening the FIFO used to wait for ever).
    reasons = {s["path"]: s["reason"] for s in data.discover(str(root), 0.25, 0.0, seed=0).skipped}
    for path, why in expect.items():
        assert why in reasons.get(path, ""), (path, reasons.get(path))
    with pytest.raises(ValueError, match="FIFO"):           # one put there after the listing: refused on opening
        load_rgb(root / "cats" / "pipe.png")

    assert main([f"--data_dir={root}", f"--runs_dir={tmp_path / 'runs'}", f"--cache_dir={cache_dir}",
                 "--model=small_cnn", "--epochs=1", "--image_size=32", "--val_fraction=0.25", "--test_fraction=0.0",
                 "--batch_size=4", "--run_id=odd", "--device=cpu"]) == 0
    rec = read_json(tmp_path / "runs" / "odd" / "run.json")
    reasons = {s["path"]: s["reason"] for s in rec["skipped"]}
    assert all(why in reasons[path] for path, why in expect.items()) and len(rec["split"]["train"]) == 6


class RunsCode:
    """Pickles as a call to open(path, "w"): unpickling it runs code that leaves a file behind."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_weights_file_that_would_run_code_is_refused(base_args, tmp_path, capsys, monkeypatch):
    """timm 1.0.20-1.0.25 load a --weights file with torch.load(weights_only=False). Their loader stands in for
    this timm's: the kit reads the file itself, and its code must never run."""
    import timm.models
    import timm.models._builder
    import timm.models._helpers

    real = timm.models._helpers.load_state_dict

    def timm_1_0_25(path, use_ema=True, device="cpu", weights_only=False):
        return real(path, use_ema, device, weights_only)
    for module in (timm.models, timm.models._builder, timm.models._helpers):
        monkeypatch.setattr(module, "load_state_dict", timm_1_0_25)
    monkeypatch.setattr("lib.train.weights.load_state_dict", timm_1_0_25, raising=False)   # where the kit used it
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"blocks.0.0.weight": torch.zeros(32, 3, 3, 3), "payload": RunsCode(str(marker))}, evil)

    assert main(base_args + ["--model=small_cnn", f"--weights={evil}", "--run_id=evil"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "refused" in err[0], err
    assert not marker.exists()
