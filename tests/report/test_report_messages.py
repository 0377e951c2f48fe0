"""The report says what happened (issue 22): a run is credited only with the keys its strategy reads, a
soup is a candidate and no level of a parameter, runs of other data are not ranked with the rest, a class
no val/test image stands for is named with what that does to the metrics, and the wording says what was
counted (training time, whose 100%), in Markdown that reads as written and a plot whose labels can be read."""
import json
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from lib.report import build_report, load_local
from lib.report.expected import expected_best
from lib.report.plots import tradeoff_figure
from lib.report.table import run_table
from tests.report.guide import curve, summ, write_run, wrong


def _strategy_runs(root: Path) -> Path:
    """A recipe grid: freeze never sets backbone_lr_mult (default 0.1), partial sets 0.01; freeze wins."""
    for rid, strategy, lr, mult, seed, val, k in (("f1", "freeze", 0.01, 0.1, 42, 0.95, 118),
                                                  ("f3", "freeze", 0.01, 0.5, 43, 0.94, 117),
                                                  ("f2", "freeze", 0.001, 0.1, 42, 0.93, 115),
                                                  ("p1", "partial", 0.01, 0.01, 42, 0.90, 112),
                                                  ("p2", "partial", 0.001, 0.01, 42, 0.88, 110)):
        write_run(root, rid, config={"model": "resnet18", "strategy": strategy, "lr": lr, "backbone_lr_mult": mult,
                                     "seed": seed}, summary=summ(val, k), y_pred=wrong(125 - k),
                  history=curve(val_acc=val))
    return root


def test_a_run_is_credited_only_with_the_keys_its_strategy_reads(tmp_path):
    res = build_report(_strategy_runs(tmp_path / "runs"), tmp_path / "out")
    assert res["verdict"].startswith("Winner: **resnet18 / freeze** (lr=0.01), run `f1`")   # no backbone_lr_mult
    assert "Runner-up: **resnet18 / freeze** (lr=0.001)" in res["verdict"]
    assert {x["key"] for x in res["importance"]} == {"strategy", "lr"}      # not ranked from freeze vs partial
    (group,) = res["seed_groups"]   # f1 and f3 differ only in what freeze ignores
    assert sorted(group["run_ids"]) == ["f1", "f3"] and group["config"] == {"strategy": "freeze", "lr": 0.01}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "backbone_lr_mult" not in md[md.index("## Verdict"):md.index("## Swept parameters")]
    assert "| backbone_lr_mult |" not in md


def test_a_soup_is_a_candidate_not_a_level(tmp_path):
    root = _strategy_runs(tmp_path / "runs")
    write_run(root, "soup", config={"model": "resnet18", "strategy": "soup", "lr": 0.01, "backbone_lr_mult": 0.1,
                                    "seed": 42, "soup": "f1+f3"}, summary=summ(0.96, 119), y_pred=wrong(6),
              extra={"soup": {"ingredients": ["f1", "f3"], "steps": [], "best_single": "f1"}})
    res = build_report(root, tmp_path / "out")
    assert res["best_run_id"] == "soup"
    assert res["verdict"].startswith("Winner: **resnet18 / soup** (of f1, f3), run `soup`")
    strategy = next(x for x in res["importance"] if x["key"] == "strategy")
    assert strategy["direction"] == "best level: freeze" and strategy["levels"] == 2 and strategy["n"] == 5
    assert res["soups"] and res["soups"][0]["best_single"] == "f1"         # still compared with its best ingredient
    assert res["expected_best"] == expected_best([0.95, 0.94, 0.93, 0.90, 0.88])   # a soup is no trial of the study


def test_runs_of_different_data_are_not_ranked_together(tmp_path):
    root = tmp_path / "runs"
    for rid, val, k in (("dogs1", 0.90, 112), ("dogs2", 0.85, 106), ("dogs3", 0.80, 100)):
        write_run(root, rid, config={"model": "resnet18", "strategy": "freeze", "lr": val / 100},
                  summary=summ(val, k), y_pred=wrong(125 - k))
    cats = ["lion", "tiger", "lynx"]
    for rid, val in (("cats1", 0.99), ("cats2", 0.97)):
        write_run(root, rid, config={"model": "resnet18", "strategy": "full", "lr": val / 100, "data_dir": "data/cats"},
                  summary=summ(val, 29, n=30), y_true=[i % 3 for i in range(30)], y_pred=[i % 3 for i in range(30)],
                  split_test=[f"c{i}" for i in range(30)], extra={"classes": cats})
    res = build_report(root, tmp_path / "out")
    assert res["best_run_id"] == "dogs1" and res["runner_up_id"] == "dogs2"    # cats1 (0.99) is not a rival
    assert res["expected_best"] == expected_best([0.90, 0.85, 0.80])          # nor a trial of this study
    (warning,) = [w for w in res["warning_details"] if w["kind"] == "other_data"]
    assert warning["level"] == "critical" and res["warning_details"][0] == warning
    assert "trained on 2 different datasets" in warning["text"]
    assert "only the 3 run(s) on `data/dogs` (5 classes: beagle, boxer" in warning["text"]
    assert "left out: 2 on `data/cats` (3 classes: lion, tiger, lynx): `cats1`, `cats2`" in warning["text"]
    assert [d["run_ids"] for d in res["other_data"]] == [["cats1", "cats2"]]
    ranks = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")["rank"]
    assert ranks["dogs1"] == 1 and ranks[["cats1", "cats2"]].isna().all()


def test_a_class_without_val_or_test_images_is_named_with_what_that_does(tmp_path):
    """46:1 was all the report said of a class whose one image landed in train."""
    classes = ["zero", "one", "seven"]
    counts = {"train": [46, 46, 1], "val": [10, 10, 0], "test": [10, 10, 0]}
    y = [0] * 10 + [1] * 10
    per_class = [{"class": c, "precision": p, "recall": p, "f1": p, "support": n}
                 for c, p, n in (("zero", 1.0, 10), ("one", 1.0, 10), ("seven", 0.0, 0))]
    for rid, lr in (("a", 0.01), ("b", 0.001)):
        write_run(tmp_path / "runs", rid, config={"model": "resnet18", "strategy": "freeze", "lr": lr},
                  summary={**summ(1.0 if rid == "a" else 0.95, 20, n=20), "test_f1_macro": 0.667}, y_true=y, y_pred=y,
                  split_test=[f"t{i}" for i in range(20)],
                  extra={"classes": classes, "class_counts": counts, "per_class": per_class})
    res = build_report(tmp_path / "runs", tmp_path / "out")
    (text,) = [w["text"] for w in res["warning_details"] if w["kind"] == "unmeasured_class"]
    assert text.startswith("class `seven` has no val and no test image (1 image(s) in all: train 1, val 0, test 0)")
    assert "validation never sees it" in text and "caps macro F1 at 0.667" in text
    assert "test balanced accuracy leaves it out" in text
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Support 0 (seven): no test image of the class" in md


def test_training_time_says_what_it_counted(tmp_path):
    """A tie: the verdict prefers the cheaper run (the head alone trained), and said `0 s of training` of a
    freeze run that took 9 s."""
    for rid, strategy, t, wall, trained in (("frz", "freeze", 0.4, 9.2, 1.3e4), ("prt", "partial", 30.0, 41.0, 1e6)):
        write_run(tmp_path / "runs", rid, config={"model": "mobilenetv2_100", "strategy": strategy, "lr": 0.01},
                  summary=summ(0.9, 110, t=t, size=9.0, trainable=trained), y_pred=wrong(15),
                  extra={"wall_time_s": wall})
    res = build_report(tmp_path / "runs", tmp_path / "out")
    assert "prefer the cheaper `frz`" in res["verdict"]
    assert "0.4 s in its training epochs, 9.2 s wall clock for the whole run" in res["verdict"]
    assert "s of training" not in res["verdict"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| train s | wall s |" in md and "| 0.4 | 9.2 |" in md


def test_the_100_percent_line_names_its_runs_and_markdown_reads_as_written(guide_report):
    res, out = guide_report
    assert ("Runs `r50_freeze`, `r50_partial`, `r50_full` score 100% test accuracy on n=125, which only shows "
            "≥ 97.0% at 95% confidence.") in res["verdict"]
    md = (out / "report.md").read_text()
    assert "&gt;" not in md and "&lt;" not in md and "points > 10)" in md   # the overfitting line, as written
    page = MarkdownIt("commonmark").enable("table").render(md)             # and as a Markdown viewer shows it
    assert "points &gt; 10)" in page and "&amp;gt;" not in page


DEMO_LIKE = (("mobilenetv2_100", "full", 0.935, 8.7), ("mobilenetv2_100", "partial", 0.934, 8.7),
             ("mobilenetv2_100", "two_phase", 0.928, 8.7), ("mobilenetv2_100", "freeze", 0.907, 8.7),
             ("mobilenetv2_100", "surgical", 0.901, 8.7), ("small_cnn", "full", 0.705, 1.6))


@pytest.mark.parametrize("runs", [
    tuple(("mobilenetv2_100", s, v, 8.7) for s, v in (("freeze", 0.900), ("partial", 0.905), ("full", 0.910),
                                                      ("two_phase", 0.912), ("surgical", 0.60))),
    DEMO_LIKE], ids=["one-size", "demo"])
def test_tradeoff_labels_do_not_overlap_and_stay_in_the_picture(tmp_path, runs):
    """Runs of one model sit at one size: their labels were drawn over each other. In the demo's report
    the best run sat at the right edge, and its label ran out of the picture."""
    for i, (model, strategy, val, size) in enumerate(runs):
        write_run(tmp_path / "runs", f"r{i}", config={"model": model, "strategy": strategy, "lr": 0.01},
                  summary=summ(val, 110, size=size), y_pred=wrong(15))
    s = run_table(load_local(tmp_path / "runs"), "best_val_acc", "maximize", {})
    fig = tradeoff_figure(s.fin, "best_val_acc", True, False)
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    (ax,) = fig.axes
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}
    crossing = [(a, b) for a in boxes for b in boxes if a < b and boxes[a].overlaps(boxes[b])]
    assert crossing == []
    outside = [t for t, b in boxes.items() if not (ax.bbox.x0 <= b.x0 and b.x1 <= ax.bbox.x1
                                                    and ax.bbox.y0 <= b.y0 and b.y1 <= ax.bbox.y1)]
    assert outside == []
    assert json.dumps(sorted(boxes)) == json.dumps(sorted(f"{m}/{x}" for m, x, _, _ in runs))


@pytest.mark.parametrize("text, shown", [("gap 35.0 points > 10", "gap 35.0 points > 10"),
                                         ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
                                         ("\\<b>x</b>", "\\<b>x</b>"), ("&lt;b&gt;", "&lt;b&gt;"),
                                         ("> not a quote", "> not a quote")])
def test_markdown_text_renders_as_written_and_never_as_html(text, shown):
    from html import unescape

    from lib.cells import md_cell, md_text

    html = MarkdownIt("commonmark").enable("table").render(md_text(text))
    assert html.startswith("<p>") and unescape(html[3:-5]) == shown and "<img" not in html and "<b>" not in html
    cell = MarkdownIt("commonmark").enable("table").render(f"| h |\n|---|\n| {md_cell(text + '|x')} |\n")
    assert unescape(cell.split("<td>")[1].split("</td>")[0]) == shown + "|x"
