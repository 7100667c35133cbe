"""The large image's stages are submitted ahead, each handed the future of the stage it reads."""

from __future__ import annotations

import errno
import json

import httpx
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from flows.demo import demo_volume
from tasks import io

pytestmark = pytest.mark.slow

STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area"], "intensity": None},
]


def task_runs(api_url: str, flow_run_id: str) -> dict[str, dict]:
    """The flow run's task runs by name."""
    response = httpx.post(f"{api_url}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    response.raise_for_status()
    return {run["name"]: run for run in response.json()}


def read_from(run: dict, parameter: str) -> list[str]:
    """The task runs whose results a task run was given for ``parameter``."""
    return [found["id"] for found in run["task_inputs"].get(parameter, []) if found["input_type"] == "task_run"]


def test_each_stage_is_given_the_future_of_the_stage_it_reads(tmp_path, dask_cluster, prefect_api_url):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    image = demo_volume((16, 64, 48), n_objects=20, seed=5)
    tifffile.imwrite(tmp_path / "v.tif", image)
    out = tmp_path / "out"
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    state = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[8, 32, 24], return_state=True)
    assert state.is_completed()
    runs = task_runs(prefect_api_url, str(state.state_details.flow_run_id))
    assert {name: run["state"]["type"] for name, run in runs.items()} == {
        "01_gaussian": "COMPLETED", "02_threshold": "COMPLETED", "03_label": "COMPLETED", "04_measure": "COMPLETED"}
    # A stage given a plain store reference would list no task run as its input: the future is what links them.
    assert read_from(runs["01_gaussian"], "upstream") == []
    assert read_from(runs["02_threshold"], "upstream") == [runs["01_gaussian"]["id"]]
    assert read_from(runs["03_label"], "upstream") == [runs["02_threshold"]["id"]]
    assert read_from(runs["04_measure"], "labels") == [runs["03_label"]["id"]]

    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0, mode="nearest")
    expected, n = ndi.label(smooth > threshold_otsu(smooth))
    labels = zarr.open_array(str(out / "03_label.ome.zarr"), path="0", mode="r")[...]
    assert labels.max() == n
    np.testing.assert_array_equal(labels > 0, expected > 0)
    record = json.loads((out / "run.json").read_text())
    assert [(s["name"], s["status"]) for s in record["stages"]] == [
        ("01_gaussian", "computed"), ("02_threshold", "computed"), ("03_label", "computed"), ("04_measure", "computed")]
    assert record["stages"][2]["info"]["objects"] == n

    # Run again: each stage's cache check, made from the planned fingerprint of a stage not yet run, lets
    # Prefect serve all four from its cache (a wrong fingerprint would refresh them: state Completed).
    again = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[8, 32, 24], return_state=True)
    rerun = task_runs(prefect_api_url, str(again.state_details.flow_run_id))
    assert {name: run["state"]["name"] for name, run in rerun.items()} == {
        "01_gaussian": "Cached", "02_threshold": "Cached", "03_label": "Cached", "04_measure": "Cached"}


def test_a_failed_stage_leaves_the_stages_after_it_not_ready_and_unwritten(tmp_path, monkeypatch, prefect_api_url):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import large_image_flow

    tifffile.imwrite(tmp_path / "v.tif", demo_volume((12, 48, 48), n_objects=10, seed=3))
    out = tmp_path / "out"
    write_block = io._write_block

    def refuse_the_threshold(block, store, *args, **kwargs):
        if store.endswith("02_threshold.ome.zarr"):
            raise OSError(errno.ENOSPC, "No space left on device (injected)", store)
        return write_block(block, store, *args, **kwargs)

    monkeypatch.setattr(io, "_write_block", refuse_the_threshold)
    flow = large_image_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    state = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[6, 24, 24], return_state=True)
    assert state.is_failed() and "No space left on device" in state.message
    runs = task_runs(prefect_api_url, str(state.state_details.flow_run_id))
    assert runs["01_gaussian"]["state"]["name"] == "Completed" and runs["02_threshold"]["state"]["name"] == "Failed"
    later = [run for name, run in runs.items() if name not in ("01_gaussian", "02_threshold")]
    # Prefect names a task run after its parameters once they resolve; these never did, so they keep the task's name.
    assert {run["state"]["name"] for run in later} == {"NotReady"}
    assert [read_from(run, "upstream") for run in later if run["name"].startswith("image-stage")] == [
        [runs["02_threshold"]["id"]]]
    assert io.is_complete(out / "01_gaussian.ome.zarr")
    assert not io.is_complete(out / "02_threshold.ome.zarr")
    assert not (out / "03_label.ome.zarr").exists() and not (out / "04_measure.csv").exists()
    record = json.loads((out / "run.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["01_gaussian"]
