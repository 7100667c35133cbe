"""The filter family and the new thresholds on whole NumPy images: dtype rules, halos, validation, agreement with SciPy / scikit-image."""

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi
from skimage import exposure, filters, morphology

from imageops import filters as hf, get_op, halo, threshold as ht
from imageops.catalog_filters import (
    ClipParams,
    DifferenceOfGaussiansParams,
    GaussianLaplaceParams,
    MaximumParams,
    MinimumParams,
    RescaleIntensityParams,
    SobelParams,
    ThresholdLocalParams,
    UniformParams,
    WhiteTophatParams,
)
from tests.helpers import blobs

DTYPES = [np.uint8, np.uint16, np.float32, np.float64]


# --- each filter equals its reference, with its dtype rule ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [2, 3])
def test_filters_equal_scipy_and_skimage_with_their_dtype_rules(dtype, ndim):
    image = blobs((14,) * ndim, seed=ndim, dtype=dtype)
    work = image.astype(np.float64 if dtype == np.float64 else np.float32)
    skf = np.float32 if dtype == np.float32 else np.float64
    cases = {
        "uniform": (hf.uniform(image, 4), ndi.uniform_filter(work, 4, mode="nearest"), work.dtype),
        "minimum": (hf.minimum(image, 3), ndi.minimum_filter(image, 3, mode="nearest"), dtype),
        "maximum": (hf.maximum(image, 2), ndi.maximum_filter(image, 2, mode="nearest"), dtype),
        "sobel": (hf.sobel(image), filters.sobel(image), skf),
        "laplace": (hf.laplace(image), ndi.laplace(work), work.dtype),
        "gaussian_laplace": (hf.gaussian_laplace(image, 1.5), ndi.gaussian_laplace(work, 1.5), work.dtype),
        "difference_of_gaussians": (
            hf.difference_of_gaussians(image, 1.0), filters.difference_of_gaussians(image, 1.0), skf
        ),
        "white_tophat": (
            hf.white_tophat(image, 2), morphology.white_tophat(image, hf.tophat_footprint(2, ndim)), dtype
        ),
        "clip": (hf.clip(image, 10, 200), np.clip(image, 10, 200), dtype),
    }
    for name, (ours, reference, out_dtype) in cases.items():
        assert ours.dtype == out_dtype, name
        np.testing.assert_array_equal(ours, reference, err_msg=name)


def test_op_out_dtype_matches_what_the_block_function_returns():
    params = {
        "uniform": UniformParams(size=3), "minimum": MinimumParams(size=3), "maximum": MaximumParams(size=3),
        "sobel": SobelParams(), "laplace": get_op("laplace").params(),
        "gaussian_laplace": GaussianLaplaceParams(sigma=1.0),
        "difference_of_gaussians": DifferenceOfGaussiansParams(low_sigma=1.0),
        "white_tophat": WhiteTophatParams(radius=1), "clip": ClipParams(low=0, high=5),
        "threshold_local": ThresholdLocalParams(block_size=3),
    }
    for dtype in [np.uint8, np.int16, np.uint16, np.float32, np.float64]:
        image = blobs((9, 8), dtype=dtype)
        for name, p in params.items():
            info = get_op(name)
            assert info.block_fn(image, p).dtype == info.out_dtype(p, image.dtype), (name, dtype)
        rescale = get_op("rescale_intensity")
        out = rescale.block_fn(image, (0.0, 1.0), (0.0, 1.0))
        assert out.dtype == rescale.out_dtype(RescaleIntensityParams(), image.dtype)


def test_difference_of_gaussians_with_a_given_high_sigma_and_modes():
    image = blobs((20, 17), dtype=np.float32)
    np.testing.assert_array_equal(
        hf.difference_of_gaussians(image, 1.0, 2.5, mode="reflect", truncate=3.0),
        filters.difference_of_gaussians(image, 1.0, 2.5, mode="reflect", truncate=3.0),
    )


def test_clip_of_integer_images_rounds_bounds_inwards_and_keeps_dtype():
    image = np.array([0, 10, 11, 200, 201, 255], np.uint8)
    np.testing.assert_array_equal(hf.clip(image, 10.5, 200.5), [11, 11, 11, 200, 200, 200])
    np.testing.assert_array_equal(hf.clip(image, -5, 999), image)
    assert hf.clip(image.astype(np.float32), 0.5, 100.25).dtype == np.float32


def test_rescale_intensity_equals_skimage_for_given_ranges():
    image = blobs((12, 12), dtype=np.uint16)
    for in_range, out_range in [((1000, 40000), (0, 1)), ((500, 500), (0, 1)), ((0, 65535), (-1, 5))]:
        np.testing.assert_array_equal(
            hf.rescale_intensity(image, in_range, out_range),
            exposure.rescale_intensity(image, in_range=in_range, out_range=out_range),
        )


@pytest.mark.parametrize("function", [hf.uniform, hf.laplace, hf.sobel, hf.white_tophat, hf.clip])
def test_filters_do_not_mutate_their_input(function):
    image = blobs((10, 10), dtype=np.float32)
    before = image.copy()
    args = {hf.uniform: (3,), hf.white_tophat: (1,), hf.clip: (0.2, 0.4)}.get(function, ())
    function(image, *args)
    np.testing.assert_array_equal(image, before)


# --- halos, on their own --------------------------------------------------------------------------------------------


def _reach(function, ndim=2, size=41):
    """How far a linear filter's response to a centred delta extends (SciPy's kernel radius)."""
    delta = np.zeros((size,) * ndim)
    delta[(size // 2,) * ndim] = 1.0
    response = function(delta)
    return int(np.abs(np.argwhere(response != 0) - size // 2).max())


@pytest.mark.parametrize("sigma", [0.4, 1.0, 2.3])
@pytest.mark.parametrize("truncate", [2.0, 4.0])
def test_gaussian_laplace_and_dog_halos_are_their_kernel_radii(sigma, truncate):
    p = GaussianLaplaceParams(sigma=sigma, truncate=truncate, mode="constant")
    assert get_op("gaussian_laplace").halo(p, 2) == (_reach(lambda d: hf.gaussian_laplace(d, sigma, truncate=truncate, mode="constant")),) * 2
    dog = DifferenceOfGaussiansParams(low_sigma=sigma, truncate=truncate, mode="constant")
    reach = _reach(lambda d: hf.difference_of_gaussians(d, sigma, truncate=truncate, mode="constant"))
    assert get_op("difference_of_gaussians").halo(dog, 2) == (reach, reach)


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_box_filter_halos_are_half_their_size(size):
    reach = _reach(lambda d: ndi.uniform_filter(d, size, mode="constant"))
    assert get_op("uniform").halo(UniformParams(size=size), 2) == (reach, reach) == (size // 2, size // 2)
    assert get_op("minimum").halo(MinimumParams(size=size), 3) == (size // 2,) * 3


def test_stencil_halos_are_one():
    assert _reach(lambda d: hf.laplace(d, mode="constant")) == 1
    assert _reach(lambda d: hf.sobel(d, mode="constant"), ndim=3, size=9) == 1
    assert get_op("laplace").halo(get_op("laplace").params(), 3) == (1, 1, 1)
    assert get_op("sobel").halo(SobelParams(), 2) == (1, 1)


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_white_tophat_reaches_exactly_twice_its_radius(radius):
    # A bright disk of the footprint's own radius survives the opening only where the footprint fits at its
    # centre: lowering its far edge changes the top-hat at its near edge, 2 * radius away.
    size = 4 * radius + 7
    centre = size // 2
    image = np.zeros((size, size), np.uint8)
    image[centre - radius : centre + radius + 1, centre - radius : centre + radius + 1] = 9 * hf.tophat_footprint(radius, 2)
    changed = image.copy()
    changed[centre + radius, centre] = 0
    difference = np.argwhere(hf.white_tophat(image, radius) != hf.white_tophat(changed, radius))
    assert int(np.abs(difference - [centre + radius, centre]).max()) == 2 * radius
    assert get_op("white_tophat").halo(WhiteTophatParams(radius=radius), 2) == (2 * radius, 2 * radius)


@pytest.mark.parametrize("block_size", [3, 7, 15, 31])
def test_threshold_local_halo_is_its_gaussian_radius_or_half_its_block(block_size):
    def local_threshold(d):
        return filters.threshold_local(d, block_size, mode="constant")

    p = ThresholdLocalParams(block_size=block_size, mode="constant")
    assert get_op("threshold_local").halo(p, 2) == (_reach(local_threshold, size=61),) * 2
    median = ThresholdLocalParams(block_size=block_size, method="median")
    assert get_op("threshold_local").halo(median, 3) == (block_size // 2,) * 3


def test_halo_helpers():
    assert halo.dog_sigmas(1.0, None) == (1.0, 1.6)
    assert halo.opening_halo(0, 2) == (0, 0)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        halo.radius_halo(-1, 2)
    with pytest.raises(ValueError, match="method must be 'gaussian' or 'median'"):
        halo.threshold_local_halo(3, "mean", 2)


# --- validation: one pytest.raises per rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda im: hf.uniform(im, 0), ValueError, "size must be whole numbers >= 1"),
        (lambda im: hf.uniform(im, [3]), ValueError, "size has 1 entries but the image has 2 axes"),
        (lambda im: hf.minimum(im, 2.5), ValueError, "size must be whole numbers >= 1"),
        (lambda im: hf.maximum(im, 3, mode="edge"), ValueError, "mode must be one of"),
        (lambda im: hf.sobel(im, mode="bad"), ValueError, "mode must be one of"),
        (lambda im: hf.laplace(im, mode="bad"), ValueError, "mode must be one of"),
        (lambda im: hf.gaussian_laplace(im, 0.0), ValueError, "sigma must be > 0"),
        (lambda im: hf.gaussian_laplace(im, 1.0, truncate=0), ValueError, "truncate must be > 0"),
        (lambda im: hf.difference_of_gaussians(im, -1.0), ValueError, "low_sigma must be >= 0"),
        (lambda im: hf.difference_of_gaussians(im, 2.0, 1.0), ValueError, "high_sigma must be >= low_sigma"),
        (lambda im: hf.white_tophat(im, 1.5), ValueError, "radius must be a whole number >= 0"),
        (lambda im: hf.white_tophat(im, 1, mode="wrap"), ValueError, "mode must be one of"),
        (lambda im: hf.white_tophat(im[0], 1), ValueError, "white_tophat needs a 2D or 3D image"),
        (lambda im: hf.clip(im, 5, 1), ValueError, "low must be <= high"),
        (lambda im: hf.clip(im, np.nan, 1), ValueError, "low must be a finite number"),
        (lambda im: hf.clip(im.astype(np.uint8), 1.2, 1.8), ValueError, "no uint8 value lies between"),
        (lambda im: hf.clip(im > 0, 0, 1), TypeError, "clip needs a numeric image"),
        (lambda im: hf.rescale_intensity(im, (2, 1)), ValueError, "in_range must be .low, high. with low <= high"),
        (lambda im: hf.rescale_intensity(im, (0, np.inf)), ValueError, "in_range must hold finite numbers"),
        (lambda im: hf.rescale_intensity(im, (0, 1), (0,)), ValueError, "out_range must be a pair of numbers"),
        (lambda im: hf.rescale_intensity(im > 0, (0, 1)), TypeError, "rescale_intensity needs a numeric image"),
        (lambda im: hf.uniform(im.astype(complex), 3), TypeError, "image must hold real numbers"),
        (lambda im: ht.threshold_local_mask(im, 4), ValueError, "block_size must be odd whole numbers"),
        (lambda im: ht.threshold_local_mask(im, [3]), ValueError, "block_size has 1 entries"),
        (lambda im: ht.threshold_local_mask(im, 3, method="mean"), ValueError, "method must be one of"),
        (lambda im: ht.threshold_local_mask(im, 3, offset=np.inf), ValueError, "offset must be a finite number"),
        (lambda im: ht.threshold_local_mask(im, 3, mode="bad"), ValueError, "mode must be one of"),
    ],
)
def test_pure_functions_refuse_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(np.arange(16, dtype=np.float32).reshape(4, 4))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: UniformParams(size=0), "greater than 0"),
        (lambda: UniformParams(size=3, mode="wrap"), "Input should be 'nearest', 'reflect', 'constant' or 'mirror'"),
        (lambda: MinimumParams(size=256), "less than or equal to 255"),
        (lambda: GaussianLaplaceParams(sigma=0), "greater than 0"),
        (lambda: DifferenceOfGaussiansParams(low_sigma=2.0, high_sigma=1.0), r"high_sigma \(1.0\) must be >= low_sigma"),
        (lambda: WhiteTophatParams(radius=0), "greater than 0"),
        (lambda: ClipParams(low=3, high=1), r"low \(3.0\) must be <= high"),
        (lambda: ClipParams(low=float("nan"), high=1), "finite number"),
        (lambda: RescaleIntensityParams(low_percentile=-1), "greater than or equal to 0"),
        (lambda: RescaleIntensityParams(high_percentile=101), "less than or equal to 100"),
        (lambda: RescaleIntensityParams(low_percentile=60, high_percentile=40), "must be <= high_percentile"),
        (lambda: RescaleIntensityParams(out_range=(0, float("inf"))), "out_range must hold finite numbers"),
        (lambda: ThresholdLocalParams(block_size=4), "block_size must be odd"),
        (lambda: ThresholdLocalParams(block_size=5, method="mean"), "Input should be 'gaussian' or 'median'"),
        (lambda: SobelParams(sigma=1.0), "Extra inputs are not permitted"),
    ],
)
def test_params_models_refuse_bad_values(make, message):
    with pytest.raises(ValidationError, match=message):
        make()


# --- thresholds from the histogram and from sums ---------------------------------------------------------------------


def bimodal(shape, dtype, seed=0):
    """Two well-separated populations (blobs on a background), so every method, minimum included, has an answer."""
    rng = np.random.default_rng(seed)
    objects = blobs(shape, seed=seed, dtype=np.float32) > 0.55
    low, high, noise = {np.uint8: (60, 160, 12), np.uint16: (1000, 1250, 15)}.get(dtype, (0.2, 0.7, 0.05))
    values = np.where(objects, high, low) + rng.normal(0, noise, shape)
    return values.astype(dtype)


def _whole_histogram(image):
    vmin, vmax = image.min(), image.max()
    return ht.block_histogram(image, vmin, vmax), ht.bin_centers(image.dtype, vmin, vmax), vmin, vmax


@pytest.mark.parametrize("method", ["otsu", "yen", "isodata", "triangle", "minimum"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_histogram_methods_equal_skimage(method, dtype):
    image = bimodal((40, 33), dtype if dtype != np.int16 else np.uint16, seed=2).astype(dtype)
    if dtype == np.int16:
        image -= 1100
    counts, centers, vmin, vmax = _whole_histogram(image)
    value = ht.threshold_from_histogram(method, counts, centers, vmin, vmax)
    assert value == getattr(filters, f"threshold_{method}")(image)


@pytest.mark.parametrize("method", ["mean", "li"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_mean_and_li_of_integer_images_from_the_histogram_equal_skimage(method, dtype):
    image = blobs((31, 29), seed=5, dtype=np.uint16 if dtype == np.int16 else dtype).astype(dtype)
    if dtype == np.int16:
        # Below 2**15 from end to end: scikit-image's own ``image -= image.min()`` would wrap around otherwise.
        image = (image // 4 - 8000).astype(np.int16)
    counts, centers, vmin, vmax = _whole_histogram(image)
    assert ht.threshold_from_histogram(method, counts, centers, vmin, vmax) == getattr(filters, f"threshold_{method}")(image)


def _sums_of(image):
    shifted = image - image.min()

    def sums(t):
        return tuple(ht.block_partition_sums(image, t, image.min()).tolist())

    def gaps(d):
        return ht.unique_with_gaps(image, image.min(), d) is not None

    return shifted, sums, gaps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_li_of_float_images_from_sums_gives_skimage_mask(dtype, seed):
    image = blobs((37, 23), seed=seed, dtype=dtype)
    _, sums, gaps = _sums_of(image)
    value = ht.li_from_sums(sums, image.min(), image.max(), gap_at_least=gaps)
    reference = filters.threshold_li(image)
    assert value.dtype == reference.dtype
    # NumPy sums float means pairwise in the image's dtype, here in float64: equal up to that rounding.
    assert np.isclose(value, reference, rtol=8 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_array_equal(image > value, image > reference)


@pytest.mark.parametrize(("seed", "scale"), [(308, 12), (344, 20), (292, 8)])
def test_li_of_quantised_float_images_stops_where_skimage_stops(seed, scale):
    # Whole-number floats: gaps of 1, so scikit-image stops after a step of at most 0.5 even when that step moves
    # values between the classes. Without the gap check the iteration would go on to another threshold.
    rng = np.random.default_rng(seed)
    image = np.round(rng.random((9, 9)) ** [0.5, 1, 2, 3][seed % 4] * scale).astype(np.float32)
    _, sums, gaps = _sums_of(image)
    asked = []
    value = ht.li_from_sums(sums, image.min(), image.max(), gap_at_least=lambda d: asked.append(gaps(d)) or asked[-1])
    assert value == filters.threshold_li(image)
    assert asked[-1] is True
    going_on = ht.li_from_sums(sums, image.min(), image.max(), gap_at_least=lambda d: False)
    assert going_on != value


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_mean_from_sum_equals_numpy_mean(dtype):
    image = blobs((50, 41), seed=9, dtype=dtype if dtype != np.int32 else np.uint16).astype(dtype)
    reference = filters.threshold_mean(image)
    value = ht.mean_from_sum(ht.block_sum(image), image.size, image.dtype)
    assert value.dtype == reference.dtype
    if np.issubdtype(dtype, np.integer):
        assert value == reference  # exact integer sum, as NumPy's float64 sum of integers below 2**53
    else:
        assert np.isclose(value, reference, rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["otsu", "yen", "isodata", "triangle", "li", "mean", "minimum"])
def test_constant_images_behave_as_skimage(dtype, method):
    image = np.full((6, 7), 3 if dtype != np.float32 else 0.25, dtype)
    v = image.flat[0]
    integer = dtype != np.float32
    if method == "minimum" or (method in ("yen", "isodata") and not integer):
        # scikit-image: RuntimeError / IndexError / a value from an expanded histogram with warnings.
        with pytest.raises(ValueError, match=f"threshold method '{method}'"):
            ht.threshold_from_histogram(method, None, None, v, v)
        return
    if method == "mean" and not integer:
        value = ht.mean_from_sum(ht.block_sum(image), image.size, image.dtype)
    else:
        value = ht.threshold_from_histogram(method, None, None, v, v)
    assert value == getattr(filters, f"threshold_{method}")(image) == v


def test_minimum_without_two_peaks_is_a_value_error():
    image = np.repeat(np.arange(11, dtype=np.uint8), [1, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1]).reshape(6, 6)  # one peak
    with pytest.raises(RuntimeError, match="Unable to find two maxima"):
        filters.threshold_minimum(image)
    counts, centers, vmin, vmax = _whole_histogram(image)
    with pytest.raises(ValueError, match="threshold method 'minimum': unable to find two maxima"):
        ht.threshold_from_histogram("minimum", counts, centers, vmin, vmax)


def test_threshold_validation():
    counts, centers, vmin, vmax = _whole_histogram(blobs((9, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="method must be one of"):
        ht.threshold_from_histogram("median", counts, centers, vmin, vmax)
    with pytest.raises(ValueError, match="method 'li' on a float image needs sums over the image"):
        ht.threshold_from_histogram("li", counts, centers, vmin, vmax)
    with pytest.raises(ValueError, match="non-finite values"):
        ht.threshold_from_histogram("yen", None, None, np.float32(0), np.float32(np.inf))
    with pytest.raises(ValueError, match="the mean of zero values is undefined"):
        ht.mean_from_sum(0, 0, np.uint8)
    with pytest.raises(ValueError, match="percentiles must be numbers in"):
        ht.percentile_ranks(10, [101])
    with pytest.raises(ValueError, match="percentiles of zero values"):
        ht.percentile_ranks(0, [50])
    with pytest.raises(ValueError, match=r"ranks must be in \[0, 3\)"):
        ht.select_order_statistics([3], 3, np.uint8(0), np.uint8(5), None, None)


def test_threshold_local_mask_equals_skimage():
    image = blobs((30, 26), seed=4, dtype=np.uint16)
    for method, offset, mode in [("gaussian", 0.0, "reflect"), ("median", -50.0, "nearest"), ("gaussian", 20.5, "constant")]:
        reference = image > filters.threshold_local(image, 9, method=method, offset=offset, mode=mode)
        np.testing.assert_array_equal(ht.threshold_local_mask(image, 9, method=method, offset=offset, mode=mode), reference)


# --- exact percentiles ------------------------------------------------------------------------------------------------


def _split_passes(image, pieces=3):
    """stats_in / gather_in over ``pieces`` slabs of the image, as the lifting does over blocks."""
    slabs = np.array_split(image.ravel(), pieces)

    def stats_in(intervals):
        parts = [ht.block_interval_stats(s, intervals) for s in slabs]
        return (sum(p[0] for p in parts), np.minimum.reduce([p[1] for p in parts]), np.maximum.reduce([p[2] for p in parts]))

    def gather_in(intervals):
        parts = [ht.block_values_in(s, intervals) for s in slabs]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(intervals))]

    return stats_in, gather_in


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("gather_limit", [1, 100, ht.GATHER_LIMIT])
def test_exact_percentiles_equal_numpy(dtype, gather_limit):
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 60000
    image = np.minimum(rng.lognormal(0, 2, 3001) * 50, top).astype(dtype)
    image[::7] = image[3]  # many equal values
    qs = [0, 0.1, 2, 33.3, 50, 98, 99.99, 100]
    stats_in, gather_in = _split_passes(image)
    got = ht.exact_percentiles(image.size, qs, image.min(), image.max(), stats_in, gather_in, gather_limit=gather_limit)
    expected = np.percentile(image, qs)
    assert [float(v) for v in got] == [float(v) for v in expected]
