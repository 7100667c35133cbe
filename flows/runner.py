"""Run infrastructure for haloflow flows: one Prefect API server, one Dask cluster.

Why this module exists
----------------------
A Prefect flow run with no API configured starts a *temporary* server (about
7 s) in every process that needs one.  With a :class:`~prefect_dask.DaskTaskRunner`
each Dask worker process then starts its own, all on the same SQLite file, and
runs fail with ``database is locked``.  So haloflow runs ONE server per run (or
uses the configured ``PREFECT_API_URL``) and hands its URL to every process it
starts through ``os.environ``.

Import order matters
--------------------
Prefect reads its settings when it is imported.  This module therefore never
imports ``prefect`` (nor ``prefect_dask``, which imports it) at module level:

* :func:`start_local_server`, :class:`LocalServer` and :func:`configured_api_url`
  never import prefect at all.
* :func:`ensure_api` should be entered **before** ``prefect`` is imported in
  the calling process, so that the process and every process it starts
  afterwards (Dask workers included) see ``PREFECT_API_URL``.  If prefect is
  already imported it still works for this process (it also overrides
  prefect's in-process settings for the block), but do it early when you can.
  Wrap the whole run in ONE ``ensure_api`` block: after it, a prefect imported
  inside the block still names the stopped server.
* :func:`make_task_runner` imports ``prefect_dask`` when called (typically at
  flow-decoration time); worker processes are spawned when the flow *runs*, so
  they inherit whatever ``os.environ`` holds at that moment.
* :func:`drain_prefect_workers` (called by :func:`ensure_api` and
  :meth:`LocalServer.stop`) flushes queued logs/events before a server stops.

A typical entry point::

    from flows.runner import ensure_api

    def main():
        with ensure_api():
            from flows.pipeline import pipeline_flow   # imports prefect now
            pipeline_flow(...)

    if __name__ == "__main__":   # required: Dask worker processes use "spawn"
        main()

Dask clusters: tests and long sessions reuse one cluster with
``some_flow.with_options(task_runner=make_task_runner(cluster="tcp://..."))``.
Workers of an external cluster must have been started with the same
``PREFECT_API_URL`` in their environment.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CLUSTER_ENV_VAR",
    "BackgroundCluster",
    "LocalServer",
    "PrefectServer",
    "api_and_local_cluster",
    "configured_api_url",
    "database_seed_dir",
    "drain_prefect_workers",
    "ensure_api",
    "find_free_port",
    "local_api_url",
    "local_cluster_kwargs",
    "make_task_runner",
    "plain_http_client_tls",
    "quick_client_tls",
    "server_environment",
    "ServerLaunch",
    "start_local_server",
    "started_here",
    "without_flow_heartbeats",
]

#: Environment variable naming a default Dask scheduler address for flows.
CLUSTER_ENV_VAR = "HALOFLOW_CLUSTER"

_LOOPBACK = "127.0.0.1"

#: Settings given to every server this module starts (and, for the analytics
#: flag, to the processes that talk to it).
_SERVER_SETTINGS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_API_HOST": _LOOPBACK,
    # The local run server has nothing to schedule: no deployments, no workers.
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    # Nor automations: their two services (triggers, actions) cost about 1.2 s
    # of each start-up (the actions service builds a second API app to call).
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}

#: Settings above that the caller's environment may override.
_SERVER_DEFAULTS_ONLY = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED",
    "PREFECT_SERVER_LOGGING_LEVEL",
}

#: Given (as defaults) to a server whose database is a copy of the seed: its
#: block types were registered when the seed was made, so neither the
#: registration nor the check whether it is due (a hash of every block class,
#: about 0.3 s) runs again.
_SEEDED_SERVER_SETTINGS = {
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    # Nor are its migrations run again: the seed is one per Prefect version (:func:`database_seed_dir`),
    # saved after its server's migrations ended. Alembic's check that there is none to run costs
    # about 0.2 s before the server answers.
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
}

_RUNNING: set[LocalServer] = set()

#: Scheduler addresses of the local clusters this process started and has not closed.
_STARTED_HERE: set[str] = set()


# Only the database: Prefect's memo_store.toml (skip block registration) is
# keyed by the database URL, i.e. by PREFECT_HOME, so it never carries over.
_SEED_FILES = ("prefect.db",)


def database_seed_dir() -> Path:
    """Cache directory of the seed database used by ``seed_database=True``.

    ``$HALOFLOW_CACHE_DIR`` or ``$XDG_CACHE_HOME/haloflow`` or
    ``~/.cache/haloflow``, then ``prefect-<version>-db``: one seed per Prefect
    version, since the schema follows the version.
    """
    from importlib.metadata import version

    base = os.environ.get("HALOFLOW_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "haloflow")
    return Path(base) / f"prefect-{version('prefect')}-db"


def _uses_default_database() -> bool:
    return not any(os.environ.get(k) for k in (
        "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"))


def _copy_seed(seed: Path, home: Path) -> bool:
    if not all((seed / name).is_file() for name in _SEED_FILES):
        return False
    try:
        for name in _SEED_FILES:
            shutil.copyfile(seed / name, home / name)
    except OSError:
        return False
    return True


def _save_seed(home: Path, seed: Path) -> None:
    """Snapshot the (just migrated, still empty) database of a running server."""
    import sqlite3

    if (seed / "prefect.db").exists() or not (home / "prefect.db").is_file():
        return
    seed.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=seed.name + ".tmp-", dir=seed.parent))
    try:
        # The online-backup API gives a consistent copy (WAL included) while
        # the server keeps running.
        src = sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(tmp / "prefect.db")
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        os.rename(tmp, seed)  # atomic; fails if another process won the race
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_free_port(host: str = _LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _urlopen_no_proxy(url: str, timeout: float) -> int:
    # A direct opener: HTTP(S)_PROXY must not capture requests to 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status


def _warm_up(url: str) -> threading.Thread:
    """GET ``url`` in a daemon thread, ignoring the answer.

    ``/api/health`` answers before the server has touched its database: its
    first real request then takes about 0.6 s more (the API version check a
    flow run makes first). Made meanwhile, while the caller imports its flow.
    """
    def get() -> None:
        with contextlib.suppress(Exception):
            _urlopen_no_proxy(url, timeout=30)

    thread = threading.Thread(target=get, name="haloflow-server-warm-up", daemon=True)
    thread.start()
    return thread


def _prefect_command() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "prefect"]


# Linux: the server gets SIGTERM if the thread that started it dies (even by
# SIGKILL), so a killed run or test session leaves no orphan server behind.
# A tiny launcher sets PR_SET_PDEATHSIG (kept across exec) and execs prefect:
# no preexec_fn, which is unsafe once threads exist.
_PDEATHSIG_LAUNCHER = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("parent exited before the Prefect server started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _server_argv() -> list[str]:
    command = [*_prefect_command(), "server", "start"]
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *command]
    return command


def server_environment(home: Path, port: int, base: dict[str, str] | None = None,
                       *, seeded: bool = False) -> dict[str, str]:
    """Environment for a ``prefect server start`` child bound to 127.0.0.1:``port``.

    The port goes in ``PREFECT_SERVER_API_PORT`` (not ``--port``) so that the
    UI also calls the right port, and ``PREFECT_API_URL`` is set to the
    server's own URL so a parent's value cannot leak into the UI settings.
    ``seeded``: the database in ``home`` is a copy of the seed (block types
    already registered), so the server does not register them again.
    """
    env = dict(os.environ if base is None else base)
    for key, value in _SERVER_SETTINGS.items():
        if key in _SERVER_DEFAULTS_ONLY:
            env.setdefault(key, value)  # e.g. a served deployment's server needs its scheduler
        else:
            env[key] = value
    if seeded:
        for key, value in _SEEDED_SERVER_SETTINGS.items():
            env.setdefault(key, value)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_API_PORT"] = str(port)
    env["PREFECT_API_URL"] = local_api_url(port)
    # A profile chosen in the parent must not redirect the server's settings.
    env.pop("PREFECT_PROFILE", None)
    env.pop("PREFECT_PROFILES_PATH", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalServer:
    """A ``prefect server start`` subprocess listening on 127.0.0.1 only.

    Create it with :func:`start_local_server` (or :meth:`LocalServer.start`).
    Usable as a context manager: leaving the block stops the server.

    Attributes
    ----------
    process : subprocess.Popen
        The server process (leader of its own process group).
    port : int
    home : pathlib.Path
        The server's ``PREFECT_HOME`` (holds ``prefect.db``).
    log_path : pathlib.Path
        File receiving the server's stdout and stderr.
    """

    host = _LOOPBACK

    def __init__(self, process: subprocess.Popen, port: int, home: Path, log_path: Path,
                 *, owns_home: bool = False) -> None:
        self.process = process
        self.port = int(port)
        self.home = Path(home)
        self.log_path = Path(log_path)
        self._owns_home = owns_home
        self._log_file: Any = None
        self._started_by = os.getpid()  # a process forked from this one (a local worker) leaves it alone

    # -- construction -------------------------------------------------------
    @classmethod
    def start(cls, home: Path | str | None = None, port: int | None = None,
              timeout: float = 60, ui: bool = True,
              seed_database: bool = False) -> LocalServer:
        """Start a server and wait until ``/api/health`` answers 200.

        Parameters
        ----------
        home : path, optional
            ``PREFECT_HOME`` for the server (its SQLite database lives there).
            Default: a new temporary directory, deleted by :meth:`stop`.
        port : int, optional
            Default: a free port.  If ``None`` and the chosen port is taken
            before the server binds it, a new one is tried (3 attempts).
        timeout : float
            Seconds to wait for the health check.
        ui : bool
            Serve the web UI.
        seed_database : bool
            If ``home`` holds no database yet, start from a copy of an empty,
            already migrated one kept in a per-user cache (see
            :func:`database_seed_dir`; made from the first server started this
            way).  A fresh database costs about 9.5 s of migrations; a seeded
            start about 3 s.

        Raises
        ------
        RuntimeError
            The server exited or did not become healthy in time; the message
            ends with the tail of the server log.
        """
        return cls.launch(home=home, port=port, ui=ui, seed_database=seed_database).wait(timeout)

    @classmethod
    def launch(cls, home: Path | str | None = None, port: int | None = None,
               ui: bool = True, seed_database: bool = False) -> ServerLaunch:
        """Spawn a server and return at once; :meth:`ServerLaunch.wait` gives it once healthy.

        Parameters as :meth:`start`.  Something else can be done while the
        server starts (it takes seconds); :meth:`ServerLaunch.cancel` stops it
        if it is not wanted after all.
        """
        return ServerLaunch(cls, home, port, ui, seed_database)

    @classmethod
    def _spawn(cls, home: Path, port: int, ui: bool, owns_home: bool, seeded: bool = False) -> LocalServer:
        log_path = home / f"server-{port}.log"
        env = server_environment(home, port, seeded=seeded)
        env["PREFECT_SERVER_UI_ENABLED"] = "true" if ui else "false"
        log_file = open(log_path, "ab")
        popen_kwargs: dict[str, Any] = {}
        if os.name == "posix":
            popen_kwargs["start_new_session"] = True  # own process group
        else:  # pragma: no cover - Windows
            popen_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        process = subprocess.Popen(
            _server_argv(),
            env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=str(home), **popen_kwargs,
        )
        server = cls(process, port, home, log_path, owns_home=owns_home)
        server._log_file = log_file
        _RUNNING.add(server)
        return server

    def _await_health(self, timeout: float) -> None:
        """Wait for ``/api/health``; if it does not come, stop the process and raise with the log's tail.

        Once healthy, the server is sent its first API request in the
        background (:func:`_warm_up`).
        """
        try:
            self._wait_healthy(timeout)
            _warm_up(f"{self.api_url}/admin/version")
        except RuntimeError as exc:
            self.stop(drain=False, _remove_home=False)
            raise RuntimeError(
                f"{exc}\n--- tail of server log {self.log_path} ---\n{self.log_tail()}"
            ) from None
        except BaseException:  # KeyboardInterrupt while waiting
            self.stop(drain=False, _remove_home=False)
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                in_use = "already in use" in self.log_tail()
                raise RuntimeError(
                    f"Prefect server on {self.host}:{self.port} exited with code {code} "
                    f"before answering /api/health" + (" (port already in use)" if in_use else "")
                )
            if self.healthy(timeout=1.0):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prefect server on {self.host}:{self.port} did not answer "
                    f"/api/health within {timeout:g} s"
                )
            time.sleep(0.1)

    # -- properties ---------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the UI, when enabled)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api``: the value for ``PREFECT_API_URL``."""
        return f"{self.url}/api"

    @property
    def pid(self) -> int:
        return self.process.pid

    def healthy(self, timeout: float = 2.0) -> bool:
        """True if ``GET /api/health`` answers 200."""
        try:
            return _urlopen_no_proxy(f"{self.api_url}/health", timeout) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def log_tail(self, n_lines: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "<no server log>"
        return "\n".join(lines[-n_lines:])

    # -- shutdown -----------------------------------------------------------
    def stop(self, timeout: float = 10, *, drain: bool = True, _remove_home: bool = True) -> None:
        """Terminate the server's process group, wait, kill if needed.

        With ``drain`` (default), first flush this process's queued Prefect
        logs and events (:func:`drain_prefect_workers`).  Idempotent.  Deletes
        ``home`` if it was a temporary directory made by :meth:`start`; such a
        server is killed at once, not asked to shut down: its database is
        deleted next, so its graceful shutdown (0.2 s idle, up to 0.7 s after
        a run) would save nothing.
        """
        proc = self.process
        if drain and proc.poll() is None:
            with contextlib.suppress(Exception):
                drain_prefect_workers()
        if proc.poll() is None:
            discarded = self._owns_home and _remove_home
            if os.name == "posix":
                self._signal(signal.SIGKILL if discarded else signal.SIGTERM, kill=discarded)
            else:
                self._signal(None, kill=discarded)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL if os.name == "posix" else None, kill=True)
                proc.wait(timeout)
        _RUNNING.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if _remove_home and self._owns_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def _signal(self, sig: Any, kill: bool = False) -> None:
        if os.name == "posix":
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        else:  # pragma: no cover - Windows
            self.process.kill() if kill else self.process.terminate()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else f"exited {self.process.returncode}"
        return f"<LocalServer {self.api_url} pid={self.pid} {state}>"


#: Alias: the context-manager class for a local Prefect server.
PrefectServer = LocalServer


class ServerLaunch:
    """A local Prefect server spawned and not yet waited for (:meth:`LocalServer.launch`)."""

    def __init__(self, server_class: type[LocalServer], home: Path | str | None, port: int | None,
                 ui: bool, seed_database: bool) -> None:
        self._class, self._ui = server_class, ui
        self._owns_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="haloflow-prefect-")) if home is None else Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        fresh = not (self.home / "prefect.db").exists()
        self._seed = database_seed_dir() if seed_database and fresh and _uses_default_database() else None
        self._seeded = self._seed is not None and _copy_seed(self._seed, self.home)
        self._fixed_port = port
        self._attempts = (3 if port is None else 1) + (1 if self._seeded else 0)
        self.server: LocalServer | None = self._spawn_next()

    @property
    def port(self) -> int:
        """The port the server was told to listen on (a new one only if it was not fixed and was taken)."""
        assert self.server is not None
        return self.server.port

    def _spawn_next(self) -> LocalServer:
        self._attempts -= 1
        return self._class._spawn(self.home, self._fixed_port or find_free_port(), self._ui, self._owns_home,
                                  seeded=self._seeded)

    def wait(self, timeout: float = 60) -> LocalServer:
        """The server, once ``/api/health`` answers 200; retried as :meth:`LocalServer.start` says.

        Raises RuntimeError (the last attempt's, with its log's tail) if no attempt answers.
        """
        if self.server is None:
            raise RuntimeError("this server launch was cancelled")
        while True:
            try:
                self.server._await_health(timeout)
            except RuntimeError as exc:
                retry = self._attempts > 0 and (self._seeded or "already in use" in str(exc))
                if self._seeded:  # a bad seed must not stop us: drop it, start fresh
                    shutil.rmtree(self._seed, ignore_errors=True)
                    for name in _SEED_FILES:
                        (self.home / name).unlink(missing_ok=True)
                    self._seeded = False
                if not retry:
                    self.server = None
                    if self._owns_home:
                        shutil.rmtree(self.home, ignore_errors=True)
                    raise
                self.server = self._spawn_next()
                continue
            if self._seed is not None and not self._seeded:  # fresh, just-migrated database
                with contextlib.suppress(Exception):
                    _save_seed(self.home, self._seed)
            server, self.server = self.server, None
            return server

    def cancel(self) -> None:
        """Stop the server if it is still starting or was never waited for (idempotent)."""
        if self.server is not None:
            self.server.stop(drain=False)
            self.server = None


def start_local_server(home: Path | str | None = None, port: int | None = None,
                       timeout: float = 60, ui: bool = True,
                       seed_database: bool = False) -> LocalServer:
    """Start ``prefect server start`` on 127.0.0.1 and wait for it to be healthy.

    Does not import prefect.  See :meth:`LocalServer.start` for parameters.
    Call ``.stop()`` (or use it as a context manager) when done.
    """
    return LocalServer.start(home=home, port=port, timeout=timeout, ui=ui,
                             seed_database=seed_database)


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_RUNNING):
        if server._started_by != os.getpid():
            continue
        with contextlib.suppress(Exception):
            server.stop(timeout=5, drain=False)


def drain_prefect_workers() -> None:
    """Send this process's queued Prefect logs and events now.

    Call before stopping the API server those go to; otherwise they are sent
    at interpreter exit to a dead server, which prints ``--- Error logging to
    API --- All connection attempts failed`` after about a minute of retries.
    A no-op if prefect was never imported here.
    """
    if "prefect.logging.handlers" not in sys.modules:
        return
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def _drain() -> None:
        # drain_all, not instance().drain(): instance() would start a new
        # worker (and, with no API URL, a temporary server) just to drain it.
        for service in (APILogWorker, EventsWorker):
            result = service.drain_all(at_exit=False)
            if inspect.isawaitable(result):
                await result

    run_coro_as_sync(_drain())


def configured_api_url() -> str | None:
    """The Prefect API URL configured by the environment, without importing prefect.

    Only ``os.environ["PREFECT_API_URL"]`` counts (profiles are not read).
    """
    return os.environ.get("PREFECT_API_URL") or None


#: Prefect's settings that say how its API client checks TLS certificates: one set by the user is left alone.
_CLIENT_TLS_SETTINGS = ("PREFECT_API_SSL_CERT_FILE", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY")


def plain_http_client_tls(api_url: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Settings that spare Prefect's API clients loading certifi's bundle when the API is plain HTTP.

    Every Prefect client builds a TLS context from certifi's 150-odd CA
    certificates (about 22 ms), even for an ``http://`` API, where it is
    never used: a run makes about 20 (each stage task two, on its worker).
    Pointing ``PREFECT_API_SSL_CERT_FILE`` at a file of one of those
    certificates makes it 0.6 ms. ``{}``, changing nothing, for an
    ``https://`` API (or none known), when the environment sets either TLS
    setting itself, or when the file cannot be made. Only for processes on
    this machine: the path goes to a run's tasks in its settings.

    >>> plain_http_client_tls("https://api.prefect.cloud/api/", {})
    {}
    >>> plain_http_client_tls("http://127.0.0.1:4200/api", {"PREFECT_API_SSL_CERT_FILE": "mine.pem"})
    {}
    """
    if not api_url or not api_url.lower().startswith("http://") or any(k in environ for k in _CLIENT_TLS_SETTINGS):
        return {}
    path = _one_ca_certificate()
    return {} if path is None else {"PREFECT_API_SSL_CERT_FILE": str(path)}


@contextlib.contextmanager
def quick_client_tls(api_url: str | None) -> Iterator[dict[str, str]]:
    """:func:`plain_http_client_tls`'s settings in ``os.environ`` for the block (restored after); yield them.

    Enter it before importing prefect: Prefect reads its settings as it is imported.
    """
    values = plain_http_client_tls(api_url, os.environ)
    os.environ.update(values)
    try:
        yield values
    finally:
        for key in values:
            os.environ.pop(key, None)


def _one_ca_certificate() -> Path | None:
    """A file holding the first certificate of certifi's bundle (made once per machine, in the temporary folder)."""
    try:
        import certifi

        bundle = Path(certifi.where()).read_text()
        begin = bundle.index("-----BEGIN CERTIFICATE-----")
        end_marker = "-----END CERTIFICATE-----"
        certificate = bundle[begin:bundle.index(end_marker, begin) + len(end_marker)] + "\n"
        path = Path(tempfile.gettempdir()) / f"haloflow-ca-{hashlib.sha256(certificate.encode()).hexdigest()[:16]}.pem"
        if not path.is_file() or path.read_text() != certificate:
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_text(certificate)
            os.replace(partial, path)
        return path
    except (ImportError, OSError, ValueError):
        return None


def local_api_url(port: int) -> str:
    """The API URL of a local server on ``port`` (what :func:`ensure_api` sets ``PREFECT_API_URL`` to).

    >>> local_api_url(4200)
    'http://127.0.0.1:4200/api'
    """
    return f"http://{_LOOPBACK}:{int(port)}/api"


@contextlib.contextmanager
def ensure_api(home: Path | str | None = None, timeout: float = 60,
               ui: bool = True, seed_database: bool = False, port: int | None = None,
               launch: ServerLaunch | None = None) -> Iterator[str]:
    """Make sure a Prefect API is available for this block; yield its URL.

    If ``PREFECT_API_URL`` is set in ``os.environ``, yield it and change nothing.
    Otherwise start a local server (:func:`start_local_server`), set
    ``PREFECT_API_URL`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` in
    ``os.environ`` (inherited by every process started inside the block,
    Dask workers included), yield the URL, and on exit stop the server and
    restore the environment.  ``home``, ``timeout``, ``ui``,
    ``seed_database`` and ``port`` go to :func:`start_local_server`: a port
    chosen beforehand (:func:`local_api_url`) lets processes started while the
    server starts be given its URL.  ``launch``: a server already spawned
    (:meth:`LocalServer.launch`) to wait for instead of starting one; the
    block owns it from then on.

    Enter it BEFORE importing prefect.  If prefect is already imported in
    this process, its in-process settings (context and process-global) are
    also overridden for the block.  Queued Prefect logs/events are flushed
    before the server stops.
    """
    existing = configured_api_url()
    if existing:
        if launch is not None:
            launch.cancel()
        yield existing
        return

    if launch is not None:
        server = launch.wait(timeout)
    else:
        server = start_local_server(home=home, port=port, timeout=timeout, ui=ui, seed_database=seed_database)
    new_values = {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    saved = {k: os.environ.get(k) for k in new_values}
    try:
        os.environ.update(new_values)
        with contextlib.ExitStack() as stack:
            if "prefect.settings" in sys.modules:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
                # Prefect's background services (log and event workers) run in
                # a thread that reads the process-global settings context, not
                # the context variable set above: swap that one as well
                # (private helper, used by prefect_test_harness).
                import prefect.context as prefect_context

                swap = getattr(prefect_context, "_temporary_global_settings_context", None)
                if swap is not None:
                    stack.enter_context(swap(prefect_context.get_settings_context()))
            try:
                yield server.api_url
            finally:
                # Flush queued logs/events while the settings still name this
                # server (drained later, they would go to a temporary server).
                with contextlib.suppress(Exception):
                    drain_prefect_workers()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop(drain=False)  # drained above, while the settings named it


@contextlib.contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Flow runs started in the block send no heartbeats: for a run on a server started for it alone.

    Prefect sends a flow run's heartbeats (every 180 s by default) so that a
    server can mark a run whose process died as crashed. Its heartbeat thread
    sleeps a whole second at a time, and the run's end waits for it: 0 to 1 s
    after the flow has returned, 0.5 s on average. A server that lives and
    dies with the one run has no use for the heartbeats. Import prefect first.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextlib.contextmanager
def api_and_local_cluster(seed_database: bool = False, launch: ServerLaunch | None = None,
                          **cluster_options: Any) -> Iterator[str]:
    """:func:`ensure_api` with a local Dask cluster started meanwhile; yield the cluster's address.

    The cluster (:class:`BackgroundCluster`, of :func:`local_cluster_kwargs`
    made from ``cluster_options``; ``start_method`` and ``then`` go to
    :meth:`BackgroundCluster.start`) starts in a thread while the Prefect server
    starts: the two mostly wait on imports in their own processes, so a run
    is ready about a cluster start-up (3-4 s) sooner.  Its workers are given
    the API URL the server will answer on.  The cluster is closed before the
    server stops, so the workers' last logs still reach it.  ``launch``: the
    server, spawned earlier on a fixed port (:meth:`LocalServer.launch`).
    """
    if configured_api_url():
        port = None
    else:
        port = launch.port if launch is not None else find_free_port()
    env = {} if port is None else {"PREFECT_API_URL": local_api_url(port), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cluster = BackgroundCluster.start(env=env, **cluster_options)
    try:
        with ensure_api(seed_database=seed_database, port=port, launch=launch):
            try:
                yield cluster.address()
            finally:
                cluster.close()
    finally:
        cluster.close()  # the server did not start: the cluster must not outlive the call


def _quiet_distributed_logging(level: int = logging.WARNING) -> None:
    # distributed gives its logger its own stderr handler (propagate=False) only
    # when the root logger has no handler at import time.  When prefect has set
    # up logging first (e.g. after ``from prefect import flow``), "distributed"
    # is left at INFO with no handler, and every scheduler/nanny INFO line (~25
    # per flow run) goes to Prefect's console handler; LocalCluster's
    # ``silence_logs`` only silences distributed's own stream handlers.
    logger = logging.getLogger("distributed")
    if not logger.handlers and logger.getEffectiveLevel() < level:
        logger.setLevel(level)


def make_task_runner(cluster: str | Any | None = None, n_workers: int | None = None,
                     threads_per_worker: int = 1, memory_limit: str | int | float | None = None,
                     **cluster_kwargs: Any):
    """A :class:`prefect_dask.DaskTaskRunner` for haloflow flows.

    Parameters
    ----------
    cluster : str or flows.cluster.ClusterClass or dict, optional
        Scheduler address ``"tcp://host:port"`` of an existing cluster, or a
        cluster class made for the flow run: a :class:`flows.cluster.ClusterClass`
        or the same mapping (``{"class": "dask_jobqueue.SLURMCluster",
        "kwargs": {...}, "adapt": {"minimum": 0, "maximum": 50}}``), passed to
        ``DaskTaskRunner(cluster_class=..., cluster_kwargs=..., adapt_kwargs=...)``.
        Default: ``os.environ["HALOFLOW_CLUSTER"]`` if set and no local-cluster
        option (``n_workers``, ``memory_limit``, ``**cluster_kwargs``) is given.
        Otherwise the flow run creates (and closes) its own
        ``distributed.LocalCluster``.
    n_workers : int, optional
        Worker processes of the local cluster (default ``os.cpu_count()``).
    threads_per_worker : int
        Threads per local worker (default 1: chunk work is NumPy/SciPy code
        that releases the GIL only partly; processes scale better).
    memory_limit : optional
        Per-worker memory limit of the local cluster (Dask's default ``"auto"``
        splits the machine's memory between workers).
    **cluster_kwargs
        Extra ``LocalCluster`` keyword arguments.

    Notes
    -----
    The local cluster always uses worker *processes* bound to 127.0.0.1 with no
    dashboard.  Worker processes are spawned when the flow runs and inherit
    ``os.environ`` then, so enter :func:`ensure_api` before running the flow.
    Scripts must guard their entry point with ``if __name__ == "__main__":``
    (workers are started with the ``spawn`` method).
    """
    from prefect_dask import DaskTaskRunner  # imports prefect: keep it lazy

    _quiet_distributed_logging()
    local_options = n_workers is not None or memory_limit is not None or bool(cluster_kwargs)
    if cluster:
        if local_options:
            raise ValueError("n_workers/memory_limit/cluster kwargs apply only to a local cluster, "
                             f"not to the cluster {cluster}")
        if isinstance(cluster, str):
            return DaskTaskRunner(address=cluster)
        from flows.cluster import ClusterClass

        made = cluster if isinstance(cluster, ClusterClass) else ClusterClass.model_validate(cluster)
        return DaskTaskRunner(**made.runner_kwargs())
    env_address = os.environ.get(CLUSTER_ENV_VAR)
    if env_address and not local_options:
        return DaskTaskRunner(address=env_address)
    kwargs = local_cluster_kwargs(n_workers, threads_per_worker, memory_limit, **cluster_kwargs)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def local_cluster_kwargs(n_workers: int | None = None, threads_per_worker: int = 1,
                         memory_limit: str | int | float | None = None, **cluster_kwargs: Any) -> dict[str, Any]:
    """``distributed.LocalCluster`` keyword arguments of haloflow's local cluster (see :func:`make_task_runner`).

    >>> kwargs = local_cluster_kwargs(3, memory_limit="2GiB")
    >>> kwargs["n_workers"], kwargs["memory_limit"], kwargs["processes"], kwargs["host"]
    (3, '2GiB', True, '127.0.0.1')
    """
    kwargs: dict[str, Any] = {
        "n_workers": n_workers or os.cpu_count() or 1,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": _LOOPBACK,
        # No dashboard; the scheduler still serves /health and /metrics over
        # HTTP, by default on :8787 (a second cluster then warns "Port 8787 is
        # already in use"): a random loopback port instead.
        "dashboard_address": None,
        "scheduler_kwargs": {"dashboard_address": f"{_LOOPBACK}:0"},
        "preload": ["flows.worker_preload"],  # imports done while the cluster starts, not at the first task
    }
    if memory_limit is not None:
        kwargs["memory_limit"] = memory_limit
    scheduler_kwargs = {**kwargs["scheduler_kwargs"], **cluster_kwargs.pop("scheduler_kwargs", {})}
    kwargs.update(cluster_kwargs, scheduler_kwargs=scheduler_kwargs)
    return kwargs


class BackgroundCluster:
    """A local Dask cluster started in a thread, so that it starts while something else does.

    The command line starts the run's local cluster this way while the Prefect
    server starts (each takes seconds, mostly imports in their own processes),
    then gives the flow its :attr:`address`.  The workers get ``env`` (the
    API URL of the server still starting) on top of ``os.environ``::

        cluster = BackgroundCluster.start(n_workers=1, memory_limit="1GiB")  # returns at once
        address = cluster.address()  # waits for the start; raises what it raised
        cluster.close()
    """

    def __init__(self, kwargs: dict[str, Any], start_method: str = "forkserver",
                 then: Callable[[], Any] | None = None) -> None:
        import threading

        if start_method not in _WORKER_STARTS:
            raise ValueError(f"start_method must be one of {sorted(_WORKER_STARTS)}, not {start_method!r}")
        self._kwargs = kwargs
        self._start_method = start_method
        self._then = then
        self._cluster: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._make, name="haloflow-cluster-start", daemon=True)

    @classmethod
    def start(cls, env: dict[str, str] | None = None, *, start_method: str = "forkserver",
              then: Callable[[], Any] | None = None, **options: Any) -> BackgroundCluster:
        """Begin starting a cluster of :func:`local_cluster_kwargs` (``options``), its workers given ``env``.

        ``start_method``: how the workers start. ``"forkserver"``: forked from
        this process's fork server (:func:`forked_workers`); ``"fork"``: forked
        from this process once the starting thread has imported what they need
        (:func:`forked_from_here`); ``"spawn"``: each a new interpreter that
        imports for itself. ``then``: called in the starting thread once the
        cluster runs (not if it failed); what it raises is ignored.
        """
        kwargs = local_cluster_kwargs(**options)
        if env:
            kwargs["env"] = {**kwargs.get("env", {}), **env}
        started = cls(kwargs, start_method, then)
        started._thread.start()
        return started

    def _make(self) -> None:
        try:
            _quiet_distributed_logging()
            from distributed import LocalCluster

            with _WORKER_STARTS[self._start_method]():
                cluster = LocalCluster(**self._kwargs)
        except BaseException as error:  # handed to the thread that asks for the address
            self._error = error
            return
        with self._lock:
            self._cluster = cluster
            _STARTED_HERE.add(cluster.scheduler_address)
        if self._then is not None:
            with contextlib.suppress(Exception):
                self._then()

    def address(self) -> str:
        """The scheduler's address, once the cluster has started (and ``then`` has returned)."""
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"the local Dask cluster did not start: {self._error}") from self._error
        if self._cluster is None:
            raise RuntimeError("the local Dask cluster was closed before it was used")
        return self._cluster.scheduler_address

    def close(self) -> None:
        """Close the cluster (idempotent), after waiting for a start still under way."""
        self._thread.join()
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            _STARTED_HERE.discard(cluster.scheduler_address)
            with contextlib.suppress(Exception):
                cluster.close()


#: What every worker imports before its first task (``flows.worker_preload``); for haloflow's own local
#: cluster, imported once in the process its workers are forked from, not once in each worker. The flows:
#: a stage task carries its flow run's context, whose flow a worker imports to read it (0.1-0.13 s, at the
#: first task of a run's first stage, on each worker).
WORKER_IMPORTS = ("distributed", "prefect.task_engine", "tasks.stages", "flows.pipeline", "imageops.smoothing",
                  "imageops.histogram")


def prepare_worker_code() -> None:
    """Import :data:`WORKER_IMPORTS` and load the compiled kernels (smoothing, float histogram).

    Done in a worker as it starts, or once in the process local workers are
    forked from, so that no worker pays it at its first task.
    """
    for name in WORKER_IMPORTS:
        importlib.import_module(name)
    from imageops import histogram, smoothing

    smoothing.warm_up()
    histogram.warm_up()


def forkserver_usable() -> bool:
    """Whether processes can be forked from a fork server here: a POSIX system other than macOS (where forking after imports is unsafe)."""
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"


def fork_usable() -> bool:
    """Whether workers can be forked from this process: a POSIX system other than macOS (:func:`forkserver_usable`)."""
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"


@contextlib.contextmanager
def forked_workers() -> Iterator[None]:
    """Local Dask workers started in the block are forked from a process that has imported :data:`WORKER_IMPORTS`.

    Spawned, each worker imports Prefect's task engine, SciPy, scikit-image
    and zarr itself (2.3-2.6 CPU s each): on two cores, while the Prefect
    server and the flow import theirs, that is the longest part of a cold
    run's start.  Python's ``forkserver`` imports them once, in a server
    process started at the first worker (with the environment the nanny sets
    for spawning); each worker is a fork of it, single-threaded at the fork.
    A process has one fork server, and the first to start it chooses what it
    imports: ``haloflow serve`` keeps its own for its flow runs
    (:mod:`deployments.forked_runs`) and spawns its cluster's workers.
    A worker restarted later, outside the block, is spawned as before.  The
    worker's own preload still runs in each worker (its malloc and profiler
    settings) and reads Prefect's settings again from the worker's
    environment (:func:`flows.worker_preload.refresh_prefect_settings`).
    Where there is no usable fork server (:func:`forkserver_usable`), the
    workers are spawned.
    """
    if not forkserver_usable():
        yield
        return
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        get_mp_context().set_forkserver_preload(list(WORKER_IMPORTS))  # ignored once one runs: its first user chose
        yield


@contextlib.contextmanager
def forked_from_here() -> Iterator[None]:
    """Local Dask workers started in the block are forked from this process, once it has imported :data:`WORKER_IMPORTS`
    and loaded the compiled kernels (:func:`prepare_worker_code`).

    For a process that imports the flows anyway (``haloflow run``): the
    imports are paid once, here, instead of once here and once in a fork
    server at the same time (about 3 CPU s each, on a machine whose cores
    the starting Prefect server also needs). The imports run in the calling
    thread; start the block where no other thread of this process is
    importing or holding a lock a worker needs. Distributed forks each worker
    from a thread of its own; the worker keeps only that thread and starts its
    own event loop. As with :func:`forked_workers`, a worker restarted later,
    outside the block, is spawned; the worker's preload runs in it and reads
    Prefect's settings again from its environment; and where forking is not
    usable (:func:`fork_usable`), the workers are spawned (the imports are
    made here all the same: this process needs them).
    """
    prepare_worker_code()
    if not fork_usable():
        yield
        return
    import dask

    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        yield


#: How :class:`BackgroundCluster` starts its workers, by ``start_method``.
_WORKER_STARTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "forkserver": forked_workers,
    "fork": forked_from_here,
    "spawn": contextlib.nullcontext,
}


def started_here(address: str) -> bool:
    """Whether ``address`` is the scheduler of a local cluster this process started (:class:`BackgroundCluster`)."""
    return address in _STARTED_HERE
