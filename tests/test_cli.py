"""One command-line language: every option of every command answers to --flag_name and --flag-name, and
--help, the README and docs/ show one spelling (--flag_name, as the config keys of finetune_resnet.py)."""
import argparse
import re
from pathlib import Path

import pytest

from finetune_sweep import parser
from lib.config import parse_args

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_takes_both_spellings_and_help_shows_one(command):
    p = commands()[command]
    positionals = ["P" for a in p._actions if not a.option_strings] + [
        x for a in p._actions if a.option_strings and a.required for x in (a.option_strings[0], "1")]
    for action in [a for a in p._actions if a.option_strings and a.dest != "help"]:
        written = [o for o in action.option_strings if o.startswith("--")]
        assert len(written) == 1 and "-" not in written[0][2:], f"{command} {written}: --help shows one --flag_name"
        value = [] if action.nargs == 0 else [str(action.choices[0]) if action.choices else "1"]
        expected = parser().parse_args([command, written[0], *value, *positionals])
        assert getattr(expected, action.dest) not in (None, False)
        hyphens = "--" + written[0][2:].replace("_", "-")
        assert parser().parse_args([command, hyphens, *value, *positionals]) == expected, (command, hyphens)
        if value:
            assert parser().parse_args([command, f"{hyphens}={value[0]}", *positionals]) == expected, (command, hyphens)


def test_the_issue_s_flags(tmp_path):
    ns = parser().parse_args(["local", "s.yaml", "--sweep-dir", "out", "--time-budget", "1h", "--max-failures=2",
                              "--sweep-d", "abbreviated"])
    assert (ns.sweep_dir, ns.time_budget, ns.max_failures) == ("abbreviated", "1h", 2)
    ns = parser().parse_args(["export", "src", "--max-size-mb", "5", "--data-dir=d"])
    assert (ns.max_size_mb, ns.data_dir, ns.out) == (5.0, "d", None)          # --out has a default now
    ns = parser().parse_args(["local", "s.yaml", "--set", "data-dir=x"])
    assert ns.set == ["data-dir=x"]                                           # values are left as written
    assert parse_args(["--data-dir", "x", "--max_epochs=3"])[1] == {"data_dir": "x", "max_epochs": "3"}


def test_help_and_readme_write_options_one_way():
    """The README's and docs/'s commands use --flag_name for every option a command of the kit declares."""
    declared = {o[2:] for p in commands().values() for a in p._actions for o in a.option_strings if o.startswith("--")}
    text = "".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert "--time_budget" in text and "--confirm_top" in text
    hyphenated = {m for m in re.findall(r"--([a-z]+(?:-[a-z]+)+)", text) if m.replace("-", "_") in declared}
    assert hyphenated == set()
    assert "--flag-name is the same option" in parser().format_help()


def test_report_and_export_default_to_a_folder_of_their_source(tmp_path):
    from finetune_sweep import default_out

    assert default_out(str(tmp_path), "export") == tmp_path / "export"
    assert default_out("ent/proj/abc123", "export") == Path("exports/ent-proj-abc123")
    url = "postgresql://alice:s3cret@db-host/studies?password=s3cret"
    assert default_out(url, "report") == Path("reports/studies")             # never the password
    assert default_out(url, "export", study="lr_search") == Path("exports/lr_search")
