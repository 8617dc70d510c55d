"""A real Rucio server on loopback for the integration tests (`tests/test_rucio_server.py`).

Rucio's server pins clash with ours, so it lives in its own virtualenv, created on first use by
the fixture itself (``pip install rucio==41.5.1``, about 20-60 s, 220 MB) and reused while its
Rucio version matches: ``.venv-rucio`` beside the project's ``.venv`` (ignored by git), or
``$HEALTHROBOT_RUCIO_VENV``. A lock file keeps two test processes from building it at once.

Per test session: a server config and an alembic.ini in a temporary folder, a SQLite database
bootstrapped with Rucio's own functions (schema, base VO, root account with a userpass identity
and a random password), then ``flask ... run --without-threads`` on 127.0.0.1 at a free port
(threads and SQLite give "database is locked"), ready when ``/ping`` answers, stopped at the end.

No network, no pip, a server that does not start: the fixture fails with the reason. It never
skips, so CI cannot pass without having run the integration test.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

RUCIO_VERSION = "41.5.1"
REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("HEALTHROBOT_RUCIO_VENV") or REPO / ".venv-rucio")
INSTALL_TIMEOUT = 900  # seconds for pip, on a slow mirror
START_TIMEOUT = 60  # seconds until /ping answers
ROOT_IDENTITY = "ddmlab"


class RucioServerError(RuntimeError):
    """The server's virtualenv, database or process could not be set up."""


# -- the virtualenv --------------------------------------------------------------------------------
def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import rucio.version as v; print(v.version_string())"],
                          capture_output=True, text=True, env=_clean_env(), timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path = VENV, version: str = RUCIO_VERSION) -> tuple[Path, float]:
    """The server venv's python (created or replaced when its Rucio version differs) and the
    seconds spent installing (0 when reused)."""
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(python) == version:
            return python, 0.0
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"rucio=={version}"])
        for command in steps:
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=_clean_env(),
                                      timeout=INSTALL_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise RucioServerError(f"{' '.join(command)} took longer than {INSTALL_TIMEOUT} s") from None
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
                raise RucioServerError(
                    f"could not install the Rucio server for the integration test ({' '.join(command)}: "
                    f"exit {done.returncode}); it needs network access to PyPI (or a pip mirror):\n{tail}")
        found = _installed_version(python)
        if found != version:
            raise RucioServerError(f"{venv} holds Rucio {found!r} after installing {version}")
        return python, time.monotonic() - started


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for the server's processes: nothing of our venv or of any Rucio config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUCIO_", "PYTHON", "BEARER_TOKEN")) and k not in ("VIRTUAL_ENV", "X509_USER_PROXY")}
    env.update(extra)
    return env


# -- the server ------------------------------------------------------------------------------------
@dataclass
class RucioServer:
    url: str
    username: str  # root's userpass identity
    password_file: Path
    python: Path
    config: Path
    workdir: Path
    log: Path
    timings: dict[str, float]
    process: subprocess.Popen | None = None

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def env(self) -> dict[str, str]:
        return _clean_env(RUCIO_CONFIG=str(self.config), PATH=f"{self.python.parent}{os.pathsep}{os.environ['PATH']}",
                          TMPDIR=str(self.workdir / "tmp"))

    def run_daemon(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run one of Rucio's daemons (e.g. `abacus-collection-replica`, `--run-once`) in the server's venv."""
        command = [str(self.python.parent / f"rucio-{name}"), *args]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env(), cwd=self.workdir,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            raise RucioServerError(f"rucio-{name} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_configs(workdir: Path, python: Path, password: str) -> Path:
    site_packages = next((python.parent.parent / "lib").glob("python3*/site-packages"))
    database = f"sqlite:///{workdir / 'rucio.db'}"
    (workdir / "log").mkdir()
    (workdir / "tmp").mkdir()
    alembic_ini = workdir / "alembic.ini"
    alembic_ini.write_text(f"""\
[alembic]
script_location = {site_packages / 'rucio' / 'db' / 'sqla' / 'migrate_repo'}
sqlalchemy.url = {database}

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = WARNING
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
""")
    config = workdir / "rucio.cfg"
    config.write_text(f"""\
[common]
logdir = {workdir / 'log'}
loglevel = WARNING

[database]
default = {database}

[alembic]
cfg = {alembic_ini}

[bootstrap]
userpass_identity = {ROOT_IDENTITY}
userpass_pwd = {password}
userpass_email = root@localhost

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
""")
    return config


BOOTSTRAP = """\
from rucio.db.sqla.util import build_database, create_base_vo, create_root_account
build_database()
create_base_vo()
create_root_account()
"""


def start_server(workdir: Path, python: Path) -> RucioServer:
    timings: dict[str, float] = {}
    password = secrets.token_urlsafe(16)
    password_file = workdir / "root.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    config = _write_configs(workdir, python, password)
    port = _free_port()
    server = RucioServer(url=f"http://127.0.0.1:{port}", username=ROOT_IDENTITY, password_file=password_file,
                         python=python, config=config, workdir=workdir, log=workdir / "server.log", timings=timings)

    started = time.monotonic()
    done = subprocess.run([str(python), "-c", BOOTSTRAP], capture_output=True, text=True, env=server.env(),
                          cwd=workdir, timeout=120, check=False)
    if done.returncode != 0:
        raise RucioServerError(f"bootstrapping the Rucio database failed:\n{done.stderr[-3000:]}")
    timings["bootstrap"] = time.monotonic() - started

    started = time.monotonic()
    with open(server.log, "w") as log:
        server.process = subprocess.Popen(
            [str(python.parent / "flask"), "--app", "rucio.web.rest.flaskapi.v1.main:application", "run",
             "--host", "127.0.0.1", "--port", str(port), "--without-threads"],
            stdout=log, stderr=subprocess.STDOUT, env=server.env(), cwd=workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RucioServerError(f"the Rucio server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/ping", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RucioServerError(f"the Rucio server did not answer /ping within {START_TIMEOUT} s:\n"
                                   f"{server.log_tail()}")
        time.sleep(0.1)
    timings["start"] = time.monotonic() - started
    return server


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory) -> Iterator[RucioServer]:
    """A running Rucio server (root account, userpass), for the whole session; fails, never skips."""
    problem = None
    try:
        python, install_seconds = ensure_venv()
        server = start_server(tmp_path_factory.mktemp("rucio-server"), python)
    except (RucioServerError, OSError, subprocess.SubprocessError) as exc:
        problem = f"Rucio integration server unavailable: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    server.timings["install"] = install_seconds
    seconds = {k: round(v, 1) for k, v in server.timings.items()}
    sys.stderr.write(f"\nRucio server {server.url}, seconds: {json.dumps(seconds)}\n")
    try:
        yield server
    finally:
        server.stop()
