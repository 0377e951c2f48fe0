"""The rule for run ids, which name folders (``<runs_dir>/<run_id>``): ASCII letters, digits, - and _,
wherever an id comes from (the command line, a study database, a W&B record), so that none names a path
outside its folder. Standard library only: the trainer, the sweep engine and the readers import it."""
from __future__ import annotations

import re
from typing import Any

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
RUN_ID_RULE = "letters, digits, - and _"


def valid_run_id(value: Any) -> bool:
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None
