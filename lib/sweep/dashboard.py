"""A study in optuna-dashboard, live: history, parallel coordinates, parameter importance and each
trial's per-epoch metric, with no W&B server (the offline counterpart of W&B's sweep page).

Read-only on purpose. The dashboard also has buttons that write (notes, rename or delete a study, tell a
trial's result), and the study it shows is one that runners, maybe on other machines, are working on:
every request but GET/HEAD is refused, and the study is opened as every command that reads opens it
(lib.sweep.storage.open_source: a journal without creating or locking anything, a database with no tables
created). Bound to 127.0.0.1 by default: the dashboard has no login, so other
machines reach it through an SSH tunnel. It answers only to its own names (a page on another site that
rebinds its DNS name to 127.0.0.1 must not read the study), and SIGINT or SIGTERM stops it at once.
"""
from __future__ import annotations

import errno
import ipaddress
import signal
import socket
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from lib.errors import SweepError
from lib.records import ExitCode
from lib.sweep.storage import open_source, public_url, study_names
from lib.urls import without_query_secrets

LOOPBACK = ("127.0.0.1", "localhost")
ANYWHERE = ("", "0.0.0.0")
REFUSED = b'{"reason": "read-only: this dashboard shows the study; it does not change it"}'


def shown(url: str) -> str:
    """A source as it may be printed: no password, in the user part or in the query string."""
    return without_query_secrets(public_url(url, hide=True), mask="***")


# --- the study to show ---------------------------------------------------------------------------------
def pick_study(storage, named: str | None, wanted: str | None, where: str) -> tuple[str | None, int | None]:
    """--study, else the sweep dir's study, else the database's only one; (None, None) = the list of several."""
    names = study_names(storage)
    name = wanted or named
    if name is None and len(names) == 1:
        name = names[0]
    if name is None:
        if not names:
            raise SweepError(f"{where} holds no study yet: run `finetune_sweep.py local` first")
        return None, None
    if name not in names:
        raise SweepError(f"{where} holds no study {name!r} (it holds: {', '.join(names) or 'none'})")
    return name, storage.get_study_id_from_name(name)


# --- the server ------------------------------------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request, as optuna-dashboard's own command: the page asks for several plots at once.
    Stopping joins none of them: server_close() would otherwise wait (without bound) on a slow request."""
    daemon_threads = True
    block_on_close = False


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):   # a line per request would bury the address and the tunnel hint
        pass


def read_only(app):
    """The dashboard, refusing every request that could change the study (405). A client that sends no
    Accept-Encoding (curl, a proxy) is served plain files: optuna-dashboard reads that header unchecked."""
    def guarded(environ, start_response):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            environ.setdefault("HTTP_ACCEPT_ENCODING", "identity")
            return app(environ, start_response)
        start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", "GET, HEAD")])
        return [REFUSED]
    return guarded


def host_names(host: str, port: int) -> frozenset[str]:
    """The Host headers the dashboard answers: the host it was started on and the loopback's names, with
    its port (bare, for port 80); bound to every interface, also this machine's names."""
    names = {host, *LOOPBACK, "[::1]"} - {""}
    if host in ANYWHERE:
        names |= {socket.gethostname(), socket.getfqdn()}
    names = {(f"[{n}]" if ":" in n and not n.startswith("[") else n).lower() for n in names}   # IPv6: [::1]
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


def same_host(app, host: str, port: int):
    """The app, answering only requests sent to one of ``host_names`` (else 421, one line): a page of
    another site whose DNS name was rebound to this machine sends that name, and is refused. Bound to every
    interface, any IP address with the port is also fine (a rebinding page cannot send one)."""
    names = host_names(host, port)

    def guarded(environ, start_response):
        asked = environ.get("HTTP_HOST", "").strip().lower()
        name, _, asked_port = asked.rpartition(":")
        if asked in names or (host in ANYWHERE and asked_port == str(port) and _is_ip(name)):
            return app(environ, start_response)
        start_response("421 Misdirected Request", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"refused: not a name of this dashboard; open it as http://localhost:{port}/ or at the address "
                f"it printed (a guard against DNS rebinding)\n".encode()]
    return guarded


def listen(app, host: str, port: int) -> _Server:
    if not 0 <= port <= 65535:
        raise SweepError(f"--port {port}: expected 0..65535 (0: any free port)")
    try:
        return make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    except OSError as e:
        hint = ": choose another with --port" if e.errno == errno.EADDRINUSE else ""
        raise SweepError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None


def banner(host: str, port: int, study: str | None, study_id: int | None, where: str) -> list[str]:
    """Where to open it, here and through an SSH tunnel from another machine."""
    page = f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard"
    anywhere = host in ANYWHERE
    here = "localhost" if host in LOOPBACK else socket.gethostname() if anywhere else host
    target = "localhost" if host in LOOPBACK or anywhere else host   # as this machine, the tunnel's end, sees it
    what = f"study {study!r}" if study else f"the studies of {where}"
    return [f"dashboard of {what}: http://{here}:{port}{page}",
            (f"from another machine: ssh -N -L {port}:{target}:{port} {socket.gethostname()}, "
             f"then open http://localhost:{port}{page}"),
            "read-only; Ctrl-C stops it"]


def _stop(_signum, _frame):
    raise KeyboardInterrupt   # SIGTERM as Ctrl-C: close the socket, exit 0


@contextmanager
def stopped_by_signals():
    """SIGINT and SIGTERM stop the server, whatever this process inherited: a background job of a
    non-interactive shell (`nohup ... &`, CI) starts with SIGINT ignored. The old handlers come back after."""
    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            if handler is not None:   # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


def serve(source: str, host: str = "127.0.0.1", port: int = 8080, study: str | None = None) -> int:
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise SweepError("optuna-dashboard is not installed: pip install -r requirements.txt") from None
    storage, meta, _ = open_source(source)   # opened to read, as status reads it: nothing created
    where = shown(source)
    name, study_id = pick_study(storage, meta and meta["name"], study, where)
    server = listen(None, host, port)
    server.set_app(same_host(read_only(wsgi(storage)), host, server.server_port))   # port 0: the one chosen
    try:
        with stopped_by_signals():   # before the banner: whoever waits for it may signal at once
            print("\n".join(banner(host, server.server_port, name, study_id, where)), flush=True)
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("dashboard stopped")
    return ExitCode.OK
