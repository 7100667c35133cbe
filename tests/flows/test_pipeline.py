"""End to end: the flows and ``haloflow run`` on every input kind equal scikit-image on the whole image.

The session's Prefect server comes from ``tests/conftest.py``; flows run on a
real local Dask cluster of worker processes (the ``dask_cluster`` fixture).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from scipy import ndimage as ndi
from skimage import filters, measure

from flows.cli import main as cli_main
from tasks import io
from flows.demo import demo_volume
from tests.helpers import same_up_to_permutation

SIGMA = 1.5
PROPS = ["label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max"]
STEPS = [
    {"op": "gaussian", "sigma": SIGMA},
    {"op": "threshold", "method": "otsu"},
    {"op": "label", "connectivity": 1},
    {"op": "measure", "properties": PROPS, "intensity": "input"},
]
OUTPUTS = ["01_gaussian.ome.zarr", "02_threshold.ome.zarr", "03_label.ome.zarr", "04_measure.csv"]

pytestmark = pytest.mark.slow


def reference_pipeline(image: np.ndarray) -> dict:
    """The same pipeline with SciPy / scikit-image on the whole image."""
    smooth = ndi.gaussian_filter(image.astype(np.float32), SIGMA, mode="nearest")
    mask = smooth > filters.threshold_otsu(smooth)
    labels = measure.label(mask, connectivity=1)
    table = measure.regionprops_table(labels, image, properties=PROPS)
    return {"gaussian": smooth, "mask": mask, "labels": labels, "table": table}


def stored(out: Path, name: str) -> np.ndarray:
    store = out / name
    assert io.is_complete(store), f"{store} is not marked complete"
    return zarr.open_array(str(store), path="0", mode="r")[...]


def assert_matches_reference(out: Path, image: np.ndarray) -> None:
    reference = reference_pipeline(image)
    smooth = stored(out, OUTPUTS[0])
    np.testing.assert_allclose(smooth, reference["gaussian"], rtol=0, atol=1e-5 * np.ptp(reference["gaussian"]))
    np.testing.assert_array_equal(stored(out, OUTPUTS[1]), reference["mask"])
    labels = stored(out, OUTPUTS[2])
    assert labels.max() == reference["labels"].max() > 3
    assert same_up_to_permutation(labels, reference["labels"])
    table = io.read_table(out / OUTPUTS[3])
    assert_table_equal(table, reference["table"], labels, reference["labels"])
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed"
    assert [s["name"] for s in record["stages"]] == [n.split(".")[0] for n in OUTPUTS]
    assert all(len(s["fingerprint"]) == 32 for s in record["stages"])


def assert_table_equal(table: dict, reference: dict, labels: np.ndarray, reference_labels: np.ndarray) -> None:
    """Rows matched through the label permutation, then every column compared."""
    assert list(table) == list(reference)
    ours_of_theirs = dict(np.unique(np.stack([reference_labels.ravel(), labels.ravel()], 1), axis=0).tolist())
    order = np.argsort(table["label"])
    wanted = np.array([ours_of_theirs[int(l)] for l in reference["label"]])
    rows = order[np.searchsorted(table["label"][order], wanted)]
    for key in reference:
        if key == "label":
            continue
        np.testing.assert_allclose(table[key][rows], reference[key], rtol=1e-9, err_msg=key)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return demo_volume((30, 70, 52), n_objects=60, seed=21)


def write_spec(path: Path, input_, output: Path, *, flow="large_image", chunks=None) -> Path:
    spec = {"flow": flow, "input": input_, "steps": STEPS, "output": str(output)}
    if chunks:
        spec["chunks"] = chunks
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*args: str) -> None:
    assert cli_main(list(args)) == 0


def test_large_image_flow_from_python_returns_references(tmp_path, volume, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, volume)
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    result = flow(input=str(source), steps=STEPS, output=str(tmp_path / "out"), chunks=[11, 29, 20])
    assert_matches_reference(tmp_path / "out", volume)
    stages = result["stages"]
    assert stages[2]["ref"]["store"] == str(tmp_path / "out" / "03_label.ome.zarr")
    assert stages[2]["ref"]["kind"] == "labels" and stages[2]["ref"]["dtype"] == "uint32"
    assert stages[3]["ref"]["path"] == str(tmp_path / "out" / "04_measure.csv")

    # The command line writes the same outputs for the same spec.
    spec = write_spec(tmp_path / "spec.yaml", str(source), tmp_path / "cli", chunks=[11, 29, 20])
    run_cli("run", str(spec), "--cluster", dask_cluster)
    for name in OUTPUTS[:3]:
        np.testing.assert_array_equal(stored(tmp_path / "cli", name), stored(tmp_path / "out", name))
    assert (tmp_path / "cli" / OUTPUTS[3]).read_text() == (tmp_path / "out" / OUTPUTS[3]).read_text()


def test_glob_of_tiffs_as_one_volume(tmp_path, volume, dask_cluster):
    for z, plane in enumerate(volume):
        tifffile.imwrite(tmp_path / f"slice_{z:03d}.tif", plane)
    spec = write_spec(tmp_path / "spec.yaml", str(tmp_path / "slice_*.tif"), tmp_path / "out", chunks=[7, 33, 52])
    run_cli("run", str(spec), "--cluster", dask_cluster)
    assert_matches_reference(tmp_path / "out", volume)


def test_tile_grid(tmp_path, volume, dask_cluster):
    rows, cols = (0, 31, 70), (0, 20, 52)
    grid = []
    for i in range(2):
        row = []
        for j in range(2):
            path = tmp_path / f"tile_{i}{j}.tif"
            tifffile.imwrite(path, volume[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]])
            row.append(str(path))
        grid.append(row)
    # A 2D grid of 3D tiles: the grid's axes are the last two image axes.
    spec = write_spec(tmp_path / "spec.yaml", {"tiles": [grid]}, tmp_path / "out")
    run_cli("run", str(spec), "--cluster", dask_cluster)
    assert_matches_reference(tmp_path / "out", volume)


def test_zarr_store(tmp_path, volume, dask_cluster):
    store = tmp_path / "volume.zarr"
    zarr.create_array(str(store), shape=volume.shape, chunks=(8, 35, 26), dtype=volume.dtype)[...] = volume
    spec = write_spec(tmp_path / "spec.yaml", {"zarr": str(store)}, tmp_path / "out", chunks=[13, 24, 52])
    run_cli("run", str(spec), "--cluster", dask_cluster)
    assert_matches_reference(tmp_path / "out", volume)


def test_batch_over_images_of_different_shapes(tmp_path, dask_cluster):
    images = {
        "a": demo_volume((60, 45), n_objects=20, seed=1),
        "b": demo_volume((33, 80), n_objects=20, seed=2),
        "c": (demo_volume((50, 50), n_objects=20, seed=3) // 256).astype(np.uint8),
    }
    for stem, image in images.items():
        tifffile.imwrite(tmp_path / f"{stem}.tif", image)
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml", str(tmp_path / "*.tif"), out, flow="batch")
    run_cli("run", str(spec), "--cluster", dask_cluster)
    table = io.read_table(out / "04_measure.csv")
    assert list(table)[0] == "image"
    for stem, image in images.items():
        reference = reference_pipeline(image)
        np.testing.assert_allclose(stored(out / stem, OUTPUTS[0]), reference["gaussian"], atol=1e-5 * np.ptp(reference["gaussian"]))
        np.testing.assert_array_equal(stored(out / stem, OUTPUTS[1]), reference["mask"])
        labels = stored(out / stem, OUTPUTS[2])
        assert same_up_to_permutation(labels, reference["labels"])
        rows = table["image"] == stem
        mine = {k: v[rows] for k, v in table.items() if k != "image"}
        assert_table_equal(mine, reference["table"], labels, reference["labels"])


def test_batch_flow_from_python(tmp_path, dask_cluster):
    from flows import batch_flow
    from flows.runner import make_task_runner

    for stem in ("x", "y"):
        tifffile.imwrite(tmp_path / f"{stem}.tif", demo_volume((40, 40), n_objects=10, seed=ord(stem)))
    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    result = flow(input=str(tmp_path / "*.tif"), steps=STEPS, output=str(tmp_path / "out"))
    assert result["images"] == ["x", "y"]
    label_stage = result["stages"][2]
    assert set(label_stage["images"]) == {"x", "y"}
    assert label_stage["images"]["x"]["ref"]["store"] == str(tmp_path / "out" / "x" / "03_label.ome.zarr")
    assert result["stages"][3]["ref"]["path"] == str(tmp_path / "out" / "04_measure.csv")


def test_console_script_reports_bad_spec_without_traceback(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(tmp_path / "missing.tif"), "steps": STEPS, "output": str(tmp_path / "o")}))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(spec)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "missing.tif" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
