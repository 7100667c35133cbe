"""End to end: a measure step over two intensity images, and the specs refused before any work.

The flows run against the session's Prefect server on the session's Dask
cluster (``tests/conftest.py``); the table must equal ``regionprops_table`` of
the stored labels with the two images stacked on a last axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from skimage import measure

from flows.cli import main as cli_main
from flows.demo import demo_volume
from flows.spec import SpecError, load_spec
from tasks import io

PROPS = [
    "label", "area", "centroid", "bbox", "equivalent_diameter_area", "extent",
    "intensity_mean", "intensity_min", "intensity_max", "intensity_std",
]
STEPS = [
    {"op": "gaussian", "sigma": 1.5, "name": "smooth"},
    {"op": "threshold", "method": "otsu"},
    {"op": "label", "connectivity": 1},
    {"op": "measure", "properties": PROPS, "intensity": ["input", "smooth"]},
]


def stored(store: Path) -> np.ndarray:
    assert io.is_complete(store), f"{store} is not marked complete"
    return zarr.open_array(str(store), path="0", mode="r")[...]


def assert_two_channel_table(table: dict, source: np.ndarray, out: Path) -> None:
    """The table equals regionprops_table of the stored labels, intensity [source, smoothed] stacked."""
    labels = stored(out / "03_label.ome.zarr")
    stacked = np.stack([source, stored(out / "01_smooth.ome.zarr")], axis=-1)
    reference = measure.regionprops_table(labels, stacked, properties=PROPS)
    assert labels.max() > 3
    assert list(table) == list(reference)
    assert {"intensity_std-0", "intensity_std-1", "intensity_mean-1"} <= set(table)
    spread = float(np.ptp(stacked.astype(np.float64)))
    for key in reference:
        if key.startswith("intensity"):  # scikit-image works on the float32 stack in float32
            np.testing.assert_allclose(table[key], reference[key], rtol=0, atol=1e-5 * spread, err_msg=key)
        else:
            np.testing.assert_allclose(table[key], reference[key], rtol=1e-9, err_msg=key)


@pytest.mark.slow
def test_large_image_flow_measures_two_intensity_images(tmp_path, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    volume = demo_volume((24, 50, 44), n_objects=30, seed=5)
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, volume)
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    result = flow(input=str(source), steps=STEPS, output=str(tmp_path / "out"), chunks=[7, 19, 30])
    table = io.read_table(tmp_path / "out" / "04_measure.csv")
    assert result["stages"][3]["ref"]["path"] == str(tmp_path / "out" / "04_measure.csv")
    assert_two_channel_table(table, volume, tmp_path / "out")


@pytest.mark.slow
def test_batch_flow_measures_two_intensity_images(tmp_path, dask_cluster):
    from flows import batch_flow
    from flows.runner import make_task_runner

    images = {"a": demo_volume((60, 45), n_objects=15, seed=1), "b": demo_volume((40, 70), n_objects=15, seed=2)}
    for stem, image in images.items():
        tifffile.imwrite(tmp_path / f"{stem}.tif", image)
    out = tmp_path / "out"
    flow = batch_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    result = flow(input=str(tmp_path / "*.tif"), steps=STEPS, output=str(out))
    assert result["images"] == ["a", "b"]
    table = io.read_table(out / "04_measure.csv")
    assert list(table)[0] == "image"
    for stem, image in images.items():
        rows = table["image"] == stem
        assert_two_channel_table({k: v[rows] for k, v in table.items() if k != "image"}, image, out / stem)


def spec_with(measure_step: dict) -> dict:
    return {"input": "volume.tif", "output": "out", "steps": [*STEPS[:3], {"op": "measure", **measure_step}]}


@pytest.mark.parametrize(
    ("measure_step", "message"),
    [
        ({"properties": ["label", "intensity_mean"], "intensity": ["input", "smoothed"]},
         r"steps\[3\] \(measure\) intensity\[1\]: 'smoothed' is not an earlier image step; known: \['input', 'smooth'\]"),
        ({"properties": ["label", "intensity_mean"], "intensity": ["threshold"]},
         r"steps\[3\] \(measure\) intensity\[0\]: 'threshold' is not an earlier image step"),
        ({"properties": ["label", "intensity_mean"], "intensity": "nothing"},
         r"steps\[3\] \(measure\) intensity: 'nothing' is not an earlier image step"),
        ({"properties": ["label", "intensity_std"], "intensity": None},
         r"steps\[3\] \(measure\): properties \['intensity_std'\] need an intensity image"),
        ({"properties": ["label", "intensity_std"], "intensity": []},
         r"steps\[3\] \(measure\): intensity: an empty list names no image"),
        ({"properties": ["label", "intensity_std"], "intensity": ["input", "input"]},
         r"steps\[3\] \(measure\): intensity\[1\]: 'input' is listed twice"),
    ],
)
def test_specs_with_bad_intensity_are_refused_naming_step_and_field(measure_step, message):
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with(measure_step))


def test_cli_refuses_an_unknown_intensity_name_before_any_work(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    bad = spec_with({"properties": ["label", "intensity_std"], "intensity": ["input", "smoothed"]})
    spec.write_text(yaml.safe_dump({**bad, "input": str(tmp_path / "volume.tif"), "output": str(tmp_path / "out")}))
    assert cli_main(["run", str(spec)]) == 2
    assert "intensity[1]: 'smoothed' is not an earlier image step" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
