"""The README is a front page and the reference lives in docs/ (issue 20): the generated tables match the
code, every relative link resolves, and the sweep files' comments stay short."""
import re
import shutil
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from lib import config, records, reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
MAX_README_LINES = 300
MAX_SWEEP_COMMENT_LINES = 20


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    tokens = MarkdownIt().parse(path.read_text())
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            base = slug("".join(c.content for c in tokens[i + 1].children or []))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Every link target of a Markdown page, as a renderer sees them (not inside code)."""
    out = []
    for tok in MarkdownIt().parse(path.read_text()):
        for child in tok.children or []:
            if child.type == "link_open":
                out.append(child.attrs["href"])
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for href in links(path):
        if re.match(r"^[a-z]+:", href):    # http(s), mailto: not checked offline
            continue
        target, _, anchor = href.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            bad.append(f"{path.name}: {href} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}: {href} (no such heading)")
    return bad


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


def test_the_file_tables_describe_the_contract_s_files_and_no_other():
    """The names come from lib.records (the run folder's contract): each one described, nothing invented."""
    assert set(reference.RUN_FILE_DOCS) == set(records.RUN_FOLDER_FILES)
    assert set(reference.SWEEP_DIR_DOCS) == {*records.SWEEP_DIR_FILES, records.LOCK_FILE, f"{records.SWEEP_RUNS}/"}
    run_files = generated("docs/run-record.md", "run-files")
    sweep_files = generated("docs/run-record.md", "sweep-files")
    assert all(f"| `{name}` |" in run_files for name in records.RUN_FOLDER_FILES)
    assert all(f"| `{name}` |" in sweep_files for name in records.SWEEP_DIR_FILES)


def test_the_readme_exit_codes_are_the_declared_ones():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Exit codes"):text.index("\n## ", text.index("## Exit codes") + 3)]
    codes = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert codes == {int(c) for c in records.ExitCode}
    assert "ExitCode" in section


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    for command in ("make demo", "make test", "finetune_sweep.py local sweeps/quickstart.yaml", "finetune_resnet.py"):
        assert command in text
    assert "docs/config.md" in text and "docs/lr-auto.md" in text


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []
    assert len(links(ROOT / "README.md")) > 20   # the pages are read, not empty


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# A heading: `code`\n\ntext\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#a-heading-code) [gone](c.md) [nowhere](b.md#other) `[code](x.md)`\n\n"
                    "    [indented code](y.md)\n")
    assert broken_links(page) == ["a.md: c.md (no such file)", "a.md: b.md#other (no such heading)"]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_sweep_files_keep_few_comment_lines_and_their_links_resolve(path):
    lines = path.read_text().splitlines()
    assert sum(line.lstrip().startswith("#") for line in lines) <= MAX_SWEEP_COMMENT_LINES
    for ref in re.findall(r"\b(docs/[\w.-]+\.md|bench/RESULTS\.md)(#[\w-]+)?", path.read_text()):
        target = ROOT / ref[0]
        assert target.exists(), ref
        assert not ref[1] or ref[1][1:] in anchors(target), ref
