"""The README is a front page and the reference lives in docs/ (issue 20): the generated tables match the
code, every relative link resolves, and the sweep files' comments stay short."""
import re
import shutil
from pathlib import Path

import pytest

from lib import config, records, reference

ROOT = Path(__file__).resolve().parents[1]


def generated(page: str, name: str) -> str:
    text = (ROOT / page).read_text()
    return text.split(f"<!-- generated: {name} -->")[1].split(f"<!-- end generated: {name} -->")[0]


def test_the_generated_pages_are_current():
    assert reference.stale() == [], "run `make docs` (python -m lib.reference)"


def test_every_config_key_is_in_config_md_with_its_default_and_help():
    table = generated("docs/config.md", "config-keys")
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    assert list(rows) == list(config.FIELDS)
    for name, f in config.FIELDS.items():
        assert reference._cell(f.metadata["help"]) in rows[name]
        assert reference._cell(config.allowed_text(f)) in rows[name]
    assert "| `lr` | float | `0.001` |" in table and "| `amp` | bool | `true` |" in table
    assert str(Path.home()) not in table and "`~/.cache/finetune-kit`" in table   # the same page on every machine


def test_every_summary_key_state_and_epoch_metric_is_in_run_record_md():
    summary = generated("docs/run-record.md", "summary")
    assert [line.split("|")[1].strip(" `") for line in summary.splitlines() if line.startswith("| `")] == \
        [f.name for f in records.RunSummary.__dataclass_fields__.values()]
    assert all(f"`{m}`" in generated("docs/run-record.md", "epoch-metrics") for m in records.EPOCH_METRICS)
    assert all(f"`{s}`" in generated("docs/run-record.md", "states") for s in records.STATES)


def test_a_stale_page_is_found_and_rewritten(tmp_path):
    """The check can fail: a key missing from the table, or a help text changed in the code."""
    (tmp_path / "docs").mkdir()
    for page in reference.PAGES:
        shutil.copy(ROOT / page, tmp_path / page)
    page = tmp_path / "docs" / "config.md"
    page.write_text("\n".join(line for line in page.read_text().splitlines() if not line.startswith("| `seed` |")))
    assert reference.stale(tmp_path) == ["docs/config.md"]
    assert reference.write(tmp_path) == ["docs/config.md"] and reference.stale(tmp_path) == []
    assert "| `seed` |" in page.read_text()
    page.write_text(page.read_text().replace("<!-- end generated: config-keys -->", ""))
    with pytest.raises(ValueError, match="config-keys"):
        reference.stale(tmp_path)


def test_the_run_folder_files_are_the_names_the_code_writes():
    from lib.files import LOCK
    from lib.sweep import artifacts, trial
    from lib.train import lr_find, run

    named = {LOCK, run.CHECKPOINT, lr_find.CURVE_FILE, lr_find.PLOT_FILE, trial.STOP_FILE, artifacts.WEIGHTS,
             *artifacts.RUN_FILES}
    assert named <= set(reference.RUN_FOLDER_FILES)
    assert all(f"`{name}`" in generated("docs/run-record.md", "run-files") for name in reference.RUN_FOLDER_FILES)
