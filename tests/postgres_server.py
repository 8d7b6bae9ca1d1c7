"""A real PostgreSQL server for the tests: initdb + pg_ctl in a temporary directory, on a free
loopback port, stopped afterwards. Debian's `postgresql` package (scripts/setup.sh installs it
with apt-get when it may). As root the server runs as the `postgres` user (PostgreSQL refuses to
run as root); as anyone else, as that user.

    def test_x(postgres): url = postgres()   # the fixture (tests/conftest.py): a fresh database
    PostgresServer(password="...")            # a role that must give its password over TCP
    PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"})  # more server settings

`restart()` is `pg_ctl restart` (every connection is cut; the load test's fault injection);
`pause()` and `resume()` stop and start it again, keeping its databases.

A test that cannot get a server is skipped with the reason, never passed silently.
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

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One server; `database()` creates a fresh, empty database and returns its URL."""

    def __init__(self, password: str | None = None, settings: dict | None = None):
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed "
                               "(bash scripts/setup.sh installs Debian's postgresql as root; "
                               "or: sudo apt-get install postgresql)")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root but there is no `postgres` user to run the server") from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = tempfile.mkdtemp(prefix="odyssey-pg-")
        if self.as_user:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user, self.password = "odyssey", password
        auth = ["-A", "trust"]
        if password is not None:  # TCP connections (the URLs' 127.0.0.1) must give it; the socket stays trusted
            pwfile = os.path.join(self.root, "pwfile")
            with open(pwfile, "w") as handle:
                handle.write(password + "\n")
            if self.as_user:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        self._run([self.initdb, "-D", self.data, *auth, "-U", self.user, "-E", "UTF8"], "initdb")
        if password is not None:
            os.remove(pwfile)
        self.options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=300 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                   + "".join(f" -c {name}={value}" for name, value in (settings or {}).items()))
        self._run([self.pg_ctl, "-D", self.data, "-l", os.path.join(self.root, "server.log"),
                   "-o", self.options, "-w", "-t", "60", "start"], "pg_ctl start")

    def _run(self, command: list[str], what: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = os.path.join(self.root, "server.log")
            tail = open(log).read()[-2000:] if os.path.exists(log) else ""
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]} {tail}")

    def url(self, database: str) -> str:
        user = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pause(self) -> None:
        """Stop the server, keeping its data (resume() starts it again)."""
        self._run([self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"], "pg_ctl stop")

    def resume(self) -> None:
        self._run([self.pg_ctl, "-D", self.data, "-l", os.path.join(self.root, "server.log"),
                   "-o", self.options, "-w", "-t", "60", "start"], "pg_ctl start")

    def restart(self) -> None:
        self._run([self.pg_ctl, "-D", self.data, "-l", os.path.join(self.root, "server.log"), "-o", self.options,
                   "-m", "fast", "-w", "-t", "60", "restart"], "pg_ctl restart")

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop"], "pg_ctl stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"NO POSTGRESQL SERVER, test not run: {error}")
    yield server
    server.stop()


@pytest.fixture
def postgres(postgres_server):
    """postgres() -> the URL of a new, empty database on the tests' own server."""
    return postgres_server.database
