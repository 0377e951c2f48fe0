"""Greedy model soups (Wortsman et al., ICML 2022, "Model soups"): average the weights of fine-tuned
runs that started from the same pretrained weights, adding each run, best first by validation
accuracy, only if the average does not lose validation accuracy. The soup is written as a normal run
record (``run.json`` + ``model.safetensors``), so ``report`` and ``export`` take it as a candidate.

Runs share a soup when they have the same architecture, initial weights, classes, preprocessing and
data split: averaging weights is only meaningful between fine-tunes of one starting point.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lib.errors import ExportError
from lib.files import read_json, run_lock
from lib.records import RUN_FILE, SWEEP_META, SWEEP_RUNS, WEIGHTS_FILE, RunRecord, RunSummary, State
from lib.runs import load_local
from lib.train.restore import data_root, decode_recorded, eval_batches, load_run_model


def _family(rec: dict) -> tuple:
    """What runs must share to be averaged."""
    cfg, source = rec["config"], rec.get("weights_source") or {}
    start = source.get("file") or f"random init, seed {cfg.get('seed')}"   # seeds differ: no common start
    return (cfg["model"], source.get("kind"), start, tuple(rec["classes"]),
            repr(rec["data_config"]), repr(rec.get("split")))


def ingredients(source: str | Path) -> list[dict]:
    """The finished runs of the best run's family, best validation accuracy first."""
    runs = [r for r in load_local(source) if r.get("state") == State.FINISHED and not r.get("soup")
            and (Path(r["dir"]) / WEIGHTS_FILE).is_file() and (r.get("summary") or {}).get("best_val_acc") is not None]
    if not runs:
        raise ExportError(f"{source}: no finished runs with weights to make a soup of")
    runs.sort(key=lambda r: r["summary"]["best_val_acc"], reverse=True)
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


def greedy_soup(source: str | Path, out_dir: str | Path, data_dir: str | None = None) -> dict:
    """Make the soup, score it on validation and test, and write it as a run record in ``out_dir``;
    when no other run improves on the best one's validation accuracy, write nothing (``id`` None).
    The soup's folder is held as a trainer holds its run's (lib.files.run_lock): one writer at a time."""
    out = Path(out_dir)
    check_out(out)
    with run_lock(out):
        check_out(out)   # as it is now that no one else writes it
        return _greedy(source, out, data_dir)


def _greedy(source: str | Path, out: Path, data_dir: str | None) -> dict:
    started = time.time()
    runs = ingredients(source)
    model, best = load_run_model(runs[0]["dir"])
    root = data_root(data_dir or best["config"]["data_dir"], Path(runs[0]["dir"]))
    val = eval_batches(decode_recorded(best, "val", root)[0], best["data_config"])
    states = [load_file(Path(r["dir"]) / WEIGHTS_FILE) for r in runs]
    kept, steps, score = [0], [], _evaluate(model, val)["acc"]
    steps.append({"run_id": runs[0]["id"], "val_acc": score, "added": True})
    for i in range(1, len(runs)):
        model.load_state_dict(average([states[j] for j in kept + [i]]))
        acc = _evaluate(model, val)["acc"]
        added = acc >= score
        steps.append({"run_id": runs[i]["id"], "val_acc": acc, "added": added})
        if added:
            kept, score = kept + [i], acc
    if len(kept) == 1:   # the best run alone: a copy of it would only tie with it in every report
        return {"id": None, "soup": {"ingredients": [runs[0]["id"]], "steps": steps, "best_single": runs[0]["id"]}}
    soup = average([states[j] for j in kept])
    model.load_state_dict(soup)
    return _write(model, soup, best, runs, kept, steps, score, root, out, time.time() - started)


def _write(model, soup, best, runs, kept, steps, val_acc, root, out: Path, seconds: float) -> dict:
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
    summary = RunSummary(best_val_acc=val_acc, **test_summary, total_params=total,
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
                  soup={"ingredients": names, "steps": steps, "best_single": runs[0]["id"]},
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return record.data
