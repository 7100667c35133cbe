"""Runs from the Prefect UI and from schedules: ``haloflow serve`` against a real Prefect server.

The flow runs are created through the REST API exactly as the UI's Run button
does (``POST /api/deployments/{id}/create_flow_run``).
"""

from __future__ import annotations

import json
import time

import httpx
import psutil
import pytest
import tifffile
import yaml

from flows.demo import demo_volume
from tests.serving import wait_for

pytestmark = pytest.mark.slow

STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold", "method": "otsu"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area"], "intensity": None},
]


def artifact_keys(api: str, flow_run_id: str) -> set[str]:
    response = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    response.raise_for_status()
    return {a["key"] for a in response.json() if a["key"]}


def test_ui_run_button_on_served_deployment(serve, tmp_path, ui_prefect_server):
    """Each run starts from the server's event for it: the runner's own queries are 10 minutes apart here."""
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "volume.tif", demo_volume((16, 48, 40), n_objects=15, seed=2))
    served = serve("--data-root", str(data), server=ui_prefect_server,
                   environment={"PREFECT_RUNNER_POLL_FREQUENCY": "600"})
    deployment = served.deployment("large-image", "large-image")
    served.deployment("batch", "batch")
    out = data / "out"
    response = served.run(deployment, {"input": str(data / "volume.tif"), "steps": STEPS, "output": str(out), "chunks": [8, 24, 20]})
    assert response.status_code == 201, response.text
    run = served.wait_final(response.json()["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    for name in ("01_gaussian.ome.zarr", "02_threshold.ome.zarr", "03_label.ome.zarr", "04_measure.csv", "run.json"):
        assert (out / name).exists(), name
    assert {"large-image-01-gaussian", "large-image-03-label", "large-image-03-label-picture", "large-image-04-measure"} <= artifact_keys(served.api, run["id"])

    # A path outside --data-root is refused before any work, naming it.
    outside = tmp_path / "elsewhere"
    response = served.run(deployment, {"input": str(data / "volume.tif"), "steps": STEPS, "output": str(outside)})
    assert response.status_code == 201, response.text
    run = served.wait_final(response.json()["id"])
    assert run["state"]["type"] == "FAILED"
    assert str(outside) in run["state"]["message"] and "outside the allowed data folders" in run["state"]["message"]
    assert not outside.exists()
    # ... also through '..' and symlinks.
    (data / "link").symlink_to(tmp_path)
    for sneaky in (str(data / ".." / "escaped"), str(data / "link" / "escaped")):
        response = served.run(deployment, {"input": str(data / "volume.tif"), "steps": STEPS, "output": sneaky})
        assert response.status_code == 201, response.text
        run = served.wait_final(response.json()["id"])
        assert run["state"]["type"] == "FAILED" and "outside the allowed data folders" in run["state"]["message"]
    assert not (tmp_path / "escaped").exists()

    # Invalid parameters are refused by the server, naming the field, before a run exists.
    response = served.run(deployment, {"input": str(data / "volume.tif"), "steps": [{"op": "gaussian", "sigma": -1}], "output": str(out)})
    assert response.status_code in (409, 422), response.text
    assert "sigma" in response.text

    # Nothing the package started listens beyond the loopback interface.
    listening = listening_addresses([served.process.pid])
    assert listening and all(address in ("127.0.0.1", "::1") for address in listening), listening


def listening_addresses(pids: list[int]) -> set[str]:
    """Addresses of every listening socket of these processes and their children."""
    processes = []
    for pid in pids:
        parent = psutil.Process(pid)
        processes += [parent, *parent.children(recursive=True)]
    ids = {p.pid for p in processes}
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ids}


def test_session_server_listens_on_loopback_only(prefect_server):
    if prefect_server is None:
        pytest.skip("the session uses an external Prefect API")
    addresses = listening_addresses([prefect_server.pid])
    assert addresses and addresses <= {"127.0.0.1", "::1"}, addresses


def test_scheduled_batch_computes_only_new_images(serve, tmp_path, prefect_api_url):
    folder = tmp_path / "acquisitions"
    folder.mkdir()
    for seed in (1, 2):
        tifffile.imwrite(folder / f"day_{seed}.tif", demo_volume((40, 40), n_objects=8, seed=seed))
    out = tmp_path / "results"
    spec = tmp_path / "nightly.yaml"
    spec.write_text(yaml.safe_dump({"flow": "batch", "input": str(folder / "*.tif"), "steps": STEPS, "output": str(out)}))
    served = serve("--spec", str(spec), "--interval", "6", "--limit", "1")
    deployment = served.deployment("batch", "nightly")
    assert deployment["schedules"] and deployment["schedules"][0]["schedule"]["interval"] == 6.0

    def completed_runs():
        response = httpx.post(
            f"{prefect_api_url}/flow_runs/filter",
            json={"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}, "sort": "START_TIME_ASC"},
        )
        return response.json()

    first = wait_for(lambda: completed_runs() or None, 150, "a scheduled run to complete")[0]
    assert stage_images(prefect_api_url, first["id"], "batch-01-gaussian", "computed") == ["day_1", "day_2"]

    tifffile.imwrite(folder / "day_3.tif", demo_volume((40, 40), n_objects=8, seed=3))
    added = time.time()

    def later_run():
        for run in completed_runs():
            started = run["start_time"]
            if run["id"] != first["id"] and started and _timestamp(started) > added:
                return run
        return None

    second = wait_for(later_run, 150, "a scheduled run after the new image")
    # That run's own tables: run.json may already be the next scheduled run's (every 6 s, one at a time).
    computed = {key: stage_images(prefect_api_url, second["id"], f"batch-{key}", "computed")
                for key in ("01-gaussian", "02-threshold", "03-label")}
    assert computed == {"01-gaussian": ["day_3"], "02-threshold": ["day_3"], "03-label": ["day_3"]}
    assert stage_images(prefect_api_url, second["id"], "batch-01-gaussian", "cached") == ["day_1", "day_2"]
    table = (out / "04_measure.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in table[1:]} == {"day_1", "day_2", "day_3"}
    assert "batch-01-gaussian" in artifact_keys(prefect_api_url, second["id"])


def stage_images(api: str, flow_run_id: str, key: str, status: str) -> list[str]:
    """The images a batch stage's table artifact of one flow run lists with ``status``."""
    query = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}}
    response = httpx.post(f"{api}/artifacts/filter", json=query)
    response.raise_for_status()
    (artifact,) = response.json()
    rows = json.loads(artifact["data"]) if isinstance(artifact["data"], str) else artifact["data"]
    return sorted(row["image"] for row in rows if row["status"] == status)


def _timestamp(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_run_cancelled_from_the_ui_stops_its_chunk_tasks_on_the_shared_cluster(serve, tmp_path, prefect_api_url,
                                                                                   dask_cluster):
    """Cancelling a served run stops its stage's chunk tasks; the store stays incomplete, nothing more is written."""
    import distributed

    from tasks import io

    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "volume.tif", demo_volume((32, 256, 256), n_objects=40, seed=3))
    served = serve()
    deployment = served.deployment("large-image", "large-image")
    out = data / "out"
    # 64 blocks of a slow op (about 0.6 s each): half a minute of chunk work on the two workers.
    parameters = {"input": str(data / "volume.tif"), "steps": [{"op": "median", "size": 7}], "output": str(out),
                  "chunks": [8, 64, 64]}
    response = served.run(deployment, parameters)
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    markers = out / "01_median.ome.zarr" / io._DONE_FOLDER

    def written() -> int:
        return len([p for p in markers.iterdir() if not p.name.endswith(".tmp")]) if markers.is_dir() else 0

    wait_for(lambda: written() >= 4, 120, "the stage's first blocks")
    cancel = httpx.post(f"{prefect_api_url}/flow_runs/{run_id}/set_state",
                        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}, timeout=30)
    assert cancel.status_code in (200, 201), cancel.text
    run = served.wait_final(run_id, timeout=60)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    with distributed.Client(dask_cluster) as client:
        wait_for(lambda: not any(client.processing().values()), 20, "the shared cluster to be idle", interval=0.2)

    def settled() -> bool:  # the chunk tasks already running when the stage stopped finish; no other one starts
        before = written()
        time.sleep(2)  # more than three blocks' time
        return written() == before

    wait_for(settled, 30, "the last running blocks to finish", interval=0)
    assert written() < 64  # the stage did not run to its end
    assert not io.is_complete(out / "01_median.ome.zarr")


def test_the_runner_queries_at_prefects_interval_and_listens_for_new_runs_while_serving(monkeypatch):
    """Prefect's own query interval (``PREFECT_RUNNER_POLL_FREQUENCY``); its poller listens while the runner runs."""
    import prefect.runner
    from prefect.runner._scheduled_run_poller import ScheduledRunPoller

    import deployments.serve as serving

    own = ScheduledRunPoller.run
    made, listening = [], []

    class Runner:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def add_flow(self, flow, **settings):
            pass

        async def start(self):
            listening.append(ScheduledRunPoller.run is not own)

    monkeypatch.setattr(prefect.runner, "Runner", Runner)
    serving.serve()
    assert "query_seconds" not in made[0] and listening == [True]
    assert ScheduledRunPoller.run is own
