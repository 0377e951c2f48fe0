"""lib/urls.py: a password in a database URL's query string is dropped (to write down) or masked (to show),
as SQLAlchemy and the driver read the URL, and nothing else of it changes."""
import pytest
from sqlalchemy.engine import make_url

from lib.urls import without_query_secrets

SECRET = "s3cr#t&x=y"   # what a URL-encoded password decodes to; "#" is no fragment to SQLAlchemy


@pytest.mark.parametrize("url, stripped, masked", [
    ("postgresql://u@h/db?password=pw", "postgresql://u@h/db", "postgresql://u@h/db?password=***"),
    ("postgresql://u@h:5432/db?sslmode=require&passwd=pw&application_name=a",
     "postgresql://u@h:5432/db?sslmode=require&application_name=a",
     "postgresql://u@h:5432/db?sslmode=require&passwd=***&application_name=a"),
    ("postgresql://u@h/db?PassWord=pw#more", "postgresql://u@h/db", "postgresql://u@h/db?PassWord=***"),
    ("postgresql://u@h/db?pass%77ord=pw", "postgresql://u@h/db", "postgresql://u@h/db?pass%77ord=***"),
    ("postgresql://u@h/db?password", "postgresql://u@h/db", "postgresql://u@h/db?password=***"),
    ("postgresql://u:***@h/db?password=pw", "postgresql://u:***@h/db", "postgresql://u:***@h/db?password=***"),
    ("postgresql://u:a?b@h/db?password=pw", "postgresql://u:a?b@h/db", "postgresql://u:a?b@h/db?password=***"),
    ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ("runs/sweeps/demo", "runs/sweeps/demo", "runs/sweeps/demo"),
])
def test_query_passwords_are_dropped_or_masked(url, stripped, masked):
    assert without_query_secrets(url) == stripped
    assert without_query_secrets(url, mask="***") == masked


def test_what_sqlalchemy_reads_keeps_everything_but_the_password():
    quoted = SECRET.replace("#", "%23").replace("&", "%26")
    url = f"postgresql://alice@db.example:5432/studies?sslmode=require&password={quoted}&connect_timeout=5"
    assert make_url(url).query["password"] == SECRET          # the driver would get it
    kept = make_url(without_query_secrets(url))
    assert dict(kept.query) == {"sslmode": "require", "connect_timeout": "5"}
    assert (kept.username, kept.host, kept.port, kept.database) == ("alice", "db.example", 5432, "studies")
    raw = url.replace("%23", "#")                           # an unencoded "#": still the query's, to SQLAlchemy
    assert "#" in make_url(raw).query["password"] and "s3cr" not in without_query_secrets(raw, mask="***")


@pytest.mark.parametrize("empty", [None, ""])
def test_nothing_stays_nothing(empty):
    assert without_query_secrets(empty) == empty
