"""Every lifted op on deliberately uneven chunks equals its whole-image SciPy / scikit-image reference."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import filters, measure

from imageops.catalog import GaussianParams, LabelParams, MeasureParams, MedianParams, ThresholdParams
from tasks import lift
from tests.helpers import blobs, same_up_to_permutation, uneven_chunks

SHAPES = {2: (61, 47), 3: (23, 38, 29)}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 3.5])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_gaussian_on_uneven_chunks_equals_whole_image(ndim, sigma, dtype):
    image = blobs(SHAPES[ndim], seed=ndim, dtype=dtype)
    chunked = lift.lift_local(da.from_array(image, chunks=uneven_chunks(image.shape, seed=1)), GaussianParams(sigma=sigma))
    reference = ndi.gaussian_filter(image.astype(np.float32), sigma, mode="nearest", truncate=4.0)
    result = chunked.compute()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5 * np.ptp(reference))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("size", [2, 3, 5])
def test_median_on_uneven_chunks_equals_whole_image(ndim, size):
    image = blobs(SHAPES[ndim], seed=5, dtype=np.uint8)
    chunked = lift.lift_local(da.from_array(image, chunks=uneven_chunks(image.shape, seed=2)), MedianParams(size=size))
    np.testing.assert_array_equal(chunked.compute(), ndi.median_filter(image, size=size, mode="nearest"))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_otsu_mask_on_uneven_chunks_equals_whole_image(ndim, dtype):
    image = blobs(SHAPES[ndim], seed=11, dtype=dtype)
    mask, value = lift.threshold(da.from_array(image, chunks=uneven_chunks(image.shape, seed=3)), ThresholdParams())
    assert value == filters.threshold_otsu(image)
    np.testing.assert_array_equal(mask.compute(), image > filters.threshold_otsu(image))


def test_otsu_of_gaussian_output_equals_whole_image():
    image = blobs((40, 40, 40), seed=2)
    smooth = lift.lift_local(da.from_array(image, chunks=(13, 20, 9)), GaussianParams(sigma=2.0))
    mask, value = lift.threshold(smooth, ThresholdParams())
    reference = ndi.gaussian_filter(image.astype(np.float32), 2.0, mode="nearest")
    assert value == filters.threshold_otsu(reference)
    np.testing.assert_array_equal(mask.compute(), reference > filters.threshold_otsu(reference))


def test_manual_threshold_and_constant_image():
    image = np.full((9, 9), 4, np.uint8)
    mask, value = lift.threshold(da.from_array(image, chunks=4), ThresholdParams())
    assert value == filters.threshold_otsu(image)
    assert not mask.compute().any()
    mask, value = lift.threshold(da.from_array(image, chunks=4), ThresholdParams(method="manual", value=3))
    assert value == 3 and mask.compute().all()


def _check_labels(mask, chunks, connectivity):
    labels, n = lift.label(da.from_array(mask, chunks=chunks), LabelParams(connectivity=connectivity))
    result = labels.compute()
    reference = measure.label(mask, connectivity=connectivity)
    assert result.dtype == np.uint32
    assert n == reference.max()
    assert sorted(np.unique(result).tolist()) == list(range(n + 1)), "labels are not 1..N without gaps"
    assert same_up_to_permutation(result, reference)


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_label_on_uneven_chunks_equals_whole_image(ndim, connectivity, seed):
    mask = blobs(SHAPES[ndim], seed=seed, sigma=1.5) > 0.55 * 65535 * 0.9
    assert measure.label(mask).max() > 5, "the test image should hold several objects"
    _check_labels(mask, uneven_chunks(mask.shape, seed=seed + 10), connectivity)


@pytest.mark.parametrize("ndim", [2, 3])
def test_objects_touching_only_at_chunk_corners(ndim):
    mask = np.zeros((8,) * ndim, bool)
    # A diagonal chain of single voxels crossing the chunk corner at 4 on every axis.
    for i in range(2, 6):
        mask[(i,) * ndim] = True
    chunks = (4,) * ndim
    for connectivity in range(1, ndim + 1):
        _check_labels(mask, chunks, connectivity)
    labels, n = lift.label(da.from_array(mask, chunks=chunks), LabelParams(connectivity=ndim))
    assert n == 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_one_object_running_through_every_chunk(ndim):
    mask = np.zeros((20,) * ndim, bool)
    # A plus-shaped object: lines along every axis through the centre, touching every chunk row.
    for axis in range(ndim):
        index = [10] * ndim
        index[axis] = slice(None)
        mask[tuple(index)] = True
    mask[(slice(None),) * ndim] |= np.pad(np.ones((18,) * ndim, bool), 1) & (np.indices(mask.shape).sum(0) % 7 == 0)
    chunks = tuple((3, 5, 1, 6, 5) for _ in range(ndim))
    _check_labels(mask, chunks, 1)
    _check_labels(mask, chunks, ndim)


@pytest.mark.parametrize("ndim", [2, 3])
def test_measure_on_uneven_chunks_equals_regionprops_table(ndim):
    image = blobs(SHAPES[ndim], seed=4, dtype=np.uint16)
    reference_labels = measure.label(image > filters.threshold_otsu(image))
    chunks = uneven_chunks(image.shape, seed=6)
    props = ["label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max"]
    table = lift.measure(
        da.from_array(reference_labels, chunks=chunks),
        MeasureParams(properties=props),
        intensity=da.from_array(image, chunks=uneven_chunks(image.shape, seed=7)),
    )
    reference = measure.regionprops_table(reference_labels, image, properties=props)
    assert list(table) == list(reference)
    for key in reference:
        np.testing.assert_allclose(table[key], reference[key], rtol=1e-9, err_msg=key)


def test_measure_without_objects_gives_empty_columns():
    table = lift.measure(da.zeros((10, 10), dtype=np.uint32, chunks=4), MeasureParams(properties=["label", "area"], intensity=None))
    assert {k: len(v) for k, v in table.items()} == {"label": 0, "area": 0}
