"""``lift.measure`` over chunks equals ``regionprops_table`` on the whole image: every property,
several intensity images, an intensity image with a channel axis.

Deliberately uneven chunkings in 2D and 3D, with objects crossing chunk borders,
and a property-based test over random labels, dtypes, chunkings and images.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from skimage import measure

from imageops import measure as measure_ops
from imageops.catalog import MeasureParams
from tasks import lift
from tests.helpers import axis_cuts, blobs, uneven_chunks

ALL = list(measure_ops.PROPERTIES)
SHAPES = {2: (61, 47), 3: (19, 27, 23)}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tolerance(intensity: np.ndarray | None, key: str) -> dict:
    """How close a column must be: intensity columns within 1e-5 of the intensity range.

    scikit-image computes a float32 image's mean and std in float32: add a few
    float32 roundings of the largest value (which covers constant images too).
    """
    if intensity is None or not key.startswith("intensity"):
        return {"rtol": 1e-9, "atol": 0}
    values = intensity.astype(np.float64)
    spread = float(np.ptp(values)) if values.size else 0.0
    rounding = np.finfo(intensity.dtype).eps if intensity.dtype.kind == "f" else np.finfo(np.float64).eps
    return {"rtol": 0, "atol": 1e-5 * spread + 64 * rounding * float(np.abs(values).max(initial=0))}


def assert_table_equal(table: dict, reference: dict, intensity: np.ndarray | None = None) -> None:
    assert list(table) == list(reference)
    for key in reference:
        np.testing.assert_allclose(table[key], reference[key], err_msg=key, **tolerance(intensity, key))


def objects(ndim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the brighter blobs, and the blobs."""
    image = blobs(SHAPES[ndim], seed=seed, sigma=1.5, dtype=np.uint16)
    return measure.label(image > 0.55 * image.max()), image


def crosses_chunks(labels: np.ndarray, chunks) -> bool:
    """True when some object lies in more than one chunk."""
    dask_labels = da.from_array(labels, chunks=chunks)
    per_block = [np.unique(b)[1:] for b in (dask_labels.blocks[i].compute() for i in np.ndindex(*dask_labels.numblocks))]
    return sum(len(p) for p in per_block) > len(np.unique(labels)) - 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_every_property_on_uneven_chunks_equals_regionprops_table(ndim):
    labels, image = objects(ndim, seed=4)
    chunks = uneven_chunks(labels.shape, seed=6)
    assert labels.max() > 3 and crosses_chunks(labels, chunks)
    table = lift.measure(
        da.from_array(labels, chunks=chunks),
        MeasureParams(properties=ALL),
        intensity=da.from_array(image, chunks=uneven_chunks(image.shape, seed=7)),
    )
    assert_table_equal(table, measure.regionprops_table(labels, image, properties=ALL), image)


@pytest.mark.parametrize("ndim", [2, 3])
def test_several_intensity_images_equal_regionprops_table_of_them_stacked(ndim):
    labels, first = objects(ndim, seed=21)
    second = blobs(labels.shape, seed=12, dtype=np.float32) * 1000 + 5e4
    third = (blobs(labels.shape, seed=13, dtype=np.uint8) // 3).astype(np.uint8)
    chunks = uneven_chunks(labels.shape, seed=14)
    assert crosses_chunks(labels, chunks)
    images = [
        da.from_array(first, chunks=uneven_chunks(labels.shape, seed=15)),
        da.from_array(second, chunks=7),
        da.from_array(third, chunks=uneven_chunks(labels.shape, seed=16)),
    ]
    table = lift.measure(da.from_array(labels, chunks=chunks), MeasureParams(properties=ALL), intensity=images)
    stacked = np.stack([first, second, third], axis=-1)
    reference = measure.regionprops_table(labels, stacked, properties=ALL)
    assert [k for k in table if k.startswith("intensity_mean")] == ["intensity_mean-0", "intensity_mean-1", "intensity_mean-2"]
    assert_table_equal(table, reference, stacked)


def test_one_image_in_a_list_gives_channel_columns():
    labels, image = objects(2, seed=3)
    props = ["label", "intensity_mean", "intensity_std"]
    table = lift.measure(da.from_array(labels, chunks=9), MeasureParams(properties=props), intensity=[da.from_array(image)])
    assert list(table) == ["label", "intensity_mean-0", "intensity_std-0"]
    assert_table_equal(table, measure.regionprops_table(labels, image[..., None], properties=props), image)


@pytest.mark.parametrize("ndim", [2, 3])
def test_intensity_with_a_channel_axis_equals_regionprops_table(ndim):
    labels, _ = objects(ndim, seed=21)
    channels = np.stack([blobs(labels.shape, seed=22 + c, dtype=np.float64) * 10**c for c in range(3)], axis=-1)
    chunks = uneven_chunks(labels.shape, seed=23)
    intensity = da.from_array(channels, chunks=uneven_chunks(labels.shape, seed=24) + ((1, 2),))
    table = lift.measure(da.from_array(labels, chunks=chunks), MeasureParams(properties=ALL), intensity=intensity)
    assert_table_equal(table, measure.regionprops_table(labels, channels, properties=ALL), channels)


@pytest.mark.parametrize(
    ("intensity", "message"),
    [
        ([da.zeros((6, 6), chunks=3), da.zeros((6, 5), chunks=3)], r"intensity\[1\] has shape \(6, 5\) but labels have \(6, 6\)"),
        ([], "intensity: an empty list of images"),
        (da.zeros((6, 6, 2, 2), chunks=3), r"intensity image has shape \(6, 6, 2, 2\) but labels have \(6, 6\)"),
    ],
)
def test_refuses_intensity_images_that_do_not_fit(intensity, message):
    labels = da.ones((6, 6), chunks=3, dtype=np.uint32)
    with pytest.raises(ValueError, match=message):
        lift.measure(labels, MeasureParams(properties=["label", "intensity_std"]), intensity=intensity)


# --- property-based --------------------------------------------------------------------------------------------------


@st.composite
def measured_images(draw):
    """Labels (scattered or connected, possibly none), 0-3 intensity images, chunkings for each."""
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 10 if ndim == 3 else 20)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        labels = rng.integers(0, draw(st.integers(1, 6)), size=shape)  # labels scattered over the image
    else:
        labels = measure.label(rng.random(shape) > draw(st.floats(0.2, 0.95)))
    labels = labels.astype(draw(st.sampled_from([np.uint8, np.int32, np.uint32])))
    images = []
    for _ in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]))
        kind = draw(st.sampled_from(["random", "constant", "offset"]))
        if kind == "constant":
            values = np.full(shape, draw(st.floats(0, 200)))
        elif kind == "offset":  # a large mean against a small spread
            values = 1e4 + rng.random(shape)
        else:
            values = rng.random(shape) * 200
        images.append((values.astype(dtype), tuple(axis_cuts(draw, n) for n in shape)))
    return labels, tuple(axis_cuts(draw, n) for n in shape), images


@SETTINGS
@given(measured_images(), st.booleans())
def test_measure_on_chunks_equals_regionprops_table(data, as_list):
    labels, chunks, images = data
    properties = ALL if images else [p for p in ALL if p not in measure_ops.INTENSITY_PROPERTIES]
    if not images:
        intensity, reference_intensity = None, None
    elif len(images) == 1 and not as_list:
        intensity, reference_intensity = da.from_array(images[0][0], chunks=images[0][1]), images[0][0]
    else:
        intensity = [da.from_array(image, chunks=image_chunks) for image, image_chunks in images]
        reference_intensity = np.stack([image for image, _ in images], axis=-1)
    params = MeasureParams(properties=properties, intensity="input" if images else None)
    table = lift.measure(da.from_array(labels, chunks=chunks), params, intensity=intensity)
    reference = measure.regionprops_table(labels, reference_intensity, properties=properties)
    assert_table_equal(table, reference, reference_intensity)
