"""``imageops.smoothing``: SciPy's Gaussian line filter, compiled, with SciPy's values to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage as ndi

from imageops import _numba, filters, smoothing

MODES = ("nearest", "reflect", "mirror", "constant", "wrap")


def _scipy(src, axis, sigma, mode, dtype, truncate=4.0):
    return ndi.gaussian_filter1d(src, sigma, axis=axis, mode=mode, truncate=truncate, output=dtype)


def _cut(array, axis, before, after):
    index = [slice(None)] * array.ndim
    index[axis] = slice(before, array.shape[axis] - after)
    return array[tuple(index)]


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times each compiled kernel ran (they still run, unchanged), and SciPy's filter (``scipy``)."""
    calls = {"_rows": 0, "_lines": 0}
    for name in calls:
        kernel = getattr(smoothing, name)

        def counted(*args, _kernel=kernel, _name=name):
            calls[_name] += 1
            return _kernel(*args)

        monkeypatch.setattr(smoothing, name, counted)
    calls["scipy"] = 0  # SciPy filtering an image along an axis (not reading off its kernel's weights)

    class CountedScipy:
        def __getattr__(self, name):
            return getattr(ndi, name)

        def gaussian_filter1d(self, *args, **kwargs):
            calls["scipy"] += "axis" in kwargs
            return ndi.gaussian_filter1d(*args, **kwargs)

    monkeypatch.setattr(smoothing, "ndi", CountedScipy())
    return calls


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.float32, np.float64, np.bool_])
@pytest.mark.parametrize("mode", MODES)
def test_every_axis_of_a_3d_block_equals_scipy_bit_for_bit(dtype, mode, kernel_calls):
    rng = np.random.default_rng(3)
    block = (rng.random((23, 19, 31)) * 200 - (50 if np.dtype(dtype).kind in "if" else 0)).astype(dtype)
    out = np.float64 if dtype == np.float64 else np.float32
    for axis in range(3):
        found = smoothing.filter_along(block, axis, 2.0, truncate=4.0, mode=mode, dtype=out)
        assert found.dtype == out and found.flags.c_contiguous
        np.testing.assert_array_equal(found, _scipy(block, axis, 2.0, mode, out))
    if mode != "wrap":  # each line's start, middle and end compiled; SciPy not called
        assert kernel_calls == {"_rows": 6, "_lines": 3, "scipy": 0}
    else:  # wrap's ends depend on the other end of the line: SciPy does it all
        assert kernel_calls == {"_rows": 0, "_lines": 0, "scipy": 3}


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    sigma=st.sampled_from([0.3, 0.5, 1.0, 1.7, 2.0, 3.5, 6.0]),
    truncate=st.sampled_from([1.0, 2.5, 4.0]),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_any_shape_axis_and_margins_equal_scipys_result_cut(shape, sigma, truncate, mode, seed, data):
    """Lines shorter than the kernel, margins reaching into either end's SciPy part, no interior at all."""
    image = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    axis = data.draw(st.integers(0, len(shape) - 1))
    length = shape[axis]
    before = data.draw(st.integers(0, length - 1))
    after = data.draw(st.integers(0, length - 1 - before))
    found = smoothing.filter_along(image, axis, sigma, truncate=truncate, mode=mode, dtype=np.float32,
                                   keep=(before, after))
    np.testing.assert_array_equal(found, _cut(_scipy(image, axis, sigma, mode, np.float32, truncate), axis, before, after))


def test_a_non_contiguous_input_and_a_dtype_not_compiled_for_still_equal_scipy(kernel_calls):
    rng = np.random.default_rng(5)
    strided = rng.integers(0, 4000, (40, 60)).astype(np.uint16)[:, ::2]
    np.testing.assert_array_equal(smoothing.filter_along(strided, 0, 1.5, truncate=4.0, mode="reflect", dtype=np.float32),
                                  _scipy(strided, 0, 1.5, "reflect", np.float32))
    assert kernel_calls == {"_rows": 3, "_lines": 0, "scipy": 0}  # the line's start, middle and end
    wide = rng.integers(0, 4000, (40, 30)).astype(np.int64)
    np.testing.assert_array_equal(smoothing.filter_along(wide, 1, 1.5, truncate=4.0, mode="reflect", dtype=np.float64),
                                  _scipy(wide, 1, 1.5, "reflect", np.float64))
    assert kernel_calls == {"_rows": 3, "_lines": 0, "scipy": 1}


def test_gaussian_weights_are_scipys_kernel_centre_first():
    weights, radius = smoothing.gaussian_weights(2.0, 4.0)
    assert radius == 8 and weights.shape == (9,)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / 4.0 * x.astype(float) ** 2)
    np.testing.assert_allclose(weights, (kernel / kernel.sum())[radius:], rtol=1e-15)
    assert smoothing.gaussian_weights(0.1, 4.0) is None  # radius 0: SciPy copies the line, nothing to compile


def test_whole_batch_image_and_block_with_halo_through_gaussian_inner(kernel_calls):
    rng = np.random.default_rng(6)
    image = rng.integers(0, 60000, (512, 512)).astype(np.uint16)
    np.testing.assert_array_equal(filters.gaussian(image, 2.0), ndi.gaussian_filter(image.astype(np.float32), 2.0,
                                                                                    mode="nearest"))
    block = rng.integers(0, 60000, (30, 40, 50)).astype(np.uint16)
    margins = [(8, 8), (0, 8), (8, 3)]
    inner = tuple(slice(b, n - a) for (b, a), n in zip(margins, block.shape))
    np.testing.assert_array_equal(filters.gaussian_inner(block, 2.0, margins),
                                  ndi.gaussian_filter(block.astype(np.float32), 2.0, mode="nearest")[inner])
    # The image: each axis's lines in three parts. The block: the middle of every axis, and the ends
    # that are the image's edges (no margin there): the start of axis 1, the end of axis 2.
    assert kernel_calls == {"_rows": 3 + 1 + 2, "_lines": 3 + 2, "scipy": 0}


def test_warm_up_leaves_the_kernels_compiled_for_the_usual_dtypes():
    smoothing.warm_up()
    for kernel in (smoothing._rows, smoothing._lines):
        compiled = {tuple(str(arg.dtype) for arg in signature[:2]) for signature in kernel.signatures}
        assert {("uint16", "float32"), ("float32", "float32")} <= compiled


def test_without_a_writable_cache_folder_the_kernels_are_compiled_uncached(monkeypatch):
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # as when no folder can hold Numba's cache

    def add_one(x):
        return x + 1

    compiled = _numba.compiled(add_one)
    assert compiled(1) == 2 and type(compiled._cache).__name__ == "NullCache"
