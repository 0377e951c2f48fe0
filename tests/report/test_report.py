"""The sweep report: reads real run records, gets the statistics right (Wilson, McNemar, seeds, Pareto),
raises what a careful reviewer would, and renders a self-contained HTML page."""
import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from lib import report
from lib.report import build_report, load_local, load_wandb, mcnemar, runs_frame, wilson_interval
from lib.report.expected import expected_best
from lib.train.run import main
from tests.fakes.wandb_api import FakeApi, FakeRun
from tests.report.guide import CLASSES, Y_TRUE, curve, summ, write_run, wrong


# ---------------------------------------------------------------- statistics
def test_wilson_interval_matches_scipy():
    lo, hi = wilson_interval(9, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.596, 0.982)
    ref = stats.binomtest(9, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=2e-5) and hi == pytest.approx(ref.high, abs=2e-5)
    lo, hi = wilson_interval(125, 125)          # the guide's 100% on 125 test images
    assert hi == 1.0 and round(lo, 3) == 0.970 and lo == pytest.approx(125 / (125 + 1.96 ** 2))
    assert wilson_interval(0, 20)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_mcnemar_exact_on_a_constructed_pair():
    y = [0] * 20
    a = [0] * 14 + [1] * 6            # A right on 0..13
    b = [1] * 6 + [0] * 9 + [1] * 5   # B right on 6..14
    r = mcnemar(y, a, b)               # only A right: 0..5 (6); only B right: 14 (1)
    assert (r["b"], r["c"]) == (6, 1)
    assert r["p_value"] == pytest.approx(stats.binomtest(6, 7, 0.5).pvalue) == pytest.approx(16 / 128)
    assert mcnemar(y, [0] * 8 + [1] * 12, [1] * 20)["p_value"] == pytest.approx(2 / 2 ** 8)
    assert mcnemar(y, a, a)["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([0, 1], [0], [1])


def test_pareto_and_importance_helpers():
    assert report.pareto_front([1, 2, 3, 4], [0.5, 0.7, 0.6, 0.9]) == [True, True, False, True]
    assert report.pareto_front([1, float("nan")], [0.5, 0.9]) == [True, False]
    assert report.eta_squared(["a", "a", "b", "b"], [1, 1, 3, 3]) == pytest.approx(1.0)
    assert report.eta_squared(["a", "b", "a", "b"], [1, 1, 3, 3]) == pytest.approx(0.0)


# ---------------------------------------------------------------- reading records
def test_real_runs_are_read(base_args, tmp_path):
    """Two real tiny runs (same split) through the same entrypoint as everything else."""
    for lr, rid in (("0.003", "real1"), ("0.03", "real2")):
        assert main(base_args + ["--model=small_cnn", "--strategy=full", f"--lr={lr}", f"--run_id={rid}"]) == 0
    runs = load_local(tmp_path / "runs")                     # a plain runs dir
    assert sorted(r["id"] for r in runs) == ["real1", "real2"]
    assert all([h["epoch"] for h in r["history"]] == [1, 2] for r in runs)
    df = runs_frame(runs)
    assert {"run_id", "name", "state", "model", "strategy", "lr", "best_val_acc", "test_acc", "n_test"} <= set(df)
    assert df["n_test"].tolist() == [40, 40]
    res = build_report(tmp_path / "runs", tmp_path / "report")
    assert res["best_run_id"] in ("real1", "real2") and res["runner_up_id"] in ("real1", "real2")
    assert res["mcnemar"] is not None and res["mcnemar"]["n"] == 40   # same split: a paired test was possible
    assert any("small test set (n=40" in w for w in res["warnings"])
    assert "small_cnn / full" in res["verdict"]
    for name in ("runs.csv", "report.md", "report.html", "curves.png", "confusion_matrix.png", "tradeoff.png",
                 "params.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 2
    vals = sorted(r["summary"]["best_val_acc"] for r in runs)       # two real trials: a curve, no slope
    assert [(c["n"], c["value"]) for c in res["expected_best"]] == [(1, pytest.approx(sum(vals) / 2)), (2, vals[1])]
    assert res["more_trials"]["flat"] is None and "Too few trials (2)" in res["more_trials"]["text"]
    assert load_local(tmp_path / "runs" / "real1")[0]["id"] == "real1"   # one run folder works too


def test_sweep_dir_layout_and_dead_trials(guide_sweep):
    runs = load_local(guide_sweep)
    ids = {r["id"]: r for r in runs}
    assert len(runs) == 9 and ids["r50_freeze"]["history"][0]["epoch"] == 1
    dead = ids["guide-009"]
    assert dead["state"] == "failed" and "Killed" in dead["error"] and dead["config"]["lr"] == 0.1
    assert not (guide_sweep / "optuna.journal").exists()     # reading never creates a study
    df = runs_frame(runs)
    assert list(df.columns[:3]) == ["run_id", "name", "state"]
    assert df.set_index("run_id").loc["eff_full", "test_acc"] == pytest.approx(115 / 125)


# ---------------------------------------------------------------- the guide's claim, reviewed
def test_guide_report_verdict_and_statistics(guide_report):
    res, out = guide_report
    assert res["best_run_id"] == "r50_freeze"          # tie on val with r50_partial: the faster one first
    assert res["runner_up_id"] == "r50_partial"
    verdict = res["verdict"]
    assert 3 <= len(verdict.splitlines()) <= 5
    assert "resnet50 / freeze" in verdict and "Runner-up" in verdict
    assert "LOW" in verdict and "not distinguishable" in verdict
    assert res["mcnemar"]["p_value"] == 1.0 and res["mcnemar"]["b"] == res["mcnemar"]["c"] == 0
    assert "≥ 97.0%" in verdict
    assert set(res["pareto_size"]) == {"scratch", "eff_partial", "r50_freeze", "r50_partial"}
    imp = {r["key"]: r for r in res["importance"]}
    assert imp["model"]["method"] == "eta^2" and 0 <= imp["model"]["importance"] <= 1
    assert imp["lr"]["method"] == "|Spearman rho|"
    df = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert df.loc["eff_partial", "test_acc_lo"] == pytest.approx(wilson_interval(124, 125)[0])
    assert bool(df.loc["scratch", "pareto_size"]) and not bool(df.loc["eff_full", "pareto_size"])
    assert df.loc["r50_freeze", "latency_ms"] == 40.0 and bool(df.loc["scratch", "pareto_latency"])


def test_guide_report_warnings(guide_report):
    res, _ = guide_report
    text = "\n".join(res["warnings"])
    assert "100% on n=125 means the true accuracy is ≥ 97.0% at 95% confidence" in text
    assert "3 run(s) at 100%" in text and "cannot be ranked" in text
    assert re.search(r"small test set \(n=125 images\).*\[97\.0, 100\.0\], 3\.0 points wide, and one image is "
                     r"0\.8 points", text)
    assert "overlap" in text                                     # the top two's Wilson intervals
    assert "overfitting: `scratch`" in text and "35.0 points" in text
    assert "overfitting: `eff_full`" not in text                 # 93% val is not overfitting by itself (gap 6.8)
    assert "`eff_full`" in text and "val loss rose" in text      # ...but its val loss did rise
    assert "CUDA out of memory" in text and "`guide-009`" in text
    assert "exact copies of training images" in text and "2.4 points" in text
    assert "tie on best_val_acc" in text
    assert "`eff_partial` reports more trainable (11.20M) than total parameters (5.30M)" in text  # the guide's table


def test_guide_report_files(guide_report):
    res, out = guide_report
    md = (out / "report.md").read_text()
    for heading in ("## Verdict", "## Comparison by model × strategy", "## Training curves", "## Swept parameters",
                    "## Runs that did not finish (2)", "![", "| model | strategy |"):
        assert heading in md, heading
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5                     # curves, expected best, confusion, tradeoff, params: all inline
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "src=\"http" not in page and "<link" not in page      # self-contained
    assert set(res["plots"]) == {"curves", "expected_best", "confusion_matrix", "tradeoff", "params"}
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in res["plots"].values())


def test_guide_report_says_what_more_trials_would_buy(guide_report):
    """Seven finished runs (the failed two are no trials): the expected best of n of them, and one line under
    the verdict on whether the curve has flattened."""
    res, out = guide_report
    vals = [0.9915, 0.9915, 0.9829, 0.9829, 0.9744, 0.9316, 0.60]
    assert res["expected_best"] == expected_best(vals) and len(res["expected_best"]) == 7
    assert res["more_trials"]["flat"] is True and res["more_trials"]["gain"] == pytest.approx(0.9915 - 0.9888)
    line = ("More trials would buy little: the expected best `best_val_acc` rises 0.3 points from 3 to 7 trials, "
            "less than half a point.")
    assert res["more_trials"]["text"] == line
    md = (out / "report.md").read_text()
    verdict, rest = md.split("## What a careful reviewer would say")
    assert "## Verdict" in verdict and line in verdict             # next to the verdict
    assert "## What more trials would buy" in rest and "![expected best best_val_acc of n trials" in rest
    assert (out / "expected_best.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- seeds, edge cases
def test_seed_aggregation(tmp_path):
    runs = tmp_path / "runs"
    for seed, val, k in ((0, 0.80, 100), (1, 0.82, 102), (2, 0.84, 104)):
        write_run(runs, f"a{seed}", config={"model": "resnet18", "strategy": "full", "lr": 0.01, "seed": seed},
                  summary=summ(val, k), split_test=[f"s{seed}_{i}" for i in range(125)], y_pred=wrong(125 - k))
    write_run(runs, "b0", config={"model": "resnet18", "strategy": "full", "lr": 0.001, "seed": 0},
              summary=summ(0.83, 103), split_test=[f"s0_{i}" for i in range(125)], y_pred=wrong(22))
    res = build_report(runs, tmp_path / "out")
    (g,) = [g for g in res["seed_groups"] if g["n"] == 3]
    assert g["config"]["lr"] == 0.01 and sorted(g["seeds"]) == [0, 1, 2]
    assert g["best_val_acc_mean"] == pytest.approx(0.82) and g["best_val_acc_std"] == pytest.approx(0.02)
    assert g["test_acc_mean"] == pytest.approx(102 / 125)
    assert res["best_run_id"] == "a2" and res["runner_up_id"] == "b0"     # not another seed of the winner
    assert "0.8200 ± 0.0200" in res["verdict"]
    text = "\n".join(res["warnings"])
    assert "smaller than its own seed-to-seed std" in text
    assert "different test images" in text and res["mcnemar"] is None   # different splits: no paired test
    assert "0.8200 ± 0.0200" in (tmp_path / "out" / "report.md").read_text()
    # the floor of "has it flattened" is the seed-to-seed std when it is above half a point
    assert res["more_trials"]["floor"] == pytest.approx(0.02) and res["more_trials"]["flat"] is True
    assert "less than the seed-to-seed std (2.0 points)" in res["more_trials"]["text"]


def test_a_winning_seed_is_paired_with_the_runner_ups_run_on_its_split(tmp_path):
    """Seeds draw the split of a folder of class folders: the best run may be a seed whose test images the
    runner-up's best run never saw; McNemar then takes the runner-up configuration's run of that split."""
    runs = tmp_path / "runs"
    for name, lr, seed, val, k in (("a0", 0.01, 0, 0.84, 110), ("a1", 0.01, 1, 0.86, 112), ("b0", 0.001, 0, 0.85, 100),
                                   ("b1", 0.001, 1, 0.80, 110)):
        write_run(runs, name, config={"model": "resnet18", "strategy": "full", "lr": lr, "seed": seed},
                  summary=summ(val, k), split_test=[f"s{seed}_{i}" for i in range(125)], y_pred=wrong(125 - k))
    res = build_report(runs, tmp_path / "out")
    assert res["best_run_id"] == "a1" and res["runner_up_id"] == "b0"
    assert res["mcnemar"]["runs"] == ["a1", "b1"] and (res["mcnemar"]["b"], res["mcnemar"]["c"]) == (2, 0)
    assert "only the runner-up's configuration in run `b1`, on the winner's test images" in "\n".join(res["warnings"])


def test_single_run_all_failed_and_nans(tmp_path):
    one = tmp_path / "one"
    write_run(one, "solo", config={"model": "resnet50", "strategy": "freeze", "lr": 1e-3},
              summary=summ(0.9, 450, n=500), y_pred=None, split_test=[f"t{i}" for i in range(500)])
    res = build_report(one, tmp_path / "one_out")
    assert res["best_run_id"] == "solo" and res["runner_up_id"] is None
    assert "No runner-up" in res["verdict"] and "n=500" in res["verdict"]
    assert not any("small test set" in w for w in res["warnings"])
    assert "recorded no test predictions" in (tmp_path / "one_out" / "report.md").read_text()

    dead = tmp_path / "dead"
    write_run(dead, "f1", state="failed", config={"model": "resnet50"}, error="boom one")
    write_run(dead, "f2", state="preempted", config={"model": "resnet50"})
    write_run(dead, "f3", state="pruned", config={"model": "resnet50"}, history=curve(2))
    res = build_report(dead, tmp_path / "dead_out")
    assert res["best_run_id"] is None and "No run finished" in res["verdict"]
    assert any("boom one" in w for w in res["warnings"]) and any("preempted" in w for w in res["warnings"])
    assert any("1 run(s) pruned by early termination" in w for w in res["warnings"])
    md = (tmp_path / "dead_out" / "report.md").read_text()
    assert "Runs that did not finish (3)" in md and (tmp_path / "dead_out" / "report.html").exists()

    nan = tmp_path / "nan"
    write_run(nan, "n1", config={"model": "m", "strategy": "full", "lr": 0.1},
              summary={"best_val_acc": 0.5, "test_acc": None, "model_size_mb": float("nan")},
              history=[{"epoch": 1, "val_acc": float("nan"), "train_loss": float("nan")}])
    write_run(nan, "n2", config={"model": "m", "strategy": "full", "lr": 0.01}, summary={"best_val_acc": 0.4})
    res = build_report(nan, tmp_path / "nan_out")
    assert res["best_run_id"] == "n1" and "Trust" in res["verdict"]
    assert (tmp_path / "nan_out" / "report.html").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(report.ReportError, match="no runs in"):
        build_report(empty, tmp_path / "empty_out")
    assert not (tmp_path / "empty_out").exists()


# ---------------------------------------------------------------- W&B
def test_load_wandb_with_a_fake_api(tmp_path):
    hist = [{"_step": i, "_runtime": 1.0, "epoch": e, "train_loss": 1 / e, "val_acc": 0.5 + 0.1 * e, "train_acc": 0.6,
             "val_loss": 1.0} for i, e in enumerate((1, 2, 3))]
    hist += [{"_step": 9, "test_confusion_matrix": {"_type": "x"}}]
    runs = [
        FakeRun("w1", "finished", {"model": "resnet50", "strategy": "freeze", "lr": {"value": 1e-3}, "_wandb": {}},
                {**summ(0.91, 450, n=500), "_wandb": {"runtime": 3}, "val_acc": 0.91, "lr": 1e-5,
                 "classes": CLASSES, "test_predictions": {"y_true": [0, 1, 2], "y_pred": [0, 1, 1]}}, hist),
        FakeRun("w2", "finished", {"model": "resnet50", "strategy": "full", "lr": 1e-5},
                summ(0.88, 430, n=500), hist),
        FakeRun("w3", "crashed", {"model": "resnet50", "strategy": "full", "lr": 1e-2}, {}, []),
    ]
    api = FakeApi(runs)
    loaded = load_wandb("ent/proj/abc123", api=api)
    assert api.asked == ["ent/proj/abc123"]
    w1 = loaded[0]
    assert w1["id"] == "w1" and w1["name"] == "name-w1" and w1["state"] == "finished"
    assert w1["config"] == {"model": "resnet50", "strategy": "freeze", "lr": 1e-3}
    assert "_wandb" not in w1["summary"] and w1["summary"]["best_val_acc"] == 0.91
    assert w1["classes"] == CLASSES and w1["test_predictions"]["y_pred"] == [0, 1, 1]
    assert [h["epoch"] for h in w1["history"]] == [1, 2, 3] and "_step" not in w1["history"][0]
    assert "test_predictions" not in loaded[1] and loaded[2]["state"] == "failed"
    assert loaded[2]["wandb_state"] == "crashed"
    df = runs_frame(loaded).set_index("run_id")       # W&B's summary repeats the last logged lr: kept apart
    assert df.loc["w1", "lr"] == 1e-3 and df.loc["w1", "summary.lr"] == 1e-5
    res = build_report(loaded, tmp_path / "wb")
    assert res["best_run_id"] == "w1" and "resnet50 / freeze" in res["verdict"]
    assert any("`w3`" in w for w in res["warnings"])
    assert any("McNemar test not possible" in w for w in res["warnings"])
    assert res["expected_best"] == expected_best([0.91, 0.88])   # W&B's runs are the same dicts: the same curve


# ---------------------------------------------------------------- the page in a real browser
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_html_renders_in_headless_chromium(guide_report, tmp_path):
    _, out = guide_report
    url = (out / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,3000", url],
                   capture_output=True, timeout=90, check=False)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=90).stdout
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 5
    assert dom.count("<table>") >= 5 and "Verdict" in dom and "resnet50" in dom and "CRITICAL" in dom
    from PIL import Image

    with Image.open(shot) as im:                  # the plots were drawn: many colours, not a blank page
        assert len(im.convert("RGB").resize((300, 750)).getcolors(1 << 20)) > 200


def test_report_from_wandb_runs_mcnemar_on_the_logged_test_predictions(tmp_path):
    """The summary keys lib.train.tracking logs (test_y_true, test_y_pred, classes) are enough for the paired test."""
    def logged(val, errors):
        return {**summ(val, 125 - errors), "classes": CLASSES, "test_y_true": Y_TRUE, "test_y_pred": wrong(errors)}
    api = FakeApi([
        FakeRun("a", "finished", {"model": "resnet50", "strategy": "partial", "lr": 1e-3}, logged(0.93, 6), []),
        FakeRun("b", "finished", {"model": "resnet50", "strategy": "full", "lr": 1e-4}, logged(0.92, 8), [])])
    res = build_report(load_wandb("ent/proj/sw", api=api), tmp_path / "wb")
    assert res["mcnemar"]["runs"] == ["a", "b"]
    expected = stats.binomtest(res["mcnemar"]["b"], res["mcnemar"]["b"] + res["mcnemar"]["c"], 0.5).pvalue
    assert res["mcnemar"]["p_value"] == pytest.approx(expected)
    assert "not distinguishable" in (tmp_path / "wb" / "report.md").read_text()


# ---------------------------------------------------------------- the command line: metric, bad input, untrusted names
def cli(args, capsys):
    """finetune_sweep.py as a user runs it: exit code, stdout, stderr lines."""
    import finetune_sweep

    code = finetune_sweep.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def two_metric_sweep(root: Path, metric: dict) -> Path:
    """A sweep whose own metric (test_loss, minimized) and best_val_acc disagree on the winner."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"name": "s", "method": "grid", "storage": None, **metric}))
    for rid, val, loss in (("by_val", 0.95, 0.9), ("by_loss", 0.80, 0.2)):
        write_run(root / "runs", rid,
                  config={"model": "resnet18", "strategy": "full", "lr": 1e-3 if val > 0.9 else 1e-4},
                  summary={**summ(val, 100), "test_loss": loss}, y_pred=wrong(25))
    return root


def test_report_ranks_by_the_sweeps_own_metric(tmp_path, capsys):
    root = two_metric_sweep(tmp_path / "sweep", {"metric": "test_loss", "goal": "minimize"})
    code, out, err = cli(["report", root], capsys)
    assert code == 0, err
    assert "Winner: **resnet18 / full** (lr=0.0001), run `by_loss`" in out
    md = (root / "report" / "report.md").read_text()
    assert "selection metric: `test_loss` (minimize)" in md
    ranks = pd.read_csv(root / "report" / "runs.csv").set_index("run_id")["rank"]
    assert ranks["by_loss"] == 1 and ranks["by_val"] == 2
    code, out, _ = cli(["report", root, "--metric", "best_val_acc"], capsys)   # asked for: wins over the sweep's
    assert code == 0 and "run `by_val`" in out


def test_report_of_a_wandb_sweep_ranks_by_its_config_metric(tmp_path, capsys, monkeypatch):
    """The W&B sweep's config names the metric (W&B's Sweep.config); the server is the one stand-in."""
    import lib.runs

    class SweepApi(FakeApi):
        def sweep(self, path):
            sweep = super().sweep(path)
            sweep.config = {"method": "grid", "metric": {"name": "test_loss", "goal": "minimize"}}
            return sweep

    api = SweepApi([FakeRun(rid, "finished", {"model": "resnet18", "strategy": st, "lr": 1e-3},
                            {**summ(val, 100), "test_loss": loss}, [])
                    for rid, st, val, loss in (("w_val", "full", 0.95, 0.9), ("w_loss", "freeze", 0.8, 0.2))])
    monkeypatch.setattr(lib.runs, "public_api", lambda: api)
    code, out, err = cli(["report", "ent/proj/sw1", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert "run `w_loss`" in out
    assert "selection metric: `test_loss` (minimize)" in (tmp_path / "r" / "report.md").read_text()


def test_a_wandb_sweep_without_a_goal_is_ranked_as_wandb_ran_it_and_the_report_says_so(tmp_path, capsys, monkeypatch):
    """W&B minimizes a metric whose sweep names no goal (its schema's default): the report ranks the runs the
    same way, and its reviewer says so, loudly, for an accuracy (the search looked for the worst runs)."""
    import lib.runs

    api = FakeApi([FakeRun(rid, "finished", {"model": "resnet18", "strategy": st, "lr": 1e-3}, summ(val, 100), [])
                   for rid, st, val in (("w_high", "full", 0.95), ("w_low", "freeze", 0.80))],
                  config={"method": "bayes", "metric": {"name": "best_val_acc"}})
    runs, meta = lib.runs.read_wandb("ent/proj/sw2", api=api)
    assert meta == {"metric": "best_val_acc", "goal": "minimize", "goal_defaulted": True}
    monkeypatch.setattr(lib.runs, "public_api", lambda: api)
    code, out, err = cli(["report", "ent/proj/sw2", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "run `w_low`" in out and "selection metric: `best_val_acc` (minimize)" in md
    assert "has no goal: W&B minimized it (its default)" in md   # the page keeps & as written (no entity)
    res = build_report(runs, tmp_path / "r2", sweep=meta)
    (warning,) = [w for w in res["warning_details"] if w["kind"] == "goal"]
    assert warning == {"level": "critical", "kind": "goal", "text": (
        "the W&B sweep's metric `best_val_acc` has no goal: W&B minimized it (its default) and this report ranks "
        "the runs the same way; but higher `best_val_acc` is better, so its search looked for the worst runs: add "
        "`goal: maximize` to the sweep and run it again")}
    named = build_report(runs, tmp_path / "r3", sweep={**meta, "goal": "maximize", "goal_defaulted": False})
    assert named["best_run_id"] == "w_high" and not [w for w in named["warning_details"] if w["kind"] == "goal"]


@pytest.mark.parametrize("case, message", ids=["missing", "empty", "a file", "metric typo"], argvalues=[
    ("missing", r"^error: no such folder: .*missing"),
    ("empty", r"^error: no runs in .*empty: expected a sweep dir"),
    ("a file", r"^error: .*run\.json is a file, not a folder"),
    ("metric typo", r"^error: unknown metric 'test_los' \(did you mean 'test_loss'\?\): "
                    r"the runs record .*best_val_acc"),
])
def test_report_bad_input_is_one_line_and_keeps_the_earlier_report(tmp_path, capsys, case, message):
    root = two_metric_sweep(tmp_path / "sweep", {"metric": "test_loss", "goal": "minimize"})
    out = tmp_path / "report"
    assert cli(["report", root, "--out", out], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    source = {"missing": tmp_path / "missing", "empty": tmp_path / "empty",
              "a file": root / "runs" / "by_val" / "run.json", "metric typo": root}[case]
    extra = ["--metric", "test_los"] if case == "metric typo" else []
    code, stdout, err = cli(["report", source, "--out", out, *extra], capsys)
    assert code == 2 and len(err) == 1 and re.match(message, err[0]), err
    assert stdout == "" and {p.name: p.read_bytes() for p in out.iterdir()} == before   # not touched
    assert not (tmp_path / "empty" / "report").exists()


HOSTILE_CLASSES = ["=HYPERLINK(\"http://x\",\"y\")", "a|b", "<img src=x onerror=alert(1)>", "line\nbreak",
                   "cost $\\frac{ $"]


def test_names_from_records_are_data_not_markup(tmp_path):
    """Run, model and class names and errors come from records anyone can edit: in runs.csv they are
    never formulas, in report.md they stay one cell of one row and never HTML, in report.html text."""
    import csv
    from html.parser import HTMLParser

    runs = tmp_path / "runs"
    for rid, model, val in (("=1+2", "-2+3+cmd|' /C calc'!A0", 0.9), ("run|<b>x", "@SUM(A1)", 0.8)):
        d = write_run(runs, rid, config={"model": model, "strategy": "full", "lr": val / 100, "=1+1": "x"},
                      summary={**summ(val, 100, gap=-0.02)}, y_pred=wrong(25))
        rec = json.loads((d / "run.json").read_text())
        (d / "run.json").write_text(json.dumps({**rec, "classes": HOSTILE_CLASSES, "name": "+name\r"}))
    write_run(runs, "dead", state="failed", config={"model": "m"}, error="=cmd|' /C calc'!A0\n<script>x</script>")
    res = build_report(runs, tmp_path / "out")
    assert res["best_run_id"] == "=1+2"

    with open(tmp_path / "out" / "runs.csv", newline="") as f:
        rows = list(csv.reader(f))
    cells = [c for row in rows for c in row]
    assert "'=1+1" in rows[0]                                                    # a config key is a header cell
    risky = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert risky and all(re.fullmatch(r"-[\d.e-]+", c) for c in risky), risky    # only negative numbers
    assert "'-2+3+cmd|' /C calc'!A0" in cells and "'=1+2" in cells and "'@SUM(A1)" in cells
    assert "-0.02" in cells                                                      # numbers stay numbers

    md = (tmp_path / "out" / "report.md").read_text()
    from markdown_it import MarkdownIt

    shown = MarkdownIt("commonmark").enable("table").render(md)            # as a Markdown viewer renders it
    assert "<script" not in shown and "<b>" not in shown
    assert all(re.fullmatch(r'<img src="\w+\.png" alt="[^"<>]*" />', tag) for tag in re.findall(r"<img[^>]*>", shown))
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown                    # the class name, as text
    for block in re.findall(r"(?:^\|.*\|$\n?)+", md, flags=re.M):                 # every table keeps its columns
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(widths) == 1, block
    assert "| line break |" in md and "a\\|b" in md

    class Tags(HTMLParser):
        found: list = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, dict(attrs)))

    page = (tmp_path / "out" / "report.html").read_text()
    parser = Tags()
    parser.feed(page)
    assert not any(t == "script" or "onerror" in a for t, a in parser.found)
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in parser.found if t == "img")
    assert "run|&lt;b&gt;x" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "confusion_matrix" in res["plots"]        # drawn with the class names, `$` and all, as plain text


def test_out_of_range_predicted_labels_are_left_out_with_a_warning(tmp_path):
    """A damaged or edited record: labels outside the classes (negative, huge, not a number) must not
    crash the report nor land in another class's cell (-1 would index the last column)."""
    from lib.report.build import _confusion

    y_pred = wrong(10)
    y_pred[0], y_pred[30], y_pred[60], y_pred[90] = -1, 10 ** 12, 5, "x"
    d = write_run(tmp_path / "runs", "bad", config={"model": "resnet18", "strategy": "full", "lr": 1e-3},
                  summary=summ(0.9, 115), y_pred=y_pred)
    cm, classes, dropped = _confusion(json.loads((d / "run.json").read_text()))
    assert classes == CLASSES and cm.shape == (5, 5) and dropped == 4 and cm.sum() == 121
    assert cm[0, 4] == 0 and cm[0].sum() == 24                  # beagle row: the -1 is in no cell
    res = build_report(tmp_path / "runs", tmp_path / "out")
    assert any("4 test prediction(s) with a label outside its 5 classes" in w for w in res["warnings"])
    assert "confusion_matrix" in res["plots"]
    assert "| beagle | " in (tmp_path / "out" / "report.md").read_text()


def test_holm_adjusts_for_the_configurations_the_winner_was_picked_from(tmp_path):
    """Raw McNemar p = 2/64 against the runner-up would say "distinguishable"; the winner was compared
    with 3 configurations, two of them close on test: Holm's p = 3 x 2/64 > 0.05, so trust is not HIGH."""
    from lib.report.stats import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])          # step-down, monotone
    runs = tmp_path / "runs"
    for run_id, lr, val, pred in (("win", 0.1, 0.95, wrong(2)), ("run", 0.01, 0.93, wrong(8)),
                                  ("r1", 0.001, 0.90, wrong(4, offset=50)), ("r2", 0.0001, 0.89, wrong(3, offset=60))):
        write_run(runs, run_id, config={"model": "resnet18", "strategy": "full", "lr": lr},
                  summary=summ(val, 125 - sum(a != b for a, b in zip(pred, Y_TRUE, strict=True))), y_pred=pred)
    res = build_report(runs, tmp_path / "out")
    assert res["runner_up_id"] == "run" and res["mcnemar"]["p_value"] == pytest.approx(2 / 64)
    assert res["mcnemar"]["comparisons"] == 3 and res["mcnemar"]["p_holm"] == pytest.approx(3 * 2 / 64)
    verdict = res["verdict"]
    assert "Holm-corrected for 3 comparisons p = 0.0938" in verdict and "Trust: LOW" in verdict


# ---------------------------------------------------------------- imbalanced classes
IMBALANCED = {"train": [400, 100, 100, 100, 100], "val": [80, 20, 20, 20, 20], "test": [25] * 5}


def imbalanced_runs(root: Path, counts=IMBALANCED, y_true=Y_TRUE) -> Path:
    """Two configurations on 4:1 data: `acc` wins on accuracy by leaning on the big class, `bal` on balanced
    accuracy."""
    for rid, model, val, bal, k, t_bal, t_mcc in (("acc", "resnet18", 0.86, 0.55, 104, 0.58, 0.31),
                                                  ("bal", "mobilenetv2_100", 0.80, 0.79, 100, 0.80, 0.62)):
        write_run(root, rid, config={"model": model, "strategy": "freeze", "lr": 0.01, "monitor": "val_acc"},
                  summary={**summ(val, k), "best_val_balanced_acc": bal, "test_balanced_acc": t_bal, "test_mcc": t_mcc},
                  y_pred=wrong(125 - k), y_true=y_true, history=curve(val_acc=val),
                  extra={"class_counts": counts} if counts else {})
    return root


@pytest.mark.parametrize("metric, winner, flagged", [("best_val_acc", "acc", True), ("val_acc", "acc", True),
                                                     ("best_val_balanced_acc", "bal", False)])
def test_imbalanced_classes_ranked_by_plain_accuracy_are_flagged(tmp_path, metric, winner, flagged):
    res = build_report(imbalanced_runs(tmp_path / "runs"), tmp_path / "out", metric=metric)
    warned = [w["text"] for w in res["warning_details"] if w["kind"] == "imbalance"]
    assert res["best_run_id"] == winner and len(warned) == int(flagged)
    if flagged:
        assert warned[0].startswith("classes are imbalanced 4.0:1 in train (beagle=400, boxer=100, german_shepherd=100")
        assert f"plain accuracy `{metric}`: predicting `beagle` for every image scores 50.0%" in warned[0]
        assert "select on `best_val_balanced_acc`" in warned[0] and "`monitor=val_balanced_acc`" in warned[0]
    md = (tmp_path / "out" / "report.md").read_text()
    comparison = md[md.index("## Comparison"):md.index("## All finished runs")]
    every_run = md[md.index("## All finished runs"):md.index("## Seeds")]
    for table in (comparison, every_run):
        assert "| test bal acc | test MCC |" in table and "| 80.0% | 0.620 |" in table and "| 58.0% | 0.310 |" in table


def test_imbalance_is_read_from_the_test_labels_when_the_record_has_no_counts(tmp_path):
    """A run read from W&B has its test labels (test_y_true) but no class counts; balanced data is not flagged."""
    skewed = [0] * 75 + [1] * 20 + [2] * 10 + [3] * 10 + [4] * 10
    res = build_report(imbalanced_runs(tmp_path / "skewed", counts=None, y_true=skewed), tmp_path / "out")
    (text,) = [w["text"] for w in res["warning_details"] if w["kind"] == "imbalance"]
    assert text.startswith("classes are imbalanced 7.5:1 in test (beagle=75, boxer=20,")
    res = build_report(imbalanced_runs(tmp_path / "even", counts=None), tmp_path / "out2")
    assert not [w for w in res["warning_details"] if w["kind"] == "imbalance"]
    assert not [w for w in build_report(tmp_path / "even", tmp_path / "out3", metric="best_val_acc")["warning_details"]
                if w["kind"] == "imbalance"]


# ---------------------------------------------------------------- the recommendation as a result
def test_report_json_holds_the_verdict_and_the_recommended_run(tmp_path, capsys):
    """A tie on the test set (Holm p > 0.05): trust LOW, and the cheaper of the top two is the run to ship,
    in report.json as in the verdict's "prefer the cheaper"; a clear lead: the winner."""
    runs = tmp_path / "runs"
    for run_id, lr, seed, val, pred, size in (("win", 0.1, 42, 0.95, wrong(2), 90.0),
                                              ("win-s2", 0.1, 43, 0.94, wrong(2), 90.0),
                                              ("run", 0.01, 42, 0.93, wrong(8), 10.0),
                                              ("r1", 0.001, 42, 0.90, wrong(4, offset=50), 5.0),
                                              ("r2", 0.0001, 42, 0.89, wrong(3, offset=60), 5.0)):
        write_run(runs, run_id, config={"model": "resnet18", "strategy": "full", "lr": lr, "seed": seed},
                  summary=summ(val, 125 - sum(a != b for a, b in zip(pred, Y_TRUE, strict=True)), size=size),
                  y_pred=pred)
    code, out, err = cli(["report", runs, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["verdict"]["winner"] == "win" and saved["verdict"]["runner_up"] == "run"
    assert saved["verdict"]["trust"] == "LOW" and saved["verdict"]["p"]["raw"] == pytest.approx(2 / 64)
    assert saved["verdict"]["p"]["holm"] == pytest.approx(3 * 2 / 64)
    assert "treat as a tie and prefer the cheaper `run`" in " ".join(saved["verdict"]["text"])
    assert saved["recommended"]["run_id"] == "run" and "a tie, and `run` is the cheaper (10.0 MB" in \
        saved["recommended"]["reason"]
    (group,) = saved["seeds"]
    assert group["run_ids"] == ["win", "win-s2"] and group["best_val_acc_mean"] == pytest.approx(0.945)
    assert [r["run_id"] for r in saved["ranking"]] == ["win", "win-s2", "run", "r1", "r2"]
    assert f"recommended: run run: {saved['recommended']['reason']}" in out.splitlines()
    assert "Recommended: `run`" in (tmp_path / "out" / "report.md").read_text()

    # the same network at the same cost to ship, trained 5x longer (a planned study's last run against its
    # shorter rung): the time is spent, so the tie keeps the winner
    same = tmp_path / "same"
    for run_id, epochs, val, pred, t in (("long", 27, 0.95, wrong(2), 500.0), ("short", 9, 0.94, wrong(4), 100.0)):
        write_run(same, run_id, config={"model": "mobilenetv2_100", "strategy": "surgical", "epochs": epochs},
                  summary=summ(val, 125 - sum(a != b for a, b in zip(pred, Y_TRUE, strict=True)), t=t), y_pred=pred)
    res = build_report(same, tmp_path / "same_out")
    saved = json.loads((tmp_path / "same_out" / "report.json").read_text())
    assert saved["verdict"]["trust"] == "LOW" and saved["recommended"]["run_id"] == "long"
    assert "both cost the same to ship (10.0 MB, 1.00M trainable parameters): the winner stands" in \
        saved["recommended"]["reason"]
    assert "so the winner `long` stands" in " ".join(saved["verdict"]["text"])

    clear = tmp_path / "clear"
    for run_id, lr, val, pred in (("good", 0.1, 0.95, wrong(0)), ("bad", 0.01, 0.70, wrong(40))):
        write_run(clear, run_id, config={"model": "resnet18", "strategy": "full", "lr": lr},
                  summary=summ(val, 125 - sum(a != b for a, b in zip(pred, Y_TRUE, strict=True))), y_pred=pred)
    res = build_report(clear, tmp_path / "clear_out")
    saved = json.loads((tmp_path / "clear_out" / "report.json").read_text())
    assert saved["verdict"]["trust"] == res["trust"] == "MEDIUM" and "Trust: MEDIUM" in res["verdict"]
    assert saved["recommended"] == res["recommended"] and saved["recommended"]["run_id"] == "good"
    assert saved["recommended"]["reason"].startswith("the best best_val_acc (maximize) of 2 finished run(s), "
                                                     "0.9500; trust MEDIUM: small test set")
