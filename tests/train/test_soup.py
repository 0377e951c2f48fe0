"""Greedy model soups: fine-tunes of one pretrained start averaged, best first, each kept only if
validation accuracy does not drop; the soup is a normal run record that report and export take."""
import shutil

import pytest

from lib.files import read_json, write_json
from lib.train import soup
from lib.train.run import main

KIND = "training"   # real training in this process: in `make test`, not `make check`


@pytest.fixture(scope="module")
def study(animals, tmp_path_factory):
    """Three MobileNetV2 fine-tunes from the same pip-shipped weights, plus one small_cnn run."""
    runs = tmp_path_factory.mktemp("soup") / "runs"
    base = [f"--data_dir={animals}", f"--runs_dir={runs}", "--image_size=32", "--min_image_side=16",
            "--augment=none", "--val_fraction=0.25", "--test_fraction=0.25", "--device=cpu", "--epochs=2",
            "--batch_size=16"]
    for run_id, extra in {"frz": ["--strategy=freeze", "--lr=2e-2"], "par": ["--strategy=partial", "--lr=1e-2"],
                          "bad": ["--strategy=full", "--lr=0.5", "--backbone_lr_mult=1"],
                          "cnn": ["--model=small_cnn", "--strategy=full"]}.items():
        model = [] if run_id == "cnn" else ["--model=mobilenetv2_100"]
        assert main(base + model + extra + [f"--run_id={run_id}"]) == 0
    # A twin of the best MobileNetV2 run (the same weights): averaging it never lowers validation
    # accuracy, so the soup always has at least two ingredients, whichever run is best.
    best = max(("frz", "par", "bad"), key=lambda r: read_json(runs / r / "run.json")["summary"]["best_val_acc"])
    shutil.copytree(runs / best, runs / "twin")
    record = read_json(runs / "twin" / "run.json")
    write_json(runs / "twin" / "run.json", {**record, "id": "twin", "config": {**record["config"], "run_id": "twin"}})
    return runs


def test_greedy_soup_of_one_family(study, tmp_path):
    out = tmp_path / "soup-run"
    record = soup.greedy_soup(study, out)
    steps = record["soup"]["steps"]
    best = max((read_json(study / r / "run.json") for r in ("frz", "par", "bad")),
               key=lambda r: r["summary"]["best_val_acc"])
    assert steps[0]["run_id"] in (best["id"], "twin")
    assert steps[0]["val_acc"] == pytest.approx(best["summary"]["best_val_acc"], abs=1e-6)
    assert {s["run_id"] for s in steps} == {"frz", "par", "bad", "twin"}   # small_cnn is another family
    assert len(record["soup"]["ingredients"]) >= 2
    assert record["soup"]["ingredients"] == [s["run_id"] for s in steps if s["added"]]
    assert record["summary"]["best_val_acc"] >= best["summary"]["best_val_acc"] - 1e-6   # greedy: never worse
    on_disk = read_json(out / "run.json")
    assert on_disk["state"] == "finished" and (out / "model.safetensors").is_file()
    assert len(on_disk["test_predictions"]["y_pred"]) == len(on_disk["split"]["test"])


def test_the_soup_is_a_candidate_for_report_and_export(study):
    from lib.selection import selection
    from lib.ship.select import candidates
    from lib.sources import resolve
    from lib.train.restore import load_run_model

    soup.greedy_soup(study, study / "soup")
    assert "soup" in {c["id"] for c in candidates(resolve(study), selection())}
    model, record = load_run_model(study / "soup")
    assert record["soup"]["best_single"] in ("frz", "par", "bad", "twin")


def test_the_report_sets_the_soup_against_its_best_single_run(study, tmp_path):
    from lib.report import build_report

    soup.greedy_soup(study, study / "soup-r")
    res = build_report(study, tmp_path / "report")
    (row,) = [x for x in res["soups"] if x["run_id"] == "soup-r"]
    assert row["best_single"] in ("frz", "par", "bad", "twin") and 0 <= row["p_value"] <= 1
    assert any("soup `soup-r`" in w and "McNemar exact p" in w for w in res["warnings"])


def test_a_soup_of_the_best_run_alone_is_not_written(study, tmp_path):
    """A family of one (small_cnn here): a soup would be a copy of the run, tying with it in reports."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(study / "cnn", runs / "cnn")
    record = soup.greedy_soup(runs, runs / "soup")
    assert record["id"] is None and record["soup"]["ingredients"] == ["cnn"]
    assert not (runs / "soup").exists()


@pytest.mark.parametrize("where", ["an ingredient", "the runs dir", "a study", "a run record"])
def test_soup_out_never_replaces_a_run_or_hides_a_study(study, tmp_path, capsys, where):
    """`soup --out` once replaced one of its own ingredients (its metrics.jsonl deleted), and `soup DIR --out
    DIR` put a run.json at a sweep's root, after which report listed only the soup: one line, exit 2, and
    not a byte of the folder changed."""
    from finetune_sweep import main

    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "sweep.json").write_text('{"name": "s"}')
    (tmp_path / "rec").mkdir()
    write_json(tmp_path / "rec" / "run.json", {"id": "rec", "state": "failed"})
    out = {"an ingredient": study / "frz", "the runs dir": study, "a study": sweep,
           "a run record": tmp_path / "rec"}[where]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["soup", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {out} holds "), err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_soup_out_replaces_an_earlier_soup_under_the_run_lock(study, tmp_path, capsys):
    from finetune_sweep import main
    from lib.files import run_lock
    from lib.records import LOCK_FILE

    out = study / "soup-again"
    soup.greedy_soup(study, out)
    first = read_json(out / "run.json")
    with run_lock(out, LOCK_FILE):            # as a trainer or another soup holds it
        assert main(["soup", str(study), "--out", str(out)]) == 2
        assert "in use by process" in capsys.readouterr().err
    assert read_json(out / "run.json") == first
    assert main(["soup", str(study), "--out", str(out)]) == 0     # an earlier soup is the soup's to replace
    assert read_json(out / "run.json")["soup"]["ingredients"] == first["soup"]["ingredients"]


def test_ingredients_rank_by_the_sweeps_own_metric(study, tmp_path):
    """The soup takes its runs best first by the kit's one rule (lib.selection): here a sweep whose metric
    is test_loss (minimize), set so that it ranks the runs the other way round from validation accuracy."""
    sweep = tmp_path / "sweep"
    write_json(sweep / "sweep.json", {"name": "s", "metric": "test_loss", "goal": "minimize"})
    by_val = sorted(("frz", "par", "bad", "twin"),
                    key=lambda r: -read_json(study / r / "run.json")["summary"]["best_val_acc"])
    for loss, run_id in enumerate(reversed(by_val)):
        shutil.copytree(study / run_id, sweep / "runs" / run_id)
        record = read_json(study / run_id / "run.json")
        write_json(sweep / "runs" / run_id / "run.json",
                   {**record, "summary": {**record["summary"], "test_loss": loss}})
    assert [r["id"] for r in soup.ingredients(sweep)] == list(reversed(by_val))
    from lib.selection import Selection

    assert [r["id"] for r in soup.ingredients(sweep, Selection("test_loss", "maximize"))] == by_val
