"""Did you mean: the one ranking of close spellings behind every suggestion the kit makes (config keys,
sweep parameters and their settings, timm model names). Standard library only: config errors answer
before torch is imported."""
from __future__ import annotations

from collections.abc import Iterable


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn ``a`` into ``b``."""
    prev2, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def closest(word: str, choices: Iterable[str], n: int = 1, first: Iterable[str] = ()) -> list[str]:
    """The ``n`` choices a person most likely meant by ``word``: fewest edits first (at most a third of
    its letters, and at least one from three letters up), ties going to ``first`` (the common ones, in
    its order), then A-Z. For ``resnet5``: resnet50 (one edit), then resnet18 and resnet34 (common, two
    edits) before resnet152 and resnet26 (two edits)."""
    w = str(word).strip().lower()
    limit = max(1, len(w) // 3) if len(w) >= 3 else 0   # one edit in "x" or "lt" could mean anything
    rank = {c: i for i, c in enumerate(first)}
    scored = []
    for choice in set(choices):
        if abs(len(choice) - len(w)) <= limit:
            d = edit_distance(w, choice.lower())
            if d <= limit:
                scored.append((d, rank.get(choice, len(rank)), choice))
    return [c for *_, c in sorted(scored)[:n]]
