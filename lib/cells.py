"""Text from records (run names, class names, errors) going into tables other programs read.

Run and class names come from run.json files and W&B, which anyone with write access can edit, so
they are data, never markup: a CSV cell must not become a spreadsheet formula, a Markdown cell must
not end its row or its table, and nothing may become HTML. Only the standard library: ``lib.ship.predict``
imports this without torch or pandas.
"""
from __future__ import annotations

import re
import unicodedata

# What makes Excel, LibreOffice and Google Sheets read a cell as a formula (OWASP, "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.I)
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
_ENTITY = re.compile(r"&(?=#?\w+;)")   # what Markdown would read as a character reference


def csv_cell(value):
    """A cell a spreadsheet shows as text: a string starting with = + - @ tab or CR gets a leading
    single quote (OWASP's advice). Numbers, and strings that are plain numbers (-0.5), are left
    alone so columns stay numeric."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def md_text(value) -> str:
    """Inline Markdown text: one line (a line break would end the table row or start a new block)
    and no HTML (Markdown renders raw tags), escaped the Markdown way so the file reads as written:
    ``<`` as ``\\<`` (never a tag), ``&`` before an entity name as ``\\&``, a leading ``>`` (a quote)
    as ``\\>``, and a backslash doubled first, so that none can undo the others. ``>`` elsewhere stays
    ``>``: HTML's ``&gt;`` showed as such in the file and inside code spans."""
    text = _LINE_BREAKS.sub(" ", str(value)).replace("\\", "\\\\").replace("<", "\\<")
    return re.sub(r"^(\s*)>", r"\1\\>", _ENTITY.sub(r"\\&", text))


def md_cell(value) -> str:
    """A Markdown table cell: ``md_text``, and pipes escaped so the row keeps its columns."""
    return md_text(value).replace("|", "\\|")


def md_code(value) -> str:
    """Inline code: a span delimited by more backticks than the text holds, so a backtick in the
    name cannot end it early (CommonMark). HTML inside a code span is shown, not rendered."""
    text = _LINE_BREAKS.sub(" ", str(value))
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def display_width(text) -> int:
    """Columns a terminal gives ``text``: East Asian wide and fullwidth characters (CJK, most emoji) take
    two, combining marks (a decomposed é's accent) and format characters none; an emoji joined to the one
    before it (ZWJ sequences: one family glyph) adds nothing, and the emoji variation selector widens a
    narrow symbol (❤️) to two. What keeps a plain-text table aligned on file names from anywhere (``len``
    counts code points)."""
    width, joined, last = 0, False, 0
    for ch in str(text):
        if ch == "\ufe0f":   # VS16: the symbol before it is drawn as a (wide) emoji
            width, last = width + (last == 1), 2
            continue
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            joined = ch == "\u200d"
            continue
        wide = unicodedata.east_asian_width(ch) in ("W", "F")
        last = 0 if joined and wide else 2 if wide else 1
        width, joined = width + last, False
    return width


def pad(text, width: int) -> str:
    """``text`` followed by spaces up to ``width`` display columns (``str.ljust`` by display width)."""
    return str(text) + " " * max(0, width - display_width(text))


# C0 and C1 controls (ESC starts the sequences that move the cursor, rewrite lines or retitle the window),
# DEL, and the Unicode line separators and direction overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def terminal_text(value) -> str:
    """Text from a study or a record printed to a terminal: every control character shown as its escape
    (``\\x1b``, ``\\n``), so an error message cannot move the cursor, hide a line or end its own row."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))
