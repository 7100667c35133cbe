"""The filter family and the new thresholds, lifted onto deliberately uneven chunks, equal their whole-image references."""


import dask
import dask.array as da
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi
from skimage import exposure, filters, morphology

from imageops import threshold as ht
from imageops.catalog import ThresholdParams
from imageops.catalog_filters import (
    ClipParams,
    DifferenceOfGaussiansParams,
    GaussianLaplaceParams,
    LaplaceParams,
    MaximumParams,
    MinimumParams,
    RescaleIntensityParams,
    SobelParams,
    ThresholdLocalParams,
    UniformParams,
    WhiteTophatParams,
)
from tasks import lift, lift_filters
from tests.helpers import blobs, uneven_chunks

SHAPES = {2: (61, 47), 3: (23, 38, 29)}


def _float32(image):
    return image.astype(np.float64 if image.dtype == np.float64 else np.float32)


def _footprint(radius, ndim):
    return morphology.disk(radius) if ndim == 2 else morphology.ball(radius)


#: (params, whole-image reference) for every local op of the family, written from SciPy / scikit-image directly.
CASES = [
    (UniformParams(size=5), lambda im: ndi.uniform_filter(_float32(im), 5, mode="nearest")),
    (UniformParams(size=4, mode="reflect"), lambda im: ndi.uniform_filter(_float32(im), 4, mode="reflect")),
    (MinimumParams(size=3), lambda im: ndi.minimum_filter(im, 3, mode="nearest")),
    (MaximumParams(size=6, mode="mirror"), lambda im: ndi.maximum_filter(im, 6, mode="mirror")),
    (SobelParams(), lambda im: filters.sobel(im)),
    (SobelParams(mode="constant"), lambda im: filters.sobel(im, mode="constant")),
    (LaplaceParams(), lambda im: ndi.laplace(_float32(im))),
    (GaussianLaplaceParams(sigma=1.5), lambda im: ndi.gaussian_laplace(_float32(im), 1.5)),
    (GaussianLaplaceParams(sigma=2.0, truncate=3.0, mode="nearest"),
     lambda im: ndi.gaussian_laplace(_float32(im), 2.0, truncate=3.0, mode="nearest")),
    (DifferenceOfGaussiansParams(low_sigma=1.0), lambda im: filters.difference_of_gaussians(im, 1.0)),
    (DifferenceOfGaussiansParams(low_sigma=0.8, high_sigma=2.5, mode="reflect"),
     lambda im: filters.difference_of_gaussians(im, 0.8, 2.5, mode="reflect")),
    (WhiteTophatParams(radius=2), lambda im: morphology.white_tophat(im, _footprint(2, im.ndim))),
    (WhiteTophatParams(radius=3, mode="nearest"),
     lambda im: morphology.white_tophat(im, _footprint(3, im.ndim), mode="nearest")),
    (ClipParams(low=0.25, high=0.75), None),  # reference depends on the dtype: see _clip_reference
    (ThresholdLocalParams(block_size=9), lambda im: im > filters.threshold_local(im, 9)),
    (ThresholdLocalParams(block_size=15, offset=-0.01, mode="nearest"),
     lambda im: im > filters.threshold_local(im, 15, offset=-0.01, mode="nearest")),
    (ThresholdLocalParams(block_size=5, method="median"), lambda im: im > filters.threshold_local(im, 5, method="median")),
]


def _clip_reference(image):
    if image.dtype.kind in "iu":
        top = np.iinfo(image.dtype).max
        return np.clip(image, int(np.ceil(0.25 * top)), int(np.floor(0.75 * top)))
    return np.clip(image, image.dtype.type(0.25), image.dtype.type(0.75))


def assert_equal_to_reference(result, reference):
    """Floats within 1e-5 of the reference's range, everything else exactly; same dtype."""
    assert result.dtype == reference.dtype
    if np.issubdtype(reference.dtype, np.floating):
        np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5 * float(np.ptp(reference)))
    else:
        np.testing.assert_array_equal(result, reference)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(("params", "reference"), CASES, ids=[f"{p.op}-{i}" for i, (p, _) in enumerate(CASES)])
def test_local_ops_on_uneven_chunks_equal_whole_image(params, reference, dtype, ndim):
    image = blobs(SHAPES[ndim], seed=ndim, dtype=dtype)
    if params.op == "clip" and dtype != np.float32:
        top = np.iinfo(dtype).max
        params = ClipParams(low=0.25 * top, high=0.75 * top)
    expected = _clip_reference(image) if params.op == "clip" else reference(image)
    chunked, found = lift.lift(da.from_array(image, chunks=uneven_chunks(image.shape, seed=ndim + 1)), params)
    assert found == {}
    assert chunked.dtype == expected.dtype
    assert_equal_to_reference(chunked.compute(), expected)


ONE_VOXEL_CASES = [(p, r) for p, r in CASES if p.op != "white_tophat"]  # (its own test below: integer image)


@pytest.mark.parametrize(("params", "reference"), ONE_VOXEL_CASES, ids=[p.op for p, _ in ONE_VOXEL_CASES])
def test_local_ops_on_one_voxel_chunks(params, reference):
    image = blobs((11, 9), seed=7, dtype=np.float32)
    expected = _clip_reference(image) if params.op == "clip" else reference(image)
    chunked, _ = lift.lift(da.from_array(image, chunks=1), params)
    assert_equal_to_reference(chunked.compute(), expected)


def test_white_tophat_on_one_voxel_chunks():
    image = blobs((13, 14), seed=8, dtype=np.uint8)
    chunked, _ = lift.lift(da.from_array(image, chunks=1), WhiteTophatParams(radius=2))
    np.testing.assert_array_equal(chunked.compute(), morphology.white_tophat(image, morphology.disk(2)))


def test_float64_images_stay_float64_and_exact():
    image = blobs((40, 33), seed=3, dtype=np.float64)
    d = da.from_array(image, chunks=uneven_chunks(image.shape, seed=4))
    for params, reference in [(LaplaceParams(), ndi.laplace(image)), (SobelParams(), filters.sobel(image)),
                              (GaussianLaplaceParams(sigma=1.2), ndi.gaussian_laplace(image, 1.2))]:
        result = lift.lift(d, params)[0].compute()
        assert result.dtype == np.float64
        np.testing.assert_array_equal(result, reference)


# --- rescale_intensity: exact global percentiles ------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize(("low", "high", "out_range"), [(0, 100, (0, 1)), (2, 98, (0, 1)), (0.5, 99.9, (-1, 255)), (40, 40, (0, 1))])
def test_rescale_intensity_with_global_percentiles_equals_skimage(ndim, dtype, low, high, out_range):
    image = blobs(SHAPES[ndim], seed=ndim + 20, dtype=np.uint16 if dtype == np.int16 else dtype).astype(dtype)
    params = RescaleIntensityParams(low_percentile=low, high_percentile=high, out_range=out_range)
    chunked, found = lift.lift(da.from_array(image, chunks=uneven_chunks(image.shape, seed=5)), params)
    in_range = tuple(np.percentile(image, [low, high]))
    reference = exposure.rescale_intensity(image, in_range=in_range, out_range=out_range)
    assert found == {"in_range": [float(v) for v in in_range]}
    assert chunked.dtype == reference.dtype
    np.testing.assert_array_equal(chunked.compute(), reference)


def test_percentiles_with_many_ties_and_few_gathered_values(monkeypatch):
    # A small gather limit and few bins force several histogram passes; ties force intervals of one value.
    monkeypatch.setattr(ht, "GATHER_LIMIT", 50)
    monkeypatch.setattr(ht, "ORDER_BINS", 8)
    rng = np.random.default_rng(1)
    image = np.where(rng.random((50, 40)) < 0.6, np.float32(0.5), rng.random((50, 40), dtype=np.float32))
    qs = [0, 1, 30, 59.9, 60, 61, 99, 100]
    calls = []

    def counting_compute(*collections):
        calls.append(len(collections))
        return dask.compute(*collections)

    got = lift_filters.percentiles(da.from_array(image, chunks=(7, 13)), qs, counting_compute)
    assert [float(v) for v in got] == [float(v) for v in np.percentile(image, qs)]
    assert 3 <= len(calls) <= 8, "the range, a few histogram passes and a gather; not one pass per value"


def test_rescale_intensity_of_constant_image():
    image = np.full((9, 10), 700, np.uint16)
    chunked, found = lift.lift(da.from_array(image, chunks=4), RescaleIntensityParams(low_percentile=5))
    np.testing.assert_array_equal(chunked.compute(), exposure.rescale_intensity(image, in_range=(700.0, 700.0), out_range=(0, 1)))
    assert found == {"in_range": [700.0, 700.0]}


def test_rescale_intensity_refuses_non_finite_and_bool_images():
    image = np.ones((6, 6), np.float32)
    image[2, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite values"):
        lift.lift(da.from_array(image, chunks=3), RescaleIntensityParams())
    with pytest.raises(TypeError, match="percentiles need a numeric image"):
        lift_filters.percentiles(da.ones((4, 4), dtype=bool, chunks=2), [50])


# --- thresholds ---------------------------------------------------------------------------------------------------------


def bimodal(shape, dtype, seed=0):
    """Blobs crossing chunk borders on a background, two clear modes (so 'minimum' finds its two peaks)."""
    rng = np.random.default_rng(seed)
    objects = blobs(shape, seed=seed, dtype=np.float32) > 0.55
    low, high, noise = {np.uint8: (60, 160, 12), np.uint16: (1000, 1250, 15)}.get(dtype, (0.2, 0.7, 0.05))
    return (np.where(objects, high, low) + rng.normal(0, noise, shape)).astype(dtype)


def lifted_threshold(image: da.Array, method: str):
    """Mask and value through the generic entry ``lift.lift``, as a pipeline step runs it."""
    mask, found = lift.lift(image, ThresholdParams(method=method))
    return mask, found["threshold"]


HISTOGRAM_METHODS = ["otsu", "yen", "isodata", "triangle", "minimum"]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", [*HISTOGRAM_METHODS, "mean", "li"])
def test_thresholds_on_uneven_chunks_equal_skimage(method, dtype, ndim):
    image = bimodal(SHAPES[ndim], dtype, seed=ndim)
    mask, value = lifted_threshold(da.from_array(image, chunks=uneven_chunks(image.shape, seed=ndim + 7)), method)
    reference = getattr(filters, f"threshold_{method}")(image)
    if method in ht.PASS_METHODS and dtype == np.float32:
        # NumPy's mean of a float32 image is a pairwise float32 sum: reproducible only up to its rounding.
        assert np.isclose(value, reference, rtol=8 * np.finfo(np.float32).eps, atol=0)
    else:
        assert value == reference
    np.testing.assert_array_equal(mask.compute(), image > reference)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_manual_threshold_on_uneven_chunks_is_the_image_above_the_value(dtype, ndim):
    image = bimodal(SHAPES[ndim], dtype, seed=ndim)
    value = float(np.median(image)) + 0.5  # half-way between two values of an integer image
    chunks = uneven_chunks(image.shape, seed=ndim + 9)
    mask, found = lift.lift(da.from_array(image, chunks=chunks), ThresholdParams(method="manual", value=value))
    assert found == {"threshold": value}
    reference = image > value
    assert 0 < reference.mean() < 1
    np.testing.assert_array_equal(mask.compute(), reference)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", ["otsu", "yen", "isodata", "triangle", "mean", "li"])
def test_thresholds_of_smooth_blobs_equal_skimage(method, dtype):
    image = blobs((47, 53), seed=12, dtype=dtype)
    mask, value = lifted_threshold(da.from_array(image, chunks=uneven_chunks(image.shape, seed=2)), method)
    reference = getattr(filters, f"threshold_{method}")(image)
    if method in ht.PASS_METHODS and dtype == np.float32:
        assert np.isclose(value, reference, rtol=8 * np.finfo(np.float32).eps, atol=0)
    else:
        assert value == reference
    np.testing.assert_array_equal(mask.compute(), image > reference)


def test_li_of_quantised_float_image_over_chunks_uses_the_gap_check():
    rng = np.random.default_rng(344)
    image = np.round(rng.random((9, 9)) ** 1 * 20).astype(np.float32)
    image = np.tile(image, (3, 2))  # same values, more of each: gaps unchanged
    value = lift_filters.threshold_by_passes(da.from_array(image, chunks=(5, 4)), "li")
    assert value == filters.threshold_li(image)


@pytest.mark.parametrize("method", ["otsu", "yen", "isodata", "triangle", "mean", "li", "minimum"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_thresholds_of_constant_images(method, dtype):
    image = np.full((8, 9), 5 if dtype == np.uint8 else 0.5, dtype)
    chunked = da.from_array(image, chunks=(3, 4))
    if method == "minimum" or (method in ("yen", "isodata") and dtype == np.float32):
        with pytest.raises(ValueError, match=f"threshold method '{method}'"):
            lifted_threshold(chunked, method)
        return
    mask, value = lifted_threshold(chunked, method)
    assert value == getattr(filters, f"threshold_{method}")(image)
    assert not mask.compute().any()


def test_pass_thresholds_refuse_other_methods_and_non_finite_images():
    with pytest.raises(ValueError, match="method must be one of"):
        lift_filters.threshold_by_passes(da.ones((4, 4), chunks=2), "otsu")
    image = np.ones((4, 4), np.float32)
    image[0, 0] = np.inf
    for method in ("mean", "li"):
        with pytest.raises(ValueError, match="non-finite values"):
            lift_filters.threshold_by_passes(da.from_array(image, chunks=2), method)


@pytest.mark.parametrize("method", ["yen", "mean", "li"])
def test_generic_lift_dispatches_every_threshold_method(method):
    image = blobs((30, 31), seed=4, dtype=np.float32)
    mask, found = lift.lift(da.from_array(image, chunks=uneven_chunks(image.shape)), ThresholdParams(method=method))
    reference = getattr(filters, f"threshold_{method}")(image)
    assert np.isclose(found["threshold"], reference, rtol=8 * np.finfo(np.float32).eps, atol=0)
    np.testing.assert_array_equal(mask.compute(), image > reference)


def test_params_refuse_wrap_mode_and_unknown_threshold_methods():
    with pytest.raises(ValidationError, match="mode"):
        UniformParams(size=3, mode="wrap")
    with pytest.raises(ValidationError, match="method"):
        ThresholdParams(method="sauvola")
