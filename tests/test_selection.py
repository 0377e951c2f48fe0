"""The shared layer's two answers every command uses: which run is best (lib.selection) and what SOURCE
is (lib.sources)."""
import re

import pytest

import finetune_sweep  # the composer: registers the database reader with lib.sources
from lib import sources
from lib.errors import ReportError, SourceError
from lib.files import write_json
from lib.selection import Selection, rank, selection


def run(run_id, value=None, size=None, state="finished", history=None, metric="best_val_acc"):
    summary = {k: v for k, v in ((metric, value), ("model_size_mb", size)) if v is not None}
    return {"id": run_id, "state": state, "summary": summary, "history": history or []}


def test_runs_rank_by_the_metric_then_the_smaller_model_then_the_id():
    runs = [run("big", 0.9, 90.0), run("small", 0.9, 9.0), run("unsized", 0.9), run("b-twin", 0.9, 9.0),
            run("worse", 0.8, 1.0), run("crashed", 0.99, 1.0, state="failed"), run("none", None, 1.0),
            run("epochs", None, 5.0, history=[{"epoch": 1, "best_val_acc": 0.7}, {"epoch": 2, "best_val_acc": 0.95}])]
    up = Selection("best_val_acc", "maximize")
    assert [r["id"] for r in rank(runs, up)] == ["epochs", "b-twin", "small", "big", "unsized", "worse"]
    down = Selection("best_val_acc", "minimize")   # the history's best is its minimum then: 0.7
    assert [r["id"] for r in rank(runs, down)] == ["epochs", "worse", "b-twin", "small", "big", "unsized"]
    assert [r["id"] for r in rank(list(reversed(runs)), up)] == [r["id"] for r in rank(runs, up)]   # stable


def test_the_metric_and_goal_of_a_source_are_read_one_way():
    own = {"metric": "test_loss", "goal": "minimize"}
    assert selection(own) == Selection("test_loss", "minimize")
    assert selection(own, "best_val_acc") == Selection("best_val_acc", "maximize")     # asked for: wins
    assert selection(own, None, "maximize") == Selection("test_loss", "maximize")
    assert selection({}, "val_loss") == Selection("val_loss", "minimize")              # no goal: by its name
    assert selection({}) == selection({"metric": 3}) == Selection("best_val_acc", "maximize")
    with pytest.raises(ReportError, match=r"unknown metric 'test_los' \(did you mean 'test_loss'\?\)"):
        selection(own, "test_los", runs=[run("a", 0.5)])
    with pytest.raises(ReportError, match="--goal up: expected maximize or minimize"):
        selection(own, goal="up")


@pytest.fixture
def folders(tmp_path):
    sweep = tmp_path / "sweep"
    write_json(sweep / "sweep.json", {"name": "s", "metric": "test_loss", "goal": "minimize"})
    for root in (sweep / "runs", tmp_path / "plain"):
        for run_id in ("a", "b"):
            write_json(root / run_id / "run.json", {"id": run_id, "state": "finished", "summary": {"test_loss": 1}})
    (root / "a" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "file.txt").write_text("x")
    return tmp_path


def test_every_form_of_source_resolves_to_its_runs(folders):
    sweep = sources.resolve(folders / "sweep")
    assert (sweep.form, sweep.meta()["metric"]) == ("sweep dir", "test_loss")
    assert [r["id"] for r in sweep.runs()] == ["a", "b"]
    plain = sources.resolve(str(folders / "plain"))
    assert plain.form == "runs dir" and plain.meta() == {} and len(plain.runs()) == 2
    assert [plain.has_weights(r) for r in plain.runs()] == [True, False]
    one = sources.resolve(folders / "plain" / "a")
    assert one.form == "run folder" and [r["id"] for r in one.runs()] == ["a"]
    assert sources.resolve("ent/proj/abc123").form == "W&B sweep"            # nothing read until asked
    db = sources.resolve(f"sqlite:///{folders / 'study.db'}", study="s")
    assert db.form == "database" and not (folders / "study.db").exists()       # nothing opened yet
    assert sources.resolve(sweep) is sweep


@pytest.mark.parametrize("text, message", [
    ("nowhere", r"no such folder: nowhere, and not a database URL or a W&B sweep path: SOURCE is a sweep dir, "
                r"a runs dir, one run folder, a database URL .* or a W&B sweep path ENTITY/PROJECT/SWEEP_ID"),
    ("ent/proj", r"no such folder: ent/proj, .*\(a W&B sweep path has three parts\): SOURCE is .*"),
    ("FILE", r".*file\.txt is a file, not a folder: SOURCE is a sweep dir.*"),
])
def test_an_unknown_form_is_one_line_naming_the_forms(folders, monkeypatch, text, message):
    monkeypatch.chdir(folders)
    with pytest.raises(SourceError) as e:
        sources.resolve(str(folders / "file.txt") if text == "FILE" else text)
    assert re.fullmatch(message, str(e.value)) and "\n" not in str(e.value)


def test_status_and_dashboard_read_a_study_and_say_so_in_one_line(folders, capsys):
    for command in ("status", "dashboard"):
        assert finetune_sweep.main([command, str(folders / "plain")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {folders / 'plain'} is a runs dir, not a sweep dir or a database: {command} reads "
                       "those (a sweep dir is made by `finetune_sweep.py local`)")
    assert finetune_sweep.main(["status", "ent/proj"]) == 2
    assert "SOURCE is a sweep dir, a runs dir" in capsys.readouterr().err
