"""The model card: what the exported model is, how it was trained, how well it does, its limits."""
from __future__ import annotations

import json
import math

from lib.cells import md_cell, md_code, md_text
from lib.config import RECIPE_KEYS
from lib.report.stats import wilson_interval
from lib.train.restore import preprocessing


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _params_line(summary: dict) -> str:
    total, trained = summary.get("total_params"), summary.get("trainable_params")
    if isinstance(total, int) and isinstance(trained, int):
        return f"- parameters: {total:,} total, {trained:,} trained"
    return "- parameters: n/a"


def model_card(result: dict, record: dict) -> str:
    cfg, s = record["config"], record.get("summary", {})
    counts = record.get("counts") or {k: len(v) for k, v in record.get("split", {}).items()}
    n_test = counts.get("test", 0)
    lo, hi = wilson_interval(None if s.get("test_acc") is None else s["test_acc"] * n_test, n_test)
    # The whole recipe as the config declares it (lib.config.RECIPE_KEYS), and the seed to repeat it.
    keys = [k for k in (*RECIPE_KEYS, "seed") if k not in ("model", "data_dir")]   # both are shown below
    lines = [
        f"# Model card: {md_text(cfg['model'])} ({len(record['classes'])} classes)", "",
        f"- run id: {md_code(record['id'])}" + (f" ({md_text(record['name'])})" if record.get("name") else ""),
        f"- backbone: {md_code(cfg['model'])}, initial weights: "
        f"{md_text(json.dumps(record.get('weights_source', cfg.get('weights'))))}",
        _params_line(s),
        f"- exported: {result['exported_at']} with the {result.get('exporter', 'n/a')} exporter "
        f"(ONNX opset {result.get('opset', 'n/a')})", "",
        "## Why this run", "",
        md_text(result.get("reason") or "exported as asked (export_run: no run was chosen)")
        + (f" (recommendation: {md_text(result['recommended_by'])})" if result.get("recommended_by") else ""), "",
        "## Training configuration", "",
        "| key | value |", "|---|---|",
        *[f"| {k} | {md_cell(cfg[k])} |" for k in keys if k in cfg], "",
        "## Classes", "", ", ".join(md_code(c) for c in record["classes"]), "",
        "## Data", "",
        f"- data folder: {md_code(cfg.get('data_dir'))}",
        f"- images: train {counts.get('train', 'n/a')}, val {counts.get('val', 'n/a')}, test {n_test}",
        f"- skipped as unusable during training: {len(record.get('skipped', []))}",
        *[f"- warning: {md_text(w)}" for w in record.get("warnings") or []], "",
        "## Metrics", "",
        "| metric | value |", "|---|---|",
        f"| best validation accuracy | {_fmt(s.get('best_val_acc'))} (epoch {s.get('best_epoch', 'n/a')}) |",
        f"| test accuracy (PyTorch, at training) | {_fmt(s.get('test_acc'))} "
        f"(95% CI {_fmt(lo, 3)}-{_fmt(hi, 3)}, n={n_test}) |",
        f"| test macro F1 | {_fmt(s.get('test_f1_macro'))} |",
        f"| test balanced accuracy (mean recall over classes) | {_fmt(s.get('test_balanced_acc'))} |",
        f"| test MCC (Matthews correlation) | {_fmt(s.get('test_mcc'))} |",
        f"| test accuracy, ONNX fp32 | {_fmt(result.get('fp32_test_acc'))} |",
        f"| test accuracy, ONNX int8 | {_fmt(result.get('int8_test_acc'))} |", "",
    ]
    per_class = record.get("per_class") or []
    if per_class:
        lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
                  *["| " + " | ".join(md_cell(_fmt(p.get(k), 3)) for k in ("class", "precision", "recall", "f1",
                                                                          "support")) + " |"
                    for p in per_class if isinstance(p, dict)], ""]
    lat = result.get("latency_ms_per_image", {})
    lines += ["## Files, speed and parity", "",
              "| file | size |", "|---|---|",
              *[f"| `{n}` | {_size(b)} |" for n, b in result.get("files", {}).items()], "",
              "| runtime | ms per image (batch 1) |", "|---|---|",
              *[f"| {k} | {v:.2f} |" for k, v in lat.items()], "",
              f"Latency: {result.get('latency_note', 'not measured')}.", "",
              f"ONNX Runtime vs PyTorch on {result.get('parity_images')} {result.get('parity_split')} images: "
              f"max |logit difference| {result['parity_max_abs_diff']:.2e}, "
              f"top-1 agreement {_fmt(result.get('parity_top1_agreement'))}."]
    if "int8" in result:
        q = result["int8"]
        lines += ["", f"INT8: static quantization ({q['format']}, {q['weights']} weights, {q['activations']} "
                      f"activations, {q['calibration_method']} calibration on {q['calibration_images']} training "
                      f"images); agrees with fp32 on "
                      f"{_fmt(result.get('int8_top1_agreement_with_fp32'), 3)} of the test images."]
    if result.get("error"):
        lines += ["", f"**EXPORT FAILED:** {md_text(result['error'])}"]
    lines += ["", "## Use", "",
              "```python", "from lib.ship.predict import predict, format_table   # ONNX Runtime + Pillow, no torch",
              "print(format_table(predict(\"model.onnx\", [\"photo.jpg\", \"a/folder\"], top_k=3)))",
              "```", "",
              "The ONNX file carries its class names and preprocessing in its metadata (`classes`, "
              "`preprocessing`): decode, EXIF-rotate, convert to RGB, resize the shorter side to "
              f"{preprocessing(record)['resize_side']} px ({record['data_config']['interpolation']}), centre-crop "
              f"{record['data_config']['input_size'][-1]} px, scale to [0, 1], normalise with the stored mean/std.",
              "", "## Intended use and limitations", "",
              f"- Classifies images into exactly these {len(record['classes'])} classes; any other input still gets "
              "one of them, often with high confidence. There is no \"unknown\" class.",
              f"- The test set has only {n_test} images: the test accuracy is uncertain by about "
              f"±{_fmt((hi - lo) / 2 if not math.isnan(lo) else math.nan, 3)} (95% Wilson interval); "
              "differences between models smaller than that are not evidence.",
              "- Expect lower accuracy on images unlike the training data (other cameras, lighting, backgrounds, "
              "image sizes); check on your own data before relying on it.",
              "- Validation accuracy picked the checkpoint (and possibly the hyperparameters), so it is optimistic; "
              "the test accuracy is the honest estimate."]
    if (result.get("attributions") or {}).get("files"):
        lines += ["- Attributions (`attributions/`) show where the model looks for a few test images; "
                  "they are a sanity check, not an explanation of every decision."]
    return "\n".join(lines) + "\n"
