"""A batch measure step of the labels alone, right after them: measured by the label stage, from memory.

No measure stage runs (no task run of its own); the table must be the one
the measure step makes from each stored label store
(``tasks.steps.measure_columns``), physical-unit columns included, and
``regionprops_table``'s; a later run that changes only the measure step
measures the stored labels again, and one that changes nothing takes both
from the cache. A measure step that needs the intensity image has a stage of
its own, submitted once the labels are done. Runs on the session's Prefect
server and Dask cluster (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import zarr
from skimage import measure

from flows.demo import demo_volume
from imageops.catalog import MeasureParams
from tasks import io, steps

pytestmark = pytest.mark.slow

UM = "micrometer"
SIZES = {"a": (0.4, 0.2), "b": (0.5, 0.5), "c": (0.3, 0.3)}  # y, x in micrometres
FIRST = ["label", "area", "centroid", "bbox"]
SECOND = ["label", "area", "extent", "equivalent_diameter_area"]


def _steps(properties: list[str]) -> list[dict]:
    return [
        {"op": "gaussian", "sigma": 1.0},
        {"op": "threshold", "method": "otsu"},
        {"op": "label", "connectivity": 1},
        {"op": "measure", "properties": properties},
    ]


@pytest.fixture
def calibrated_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index, (stem, (y, x)) in enumerate(SIZES.items()):
        image = demo_volume((48 + 7 * index, 61 - 5 * index), n_objects=12, seed=index)
        tifffile.imwrite(folder / f"{stem}.tif", image, imagej=True, resolution=(1 / x, 1 / y),
                         metadata={"axes": "YX", "unit": "micron"})
    return folder


def _run(flow, **parameters) -> tuple[dict, dict]:
    """The flow's result, and its stages' task runs' inputs by name (from the Prefect API)."""
    state = flow(**parameters, return_state=True)
    api = os.environ["PREFECT_API_URL"]
    runs = httpx.post(f"{api}/task_runs/filter", timeout=30,
                      json={"flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}}).json()
    return state.result(), {run["name"]: (run["id"], run["task_inputs"]) for run in runs}


def _measured_by_the_label_stage(task_runs: dict) -> bool:
    """Whether the table was made with the labels (with the steps before, if kept), in no task run of its own."""
    return "04_measure" not in task_runs and any("03_label" in name.split("+") for name in task_runs)


def _rows(table: dict, stem: str) -> dict[str, np.ndarray]:
    rows = table["image"] == stem
    return {name: column[rows] for name, column in table.items() if name != "image"}


def test_the_label_stage_measures_its_labels_as_the_stores_give_them(tmp_path, calibrated_images, dask_cluster):
    from flows import batch_flow
    from flows.runner import make_task_runner

    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    out = tmp_path / "out"
    first, task_runs = _run(flow, input=str(calibrated_images / "*.tif"), steps=_steps(FIRST), output=str(out),
                            keep=["label"])
    assert first["status"] == "completed"
    assert _measured_by_the_label_stage(task_runs)
    assert first["stages"][3]["name"] == "04_measure" and first["stages"][3]["status"] == "computed"
    table = io.read_table(out / "04_measure.csv")
    step = MeasureParams(op="measure", properties=FIRST)
    for stem, (y, x) in SIZES.items():
        store = out / stem / "03_label.ome.zarr"
        from_store = steps.measure_columns(step, io.open_store_ref(str(store)), whole=True)
        mine = _rows(table, stem)
        assert list(mine) == list(from_store)
        assert f"area_{UM}^2" in mine and f"centroid_{UM}-1" in mine
        for name, column in from_store.items():
            np.testing.assert_array_equal(mine[name], column, err_msg=f"{stem}: {name}")
        labels = zarr.open_array(str(store), path="0", mode="r")[...]
        assert labels.max() > 3
        reference = measure.regionprops_table(labels, properties=FIRST)
        for name, column in reference.items():
            np.testing.assert_array_equal(mine[name], column, err_msg=f"{stem}: {name}")
        np.testing.assert_allclose(mine[f"area_{UM}^2"], mine["area"] * y * x)

    # Only the measure step changes: the labels come from the cache, the new properties are measured.
    again, task_runs = _run(flow, input=str(calibrated_images / "*.tif"), steps=_steps(SECOND), output=str(out),
                            keep=["label"])
    assert [s["status"] for s in again["stages"]][2:] == ["cached", "computed"]
    assert _measured_by_the_label_stage(task_runs)
    table = io.read_table(out / "04_measure.csv")
    assert [name for name in table if not name.startswith(("area_", "centroid_"))] == ["image", *SECOND]
    for stem in SIZES:
        labels = zarr.open_array(str(out / stem / "03_label.ome.zarr"), path="0", mode="r")[...]
        reference = measure.regionprops_table(labels, properties=SECOND)
        mine = _rows(table, stem)
        for name, column in reference.items():
            np.testing.assert_allclose(mine[name], column, rtol=1e-12, err_msg=f"{stem}: {name}")

    # Nothing changes: labels and table come from the cache, the table untouched.
    written = (out / "04_measure.csv").stat().st_mtime_ns
    same, _ = _run(flow, input=str(calibrated_images / "*.tif"), steps=_steps(SECOND), output=str(out), keep=["label"])
    assert [s["status"] for s in same["stages"]][2:] == ["cached", "cached"]
    assert (out / "04_measure.csv").stat().st_mtime_ns == written
    # The table lost: it is measured again from the stored labels.
    (out / "04_measure.csv").unlink()
    lost, _ = _run(flow, input=str(calibrated_images / "*.tif"), steps=_steps(SECOND), output=str(out), keep=["label"])
    assert [s["status"] for s in lost["stages"]][2:] == ["cached", "computed"]
    for name, column in io.read_table(out / "04_measure.csv").items():
        np.testing.assert_array_equal(column, table[name], err_msg=name)


def test_a_measure_step_that_needs_the_intensity_is_left_to_the_measure_stage(tmp_path, calibrated_images, dask_cluster):
    from flows import batch_flow
    from flows.runner import make_task_runner

    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    out = tmp_path / "out"
    properties = ["label", "area", "intensity_mean"]
    result, task_runs = _run(flow, input=str(calibrated_images / "*.tif"), steps=_steps(properties), output=str(out))
    assert result["status"] == "completed"
    assert "04_measure" in task_runs and not _measured_by_the_label_stage(task_runs)
    table = io.read_table(out / "04_measure.csv")
    for stem in SIZES:
        labels = zarr.open_array(str(out / stem / "03_label.ome.zarr"), path="0", mode="r")[...]
        source = tifffile.imread(calibrated_images / f"{stem}.tif")
        reference = measure.regionprops_table(labels, source, properties=properties)
        mine = _rows(table, stem)
        for name, column in reference.items():
            np.testing.assert_allclose(mine[name], column, rtol=1e-12, err_msg=f"{stem}: {name}")
