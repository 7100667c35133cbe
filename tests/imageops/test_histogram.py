"""``equal_bins_histogram``: NumPy's equal-bin float histogram, counted faster, with the same counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage as ndi

from imageops.threshold import _SLICE, block_histogram, equal_bins_histogram

FLOATS = (np.float32, np.float64)


def _numpy_counts(values, first, last, nbins):
    return np.histogram(values, bins=nbins, range=(first, last))[0]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("nbins", [256, 7, 1])
def test_values_on_every_edge_and_either_side_of_it_fall_in_numpys_bins(dtype, nbins):
    first, last = dtype(-1.3), dtype(2.9)
    edges = np.histogram_bin_edges(np.empty(0, dtype), bins=nbins, range=(first, last))
    around = [edges, np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf))]
    values = np.clip(np.concatenate(around).astype(dtype), first, last)
    found = equal_bins_histogram(values, first, last, nbins)
    assert found is not None  # the fast count was used, not NumPy's
    np.testing.assert_array_equal(found, _numpy_counts(values, first, last, nbins))


@pytest.mark.parametrize("dtype", FLOATS)
def test_a_smoothed_image_larger_than_a_slice_has_numpys_counts_for_its_own_and_a_wider_range(dtype):
    image = ndi.gaussian_filter(np.random.default_rng(4).integers(0, 4000, (3, 300, 257)).astype(dtype), 2)
    assert image.size > 2 * _SLICE
    for first, last in [(image.min(), image.max()), (float(image.min()) - 7.5, float(image.max()))]:
        found = equal_bins_histogram(image, first, last, 256)
        assert found is not None
        np.testing.assert_array_equal(found, _numpy_counts(image, first, last, 256))


@pytest.mark.parametrize(("values", "first", "last"), [
    (np.arange(5, dtype=np.uint16), np.uint16(0), np.uint16(4)),            # integers: one bin per value elsewhere
    (np.array([0.5, 2.0], np.float32), np.float32(1.0), np.float32(2.0)),   # a value below the range
    (np.array([1.0, np.nan], np.float32), np.float32(1.0), np.float32(2.0)),  # NaN
    (np.full(4, 3.0, np.float32), np.float32(3.0), np.float32(3.0)),        # an empty range
    (1000 + np.linspace(0, 1e-3, 50, dtype=np.float32), np.float32(1000), np.float32(1000.001)),  # narrow for its size
    (np.empty(0, np.float32), np.float32(0), np.float32(1)),
])
def test_it_leaves_to_numpy_what_it_does_not_count_and_block_histogram_still_equals_numpy(values, first, last):
    assert equal_bins_histogram(values, first, last, 256) is None
    if values.dtype.kind == "f" and np.isfinite(values).all() and first < last:
        try:
            expected = _numpy_counts(values, first, last, 256)
        except ValueError as error:  # NumPy refuses: so does block_histogram, with NumPy's message
            with pytest.raises(ValueError, match=str(error)):
                block_histogram(values, first, last)
        else:
            np.testing.assert_array_equal(block_histogram(values, first, last), expected)


@settings(max_examples=300, deadline=None)
@given(
    dtype=st.sampled_from(FLOATS),
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300),
    ties=st.integers(0, 3),
    widen=st.floats(0, 10, width=32),
    nbins=st.sampled_from([256, 255, 3]),
)
def test_random_values_have_numpys_counts(dtype, values, ties, widen, nbins):
    values = np.asarray(values, dtype)
    if ties:  # few distinct values, on a grid that lands on edges
        values = np.round(values / 10 ** ties).astype(dtype)
    first, last = values.min() - dtype(widen), values.max()
    if not first < last:
        return
    found = equal_bins_histogram(values, first, last, nbins)
    try:
        expected = _numpy_counts(values, first, last, nbins)
    except ValueError:  # too many bins for so narrow a range: left to NumPy, which refuses
        assert found is None
        return
    if found is not None:
        np.testing.assert_array_equal(found, expected)
