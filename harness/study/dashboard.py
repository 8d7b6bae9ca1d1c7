"""`odyssey dashboard`: optuna-dashboard on a sweep's storage, live (README, "Watching a sweep").

    odyssey dashboard search.storage=URL [dashboard.port=8080 dashboard.host=127.0.0.1]

The storage is opened as a sweep opens it (harness.storage.open_storage): the same URLs
(sqlite:///, journal:, postgresql://), relative paths from the project root, and a
PostgreSQL password never on the command line nor in a message (PGPASSWORD or ~/.pgpass,
read by libpq; one given in the URL is moved to PGPASSWORD first, harness.cli). The opened
storage is handed to optuna-dashboard's WSGI app (`optuna_dashboard.wsgi`), served by a
threaded server of the standard library, as its own command serves it.
"""

from __future__ import annotations

from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from harness.errors import UserError
from harness.storage import open_storage, redact

INSTALL = "optuna-dashboard is not installed; run `bash scripts/setup.sh` (or pip install -c constraints.txt optuna-dashboard)."


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a browser's open request does not hold Ctrl-C up


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # the page asks every few seconds: no line for each
        pass


def app(url: str, key: str = "search.storage"):
    """optuna-dashboard's WSGI app on the storage at `url` (which must exist)."""
    try:
        import optuna_dashboard
    except ImportError:
        raise UserError(INSTALL) from None
    return optuna_dashboard.wsgi(open_storage(url, key, create=False))


def serve(cfg) -> None:
    """Serve the dashboard of cfg.search.storage on cfg.dashboard.host:port until stopped."""
    host, port = str(cfg.dashboard.host), int(cfg.dashboard.port)
    application = app(str(cfg.search.storage))
    try:
        server = make_server(host, port, application, server_class=_Server, handler_class=_Quiet)
    except OSError as error:
        raise UserError(f"dashboard.port={port}: cannot listen on {host}:{port} ({error.strerror}); "
                        "choose another dashboard.port.") from None
    port = server.server_address[1]  # dashboard.port=0: a free port, chosen here
    print(f"dashboard of {redact(str(cfg.search.storage))}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    with server:
        server.serve_forever()
