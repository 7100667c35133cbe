"""Served flow runs forked from a preloaded fork server instead of spawned (``deployments.forked_runs``)."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
from pathlib import Path

import prefect.flow_engine
import psutil
import pytest
from prefect import flow

from deployments.forked_runs import forked_flow_runs, forkserver_usable

pytestmark = pytest.mark.skipif(not forkserver_usable(), reason="no forkserver start method here")


@pytest.fixture(autouse=True)
def no_fork_server_yet():
    """Each test starts from a process with no fork server running, as ``haloflow serve`` does.

    A process has one fork server, and what it imports is chosen by the first
    to start it: in this test process, that may have been a local cluster's
    workers (``flows.runner.forked_workers``), which do not import the flows.
    ``_stop`` is the method CPython's own tests stop it with.
    """
    multiprocessing.forkserver._forkserver._stop()
    yield


@flow(name="haloflow-test-where-am-i", persist_result=False)
def where_am_i(record: str) -> None:
    """Write down the process the run ran in, what it had imported before, and one variable of its environment."""
    import sys

    Path(record).write_text(json.dumps({
        "pid": os.getpid(), "ppid": os.getppid(), "preloaded": "flows.pipeline" in sys.modules,
        # What a run imports lazily (flows.run_preload): Pillow's PNG plugin is one no run imports before its end.
        "lazy_preloaded": "flows.run_preload" in sys.modules and "PIL.PngImagePlugin" in sys.modules,
        "marker": os.environ.get("HALOFLOW_TEST_MARKER"),
    }))


def test_a_run_started_inside_is_forked_from_the_fork_server_and_completes(tmp_path, prefect_api_url, monkeypatch):
    record = tmp_path / "record.json"
    with forked_flow_runs() as forked:
        assert forked
        # Set after the fork server started: the run still sees it, as a spawned run would.
        monkeypatch.setenv("HALOFLOW_TEST_MARKER", "set-later")
        process = prefect.flow_engine.run_flow_in_subprocess(where_am_i, parameters={"record": str(record)})
        process.join(120)
    assert process.exitcode == 0
    seen = json.loads(record.read_text())
    assert seen["ppid"] != os.getpid()  # a spawned run is a child of this process
    assert psutil.Process(seen["ppid"]).ppid() == os.getpid()  # the fork server is
    assert seen["preloaded"] and seen["lazy_preloaded"]
    assert seen["marker"] == "set-later"
    assert prefect.flow_engine.multiprocessing is multiprocessing


def test_without_it_runs_are_spawned_by_this_process(tmp_path, prefect_api_url):
    record = tmp_path / "record.json"
    process = prefect.flow_engine.run_flow_in_subprocess(where_am_i, parameters={"record": str(record)})
    process.join(120)
    assert process.exitcode == 0
    assert json.loads(record.read_text())["ppid"] == os.getpid()


def _validated_in_this_process(payload: bytes, parameters: dict) -> list[str]:
    import cloudpickle

    flow_object = cloudpickle.loads(payload)
    return [type(step).__name__ for step in flow_object.validate_parameters(parameters)["steps"]]


@pytest.mark.parametrize("name", ["large_image_flow", "batch_flow"])
def test_a_served_flow_pickled_into_a_fresh_process_still_validates_its_parameters(name):
    """A served run gets its flow object pickled by value (Prefect's Flow holds the function); its parameters'
    annotations must not be names that only the module's globals resolve (a `from __future__ import
    annotations` in flows/pipeline.py made every served run fail its parameter validation)."""
    from concurrent.futures import ProcessPoolExecutor

    import cloudpickle

    import flows.pipeline

    payload = cloudpickle.dumps(getattr(flows.pipeline, name))
    parameters = {"input": "/data/x.tif", "steps": [{"op": "gaussian", "sigma": 1}, {"op": "label"}], "output": "/o"}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_validated_in_this_process, payload, parameters).result(120) == ["GaussianStep", "LabelStep"]


def test_a_fork_server_that_cannot_start_leaves_runs_spawned_with_a_warning(monkeypatch):
    import multiprocessing.forkserver

    def refuse():
        raise OSError("no sockets here")

    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", refuse)
    with pytest.warns(RuntimeWarning, match="no sockets here"), forked_flow_runs() as forked:
        assert not forked
        assert prefect.flow_engine.multiprocessing is multiprocessing
