"""Property-based: random shapes, dtypes, chunkings and parameters; chunked always equals whole-image.

Includes constant images, images with no objects and single-voxel chunks.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
from hypothesis import HealthCheck, example, given, settings, strategies as st
from scipy import ndimage as ndi
from skimage import filters, measure

from imageops.catalog import GaussianParams, LabelParams, MeasureParams, ThresholdParams
from tasks import lift
from tests.helpers import axis_cuts, same_up_to_permutation

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = (np.uint8, np.uint16, np.float32)


@st.composite
def chunked_images(draw, dtypes=DTYPES):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 12 if ndim == 3 else 24)) for _ in range(ndim))
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(["random", "constant", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "constant":
        image = np.full(shape, draw(st.integers(0, 200)), dtype=dtype)
    elif kind == "sparse":
        image = (rng.random(shape) > 0.9).astype(dtype) * (200 if dtype != bool else 1)
    else:
        image = rng.random(shape) * 200
        image = image.astype(dtype)
    chunks = tuple(axis_cuts(draw, n) for n in shape)
    return image, chunks


@SETTINGS
@given(chunked_images(), st.floats(0.3, 3.0))
def test_gaussian(data, sigma):
    image, chunks = data
    result, _ = lift.lift(da.from_array(image, chunks=chunks), GaussianParams(sigma=sigma))
    reference = ndi.gaussian_filter(image.astype(np.float32), sigma, mode="nearest")
    np.testing.assert_allclose(result.compute(), reference, rtol=0, atol=1e-5 * max(float(np.ptp(reference)), 1e-12))


@SETTINGS
@given(chunked_images())
@example(data=(np.array([[[127, 53, 8]]], np.uint8), ((1,), (1,), (3,))))
def test_otsu(data):
    image, chunks = data
    mask, info = lift.lift(da.from_array(image, chunks=chunks), ThresholdParams(), compute=dask.compute)
    with warnings.catch_warnings():
        # a grayscale volume whose last axis is 3 or 4 long looks like RGB to scikit-image, which only warns
        warnings.filterwarnings("ignore", message="threshold_otsu is expected to work correctly only for grayscale")
        value = filters.threshold_otsu(image)
    assert info["threshold"] == value
    np.testing.assert_array_equal(mask.compute(), image > value)


@SETTINGS
@given(chunked_images(dtypes=(bool,)), st.integers(1, 3))
def test_label_and_measure(data, connectivity):
    mask, chunks = data
    connectivity = min(connectivity, mask.ndim)
    labels, info = lift.lift(da.from_array(mask, chunks=chunks), LabelParams(connectivity=connectivity))
    labels = labels.compute()
    reference = measure.label(mask, connectivity=connectivity)
    assert info["objects"] == reference.max()
    assert same_up_to_permutation(labels, reference)
    props = ["label", "area", "centroid", "bbox"]
    table = lift.measure(da.from_array(labels, chunks=chunks), MeasureParams(properties=props, intensity=None))
    expected = measure.regionprops_table(labels, properties=props)
    assert list(table) == list(expected)
    for key in expected:
        np.testing.assert_allclose(table[key], expected[key], err_msg=key)
