"""A ``haloflow serve`` process for tests, and the REST calls the Prefect UI makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


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

    def __init__(self, api: str, args: list[str], cluster: str, cwd: Path):
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_RUNNER_POLL_FREQUENCY"}
        env["HALOFLOW_CLUSTER"] = cluster  # and the runner queries for runs every QUERY_SECONDS, as served
        self.api = api
        self.log = cwd / "serve.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", *args],
            env=env, cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def deployment(self, flow: str, name: str) -> dict:
        def found():
            self._check_alive()
            response = httpx.get(f"{self.api}/deployments/name/{flow}/{name}")
            return response.json() if response.status_code == 200 else None

        return wait_for(found, 90, f"deployment {flow}/{name}")

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

        return wait_for(final, timeout, f"flow run {flow_run_id}")

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
    started = []

    def start(*args: str) -> Served:
        served = Served(prefect_api_url, list(args), dask_cluster, tmp_path)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


