"""Session-wide test infrastructure: one Prefect API server, one Dask cluster.

``pytest_configure`` runs before any test module is imported, hence before
prefect is: it starts ONE local Prefect server for the whole session and puts
its URL in ``os.environ["PREFECT_API_URL"]``, where prefect (in this process,
and in every Dask worker process started later) reads it.  Without it every
flow run would start its own temporary server (~7-10 s each), and Dask
workers would each start one on a shared SQLite file ("database is locked").

If ``PREFECT_API_URL`` is already set, that API is used and no server started.

Fixtures
--------
prefect_api_url : str (session)
    The Prefect API URL of the session.
prefect_server : flows.runner.LocalServer or None (session)
    The server started here, ``None`` when the API came from the environment.
dask_cluster : str (session)
    Scheduler address of a 2-worker, 1-thread-per-worker ``LocalCluster`` (worker
    processes, 127.0.0.1, no dashboard), whose workers reach the S3 server.
ui_prefect_server : flows.runner.LocalServer (session, ``tests/serving.py``)
    A second local Prefect server, for the tests that drive the UI, away from the other tests' writes.
s3_server, s3 : (session), (function)
    An S3-compatible server (moto) on 127.0.0.1, and a fresh bucket on it (``tests/s3.py``).  Use it with
    ``some_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import warnings
from types import SimpleNamespace

import pytest

from flows.runner import LocalServer, drain_prefect_workers, start_local_server
from tests.s3 import s3, s3_server  # noqa: F401  (fixtures: an S3 server on 127.0.0.1, a fresh bucket)
from tests.serving import serve, ui_prefect_server  # noqa: F401  (fixtures: a `haloflow serve` process, the UI tests' server)

_SERVER_KEY = pytest.StashKey["LocalServer | None"]()
#: The session server's address, for pytest-xdist workers (they run no pytest_configure of their own).
_SERVER_ENV = "HALOFLOW_TEST_SESSION_SERVER"
_ENV_KEY = pytest.StashKey["dict[str, str | None]"]()

#: Environment for the session, set before prefect is imported.
_SESSION_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Logs stay in the test process: pytest shows them for failing tests only.
    "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
    # No "View at http://..." link nor colour codes in captured logs.
    "PREFECT_UI_URL": os.environ.get("PREFECT_UI_URL", ""),
    "PREFECT_LOGGING_COLORS": "false",
    "PREFECT_CLI_COLORS": "false",
    # Scheduled deployments are tested: the session server schedules, and promptly.
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    # A request answered 503 (an error Prefect deems retryable, e.g. SQLite busy) leaves its exception in the
    # server's log, which the UI tests quote when the UI's create_flow_run keeps failing.
    "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVER_KEY] = None
    config.stash[_ENV_KEY] = {}
    if hasattr(config, "workerinput"):  # pytest-xdist worker: env inherited
        return
    if "prefect" in sys.modules:
        warnings.warn(
            "prefect was imported before tests/conftest.py configured the session; "
            "its settings will not see the session's PREFECT_API_URL",
            stacklevel=1,
        )
    saved: dict[str, str | None] = {key: os.environ.get(key) for key in (*_SESSION_ENV, "PREFECT_API_URL", _SERVER_ENV)}
    os.environ.update(_SESSION_ENV)  # before the server starts: it reads the scheduler settings
    config.stash[_ENV_KEY] = saved
    server: LocalServer | None = None
    if not os.environ.get("PREFECT_API_URL"):
        home = tempfile.mkdtemp(prefix="haloflow-test-prefect-")
        try:
            server = start_local_server(home=home, ui=True, seed_database=True)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        os.environ["PREFECT_API_URL"] = server.api_url
        # pytest-xdist workers inherit the environment, not this object: they rebuild its address from here.
        os.environ[_SERVER_ENV] = json.dumps({"url": server.url, "api_url": server.api_url, "port": server.port, "pid": server.pid,
                                              "log_path": str(server.log_path)})
    config.stash[_SERVER_KEY] = server
    config.stash[_ENV_KEY] = saved


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER_KEY, None)
    if server is not None:
        try:
            drain_prefect_workers()  # queued logs/events, before the server goes
        finally:
            server.stop(drain=False)
            shutil.rmtree(server.home, ignore_errors=True)
        config.stash[_SERVER_KEY] = None
    for key, value in config.stash.get(_ENV_KEY, {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    config.stash[_ENV_KEY] = {}


def pytest_report_header(config: pytest.Config) -> str:
    server = config.stash.get(_SERVER_KEY, None)
    if server is not None:
        return f"prefect: session server {server.api_url} (PREFECT_HOME={server.home})"
    return f"prefect: PREFECT_API_URL={os.environ.get('PREFECT_API_URL')}"


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    """URL of the session's Prefect API (``PREFECT_API_URL``)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        pytest.fail("PREFECT_API_URL is not set: tests/conftest.py pytest_configure did not run")
    return url


@pytest.fixture(scope="session")
def prefect_server(pytestconfig: pytest.Config) -> LocalServer | None:
    """The local server started for this session (its address, in a pytest-xdist worker), or ``None`` if the API was external."""
    server = pytestconfig.stash.get(_SERVER_KEY, None)
    if server is None and os.environ.get(_SERVER_ENV):
        return SimpleNamespace(**json.loads(os.environ[_SERVER_ENV]))
    return server


@pytest.fixture(scope="session")
def dask_cluster(prefect_api_url: str, s3_server):
    """Scheduler address of a session-wide 2-process ``distributed.LocalCluster``.

    Its worker processes inherit ``PREFECT_API_URL`` from this process, and the
    environment that points S3 clients at the session's S3 server (``s3_server``).
    """
    import distributed

    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # The scheduler's HTTP server (/health, /metrics) otherwise takes :8787
        # and a second cluster warns "Port 8787 is already in use" (an error here).
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster.scheduler_address


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the tests that serve deployments run on one worker, one after the other.

    They serve deployments of the same names (``large-image/large-image``) on
    the session's Prefect server: two ``haloflow serve`` processes at once
    would take each other's runs.
    """
    for item in items:
        if "deployments" in item.path.parts and item.path.parent.name == "deployments":
            item.add_marker(pytest.mark.xdist_group("prefect-deployments"))
