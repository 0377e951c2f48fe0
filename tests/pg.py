"""A real PostgreSQL server on the loopback for the tests: one per session, a throw-away database per test.

Debian's `postgresql` package (`make setup-postgres` or `.ci/run` installs it). Its server refuses to run
as root, so as root it runs as the `postgres` user in a folder of its own. Password logins only over TCP
(scram-sha-256), as on a real cluster; the tests' role gets its password from PGPASSWORD, never the URL.
Without a server: skip with the reason on a developer's machine, fail in CI (CI=true).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

ROLE, PASSWORD = "sweeper", "pg-" + uuid.uuid4().hex   # a fresh secret per session: grep-able in files


def _bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _unavailable(why: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL is required in CI: {why}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {why} (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self):
        initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            _unavailable("initdb/pg_ctl not found")
        self.user = None
        if os.geteuid() == 0:                       # postgres will not run as root
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no `postgres` user to run the server")
        self.dir = Path(tempfile.mkdtemp(prefix="pgtest-"))
        if self.user:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port, self.data = _free_port(), self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._as_server([initdb, "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                         "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
        pwfile.unlink()
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._as_server([self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts,
                         "-w", "-t", "30", "start"])
        self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")

    def _as_server(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            _unavailable(f"{' '.join(cmd[-3:])} exited {r.returncode}: {(r.stderr or r.stdout)[-500:]} {log[-500:]}")

    def admin(self, sql: str) -> None:
        """As the superuser, over the server's Unix socket (trusted locally; no password)."""
        import psycopg

        # autocommit: CREATE DATABASE refuses to run inside a transaction
        with psycopg.connect(host=str(self.dir), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as con:
            con.execute(sql)

    def new_database(self) -> str:
        """A fresh database owned by the tests' role; its URL carries no password."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.user:
            subprocess.run(["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.data), "-m", "immediate",
                            "stop"], capture_output=True, timeout=60)
        else:
            subprocess.run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"], capture_output=True,
                           timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    try:
        import psycopg  # noqa: F401 - SQLAlchemy 2.1's driver for postgresql:// URLs
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install -r requirements.txt)")
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server, monkeypatch):
    """A throw-away database; the password reaches libpq through PGPASSWORD (as the README says)."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    return pg_server.new_database()
