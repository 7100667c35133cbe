"""Object storage: input, stores and tables on ``s3://``, against a real S3 server on loopback (moto).

``haloflow run --cluster`` is a subprocess, as a user types it, sending its
chunk work to the session's Dask cluster; the run and the workers find the
server through the standard AWS environment (``AWS_ENDPOINT_URL`` and
credentials). Results are compared with the same pipeline run on local files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from flows.demo import demo_volume
from flows.pipeline import batch_flow, large_image_flow
from flows.runner import make_task_runner
from tasks import io, storage
from tests.s3 import S3

pytestmark = pytest.mark.slow

STEPS = [
    {"op": "gaussian", "sigma": 1.5},
    {"op": "threshold", "method": "otsu"},
    {"op": "label", "connectivity": 1},
    {"op": "measure", "properties": ["label", "area", "centroid", "intensity_mean"], "intensity": "input"},
]
IMAGES = ["01_gaussian.ome.zarr", "02_threshold.ome.zarr", "03_label.ome.zarr"]
TABLE = "04_measure.csv"


def run_cli(spec: dict, folder: Path, cluster: str) -> subprocess.CompletedProcess:
    path = folder / f"spec-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "flows.cli", "run", str(path), "--cluster", cluster]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def read_store(location: str) -> np.ndarray:
    assert io.is_complete(location), f"{location} is not marked complete"
    return zarr.open_array(storage.zarr_store(location), path="0", mode="r")[...]


def assert_same_outputs(remote: str, local: Path, images=IMAGES, table=TABLE) -> None:
    for name in images:
        np.testing.assert_array_equal(read_store(storage.join(remote, name)), read_store(str(local / name)))
    ours, theirs = io.read_table(storage.join(remote, table)), io.read_table(local / table)
    assert list(ours) == list(theirs)
    for column in theirs:
        np.testing.assert_array_equal(ours[column], theirs[column])


def test_large_image_on_s3_equals_the_local_run_and_an_identical_rerun_is_cached(s3: S3, tmp_path, dask_cluster):
    image = demo_volume((20, 50, 56), n_objects=12, seed=4)
    tifffile.imwrite(tmp_path / "volume.tif", image)
    source = s3.put(tmp_path / "volume.tif", "in", "volume.tif")
    out = s3.url("runs", "first")
    spec = {"input": source, "chunks": [12, 24, 30], "steps": STEPS, "output": out}

    first = run_cli(spec, tmp_path, dask_cluster)
    assert first.returncode == 0, first.stderr[-3000:]
    local = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))(
        input=str(tmp_path / "volume.tif"), steps=STEPS, output=str(tmp_path / "local"), chunks=[12, 24, 30],
    )
    assert local["status"] == "completed"
    assert_same_outputs(out, tmp_path / "local")
    assert read_store(storage.join(out, IMAGES[2])).max() > 3
    record = json.loads(storage.read_text(storage.join(out, "run.json")))
    assert [s["status"] for s in record["stages"]] == ["computed"] * 4
    assert s3.fs.find(s3.url("runs", "first", ".haloflow", "results")), "Prefect's results are not beside the stores"
    assert not storage.exists(str(tmp_path / "s3:")), "a URL was taken for a local path"

    written = {name: when for name, when in s3.last_modified("runs", "first").items() if "/.haloflow/" not in name
               and not name.endswith("run.json")}
    time.sleep(1.1)  # S3 dates have one-second resolution: a rewrite would show
    again = run_cli(spec, tmp_path, dask_cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads(storage.read_text(storage.join(out, "run.json")))
    assert [s["status"] for s in record["stages"]] == ["cached"] * 4
    after = {name: when for name, when in s3.last_modified("runs", "first").items() if name in written}
    assert after == written, "an identical rerun wrote objects again"


def test_batch_flow_from_an_s3_glob_into_s3_equals_the_local_run(s3: S3, tmp_path, dask_cluster):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        tifffile.imwrite(folder / f"cell{index}.tif", demo_volume((40, 36 + 4 * index), n_objects=6, seed=index))
    for index in range(3):
        s3.put(folder / f"cell{index}.tif", "batch", f"cell{index}.tif")
    out = s3.url("runs", "batch")
    on_cluster = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    remote = on_cluster(input=s3.url("batch", "*.tif"), steps=STEPS, output=out)
    assert remote["status"] == "completed" and remote["output"] == out
    local = on_cluster(input=str(folder / "*.tif"), steps=STEPS, output=str(tmp_path / "local"))
    assert local["status"] == "completed"
    for index in range(3):
        stem = f"cell{index}"
        for name in IMAGES:
            np.testing.assert_array_equal(read_store(storage.join(out, stem, name)),
                                          read_store(str(tmp_path / "local" / stem / name)))
    ours, theirs = io.read_table(storage.join(out, TABLE)), io.read_table(tmp_path / "local" / TABLE)
    assert list(ours) == list(theirs) and list(ours)[0] == "image"
    for column in theirs:
        np.testing.assert_array_equal(ours[column], theirs[column])
    assert sorted(set(ours["image"])) == ["cell0", "cell1", "cell2"]
