"""Database URLs fit to show or write down: no password in their query string.

libpq, and so a ``postgresql://`` URL, also takes the password as a query parameter
(``postgresql://u@h/db?password=...``; MySQLdb calls it ``passwd``, and a URL typed with either holds the
secret even where the driver refuses the name). SQLAlchemy's own hiding (``render_as_string(hide_password=
True)``) masks only the ``user:password@`` part, so a URL given this way reached ``sweep.json`` and the
dashboard's error line whole. Standard library only.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_plus

SECRET_KEYS = frozenset({"password", "passwd"})   # libpq's name, MySQLdb's

# Where SQLAlchemy's make_url finds the query: the first "?" after the user:password@ part (whose
# password may itself hold a "?"), all the rest, "#" included (it is not a fragment to SQLAlchemy).
_QUERY = re.compile(r"^[\w+]+://(?:[^:/]*(?::[^@]*)?@)?[^?]*\?(?P<query>.*)$", re.S)


def without_query_secrets(url: str | None, mask: str | None = None) -> str | None:
    """``url`` without its ``password``/``passwd`` query parameters, or with ``mask`` as their value (to show
    that one was given). The key is matched as the driver reads it (percent-decoded, any case); everything
    else is kept as written."""
    if not url or "?" not in url:
        return url
    found = _QUERY.match(url)
    start = found.start("query") if found else url.index("?") + 1
    kept = []
    for item in url[start:].split("&"):
        key, eq, _ = item.partition("=")
        if unquote_plus(key).strip().lower() not in SECRET_KEYS:
            kept.append(item)
        elif mask is not None:
            kept.append(f"{key}{eq or '='}{mask}")
    base = url[:start - 1]
    return f"{base}?{'&'.join(kept)}" if kept else base
