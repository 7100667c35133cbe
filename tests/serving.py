"""A ``haloflow serve`` process for tests, and the REST calls the Prefect UI makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from flows.runner import start_local_server


def retryable_errors(prefect_server, most: int = 60) -> str:
    """The last lines of the session server's log from its last retryable error on (what a 503 hid), or why none."""
    log = getattr(prefect_server, "log_path", None)
    if not log or not Path(log).is_file():
        return "(no server log)"
    lines = Path(log).read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if "retryable exception" in line]
    if not starts:
        return "(the server logged no retryable error)"
    return "the server's last retryable error:\n" + "\n".join(lines[starts[-1]:starts[-1] + most])


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Served:
    """A ``haloflow serve`` process and the REST calls a UI would make."""

    def __init__(self, api: str, args: list[str], cluster: str | None, cwd: Path, environment: dict | None = None):
        """``cluster``: the Dask scheduler the runs compute on, or None for the cluster ``haloflow serve`` starts.

        ``environment``: variables set for the process on top of this one's.
        """
        env = {key: value for key, value in os.environ.items()
               if key not in ("PREFECT_RUNNER_POLL_FREQUENCY", "HALOFLOW_CLUSTER")}
        env["PREFECT_API_URL"] = api
        env.update(environment or {})
        if cluster is not None:
            env["HALOFLOW_CLUSTER"] = cluster
        self.api = api
        self.log = cwd / "serve.log"
        self.started = datetime.now(timezone.utc)
        self.process = subprocess.Popen(
            # faulthandler: a test that gives up on it makes it print every thread's stack (:meth:`stacks`).
            [sys.executable, "-X", "faulthandler", "-m", "flows.cli", "serve", *args],
            env=env, cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def deployment(self, flow: str, name: str) -> dict:
        """The deployment, once this process's runner has asked the server for its runs.

        A deployment of the same name may be left from an earlier test's
        ``haloflow serve``: it exists before this one has started. A run
        created then would wait for a runner that is not there yet.
        """

        def polled():
            self._check_alive()
            response = httpx.get(f"{self.api}/deployments/name/{flow}/{name}", timeout=30)
            if response.status_code != 200:
                return None
            deployment = response.json()
            last = deployment.get("last_polled")
            return deployment if last and datetime.fromisoformat(last) > self.started else None

        return self._wait(polled, 90, f"deployment {flow}/{name} polled by this haloflow serve")

    def run(self, deployment: dict, parameters: dict) -> httpx.Response:
        """``POST .../create_flow_run`` as the UI's Run button does; a 5xx (SQLite busy on a loaded
        machine, seen here once in a full run) is tried again, as a person would click again."""
        url = f"{self.api}/deployments/{deployment['id']}/create_flow_run"
        for _ in range(3):
            response = httpx.post(url, json={"parameters": parameters}, timeout=30)
            if response.status_code < 500:
                return response
            time.sleep(1)
        return response

    def wait_final(self, flow_run_id: str, timeout: float = 180) -> dict:
        def final():
            self._check_alive()
            run = httpx.get(f"{self.api}/flow_runs/{flow_run_id}", timeout=30).json()
            return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        return self._wait(final, timeout, f"flow run {flow_run_id}")

    def _wait(self, condition, timeout: float, what: str):
        try:
            return wait_for(condition, timeout, what)
        except AssertionError as timed_out:
            raise AssertionError(f"{self.stacks()}\n{timed_out}") from None

    def stacks(self) -> str:
        """Stop the process with SIGABRT, which makes it print its threads' stacks, and return its log's end.

        For a test that has given up on it: where was it stuck?
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return "haloflow serve's log, ending with its threads' stacks:\n" + self.log.read_text()[-4000:]

    def _check_alive(self):
        if self.process.poll() is not None:
            raise AssertionError("haloflow serve exited:\n" + self.log.read_text()[-3000:])

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)


@pytest.fixture
def serve(prefect_api_url, dask_cluster, tmp_path):
    """Start ``haloflow serve ARGS`` against the session's server and Dask cluster; stopped after the test.

    ``start(*args, server=S)``: against the Prefect server ``S`` instead, on
    the Dask cluster that ``haloflow serve`` starts itself (the session's
    workers send their task runs' events to the session's server).
    ``environment=``: variables for the process (:class:`Served`).
    """
    started = []

    def start(*args: str, server=None, environment: dict | None = None) -> Served:
        if server is None:
            served = Served(prefect_api_url, list(args), dask_cluster, tmp_path, environment)
        else:
            served = Served(server.api_url, list(args), None, tmp_path, environment)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture(scope="session")
def ui_prefect_server():
    """A Prefect server (with its UI) for the tests that drive the UI or its REST calls, and nothing else.

    Under the full suite the session's server is busy with the other tests'
    runs: its SQLite database answered the UI's ``create_flow_run`` with
    "database is locked" (503) for over a minute, and ``haloflow serve``'s
    registration of its deployments once waited 90 s. Here those tests'
    writes wait for no one else's.
    """
    server = start_local_server(ui=True, seed_database=True)  # in a home of its own, deleted by stop()
    try:
        yield server
    finally:
        server.stop(drain=False)


