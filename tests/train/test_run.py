"""lib/train/run.py: the checks a run makes before any work."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from lib.errors import ConfigError
from lib.train.run import check_writable


def test_workers_starting_together_all_pass_the_write_check(tmp_path):
    """The workers of a sweep share one runs_dir and check it at the same moment (CI once failed a
    trial with 'not writable: No such file or directory' when two removed one probe file)."""
    runs = tmp_path / "runs"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: check_writable(str(runs)), range(400)))
    assert runs.is_dir() and list(runs.iterdir()) == []


def test_a_file_in_the_way_is_refused_in_one_line(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^runs_dir='.*runs' is not writable: File exists$"):
        check_writable(str(tmp_path / "runs"))
