"""End to end: images with a channel axis are processed channel by channel, one channel is segmented and every
channel measured, and bad axes are refused before any work.

The session's Prefect server comes from ``tests/conftest.py``; the flows run
on the session's local Dask cluster (the ``dask_cluster`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from scipy import ndimage as ndi
from skimage import filters, measure

from flows.cli import main as cli_main
from flows.demo import demo_volume
from tasks import io
from tests.helpers import same_up_to_permutation

SIGMA = 1.5
STEPS = [
    {"op": "gaussian", "sigma": SIGMA},
    {"op": "threshold", "method": "otsu"},
    {"op": "label", "connectivity": 1},
]
OUTPUTS = ["01_gaussian.ome.zarr", "02_threshold.ome.zarr", "03_label.ome.zarr"]


def two_channels(shape, seed) -> np.ndarray:
    """Two channels of different blobs, the second about a third as bright: their Otsu thresholds differ."""
    first = demo_volume(shape, n_objects=12, seed=seed)
    second = (demo_volume(shape, n_objects=9, seed=seed + 1) // 3).astype(np.uint16)
    return np.stack([first, second])


def channel_reference(channel: np.ndarray) -> dict:
    """The pipeline with SciPy / scikit-image on one channel alone."""
    smooth = ndi.gaussian_filter(channel.astype(np.float32), SIGMA, mode="nearest")
    threshold = filters.threshold_otsu(smooth)
    mask = smooth > threshold
    return {"gaussian": smooth, "threshold": threshold.item(), "mask": mask, "labels": measure.label(mask, connectivity=1)}


def stored(path: Path) -> np.ndarray:
    assert io.is_complete(path), f"{path} is not marked complete"
    return zarr.open_array(str(path), path="0", mode="r")[...]


def stored_axes(path: Path) -> list[tuple[str, str]]:
    axes = zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["axes"]
    return [(a["name"], a["type"]) for a in axes]


def assert_per_channel(out: Path, image: np.ndarray, channel_axis: int, stages: list[dict]) -> None:
    """Every store equals the reference channel by channel, knows its axes, and the thresholds are per channel."""
    references = [channel_reference(np.take(image, c, axis=channel_axis)) for c in range(image.shape[channel_axis])]
    smooth, mask, labels = (stored(out / name) for name in OUTPUTS)
    for c, reference in enumerate(references):
        ours = np.take(smooth, c, axis=channel_axis)
        np.testing.assert_allclose(ours, reference["gaussian"], rtol=0, atol=1e-5 * np.ptp(reference["gaussian"]))
        np.testing.assert_array_equal(np.take(mask, c, axis=channel_axis), reference["mask"])
        assert same_up_to_permutation(np.take(labels, c, axis=channel_axis), reference["labels"])
    thresholds = [r["threshold"] for r in references]
    assert thresholds[0] != thresholds[1]
    assert stages[1]["info"]["threshold"] == thresholds
    assert stages[2]["info"]["objects"] == [int(r["labels"].max()) for r in references]
    spatial = [(n, "space") for n in "zyx"[4 - image.ndim:]]
    expected = [("c", "channel")] + spatial if channel_axis == 0 else spatial + [("c", "channel")]
    for name in OUTPUTS:
        assert stored_axes(out / name) == expected, name
        assert zarr.open_array(str(out / name), path="0", mode="r").chunks[channel_axis] == 1


@pytest.mark.slow
def test_ome_tiff_with_a_channel_axis_through_the_large_image_flow(tmp_path, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    image = two_channels((14, 40, 33), seed=5)
    source = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(source, image, ome=True, metadata={"axes": "CZYX"})
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    # A chunk of 2 on the channel axis is cut to 1: each channel is processed on its own.
    result = flow(input=str(source), steps=STEPS, output=str(tmp_path / "out"), chunks=[2, 9, 17, 20])
    assert_per_channel(tmp_path / "out", image, 0, result["stages"])
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["stages"][1]["info"]["threshold"] == result["stages"][1]["info"]["threshold"]


@pytest.mark.slow
def test_spec_channel_axis_through_the_command_line_batch(tmp_path, dask_cluster):
    images = {"a": np.moveaxis(two_channels((44, 37), seed=1), 0, -1), "b": np.moveaxis(two_channels((30, 52), seed=3), 0, -1)}
    for stem, image in images.items():
        # A plain (not OME) TIFF: only the spec says that its last axis holds channels.
        tifffile.imwrite(tmp_path / f"{stem}.tif", image, photometric="minisblack", planarconfig="contig")
        assert io.resolve_input(tmp_path / f"{stem}.tif").channel_axis is None
    out = tmp_path / "out"
    spec = {"flow": "batch", "input": str(tmp_path / "*.tif"), "steps": STEPS, "output": str(out), "channel_axis": -1}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert cli_main(["run", str(tmp_path / "spec.yaml"), "--cluster", dask_cluster]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["spec"]["channel_axis"] == -1
    for stem, image in images.items():
        stages = [stage["images"][stem] for stage in record["stages"]]
        assert_per_channel(out / stem, image, 2, stages)


# --- refused before any work ------------------------------------------------------------------------------


def _tiff(path: Path, shape) -> str:
    tifffile.imwrite(path, np.zeros(shape, np.uint16), photometric="minisblack")
    return str(path)


REFUSED = {
    "channel_axis out of range": ((4, 20, 20), {"channel_axis": 3}, ["channel_axis 3 is out of range", "3 axes"]),
    "negative channel_axis out of range": ((4, 20, 20), {"channel_axis": -4}, ["channel_axis -4 is out of range"]),
    "channel_axis equal to time_axis": ((4, 5, 20, 20), {"channel_axis": 1, "time_axis": 1},
                                        ["channel_axis and time_axis must be different axes"]),
    "channel_axis equal to time_axis from the end": ((4, 5, 20, 20), {"channel_axis": -3, "time_axis": 1},
                                                     ["channel_axis and time_axis are the same axis (1)"]),
    "one spatial axis left": ((4, 20), {"channel_axis": 0}, ["channel_axis 0", "1 spatial axes"]),
    "one spatial axis left by both": ((4, 5, 20), {"channel_axis": 1, "time_axis": 0},
                                      ["channel_axis 1 and time_axis 0", "1 spatial axes"]),
    "four spatial axes left": ((2, 3, 6, 8, 8), {"channel_axis": 0}, ["channel_axis 0", "4 spatial axes"]),
    "four spatial axes, no axis given": ((3, 6, 8, 8), {}, ["no channel_axis and no time_axis", "4 spatial axes"]),
    "time_axis beyond the spec's bounds": ((4, 20, 20), {"time_axis": 7}, ["time_axis", "less than or equal to 4"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_axes_are_refused_naming_the_field(tmp_path, capsys, case):
    shape, fields, expected = REFUSED[case]
    spec = {"input": _tiff(tmp_path / "image.tif", shape), "steps": STEPS, "output": str(tmp_path / "out"), **fields}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert cli_main(["run", str(tmp_path / "spec.yaml")]) == 2
    message = capsys.readouterr().err
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "out").exists(), "nothing may be written"


# --- segment one channel, measure every channel ------------------------------------------------------------

PROPERTIES = ["label", "area", "intensity_mean", "intensity_max"]


def segment_and_measure(index: int) -> list[dict]:
    """The classic pipeline: keep channel ``index``, smooth, Otsu, label, measure every channel of the input."""
    return [
        {"op": "channel", "index": index},
        {"op": "gaussian", "sigma": SIGMA},
        {"op": "threshold"},
        {"op": "label"},
        {"op": "measure", "properties": PROPERTIES, "intensity": "input"},
    ]


def assert_measured_every_channel(table: dict, image: np.ndarray, channel_axis: int, index: int, out: Path) -> None:
    """The stores have no channel axis; the table equals regionprops_table of scikit-image's own labels of the
    channel, with the whole image's channels last as intensity, rows matched through the stored labels."""
    channel = np.take(image, index, axis=channel_axis)
    smooth = ndi.gaussian_filter(channel.astype(np.float32), SIGMA, mode="nearest")
    labels = measure.label(smooth > filters.threshold_otsu(smooth))
    ours = stored(out / "04_label.ome.zarr")
    assert labels.max() > 3 and same_up_to_permutation(ours, labels)
    spatial = [(n, "space") for n in "zyx"[4 - image.ndim:]]
    for name in ("01_channel", "02_gaussian", "03_threshold", "04_label"):
        assert stored_axes(out / f"{name}.ome.zarr") == spatial, name
    np.testing.assert_array_equal(stored(out / "01_channel.ome.zarr"), channel)
    reference = measure.regionprops_table(labels, np.moveaxis(image, channel_axis, -1), properties=PROPERTIES)
    channels = [f"-{c}" for c in range(image.shape[channel_axis])]
    assert list(table) == ["label", "area"] + [f"{p}{c}" for p in PROPERTIES[2:] for c in channels]
    assert list(table) == list(reference)
    ours_to_reference = dict(np.unique(np.stack([ours.ravel(), labels.ravel()], axis=1), axis=0).tolist())
    matched = np.array([ours_to_reference[label] for label in table["label"]])
    order = np.argsort(matched)
    np.testing.assert_array_equal(matched[order], np.arange(1, labels.max() + 1))
    for key, expected in reference.items():
        if key != "label":
            np.testing.assert_allclose(np.asarray(table[key], float)[order], expected, rtol=1e-9, err_msg=key)


@pytest.mark.slow
def test_ome_tiff_3d_segment_one_channel_measure_every_channel_large_image(tmp_path, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    image = two_channels((10, 48, 40), seed=21)
    source = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(source, image, ome=True, metadata={"axes": "CZYX"})
    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    out = tmp_path / "out"
    result = flow(input=str(source), steps=segment_and_measure(0), output=str(out), chunks=[2, 5, 17, 20])
    assert result["stages"][4]["info"]["rows"] > 3
    assert_measured_every_channel(io.read_table(out / "05_measure.csv"), image, 0, 0, out)


@pytest.mark.slow
def test_spec_channel_axis_2d_segment_one_channel_measure_every_channel_batch(tmp_path, dask_cluster):
    images = {"a": np.moveaxis(two_channels((48, 41), seed=11), 0, -1), "b": np.moveaxis(two_channels((36, 55), seed=13), 0, -1)}
    for stem, image in images.items():
        tifffile.imwrite(tmp_path / f"{stem}.tif", image, photometric="minisblack", planarconfig="contig")
    out = tmp_path / "out"
    spec = {"flow": "batch", "input": str(tmp_path / "*.tif"), "steps": segment_and_measure(1), "output": str(out),
            "channel_axis": -1}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert cli_main(["run", str(tmp_path / "spec.yaml"), "--cluster", dask_cluster]) == 0
    table = io.read_table(out / "05_measure.csv")
    assert list(table)[0] == "image"
    for stem, image in images.items():
        rows = np.asarray(table["image"]) == stem
        mine = {key: np.asarray(values)[rows] for key, values in table.items() if key != "image"}
        assert_measured_every_channel(mine, image, 2, 1, out / stem)


def _spec_file(tmp_path: Path, image: np.ndarray, letters: str, steps: list[dict], **fields) -> Path:
    source = tmp_path / "image.ome.tif"
    tifffile.imwrite(source, image, ome=True, metadata={"axes": letters})
    spec = {"input": str(source), "steps": steps, "output": str(tmp_path / "out"), **fields}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


MEASURE_ALL = {"op": "measure", "properties": ["label", "area", "intensity_mean"], "intensity": "input"}
REFUSED_STEPS = {
    "measure without a channel step": (
        (2, 20, 20), "CYX", STEPS + [MEASURE_ALL],
        ["steps[3] (measure): its labels have a channel axis (axes cyx, shape (2, 20, 20))",
         "{op: channel, index: N} before the steps that segment"],
    ),
    "channel index out of range": (
        (2, 20, 20), "CYX", [{"op": "channel", "index": 2}] + STEPS + [MEASURE_ALL],
        ["steps[0] (channel) index: 2 is out of range: the input has 2 channels", "use 0 to 1"],
    ),
    "channel op on a single-channel image": (
        (20, 20), "YX", [{"op": "channel", "index": 0}] + STEPS,
        ["steps[0] (channel): the image it gets has no channel axis (axes yx, shape (20, 20))"],
    ),
    "a second channel step": (
        (3, 20, 20), "CYX", [{"op": "channel", "index": 0}, {"op": "channel", "index": 0}],
        ["steps[1] (channel): the image it gets has no channel axis (axes yx, shape (20, 20))"],
    ),
    "a multichannel image in a list of intensity images": (
        (2, 20, 20), "CYX",
        [{"op": "channel", "index": 0, "name": "first"}] + STEPS + [{**MEASURE_ALL, "intensity": ["first", "input"]}],
        ["steps[4] (measure) intensity[1]: 'input' has a channel axis (axes cyx)", "would be ambiguous"],
    ),
    "measure with a time axis": (
        (3, 2, 20, 20), "TCYX", [{"op": "channel", "index": 1}] + STEPS + [MEASURE_ALL],
        ["steps[4] (measure): measuring an image with a time axis (axes tyx, shape (3, 20, 20)) is not supported yet"],
    ),
}


@pytest.mark.parametrize("case", REFUSED_STEPS)
def test_steps_that_do_not_fit_the_channel_axis_are_refused_before_any_work(tmp_path, capsys, case):
    shape, letters, steps, expected = REFUSED_STEPS[case]
    spec = _spec_file(tmp_path, np.zeros(shape, np.uint16), letters, steps)
    assert cli_main(["run", str(spec)]) == 2
    message = capsys.readouterr().err
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "out").exists(), "nothing may be written"
