"""``deployments/prefect.yaml`` deploys to a process work pool, and a worker runs its flow runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tifffile
import yaml

from flows.demo import demo_volume
from flows.runner import start_local_server

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
PREFECT_YAML = PROJECT / "deployments" / "prefect.yaml"


def prefect_cli(*args: str, env: dict, cwd: Path = PROJECT, timeout: float = 120) -> subprocess.CompletedProcess:
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect)] if prefect.exists() else [sys.executable, "-m", "prefect"]
    done = subprocess.run([*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_prefect_yaml_declares_both_flows_on_a_shared_process_pool():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    pools = {d["name"]: d["work_pool"]["name"] for d in config["deployments"]}
    assert pools == {"large-image": "haloflow-process", "batch": "haloflow-process", "nightly-batch": "haloflow-process"}
    assert config["definitions"]["work_pools"]["process"]["name"] == "haloflow-process"
    for deployment in config["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        assert (PROJECT / path).is_file(), f"entrypoint {path} is not relative to the project root"
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly-batch")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    from flows.spec import PipelineSpec

    PipelineSpec(flow="batch", **nightly["parameters"])  # its parameters are a valid spec


def test_process_worker_runs_a_deployed_flow(tmp_path):
    server = start_local_server(home=tmp_path / "prefect-home", ui=False, seed_database=True)
    try:
        env = {key: value for key, value in os.environ.items() if key != "HALOFLOW_CLUSTER"}
        env["PREFECT_API_URL"] = server.api_url
        prefect_cli("work-pool", "create", "haloflow-process", "--type", "process", env=env)
        prefect_cli("--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all", env=env, timeout=180)
        deployment = httpx.get(f"{server.api_url}/deployments/name/large-image/large-image").json()
        assert deployment["work_pool_name"] == "haloflow-process"

        tifffile.imwrite(tmp_path / "v.tif", demo_volume((12, 40, 40), n_objects=10, seed=4))
        out = tmp_path / "out"
        parameters = {"input": str(tmp_path / "v.tif"), "output": str(out), "steps": [{"op": "gaussian", "sigma": 1.0}, {"op": "threshold"}, {"op": "label"}]}
        response = httpx.post(f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]

        # The worker lives in its own folder and process, as it would on another host.
        worker_home = tmp_path / "worker"
        worker_home.mkdir()
        prefect_cli("worker", "start", "--pool", "haloflow-process", "--run-once", env=env, cwd=worker_home, timeout=300)
        state = httpx.get(f"{server.api_url}/flow_runs/{run_id}").json()["state"]
        assert state["type"] == "COMPLETED", state
        assert (out / "03_label.ome.zarr").is_dir() and (out / "run.json").is_file()
    finally:
        server.stop()
