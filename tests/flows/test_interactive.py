"""The interactive API gives, lazily, the very arrays a run's stages store."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import prefect.main  # noqa: F401  (Prefect sets up its console logging at import: now, not on a stream a test captures)
import pytest
import tifffile
import yaml
from dask.callbacks import Callback
from dask.core import flatten

from flows.cli import main as cli_main
from flows.demo import demo_volume
from tasks import api, io

CHUNKS = [7, 20, 16]  # uneven on every axis
STEPS = [
    {"op": "gaussian", "sigma": 1.5},
    {"op": "threshold", "method": "otsu"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area", "centroid", "intensity_mean"], "intensity": "input"},
]


class TaskLog(Callback):
    """The keys of every task Dask runs while active (local schedulers)."""

    def __init__(self):
        super().__init__()
        self.keys: list = []

    def _pretask(self, key, dsk, state):
        self.keys.append(key)


def keys_of(array: da.Array) -> set:
    return set(flatten(array.__dask_keys__()))


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_cluster) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("interactive")
    source = folder / "volume.tif"
    tifffile.imwrite(source, demo_volume((20, 48, 40), n_objects=25, seed=5))
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(source), "chunks": CHUNKS, "steps": STEPS, "output": str(folder / "out")}))
    assert cli_main(["run", str(spec), "--cluster", dask_cluster, "--quiet"]) == 0
    return folder / "out", source


def test_interactive_api_is_lazy_and_equals_the_stages(run):
    out, source = run
    record = {stage["name"]: stage for stage in json.loads((out / "run.json").read_text())["stages"]}
    with dask.config.set(scheduler="synchronous"), TaskLog() as log:
        image = api.imread(source, chunks=CHUNKS)
        smooth, found = api.apply(image, "gaussian", sigma=1.5)
        assert log.keys == [] and found == {}  # reading and a local op: nothing is computed
        assert isinstance(smooth, da.Array) and smooth.chunks == image.chunks and smooth.dtype == np.float32

        mask, found = api.apply(smooth, "threshold", method="otsu")
        assert log.keys, "a threshold computes its histogram when called"
        assert not keys_of(mask) & set(log.keys)  # ... and not the mask
        assert found["threshold"] == record["02_threshold"]["info"]["threshold"]

        labels, found = api.apply(mask, "label")
        assert not keys_of(labels) & set(log.keys)  # the labels themselves are not computed yet
        assert found["objects"] == record["03_label"]["info"]["objects"] > 1

        computed_before = len(log.keys)
        stored = {name: api.open_stage(out, name) for name in ("01_gaussian", "02_threshold", "03_label")}
        assert len(log.keys) == computed_before  # opening a stage reads nothing either
        np.testing.assert_array_equal(smooth.compute(), stored["01_gaussian"].compute())
        np.testing.assert_array_equal(mask.compute(), stored["02_threshold"].compute())
        np.testing.assert_array_equal(labels.compute(), stored["03_label"].compute())

    table = api.measure(labels, STEPS[3]["properties"], intensity=image)
    written = io.read_table(out / "04_measure.csv")
    assert list(table) == list(written)
    for column in table:
        np.testing.assert_allclose(table[column], written[column], rtol=1e-12, err_msg=column)


def test_interactive_api_refuses_what_it_cannot_do(run):
    out, source = run
    image = api.imread(source)
    with pytest.raises(ValueError, match="unknown op 'blur'"):
        api.apply(image, "blur", sigma=1)
    with pytest.raises(ValueError, match="sigma"):
        api.apply(image, "gaussian", sigma=-1)
    with pytest.raises(ValueError, match="gives a table"):
        api.apply(image, "measure")
    with pytest.raises(TypeError, match="dask array"):
        api.apply(np.zeros((4, 4)), "gaussian", sigma=1)
    with pytest.raises(FileNotFoundError, match="01_gaussian"):
        api.open_stage(out, "01_gausian")


def test_loaders_read_a_file_a_glob_and_tiles_lazily_as_the_same_volume(tmp_path):
    volume = demo_volume((6, 30, 26), n_objects=5, seed=2)
    tifffile.imwrite(tmp_path / "whole.tif", volume)
    for z, plane in enumerate(volume):
        tifffile.imwrite(tmp_path / f"plane_{z:02d}.tif", plane)
    grid = []
    for rows in (slice(0, 13), slice(13, 30)):
        grid.append([])
        for cols in (slice(0, 11), slice(11, 26)):
            path = tmp_path / f"tile_{rows.start}_{cols.start}.tif"
            tifffile.imwrite(path, volume[:, rows, cols])
            grid[-1].append(str(path))
    sources = [tmp_path / "whole.tif", str(tmp_path / "plane_*.tif"), {"tiles": [grid]}]
    with dask.config.set(scheduler="synchronous"), TaskLog() as log:
        arrays = [api.imread(source, chunks=(4, 16, 10)) for source in sources]
        assert log.keys == []
        for array in arrays:
            assert isinstance(array, da.Array) and array.shape == volume.shape and array.dtype == volume.dtype
            np.testing.assert_array_equal(array.compute(), volume)
