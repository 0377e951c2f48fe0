"""Greedy model soups (Wortsman et al., ICML 2022, "Model soups"): average the weights of fine-tuned
runs that started from the same pretrained weights, adding each run, best first by the kit's selection
(lib.selection), only if the average does not lose its validation score (VAL_SCORES). The soup is written
as a normal run record (``run.json`` + ``model.safetensors``), so ``report`` and ``export`` take it as a
candidate.

Runs share a soup when they have the same architecture, initial weights, classes, preprocessing and
data split: averaging weights is only meaningful between fine-tunes of one starting point.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib.errors import ExportError
from lib.files import read_json, run_lock
from lib.records import LOCK_FILE, RUN_FILE, SWEEP_META, SWEEP_RUNS, WEIGHTS_FILE, RunRecord, RunSummary, State
from lib.selection import Selection, rank, selection
from lib.sources import resolve
from lib.train.restore import data_root, decode_recorded, eval_batches, load_run_model


def _family(rec: dict) -> tuple:
    """What runs must share to be averaged."""
    cfg, source = rec["config"], rec.get("weights_source") or {}
    start = source.get("file") or f"random init, seed {cfg.get('seed')}"   # seeds differ: no common start
    return (cfg["model"], source.get("kind"), start, tuple(rec["classes"]),
            repr(rec["data_config"]), repr(rec.get("split")))


# The validation score the greedy step keeps or drops an ingredient by: the selection metric's own where it
# has one on the validation set, else validation accuracy (a soup is never tuned on the test set).
VAL_SCORES = {"best_val_acc": ("acc", True), "val_acc": ("acc", True), "val_loss": ("loss", False),
              "best_val_balanced_acc": ("balanced_acc", True), "val_balanced_acc": ("balanced_acc", True)}


def _soupable(run: dict) -> bool:
    """A finished run whose record says what it is (from a database without its files: it does not)."""
    return run.get("state") == State.FINISHED and not run.get("soup") and isinstance(run.get("config"), dict) \
        and {"classes", "data_config"} <= set(run)


def ingredients(source, sel: Selection | None = None) -> list[dict]:
    """The finished runs of the best run's family, best first by the selection (``lib.selection``: the
    source's own metric by default)."""
    source = resolve(source)
    sel = sel or selection(source.meta())
    runs = rank([r for r in source.runs() if _soupable(r) and source.has_weights(r)], sel)
    if not runs:
        raise ExportError(f"{source.name}: no finished runs with {sel.metric} and weights to make a soup of")
    family = _family(runs[0])
    return [r for r in runs if _family(r) == family]


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of floating tensors (BatchNorm statistics included, as in the paper);
    integer bookkeeping (``num_batches_tracked``) is taken from the first."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def _evaluate(model: torch.nn.Module, batches) -> dict:
    from lib.train.training import Accel, evaluate

    accel = Accel(torch.device("cpu"), None, None, torch.contiguous_format)
    return evaluate(model, batches, accel)


def check_out(out: Path) -> None:
    """``--out`` is the soup's own run folder, new or an earlier soup's: never a run it would replace (one of
    its own ingredients: a fresh record deletes its metrics), a study, or a runs dir (a run.json at their
    root would hide every other run from report and export)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give the soup a folder of its own (e.g. SWEEP_DIR/runs/soup)")
    if not out.is_dir():
        return
    if (out / SWEEP_META).exists() or (out / SWEEP_RUNS).is_dir():
        raise ExportError(f"--out {out} holds a study (sweep.json or runs/): refused, the soup's run.json there "
                          f"would hide its runs; give the soup a folder of its own, e.g. {out / SWEEP_RUNS / 'soup'}")
    if (out / RUN_FILE).exists():
        try:
            record = read_json(out / RUN_FILE)
        except (OSError, ValueError):
            record = None
        if not (isinstance(record, dict) and record.get("soup")):
            what = f"run {record.get('id')}" if isinstance(record, dict) else "a run record"
            raise ExportError(f"--out {out} holds {what}, not an earlier soup: refused, the soup would replace "
                              f"it; give the soup a folder of its own, e.g. {out.parent / 'soup'}")
    elif any((child / RUN_FILE).is_file() for child in out.iterdir() if child.is_dir()):
        raise ExportError(f"--out {out} holds run folders (a runs dir): refused, the soup's run.json there "
                          f"would hide them; give the soup a folder of its own, e.g. {out / 'soup'}")


def greedy_soup(source, out_dir: str | Path, data_dir: str | None = None, sel: Selection | None = None) -> dict:
    """Make the soup, score it on validation and test, and write it as a run record in ``out_dir``;
    when no other run improves on the best one's validation score, write nothing (``id`` None). ``source``:
    any SOURCE (``lib.sources``); a run's weights are fetched from it when they are elsewhere.
    The soup's folder is held as a trainer holds its run's (lib.files.run_lock): one writer at a time."""
    out = Path(out_dir)
    check_out(out)
    with run_lock(out, LOCK_FILE):
        check_out(out)   # as it is now that no one else writes it
        return _greedy(source, out, data_dir, sel)


def _greedy(source, out: Path, data_dir: str | None, sel: Selection | None) -> dict:
    started = time.time()
    source = resolve(source)
    sel = sel or selection(source.meta())
    runs = ingredients(source, sel)
    key, higher = VAL_SCORES.get(sel.metric, ("acc", True))
    with tempfile.TemporaryDirectory(prefix="soup-") as tmp:
        folders = [source.fetch(r, Path(tmp) / str(r["id"])) for r in runs]
        model, best = load_run_model(folders[0])
        states = [load_file(folder / WEIGHTS_FILE) for folder in folders]
    root = data_root(data_dir or best["config"]["data_dir"], Path(runs[0].get("dir") or out))
    val = eval_batches(decode_recorded(best, "val", root)[0], best["data_config"])
    first = _evaluate(model, val)
    kept, scores, steps = [0], first, [_step(runs[0]["id"], first, True)]
    for i in range(1, len(runs)):
        model.load_state_dict(average([states[j] for j in kept + [i]]))
        found = _evaluate(model, val)
        added = found[key] >= scores[key] if higher else found[key] <= scores[key]
        steps.append(_step(runs[i]["id"], found, added))
        if added:
            kept, scores = kept + [i], found
    if len(kept) == 1:   # the best run alone: a copy of it would only tie with it in every report
        return {"id": None, "soup": {"ingredients": [runs[0]["id"]], "steps": steps, "best_single": runs[0]["id"],
                                     "by": f"val_{key}"}}
    soup = average([states[j] for j in kept])
    model.load_state_dict(soup)
    return _write(model, soup, best, runs, kept, steps, scores, root, out, time.time() - started, f"val_{key}")


def _step(run_id, scores: dict, added: bool) -> dict:
    return {"run_id": run_id, "val_acc": scores["acc"], "val_balanced_acc": scores["balanced_acc"],
            "val_loss": scores["loss"], "added": added}


def _write(model, soup, best, runs, kept, steps, val: dict, root, out: Path, seconds: float, by: str) -> dict:
    from lib.train.metrics import test_metrics

    test_decoded, _ = decode_recorded(best, "test", root)
    test = _evaluate(model, eval_batches(test_decoded, best["data_config"]))
    test_summary, per_class, cm = test_metrics(test, best["classes"])
    total = sum(p.numel() for p in model.parameters())
    names, used = [runs[j]["id"] for j in kept], [runs[j]["summary"] for j in kept]
    record = RunRecord(str(out.parent), out.name)
    record.start_fresh()
    weights = record.save_weights(soup)
    # What the soup cost: every ingredient's training, then the soup's own evaluations.
    summary = RunSummary(best_val_acc=val["acc"], best_val_balanced_acc=val["balanced_acc"], **test_summary,
                         total_params=total,
                         trainable_params=max(u.get("trainable_params") or 0 for u in used),
                         model_size_mb=round(weights.stat().st_size / 2**20, 3), epochs_run=0,
                         train_time_s=round(seconds + sum(u.get("train_time_s") or 0 for u in used), 2)).to_dict()
    record.update(id=out.name, name=f"soup-{len(kept)}-{best['config']['model']}", state=State.FINISHED,
                  # strategy `soup`: a configuration of its own in reports (model / soup), not a seed of the best
                  config={**best["config"], "run_id": out.name, "run_name": "", "strategy": "soup",
                          "soup": "+".join(names)},
                  summary=summary,
                  classes=best["classes"], split=best["split"], data_config=best["data_config"],
                  weights_source=best.get("weights_source"), per_class=per_class, confusion_matrix=cm,
                  test_predictions={"y_true": test["y_true"].tolist(), "y_pred": test["y_pred"].tolist()},
                  soup={"ingredients": names, "steps": steps, "best_single": runs[0]["id"], "by": by},
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return record.data
