"""Measurements from per-block partials: intensity_std, equivalent_diameter_area, extent, channels.

Blocks are cut by hand (no Dask), deliberately uneven, with objects crossing
block borders; merged partials must equal ``skimage.measure.regionprops_table``
on the whole image.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage import measure

from imageops import measure as hm
from imageops.catalog import MeasureParams
from tests.helpers import blobs, uneven_chunks

NEW = ["label", "area", "equivalent_diameter_area", "extent", "intensity_std"]
ALL = list(hm.PROPERTIES)


def blockwise_partials(labels: np.ndarray, intensity: np.ndarray | None, chunks) -> list[dict]:
    """``block_partials`` of every block of a chunking (tuples of sizes per axis)."""
    edges = [np.cumsum((0,) + tuple(c)) for c in chunks]
    parts = []
    for index in itertools.product(*[range(len(c)) for c in chunks]):
        window = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, index))
        origin = tuple(int(e[i]) for e, i in zip(edges, index))
        block_intensity = None if intensity is None else intensity[window]
        parts.append(hm.block_partials(labels[window], block_intensity, origin))
    return parts


def assert_columns_equal(ours: dict, reference: dict, intensity: np.ndarray | None = None) -> None:
    """Same columns in the same order; intensity_std within 1e-5 of the intensity range, the rest to 1e-9.

    scikit-image averages float32 intensities in float32: those means agree to 1e-6.
    """
    assert list(ours) == list(reference)
    spread = float(np.ptp(intensity)) if intensity is not None and intensity.size else 1.0
    single = intensity is not None and intensity.dtype == np.float32
    for key in reference:
        if key.startswith("intensity_std"):
            np.testing.assert_allclose(ours[key], reference[key], rtol=0, atol=1e-5 * max(spread, 1e-12), err_msg=key)
        else:
            rtol = 1e-6 if single and key.startswith("intensity_mean") else 1e-9
            np.testing.assert_allclose(ours[key], reference[key], rtol=rtol, err_msg=key)


def assert_objects_cross_blocks(parts: list[dict], labels: np.ndarray) -> None:
    """The test is only worth something if objects are cut by block borders."""
    assert labels.max() >= 3
    assert sum(len(p["label"]) for p in parts) > labels.max(), "no object crosses a block border"


def objects(shape, seed) -> np.ndarray:
    """Labels of smooth blobs, large enough to cross several blocks."""
    return measure.label(blobs(shape, seed=seed, sigma=1.5, dtype=np.float32) > 0.55)


@pytest.mark.parametrize("shape", [(37, 41), (13, 17, 19)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_new_properties_merged_over_uneven_blocks_equal_regionprops_table(shape, dtype):
    labels = objects(shape, seed=3)
    intensity = blobs(shape, seed=4, dtype=dtype)
    parts = blockwise_partials(labels, intensity, uneven_chunks(shape, seed=5))
    assert_objects_cross_blocks(parts, labels)
    merged = hm.merge_partials(parts)
    ours = hm.regionprops_columns(merged, ALL, labels.ndim)
    assert_columns_equal(ours, measure.regionprops_table(labels, intensity, properties=ALL), intensity)


@pytest.mark.parametrize("shape", [(37, 41), (13, 17, 19)])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_intensity_block_with_channel_axis_gives_per_channel_columns(shape, channels):
    labels = objects(shape, seed=8)
    intensity = np.stack([blobs(shape, seed=10 + c, dtype=np.float32) * (c + 1) for c in range(channels)], axis=-1)
    parts = blockwise_partials(labels, intensity, uneven_chunks(shape, seed=9))
    assert_objects_cross_blocks(parts, labels)
    merged = hm.merge_partials(parts)
    ours = hm.regionprops_columns(merged, ALL, labels.ndim)
    reference = measure.regionprops_table(labels, intensity, properties=ALL)
    assert [k for k in ours if k.startswith("intensity_std")] == [f"intensity_std-{c}" for c in range(channels)]
    assert_columns_equal(ours, reference, intensity)


def test_intensity_std_is_exact_for_a_large_mean_and_a_small_spread():
    """A sum of squares minus the squared sum would lose every digit here (1e16 against 1)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[3:37, 5:30] = 1
    labels[10:20, 31:39] = 2
    intensity = 1e8 + rng.random(labels.shape)
    merged = hm.merge_partials(blockwise_partials(labels, intensity, ((1, 7, 12, 20), (9, 1, 30))))
    ours = hm.regionprops_columns(merged, ["intensity_std"], 2)["intensity_std"]
    reference = measure.regionprops_table(labels, intensity, properties=["intensity_std"])["intensity_std"]
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_merging_is_associative():
    labels = objects((30, 30), seed=12)
    intensity = blobs((30, 30), seed=13, dtype=np.float64)
    parts = blockwise_partials(labels, intensity, ((4, 9, 1, 16), (13, 2, 15)))
    at_once = hm.merge_partials(parts)
    in_groups = hm.merge_partials([hm.merge_partials(parts[:5]), hm.merge_partials(parts[5:])])
    assert list(in_groups) == list(at_once)
    for key in at_once:
        np.testing.assert_allclose(in_groups[key], at_once[key], rtol=1e-12, err_msg=key)


def test_single_voxel_objects_have_zero_std_and_full_extent():
    labels = np.array([[1, 0, 2], [0, 0, 0], [3, 3, 0]])
    intensity = np.array([[5.0, 0, 7], [0, 0, 0], [1, 1, 0]])
    merged = hm.merge_partials(blockwise_partials(labels, intensity, ((1, 2), (1, 1, 1))))
    ours = hm.regionprops_columns(merged, ["label", "intensity_std", "extent", "equivalent_diameter_area"], 2)
    assert ours["intensity_std"].tolist() == [0.0, 0.0, 0.0]
    assert ours["extent"].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(ours["equivalent_diameter_area"], np.sqrt(4 * np.array([1, 1, 2]) / np.pi))


@pytest.mark.parametrize("channels", [None, 2])
def test_no_objects_give_empty_columns_named_as_regionprops_table(channels):
    labels = np.zeros((6, 7), dtype=np.uint32)
    shape = labels.shape if channels is None else labels.shape + (channels,)
    intensity = np.ones(shape, dtype=np.float32)
    merged = hm.merge_partials(blockwise_partials(labels, intensity, ((2, 4), (7,))))
    ours = hm.regionprops_columns(merged, ALL, 2)
    reference = measure.regionprops_table(labels, intensity, properties=ALL)
    assert list(ours) == list(reference)
    assert all(len(v) == 0 for v in ours.values())


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: hm.block_partials(np.ones((3, 4), int), np.ones((4, 3))), ValueError,
         r"intensity has shape \(4, 3\) but labels have \(3, 4\)"),
        (lambda: hm.block_partials(np.ones((3, 4), int), np.ones((3, 4, 0))), ValueError, "intensity has shape"),
        (lambda: hm.block_partials(np.ones((3, 4), int), np.ones((3, 4), complex)), TypeError,
         "intensity must hold real numbers"),
        (lambda: hm.block_partials(np.ones((3, 4), int), origin=(1,)), ValueError, "origin must have one entry per axis"),
        (lambda: hm.merge_partials([hm.block_partials(np.ones((2, 2), int)),
                                    hm.block_partials(np.ones((2, 2), int), np.ones((2, 2)))]),
         ValueError, "partials 1 hold"),
        (lambda: hm.regionprops_columns(hm.merge_partials([hm.block_partials(np.ones((2, 2), int))]),
                                        ["intensity_std"], 2), ValueError, "need an intensity image"),
        (lambda: hm.regionprops_columns({}, ["perimeter"], 2), ValueError, "unknown properties"),
    ],
)
def test_refusals_name_the_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_measure_params_take_a_list_of_intensity_images():
    params = MeasureParams(properties=["label", "intensity_std"], intensity=["input", "smooth"])
    assert params.intensity_refs() == [("intensity[0]", "input"), ("intensity[1]", "smooth")]
    assert MeasureParams(properties=["intensity_std"]).intensity == "input"


@pytest.mark.parametrize(
    ("intensity", "message"),
    [
        ([], "an empty list names no image"),
        (["input", ""], r"intensity\[1\]: an empty name"),
        (["input", "smooth", "input"], r"intensity\[2\]: 'input' is listed twice"),
        (None, r"properties \['intensity_std'\] need an intensity image"),
    ],
)
def test_measure_params_refuse_bad_intensity_lists(intensity, message):
    with pytest.raises(ValueError, match=message):
        MeasureParams(properties=["label", "intensity_std"], intensity=intensity)
