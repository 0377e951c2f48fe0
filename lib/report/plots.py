"""The report's figures (matplotlib's object API: no pyplot, no global state, no display)."""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import pandas as pd

from lib.report.page import hp, isnan
from lib.report.stats import is_numeric

MAX_CURVE_RUNS = 16       # runs with their own panel of curves (all of them share the overlay)


def plain_text(plot):
    """Run a plot with mathtext off: labels are run, class and parameter names from records, and two
    `$` in one (`price_$5_$10`) would be parsed as TeX, and a bad formula fails the whole figure."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)
    return wrapper


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:2]) or text

def _figure(w, h, layout: str | None = "constrained"):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(w, h), dpi=90, layout=layout)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@plain_text
def curves_plot(runs: list[dict], labels: dict[str, str]) -> bytes | None:
    from matplotlib.ticker import MaxNLocator

    runs = [r for r in runs if r.get("history")][:MAX_CURVE_RUNS]
    if not runs:
        return None
    per_row = 1 if len(runs) == 1 else 2
    nrows = math.ceil(len(runs) / per_row)
    height = 2.6 * nrows + 0.6
    fig = _figure(6.5 * per_row, height, layout=None)   # constrained layout is slow with many axes
    fig.subplots_adjust(left=0.06, right=0.99, wspace=0.32, hspace=0.75, top=1 - 0.85 / height,
                        bottom=0.45 / height)
    axes = fig.subplots(nrows, per_row * 2, squeeze=False)
    for i in range(nrows * per_row):
        ax_l, ax_a = axes[i // per_row][2 * (i % per_row)], axes[i // per_row][2 * (i % per_row) + 1]
        if i >= len(runs):
            ax_l.set_visible(False)
            ax_a.set_visible(False)
            continue
        run = runs[i]
        h = pd.DataFrame(run["history"])
        ep = h["epoch"] if "epoch" in h else pd.Series(range(1, len(h) + 1))
        for ax, key, name in ((ax_l, "loss", "loss"), (ax_a, "acc", "accuracy")):
            for split, style, color in (("train", "--", "#888888"), ("val", "-", "#2f6fdf")):
                col = f"{split}_{key}"
                if col in h and pd.to_numeric(h[col], errors="coerce").notna().any():
                    ax.plot(ep, pd.to_numeric(h[col], errors="coerce"), style, color=color, marker=".", label=split)
            best = (run.get("summary") or {}).get("best_epoch")
            if isinstance(best, (int, float)) and not isnan(best):
                ax.axvline(best, color="#2e7d32", lw=0.8, ls=":")
            if "phase" in h:
                changes = [ep.iloc[j] - 0.5 for j in range(1, len(h)) if h["phase"].iloc[j] != h["phase"].iloc[j - 1]]
                for x in changes:
                    ax.axvline(x, color="#c0c0c0", lw=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_l.set_title(_wrap(labels.get(run.get("id"), str(run.get("id"))), 62), fontsize=8, loc="left")
        if i == 0:
            ax_a.legend(fontsize=7, loc="lower right")
    fig.suptitle("training curves (train dashed, val solid; green dotted = best epoch, grey = phase change)",
                 fontsize=10, y=1 - 0.12 / height)
    return _png(fig)


@plain_text
def overlay_plot(runs: list[dict], metric_label: str) -> bytes | None:
    runs = [r for r in runs if r.get("history")]
    if len(runs) <= MAX_CURVE_RUNS:
        return None
    fig = _figure(11, 4)
    ax_l, ax_a = fig.subplots(1, 2)
    for r in runs:
        h = pd.DataFrame(r["history"])
        for ax, col in ((ax_l, "val_loss"), (ax_a, "val_acc")):
            if col in h:
                ax.plot(h["epoch"], pd.to_numeric(h[col], errors="coerce"), lw=0.8, alpha=0.6)
    ax_l.set_title("val loss, all runs", fontsize=9)
    ax_a.set_title("val accuracy, all runs", fontsize=9)
    for ax in (ax_l, ax_a):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _png(fig)


@plain_text
def confusion_plot(cm: np.ndarray, classes: list[str], title: str) -> bytes:
    n = len(classes)
    side = min(12, max(4.5, 0.45 * n + 2.5))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center",
                  fontsize=8)
    ax.set_yticks(range(n), labels=classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7 if n > 12 else 9,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_title(_wrap(title, int(9 * side)), fontsize=10)
    return _png(fig)


@plain_text
def tradeoff_plot(fin: pd.DataFrame, metric: str, maximize: bool, has_latency: bool) -> bytes | None:
    fig = tradeoff_figure(fin, metric, maximize, has_latency)
    return None if fig is None else _png(fig)


def tradeoff_figure(fin: pd.DataFrame, metric: str, maximize: bool, has_latency: bool):
    """The metric against model size (and latency), the Pareto front drawn; each point labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    panels = [("model_size_mb", "model size (MB)", "pareto_size")]
    if has_latency:
        panels.append(("latency_ms", "CPU latency (ms)", "pareto_latency"))
    panels = [p for p in panels if p[0] in fin and fin[p[0]].notna().any()]
    if not panels or fin[metric].notna().sum() == 0:
        return None
    fig = _figure(6 * len(panels), 4.6)
    FigureCanvasAgg(fig)   # a renderer, to measure the labels
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    labels = []
    for ax, (col, label, front_col) in zip(axes, panels, strict=True):
        sub = fin[fin[col].notna() & fin[metric].notna()]
        on = sub[sub[front_col].astype(bool)]
        off = sub[~sub[front_col].astype(bool)]
        ax.scatter(off[col], off[metric], color="#9aa5b1", s=30, label="dominated", zorder=2)
        ax.scatter(on[col], on[metric], color="#d62728", s=45, label="Pareto front", zorder=3)
        front = on.sort_values(col)
        ax.step(front[col], front[metric], where="post", color="#d62728", lw=1, alpha=0.6)
        for (x, y), g in sub.groupby([sub[col].round(6), sub[metric].round(6)]):
            names = list(dict.fromkeys(g["_label_short"]))
            labels.append((ax, x, y, ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")))
        if (sub[col] > 0).all() and sub[col].max() / max(sub[col].min(), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if maximize else "upper right")
    fig.suptitle(f"{metric} vs cost ({'higher' if maximize else 'lower'} is better; front = not beaten on both axes)",
                 fontsize=10)
    _place_labels(fig, labels)
    return fig


def _place_labels(fig, labels: list, fontsize: float = 6.5) -> None:
    """Each label next to its point: above-right if that overlaps no label placed before it and stays in
    its axes, else the nearest free place up to 8 lines up or down, right or left of the point (with a
    leader line); with none free, the first place inside the axes. Runs of one size at close scores used to
    print their labels over each other, and a point at the edge its label out of the picture. The layout is fixed
    first, and the labels take no part in it, so what is measured here is what is drawn."""
    from matplotlib.text import Text

    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    step = fontsize * 1.25
    lines = (0, *(sign * k for k in range(1, 9) for sign in (1, -1)))   # 0, 1, -1, ... 8, -8 lines away
    tries = [(side, 3 + k * step) for k in lines for side in (1, -1)]
    placed = []
    for ax, x, y, text in sorted(labels, key=lambda item: tuple(item[0].transData.transform((item[1], item[2])))[::-1]):
        room, inside = ax.bbox, None   # the first place inside the axes, should every one overlap a label
        for tried in [*tries, None]:
            last = tried is None   # nowhere free: overlap a label rather than leave the picture
            side, dy = (inside or tries[0]) if last else tried
            note = ax.annotate(text, (x, y), xytext=(3 * side, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if side > 0 else "right", va="bottom",
                               arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#888"}
                               if (side, dy) != tries[0] else None)
            note.set_in_layout(False)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)   # the text alone, not its leader line
            fits = room.x0 <= box.x0 and box.x1 <= room.x1 and room.y0 <= box.y0 and box.y1 <= room.y1
            inside = inside or ((side, dy) if fits else None)
            if last or (fits and not any(box.overlaps(other) for other in placed)):
                break
            note.remove()
        placed.append(box)


@plain_text
def params_plot(fin: pd.DataFrame, keys: list[str], metric: str) -> bytes | None:
    keys = [k for k in keys if k in fin][:12]
    if not keys:
        return None
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig = _figure(4.3 * ncol, 3.3 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        key = keys[i]
        sub = fin[[key, metric]].dropna()
        if is_numeric(sub[key]) and sub[key].nunique() > 6:
            x = sub[key].astype(float)
            ax.scatter(x, sub[metric], color="#2f6fdf", s=28, alpha=0.8)
            if (x > 0).all() and x.max() / max(x.min(), 1e-300) >= 20:
                ax.set_xscale("log")
        else:
            as_text = sub[key].map(hp)
            if is_numeric(sub[key]):   # few numeric levels: one column each, in numeric order
                levels = [hp(v) for v in sorted(sub[key].astype(float).unique())]
            else:
                levels = sorted(as_text.unique(), key=lambda s: (len(s), s))
            data = [sub[metric][as_text == lvl].astype(float).values for lvl in levels]
            if max(len(d) for d in data) >= 3:
                ax.boxplot(data, positions=range(len(levels)), widths=0.5, showfliers=False)
            rng = np.random.default_rng(0)
            for j, d in enumerate(data):
                ax.scatter(j + rng.uniform(-0.12, 0.12, len(d)), d, color="#2f6fdf", s=24, alpha=0.8, zorder=3)
            ax.set_xticks(range(len(levels)), labels=levels, rotation=30 if len(levels) > 3 else 0, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} against each swept parameter (finished runs)", fontsize=10)
    return _png(fig)




LOG_X_TRIALS = 30         # beyond this many trials the expected-best curve gets a log n axis


@plain_text
def expected_best_plot(curve: list[dict], metric: str, maximize: bool,
                       mark: tuple[int, int] | None = None) -> bytes | None:
    """The expected best of n trials (± its std) against n; ``mark``: the two n the flatness rule compares."""
    if len(curve) < 2:
        return None
    n = np.array([c["n"] for c in curve], dtype=float)
    mean = np.array([c["value"] for c in curve], dtype=float)
    std = np.array([c["std"] for c in curve], dtype=float)
    fig = _figure(6.5, 3.8)
    ax = fig.subplots()
    ax.fill_between(n, mean - std, mean + std, color="#2f6fdf", alpha=0.18, lw=0, label="± std over draws of n")
    ax.plot(n, mean, color="#2f6fdf", marker="." if len(n) <= LOG_X_TRIALS else None, label="expected best")
    if mark:
        for x in mark:
            ax.plot([x], [mean[x - 1]], "o", color="#d62728", ms=6, zorder=3)
        ax.annotate(f"{mark[0]} → {mark[1]} trials", (mark[1], mean[mark[1] - 1]), xytext=(-6, -14),
                    textcoords="offset points", ha="right", fontsize=8, color="#d62728")
    if len(n) > LOG_X_TRIALS:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")   # plain tick labels: mathtext is off (plain_text), so no 10^k
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials n (drawn from the study without replacement)")
    ax.set_ylabel(f"expected {'max' if maximize else 'min'} of {metric}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if maximize else "upper right")
    ax.set_title(f"what more trials would buy: expected best {metric} of n trials", fontsize=10)
    return _png(fig)
