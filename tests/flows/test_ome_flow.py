"""End to end: a run on an OME-TIFF writes OME-NGFF 0.5 stores that carry its physical pixel sizes.

gaussian -> threshold -> label -> measure through the large-image flow on
the session's Prefect server and Dask cluster. Every stage store validates as
OME-Zarr (``tests.ngff``), carries the input's units and scale, has a
lower-resolution level equal to its level 0 downsampled (the image is large
enough for one), the label store has its ``image-label`` colours, and the
table has ``area`` and ``centroid`` in micrometres too. (That a store with
its pyramid is reused, and one whose pyramid was interrupted is resumed, is
shown in ``tests/tasks/test_io_ome.py``.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from flows.demo import demo_volume
from tasks import io
from tests.ngff import validate_ome_zarr

pytestmark = pytest.mark.slow

UM = "micrometer"
SIZES = (2.0, 0.5, 0.25)  # z, y, x in micrometres
STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold", "method": "otsu"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area", "centroid", "intensity_mean"], "intensity": "input"},
]
STORES = {"01_gaussian": "image", "02_threshold": "mask", "03_label": "labels"}


@pytest.fixture(scope="module")
def ome_tiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("ome") / "cells.ome.tif"
    # 520 x 530 pixels a plane: large enough for one pyramid level (y and x halved), small enough to be quick.
    tifffile.imwrite(
        path, demo_volume((6, 520, 530), n_objects=120, seed=4), ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": SIZES[2], "PhysicalSizeXUnit": "µm",
                  "PhysicalSizeY": SIZES[1], "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": SIZES[0], "PhysicalSizeZUnit": "µm"},
    )
    return path


def test_stage_stores_are_ome_zarr_with_physical_sizes_pyramids_and_labels(tmp_path, ome_tiff, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    out = tmp_path / "out"
    flow(input=str(ome_tiff), steps=STEPS, output=str(out), chunks=[3, 256, 256])

    record = json.loads((out / "run.json").read_text())
    assert record["source"] == {"shape": [6, 520, 530], "dtype": "uint16", "axes": "zyx",
                                "physical_sizes": list(SIZES), "units": [UM] * 3}
    for name, kind in STORES.items():
        store = out / f"{name}.ome.zarr"
        assert io.is_complete(store)
        ome = validate_ome_zarr(store)
        multiscale = ome["multiscales"][0]
        assert [(a["name"], a["type"], a["unit"]) for a in multiscale["axes"]] == [(a, "space", UM) for a in "zyx"]
        level0, level1 = multiscale["datasets"]
        assert level0["coordinateTransformations"][0]["scale"] == list(SIZES)
        assert level1["coordinateTransformations"][0]["scale"] == [SIZES[0], 2 * SIZES[1], 2 * SIZES[2]]
        full = zarr.open_array(str(store), path="0", mode="r")[...]
        low = zarr.open_array(str(store), path="1", mode="r")[...]
        assert low.shape == (6, 260, 265) and low.dtype == full.dtype
        if kind == "image":  # the mean of each 2 x 2 window of a plane, at the window's centre
            expected = full.astype(np.float64).reshape(6, 260, 2, 265, 2).mean(axis=(2, 4)).astype(full.dtype)
            np.testing.assert_allclose(low, expected, rtol=1e-6)
            assert level1["coordinateTransformations"][1]["translation"] == [0.0, SIZES[1] / 2, SIZES[2] / 2]
        else:  # masks and labels: every other pixel, no value invented
            np.testing.assert_array_equal(low, full[:, ::2, ::2])
        assert ("image-label" in ome) == (kind == "labels")

    label = validate_ome_zarr(out / "03_label.ome.zarr")["image-label"]
    objects = record["stages"][2]["info"]["objects"]
    assert objects > 20
    assert [c["label-value"] for c in label["colors"]] == list(range(objects + 1))
    assert label["source"] == {"image": "../02_threshold.ome.zarr"}

    table = io.read_table(out / "04_measure.csv")
    assert list(table)[:6] == ["label", "area", "centroid-0", "centroid-1", "centroid-2", "intensity_mean"]
    np.testing.assert_allclose(table[f"area_{UM}^3"], table["area"] * np.prod(SIZES))
    for axis, size in enumerate(SIZES):
        np.testing.assert_allclose(table[f"centroid_{UM}-{axis}"], table[f"centroid-{axis}"] * size)
