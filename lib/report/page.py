"""The report page: one builder for Markdown and self-contained HTML, and the number formats."""
from __future__ import annotations

import base64
import html
import re

import numpy as np
import pandas as pd

from lib.cells import md_cell, md_text


def isnan(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)) or v is pd.NA


def pct(v, digits=1) -> str:
    return "–" if isnan(v) else f"{100 * float(v):.{digits}f}%"


def ci(lo, hi) -> str:
    return "–" if isnan(lo) or isnan(hi) else f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def num(v, fmt="{:.4g}") -> str:
    if isnan(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return fmt.format(float(v))
    return str(v)


def met(v) -> str:
    return num(v, "{:.4f}")


def count(v) -> str:
    if isnan(v):
        return "–"
    v = float(v)
    return f"{v / 1e6:.2f}M" if v >= 1e6 else (f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")


def seconds(v) -> str:
    """A duration as read: 0.4 s (a cached freeze run's epochs), 9.0 s, 348 s."""
    return "–" if isnan(v) else (f"{float(v):.1f} s" if float(v) < 10 else f"{float(v):.0f} s")


def time_text(row) -> str:
    """What a run's time counted: its training epochs (train_time_s: decoding, frozen features and testing
    not counted), and the whole run's wall clock where the record has it."""
    train, wall = row.get("train_time_s"), row.get("wall_time_s")
    text = "training time not recorded" if isnan(train) else f"{seconds(train)} in its training epochs"
    return text + ("" if isnan(wall) else f", {seconds(wall)} wall clock for the whole run")


def hp(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3g}"
    return str(value)


class Doc:
    """The report, built once for both Markdown and HTML."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str, anchor: str | None = None):
        self.md.append(f"{'#' * level} {md_text(text)}\n")
        aid = f' id="{anchor}"' if anchor else ""
        self.html.append(f"<h{level}{aid}>{html.escape(text)}</h{level}>")

    def p(self, text: str, cls: str | None = None):
        self.md.append(md_text(text) + "\n")
        c = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{c}>{_inline(text)}</p>")

    def bullets(self, items: list[tuple[str, str]] | list[str], cls: str = ""):
        if not items:
            return
        pairs = [it if isinstance(it, tuple) else ("", it) for it in items]
        self.md.append("\n".join(f"- {('**' + lvl.upper() + '** ') if lvl else ''}{md_text(t)}" for lvl, t in pairs)
                       + "\n")
        lis = "".join(f'<li class="{lvl}">{("<b>" + lvl.upper() + "</b> ") if lvl else ""}{_inline(t)}</li>'
                      for lvl, t in pairs)
        self.html.append(f'<ul class="{cls}">{lis}</ul>')

    def verdict(self, lines: list[str]):
        self.md.append("\n".join(f"> {md_text(line)}  " for line in lines) + "\n")
        self.html.append('<div class="verdict">' + "".join(f"<p>{_inline(line)}</p>" for line in lines) + "</div>")

    def table(self, header: list[str], rows: list[list[str]], note: str | None = None, highlight: int | None = None):
        if not rows:
            return
        # Cells hold run, class and model names from records: escaped so they stay one cell of one row.
        md = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]
        self.md.append("\n".join(md) + "\n")
        numeric = [' class="n"' if all(_NUMISH.fullmatch(str(r[j])) for r in rows) else "" for j in range(len(header))]
        head = "".join(f"<th{numeric[j]}>{html.escape(str(h))}</th>" for j, h in enumerate(header))
        best = ' class="best"'
        body = "".join(f"<tr{best if i == highlight else ''}>"
                       + "".join(f"<td{numeric[j]}>{html.escape(str(c))}</td>" for j, c in enumerate(r))
                       + "</tr>" for i, r in enumerate(rows))
        self.html.append(f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
        if note:
            self.p(note, cls="note")

    def image(self, name: str, png: bytes, alt: str):
        self.md.append(f"![{md_text(alt).replace('[', '(').replace(']', ')')}]({name})\n")
        data = base64.b64encode(png).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


_NUMISH = re.compile(r"[-+−–±\s\d.,%\[\]Mke]*\d[-+−–±\s\d.,%\[\]Mke]*|–")


def _inline(text: str) -> str:
    """Escape, then the little Markdown we use: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;\
padding:0 16px}
h1{font-size:24px;margin-bottom:4px}\
h2{font-size:19px;border-bottom:2px solid #e3e6ea;padding-bottom:4px;margin-top:32px}
h3{font-size:16px}.meta{color:#666}.note{color:#555;font-size:12.5px}
.verdict{background:#f3f8ff;border-left:5px solid #2f6fdf;padding:8px 16px;margin:12px 0}
.verdict p{margin:6px 0}
ul.warnings li{margin:4px 0}li.critical b{color:#b00020}li.warning b{color:#b36b00}li.info b{color:#2f6fdf}
.tw{overflow-x:auto}table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
th,td{border:1px solid #d9dde3;padding:3px 8px;text-align:left;white-space:nowrap}td.n,th.n{text-align:right}
td{max-width:520px;overflow:hidden;text-overflow:ellipsis}
th{background:#f1f3f5}tr.best td{background:#e8f5e9;font-weight:600}
tbody tr:nth-child(even):not(.best){background:#fafbfc}
figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:12px}
code{background:#f1f3f5;padding:0 3px;border-radius:3px}
"""


