"""A private PostgreSQL cluster for tests and benchmarks: initdb into a temporary folder, a unix socket there.

    from tests.pgserver import postgres_server

    with postgres_server() as server:
        url = server.create_database("bench")   # postgresql+psycopg://postgres@/bench?host=/tmp/...
        ...

The cluster listens on no TCP port at all (`listen_addresses=''`): only on a unix socket in its own
folder, so it never collides with another cluster or another engineer's tests. Durability is off
(fsync, synchronous_commit, full_page_writes): the cluster is thrown away at the end. initdb and postgres
refuse to run as root, so as root they run as the unprivileged `postgres` user (made by Debian's package)
through `runuser`. The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, newest version first),
else those on PATH; `tests/ensure_postgres.sh` installs them. Every failure raises PostgresUnavailable
with what to do: a test that needs PostgreSQL fails, it never skips.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

SUPERUSER = "postgres"
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
INSTALL_HINT = "run `sh tests/ensure_postgres.sh` (as root) or `apt-get install postgresql`"


class PostgresUnavailable(RuntimeError):
    pass


def find_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: Debian's newest version, else PATH."""
    versions = sorted((p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "initdb").is_file()),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0], reverse=True)
    if versions:
        return versions[0]
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable(f"PostgreSQL is not installed (no initdb under {DEBIAN_BINARIES} or on PATH): {INSTALL_HINT}")


class PostgresServer:
    """A running private cluster; `url(name)` and `create_database(name, template=None)` give SQLAlchemy URLs."""

    def __init__(self, root: Path, bin_dir: Path, run_as: str | None):
        self.root = root
        self.data = root / "data"
        self.socket_dir = root
        self.bin_dir = bin_dir
        self.run_as = run_as
        self._names = itertools.count(1)

    # -- life -------------------------------------------------------------------------------------
    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        """Creates the cluster (unless its folder holds one already: a kept cluster) and starts it."""
        done = subprocess.CompletedProcess([], 0) if (self.data / "PG_VERSION").exists() else self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                         "--locale=C.UTF-8", "--no-sync")
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        options = (f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200 -c timezone=UTC")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                         "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise PostgresUnavailable(f"postgres did not start ({done.returncode}): {done.stderr.strip()} {log}")

    def stop_command(self, mode: str = "immediate") -> list[str]:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def stop(self, mode: str = "immediate") -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(self.stop_command(mode), capture_output=True, timeout=120, cwd=self.root)

    def watch(self, owner_pid: int, remove: bool = True) -> subprocess.Popen[bytes]:
        """A watcher that stops the cluster and removes its folder (unless `remove` is false) once
        `owner_pid` is gone, however it ended (a test run killed by a timeout never reaches its `finally`)."""
        script = (f"while kill -0 {owner_pid} 2>/dev/null; do sleep 2; done; "
                  f"{shlex.join(self.stop_command('immediate' if remove else 'fast'))} >/dev/null 2>&1"
                  + (f"; rm -rf {shlex.quote(str(self.root))}" if remove else ""))
        return subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- databases --------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def execute(self, statement: str) -> None:
        """One statement outside a transaction (CREATE DATABASE needs that), through psycopg."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its URL."""
        name = name or f"test_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _unprivileged_user() -> str | None:
    """None when not root; else the `postgres` user that Debian's package creates."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(f"running as root and there is no `{SUPERUSER}` user to run PostgreSQL as: "
                                  f"{INSTALL_HINT}") from None
    return SUPERUSER


@contextlib.contextmanager
def postgres_server(keep: Path | None = None) -> Iterator[PostgresServer]:
    """Starts a private cluster in a new temporary folder; stops it and removes the folder at the end.

    With `keep` (a folder), the cluster lives there instead: created on first use, started again as it
    was on the next, stopped cleanly and kept at the end (a benchmark's filled database, reused)."""
    bin_dir = find_binaries()
    run_as = _unprivileged_user()
    # Directly under the system's temp folder: pytest's own folders are mode 0700 for root only.
    root = Path(tempfile.mkdtemp(prefix="healthrobot-pg-")) if keep is None else keep.resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(root, bin_dir, run_as)
    watcher = server.watch(os.getpid(), remove=keep is None)
    try:
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server.start()
        yield server
    finally:
        watcher.kill()
        watcher.wait()
        if keep is None:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
        else:
            server.stop("fast")
