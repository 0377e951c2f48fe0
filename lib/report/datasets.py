"""What the data behind a sweep's runs says about comparing them: runs trained on different datasets
(another data_dir or class list) are no rivals, and a class that no val or test image stands for is
not measured by the metrics that average over classes."""
from __future__ import annotations

import json
import os

import pandas as pd

Warning = tuple[str, str, str]   # (level, kind, text), as Review.warn takes them


def data_keys(runs: list[dict]) -> list[str]:
    """What each run was trained on, as one comparable text: its data_dir and class list. A run that
    recorded no classes (read from W&B) counts as the one dataset of its data_dir that did, if there is one."""
    def key(data_dir, classes):
        return json.dumps([data_dir, classes])

    found = [(os.path.normpath(str(d)) if (d := (r.get("config") or {}).get("data_dir")) else None,
              [str(c) for c in r["classes"]] if isinstance(r.get("classes"), list) else None) for r in runs]
    named: dict = {}
    for data_dir, classes in found:
        if classes is not None:
            named.setdefault(data_dir, set()).add(key(data_dir, classes))
    return [key(d, c) if c is not None or len(named.get(d, ())) != 1 else next(iter(named[d])) for d, c in found]


def one_dataset(fin: pd.DataFrame) -> tuple[pd.DataFrame, dict | None, list[dict]]:
    """The finished runs (best first) of one dataset, to rank: the dataset with the most of them (a tie:
    the best run's); and each dataset as {"data_dir", "classes", "run_ids"}: the ranked one, the others."""
    def describe(key, g):
        data_dir, classes = json.loads(key)
        return {"data_dir": data_dir, "classes": classes, "run_ids": g["run_id"].tolist()}

    groups = list(fin.groupby("_data", sort=False))   # in order of their best run
    if len(groups) < 2:
        return fin, (describe(*groups[0]) if groups else None), []
    main = max(groups, key=lambda kg: len(kg[1]))
    return main[1], describe(*main), [describe(k, g) for k, g in groups if k != main[0]]


def _dataset(d: dict) -> str:
    classes = d["classes"]
    names = "" if classes is None else \
        f" ({len(classes)} classes: {', '.join(classes[:6])}{', …' if len(classes) > 6 else ''})"
    return f"`{d['data_dir'] or '?'}`{names}"


def other_data(ranked: dict | None, others: list[dict]) -> list[Warning]:
    """One CRITICAL line when finished runs of other datasets were left out of the ranking."""
    if not others:
        return []
    left = "; ".join(f"{len(d['run_ids'])} on {_dataset(d)}: " + ", ".join(f"`{i}`" for i in d["run_ids"][:6])
                     + (" …" if len(d["run_ids"]) > 6 else "") for d in others)
    return [("critical", "other_data",
             f"the finished runs were trained on {len(others) + 1} different datasets, and scores on different data "
             f"are not comparable: only the {len(ranked['run_ids'])} run(s) on {_dataset(ranked)} are ranked here; "
             f"left out: {left} (report each dataset's runs from a folder of their own)")]


def unmeasured_classes(by_id: dict[str, dict], fin: pd.DataFrame) -> list[Warning]:
    """A class with no val or no test image (one image in all, say) and what that does to the metrics,
    which an imbalance ratio alone does not say. Read from the best run that recorded its class counts."""
    run = next((by_id[i] for i in fin["run_id"] if isinstance(by_id[i].get("class_counts"), dict)
                and isinstance(by_id[i].get("classes"), list)), None)
    if run is None:
        return []
    names, counts = run["classes"], run["class_counts"]
    splits = {sp: c for sp in ("train", "val", "test")
              if isinstance(c := counts.get(sp), list) and len(c) == len(names)}
    missing = {i: where for i in range(len(names)) if (where := [sp for sp in ("val", "test")
                                                                  if sp in splits and splits[sp][i] == 0])}
    no_test = sum("test" in where for where in missing.values())
    out = []
    for i, where in missing.items():
        held = ", ".join(f"{sp} {splits[sp][i]}" for sp in splits)
        effects = []
        if "val" in where:
            effects.append("validation never sees it, so neither the kept epoch nor early stopping weighs it")
        if "test" in where:
            effects.append(f"the test set cannot measure it: its test precision, recall and F1 are 0 by convention "
                           "(support 0), not measured, which caps macro F1 at "
                           f"{(len(names) - no_test) / len(names):.3f} "
                           "for every run, while test balanced accuracy leaves it out")
        out.append(("warning", "unmeasured_class",
                    f"class `{names[i]}` has no {' and no '.join(where)} image ({sum(splits[sp][i] for sp in splits)} "
                    f"image(s) in all: {held}): " + "; ".join(effects) + " — add images of it, or leave the class out"))
    return out
