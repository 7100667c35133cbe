"""``equal_bins_histogram``: NumPy's equal-bin float histogram, counted faster, with the same counts.

Float32 and float64 values with a range of their own type are counted by the
compiled kernel (:mod:`imageops.histogram`); the tests count its calls, so a
silent fall-back to the NumPy passes fails them. Other ranges (a float64 range
over float32 values) go through the NumPy passes, with the same counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage as ndi

from imageops import histogram
from imageops.threshold import _SLICE, block_histogram, equal_bins_histogram

FLOATS = (np.float32, np.float64)


def _numpy_counts(values, first, last, nbins):
    return np.histogram(values, bins=nbins, range=(first, last))[0]


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many histograms the compiled kernel counted (it still counts them, unchanged)."""
    calls = []
    count = histogram._count

    def counted(*args):
        calls.append(args[0].dtype)
        return count(*args)

    monkeypatch.setattr(histogram, "_count", counted)
    return calls


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("nbins", [256, 7, 1])
def test_values_on_every_edge_and_either_side_of_it_fall_in_numpys_bins(dtype, nbins, kernel_calls):
    first, last = dtype(-1.3), dtype(2.9)
    edges = np.histogram_bin_edges(np.empty(0, dtype), bins=nbins, range=(first, last))
    around = [edges, np.nextafter(edges, dtype(-np.inf)), np.nextafter(edges, dtype(np.inf))]
    values = np.clip(np.concatenate(around).astype(dtype), first, last)
    found = equal_bins_histogram(values, first, last, nbins)
    assert found is not None and kernel_calls == [np.dtype(dtype)]  # the compiled count was used, not NumPy's
    np.testing.assert_array_equal(found, _numpy_counts(values, first, last, nbins))


@pytest.mark.parametrize("dtype", FLOATS)
def test_ranges_of_another_type_are_counted_as_numpy_counts_them(dtype, kernel_calls):
    """Python floats: NumPy's positions in float64, its edges in the values' type: the NumPy passes.

    A float64 range: NumPy compares the values as float64, with float64 edges: the float64 kernel.
    """
    values = np.linspace(-3, 7, 1001).astype(dtype)
    for first, last in [(-3.0, 7.0), (np.float64(-3), np.float64(7))]:
        found = equal_bins_histogram(values, first, last, 256)
        np.testing.assert_array_equal(found, _numpy_counts(values, first, last, 256))
    assert kernel_calls == [np.dtype(np.float64)] * (1 if dtype is np.float32 else 2)


def test_the_kernel_counts_slices_and_ends_of_any_length(kernel_calls):
    rng = np.random.default_rng(7)
    for size in (1, 3, 4095, 4096, 4097, 3 * 4096 + 5):
        values = ndi.gaussian_filter1d(rng.normal(size=size), 2).astype(np.float32)
        first, last = values.min(), values.max()
        if first < last:
            np.testing.assert_array_equal(equal_bins_histogram(values, first, last, 256),
                                          _numpy_counts(values, first, last, 256), err_msg=str(size))
    assert len(kernel_calls) == 5  # every size but 1 (an empty range)


@pytest.mark.parametrize("dtype", FLOATS)
def test_a_smoothed_image_larger_than_a_slice_has_numpys_counts_for_its_own_and_a_wider_range(dtype, kernel_calls):
    image = ndi.gaussian_filter(np.random.default_rng(4).integers(0, 4000, (3, 300, 257)).astype(dtype), 2)
    assert image.size > 2 * _SLICE
    for first, last in [(image.min(), image.max()), (float(image.min()) - 7.5, float(image.max()))]:
        found = equal_bins_histogram(image, first, last, 256)
        assert found is not None
        np.testing.assert_array_equal(found, _numpy_counts(image, first, last, 256))
    assert kernel_calls[0] == np.dtype(dtype)  # its own range: compiled


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
