"""The spec's ``keep``: steps whose stores are not kept are computed inside the next kept step, never written.

The results equal a run that keeps every store; what is not kept leaves no
store; reruns are cached and an interrupted stage resumes as usual.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from flows.demo import demo_volume
from flows.spec import SpecError, load_spec
from tasks import io

STEPS = [
    {"op": "gaussian", "sigma": 1.5},
    {"op": "threshold", "method": "otsu"},
    {"op": "label", "connectivity": 1},
    {"op": "measure", "properties": ["label", "area", "centroid"]},
]
CHUNKS = [10, 23, 17]  # uneven: every axis has a ragged last chunk


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in _record(out)["stages"]}


def _labels(out: Path) -> np.ndarray:
    return zarr.open_array(str(out / "03_label.ome.zarr"), path="0", mode="r")[...]


def _modification_times(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and ".haloflow" not in p.parts and p.name != "run.json"}


@pytest.fixture
def run_flow(dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))

    def run(source, out, keep=None):
        state = flow(input=str(source), steps=STEPS, output=str(out), chunks=CHUNKS, keep=keep, return_state=True)
        assert state.is_completed(), state
        return state

    return run


@pytest.mark.slow
def test_unkept_steps_are_computed_in_the_next_stage_and_results_equal_keeping_all(tmp_path, run_flow):
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, demo_volume((26, 60, 47), n_objects=40, seed=8))
    run_flow(source, tmp_path / "all")
    out = tmp_path / "kept"
    run_flow(source, out, keep=["label"])

    assert not (out / "01_gaussian.ome.zarr").exists() and not (out / "02_threshold.ome.zarr").exists()
    np.testing.assert_array_equal(_labels(out), _labels(tmp_path / "all"))
    assert (out / "04_measure.csv").read_text() == (tmp_path / "all" / "04_measure.csv").read_text()
    every, kept = _record(tmp_path / "all")["stages"], _record(out)["stages"]
    assert [s["status"] for s in kept] == ["fused", "fused", "computed", "computed"]
    assert [s["fingerprint"] for s in kept] == [s["fingerprint"] for s in every]  # same chain, same cache keys
    fused = kept[2]["info"]["fused"]
    assert list(fused) == ["01_gaussian", "02_threshold"]
    assert fused["02_threshold"]["threshold"] == every[1]["info"]["threshold"]
    assert kept[2]["info"]["objects"] == every[2]["info"]["objects"] > 3

    # An identical rerun: the label stage and the table are cached, nothing is rewritten.
    before = _modification_times(out)
    run_flow(source, out, keep=["label"])
    assert _statuses(out) == {"01_gaussian": "fused", "02_threshold": "fused", "03_label": "cached",
                              "04_measure": "cached"}
    assert _modification_times(out) == before

    # Interrupted after some blocks: the label stage resumes, computing only the missing ones.
    store = out / "03_label.ome.zarr"
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["haloflow"] = {**group.attrs["haloflow"], "complete": False}
    markers = sorted((store / ".haloflow-done").iterdir()) if (store / ".haloflow-done").is_dir() else []
    for marker in markers[::2]:
        os.remove(marker)
    run_flow(source, out, keep=["label"])
    label_stage = _record(out)["stages"][2]
    assert label_stage["status"] == "resumed" and label_stage["info"]["blocks"]["written"] == len(markers[::2]) > 0
    assert io.is_complete(store)
    np.testing.assert_array_equal(_labels(out), _labels(tmp_path / "all"))


@pytest.mark.slow
def test_batch_keeps_only_the_labels_and_the_table_and_equals_keeping_all(tmp_path, dask_cluster):
    from flows import batch_flow
    from flows.runner import make_task_runner

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        tifffile.imwrite(folder / f"field{index}.tif", demo_volume((50, 44 + 3 * index), n_objects=8, seed=index))
    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    every = flow(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "all"))
    kept = flow(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "kept"), keep=["label"])
    assert every["status"] == kept["status"] == "completed"
    assert [s["status"] for s in kept["stages"]] == ["fused", "fused", "computed", "computed"]
    for index in range(3):
        image = tmp_path / "kept" / f"field{index}"
        assert sorted(p.name for p in image.iterdir()) == ["03_label.ome.zarr"]
        np.testing.assert_array_equal(_labels(image), _labels(tmp_path / "all" / f"field{index}"))
    assert (tmp_path / "kept" / "04_measure.csv").read_text() == (tmp_path / "all" / "04_measure.csv").read_text()
    again = flow(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "kept"), keep=["label"])
    assert [s["status"] for s in again["stages"]][:3] == ["fused", "fused", "cached"]


@pytest.mark.slow
def test_batch_runs_kept_steps_in_one_stage_and_fuses_the_unkept_one_between(tmp_path, dask_cluster):
    import httpx

    from flows import batch_flow
    from flows.runner import make_task_runner

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        tifffile.imwrite(folder / f"field{index}.tif", demo_volume((47, 52 - 4 * index), n_objects=7, seed=10 + index))
    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    every = flow(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "all"))
    state = flow(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "some"), keep=["gaussian", "label"],
                 return_state=True)
    some = state.result()
    assert every["status"] == some["status"] == "completed"
    assert [s["status"] for s in some["stages"]] == ["computed", "fused", "computed", "computed"]
    runs = httpx.post(f"{os.environ['PREFECT_API_URL']}/task_runs/filter", timeout=30,
                      json={"flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}}).json()
    # One task run: the measure step of the labels alone is done by the stage that makes them.
    assert sorted(run["name"] for run in runs) == ["01_gaussian+03_label"]
    for index in range(3):
        image, reference = tmp_path / "some" / f"field{index}", tmp_path / "all" / f"field{index}"
        assert sorted(p.name for p in image.iterdir()) == ["01_gaussian.ome.zarr", "03_label.ome.zarr"]
        for name in ("01_gaussian", "03_label"):
            mine = zarr.open_array(str(image / f"{name}.ome.zarr"), path="0", mode="r")[...]
            np.testing.assert_array_equal(mine, zarr.open_array(str(reference / f"{name}.ome.zarr"), path="0", mode="r")[...])
            assert io.store_info(image / f"{name}.ome.zarr")["fingerprint"] == io.store_info(reference / f"{name}.ome.zarr")["fingerprint"]
    assert (tmp_path / "some" / "04_measure.csv").read_text() == (tmp_path / "all" / "04_measure.csv").read_text()
    seconds = [s["seconds"] for s in some["stages"]]
    assert seconds[0] > 0 and seconds[2] > 0 and seconds[3] > 0 and seconds[1] == 0.0


def _spec(tmp_path: Path, **fields) -> dict:
    return {"input": str(tmp_path / "in.tif"), "steps": STEPS, "output": str(tmp_path / "out"), **fields}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"keep": ["gaussian"]}, "'label' must be kept"),  # the labels the measure reads
        ({"keep": ["label", "median"]}, "name no image step"),
        ({"keep": ["gaussian"], "flow": "batch", "input": "*.tif"}, "'label' must be kept"),
    ],
)
def test_keep_refuses_what_would_leave_a_needed_store_unwritten(tmp_path, fields, message):
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((4, 5, 6), np.uint16))
    with pytest.raises(SpecError, match=message):
        load_spec(_spec(tmp_path, **fields))


def test_keep_of_the_last_image_step_and_measure_inputs(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((4, 5, 6), np.uint16))
    measured = [*STEPS[:3], {**STEPS[3], "intensity": "gaussian"}]
    with pytest.raises(SpecError, match="'gaussian' must be kept"):
        load_spec(_spec(tmp_path, steps=measured, keep=["label"]))
    assert load_spec(_spec(tmp_path, steps=measured, keep=["label", "gaussian"])).keep == ["label", "gaussian"]
    with pytest.raises(SpecError, match="'threshold' must be kept .the last image step."):
        load_spec(_spec(tmp_path, steps=STEPS[:2], keep=["gaussian"]))
    assert yaml.safe_load(yaml.safe_dump(load_spec(_spec(tmp_path)).model_dump()))["keep"] is None
