"""The pure ops on whole NumPy images: dtype rules, validation, and agreement with SciPy / scikit-image."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import filters, measure

from imageops import filters as hf, halo, label as hl, measure as hm, threshold as ht
from imageops import get_op
from imageops.catalog import GaussianParams, LabelParams, MeasureParams, ThresholdParams
from tests.helpers import blobs


@pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                                   np.float16, np.float32])
@pytest.mark.parametrize("sigma", [1.5, (0.0, 1.5)])
def test_gaussian_is_float32_for_integer_and_float32_input(dtype, sigma):
    # Small integers are read as they are, wider ones through a float32 copy: both must give the float32
    # copy's result. Values above 2**24 tell the two apart for 32- and 64-bit integers.
    image = blobs((20, 30), dtype=np.uint16).astype(dtype)
    if np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize >= 4:
        image = image * 1021 + 2**26 + 1
    out = hf.gaussian(image, sigma)
    assert out.dtype == np.float32
    expected = ndi.gaussian_filter(image.astype(np.float32), sigma, mode="nearest")
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_gaussian_does_not_mutate_input(dtype):
    image = blobs((10, 10), dtype=dtype)
    before = image.copy()
    hf.gaussian(image, 2.0)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("mode", ["nearest", "reflect", "constant"])
def test_gaussian_of_a_3d_integer_image_with_one_sigma_per_axis_equals_scipy(mode):
    image = blobs((9, 14, 11), seed=2, dtype=np.uint16)
    expected = ndi.gaussian_filter(image.astype(np.float32), (0.5, 2.0, 3.0), mode=mode, truncate=3.0)
    np.testing.assert_array_equal(hf.gaussian(image, (0.5, 2.0, 3.0), mode=mode, truncate=3.0), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"sigma": -1.0}, "sigma must be >= 0"), ({"sigma": [1.0]}, "sigma has 1 entries"), ({"sigma": 1.0, "mode": "bad"}, "mode must be")],
)
def test_gaussian_refuses_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hf.gaussian(np.zeros((4, 4)), **kwargs)


def test_gaussian_refuses_non_arrays():
    with pytest.raises(TypeError, match="image must be an array"):
        hf.gaussian([[1, 2]], 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(17,), (12, 15), (11, 14, 13)])
@pytest.mark.parametrize("mode", ["nearest", "reflect", "constant", "wrap"])
def test_gaussian_inner_is_the_cropped_gaussian_bit_for_bit(dtype, shape, mode):
    rng = np.random.default_rng(len(shape))
    image = blobs(shape, seed=3, dtype=dtype)
    sigma = (1.5, 0.0, 2.0)[: len(shape)] if len(shape) > 1 else 1.5  # an axis of sigma 0 is not smoothed
    for _ in range(4):
        margins = [tuple(int(m) for m in rng.integers(0, 4, 2)) for _ in shape]
        inner = hf.gaussian_inner(image, sigma, margins, mode=mode, truncate=3.0)
        whole = hf.gaussian(image, sigma, mode=mode, truncate=3.0)
        np.testing.assert_array_equal(inner, whole[tuple(slice(b, n - a) for (b, a), n in zip(margins, shape))])
        assert inner.dtype == whole.dtype


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_gaussian_inner_does_not_mutate_input_nor_return_it(dtype):
    image = blobs((10, 10), dtype=dtype)
    before = image.copy()
    out = hf.gaussian_inner(image, 0.0, [(0, 0), (0, 0)])
    np.testing.assert_array_equal(image, before)
    assert not np.shares_memory(out, image)
    hf.gaussian_inner(image, 2.0, [(1, 2), (0, 3)])
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("margins", [[(0, 0)], [(0, 0), (-1, 0)], [(0, 0), (5, 6)], [(0, 0), (1, 2, 3)]])
def test_gaussian_inner_refuses_margins_that_do_not_fit(margins):
    with pytest.raises(ValueError, match="margins"):
        hf.gaussian_inner(np.zeros((8, 10)), 1.0, margins)


def test_median_keeps_dtype_and_equals_scipy():
    image = blobs((15, 12, 9), dtype=np.uint16)
    out = hf.median(image, 3)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, ndi.median_filter(image, size=3, mode="nearest"))


def test_median_refuses_zero_size():
    with pytest.raises(ValueError, match="size must be whole numbers >= 1"):
        hf.median(np.zeros((3, 3)), 0)


@pytest.mark.parametrize(("sigma", "truncate", "expected"), [(2.0, 4.0, 8), (1.0, 4.0, 4), (0.5, 3.0, 2), (0.1, 4.0, 0)])
def test_gaussian_halo_is_scipy_kernel_radius(sigma, truncate, expected):
    assert halo.gaussian_halo(sigma, truncate, 2) == (expected, expected)
    # SciPy's own kernel radius: the filter of a delta is zero beyond it.
    delta = np.zeros(41)
    delta[20] = 1.0
    support = np.flatnonzero(ndi.gaussian_filter1d(delta, sigma, truncate=truncate, mode="constant"))
    assert support.max() - 20 == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_otsu_from_block_histograms_equals_skimage(dtype):
    image = blobs((31, 17), dtype=dtype, seed=3)
    if dtype == np.int16:
        image = image - 100
    halves = (image[:10], image[10:])
    vmin, vmax = ht.merge_ranges(ht.value_range(h) for h in halves)
    counts = sum(ht.block_histogram(h, vmin, vmax) for h in halves)
    value = ht.threshold_from_histogram("otsu", counts, ht.bin_centers(image.dtype, vmin, vmax), vmin, vmax)
    assert value == filters.threshold_otsu(image)


def test_otsu_of_constant_image_is_its_value():
    assert ht.threshold_from_histogram("otsu", None, None, np.uint8(7), np.uint8(7)) == 7


def test_threshold_params_check_method_and_value():
    with pytest.raises(ValueError, match="needs a value"):
        ThresholdParams(method="manual")
    with pytest.raises(ValueError, match="only used with method 'manual'"):
        ThresholdParams(method="otsu", value=3)
    with pytest.raises(ValueError, match="method"):
        ThresholdParams(method="triangle-ish")


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
def test_label_block_equals_skimage(ndim, connectivity):
    mask = blobs((12,) * ndim, seed=ndim, sigma=1.0) > 0.5 * 65535 * 0.9
    labels, n = hl.label_block(mask, connectivity)
    reference = measure.label(mask, connectivity=connectivity)
    assert n == reference.max()
    np.testing.assert_array_equal(labels, reference)


def _random_masks(rng, ndim: int, count: int):
    """Masks of every shape from 1 to 9 a side and densities, some F-ordered, strided or of integers."""
    for _ in range(count):
        shape = tuple(int(n) for n in rng.integers(1, 10, size=ndim))
        mask = rng.random(shape) < rng.uniform(0.1, 0.9)
        kind = rng.integers(4)
        if kind == 1:
            mask = np.asfortranarray(mask)
        elif kind == 2:
            mask = np.repeat(mask, 2, axis=0)[::2]  # a strided view
        elif kind == 3:
            mask = mask * rng.integers(1, 200, size=shape).astype(np.uint8)  # any nonzero is foreground
        yield mask


@pytest.mark.parametrize("share", [0.0, 0.01, 0.09, 0.11, 0.5, 1.0])  # both sides of hl.SPARSE_SHARE
@pytest.mark.parametrize("table_kind", ["labels", "labels from 3", "bool", "bool, background true"])
def test_relabel_equals_the_table_looked_up_at_every_voxel(share, table_kind):
    rng = np.random.default_rng(int(share * 100))
    labels = np.where(rng.random((7, 30, 41)) < share, rng.integers(1, 60, (7, 30, 41)), 0).astype(np.uint32)
    table = {
        "labels": np.arange(60, dtype=np.uint32) * 3,
        "labels from 3": np.arange(60, dtype=np.uint32) + 3,  # the background maps to 3
        "bool": rng.random(60) < 0.5,
        "bool, background true": np.r_[True, rng.random(59) < 0.5],
    }[table_kind]
    expected = table[labels]
    found = hl.relabel(labels, table)
    assert found.dtype == expected.dtype and found.shape == labels.shape
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(hl.relabel(labels[:, ::2, 3:], table), table[labels[:, ::2, 3:]])  # a strided view


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
def test_label_block_gives_scipys_labels_value_for_value(ndim, connectivity, monkeypatch):
    """Where cc3d labels (imageops.label.CC3D_CONNECTIVITY), its numbering is SciPy's, on every kind of mask."""
    calls = []
    real = hl.cc3d.connected_components

    def counted(*args, **kwargs):
        calls.append(kwargs["connectivity"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hl.cc3d, "connected_components", counted)
    rng = np.random.default_rng(10 * ndim + connectivity)
    masks = [*_random_masks(rng, ndim, 400), blobs((40, 60, 50)[:ndim], seed=3, sigma=2.0) > 0.5 * 65535 * 0.9]
    for mask in masks:
        labels, n = hl.label_block(mask, connectivity)
        expected, m = ndi.label(mask, structure=ndi.generate_binary_structure(ndim, connectivity))
        assert labels.dtype == hl.LABEL_DTYPE and n == m
        np.testing.assert_array_equal(labels, expected)
    assert len(calls) == (len(masks) if (ndim, connectivity) in hl.CC3D_CONNECTIVITY else 0)


def test_label_refuses_connectivity_above_ndim():
    with pytest.raises(ValueError, match="connectivity must be between 1 and 2"):
        hl.label_block(np.zeros((3, 3), bool), 3)


def test_face_pairs_corner_only_touch_needs_full_connectivity():
    low = np.zeros((1, 3, 3), np.int64)
    high = np.zeros((1, 3, 3), np.int64)
    low[0, 0, 0] = 5
    high[0, 1, 1] = 9
    assert face_pairs_set(low, high, 3) == {(5, 9)}
    assert face_pairs_set(low, high, 2) == set()
    assert face_pairs_set(low, high, 1) == set()


def face_pairs_set(low, high, connectivity):
    return {tuple(p) for p in hl.face_pairs(low, high, 0, connectivity).tolist()}


def test_merge_equivalences_numbers_without_gaps():
    lut, n = hl.merge_equivalences(np.array([[2, 5], [5, 4]]), 6)
    assert n == 4
    assert lut[2] == lut[4] == lut[5]
    assert sorted(set(lut[1:].tolist())) == [1, 2, 3, 4]
    assert lut[0] == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_block_partials_merged_equal_regionprops_table(ndim):
    image = blobs((14,) * ndim, seed=7, dtype=np.float32)
    labels = measure.label(image > 0.5)
    cut = 5
    parts = [
        hm.block_partials(labels[:cut], image[:cut]),
        hm.block_partials(labels[cut:], image[cut:], origin=(cut,) + (0,) * (ndim - 1)),
    ]
    props = ["label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max"]
    ours = hm.regionprops_columns(hm.merge_partials(parts), props, ndim)
    reference = measure.regionprops_table(labels, image, properties=props)
    assert list(ours) == list(reference)
    for key in reference:
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-6, err_msg=key)


def test_regionprops_columns_of_no_objects_are_empty():
    cols = hm.regionprops_columns({}, ["label", "area", "centroid"], 2)
    assert list(cols) == ["label", "area", "centroid-0", "centroid-1"]
    assert all(len(v) == 0 for v in cols.values())


def test_measure_params_need_intensity_for_intensity_properties():
    with pytest.raises(ValueError, match="need an intensity image"):
        MeasureParams(properties=["intensity_mean"], intensity=None)


def test_registry_knows_kinds_and_refuses_unknown_ops():
    assert get_op("threshold").takes == ("image",) and get_op("threshold").gives == "mask"
    assert get_op("label").gives == "labels"
    assert get_op("gaussian").halo(GaussianParams(sigma=2.0), 3) == (8, 8, 8)
    assert get_op("label").out_dtype(LabelParams(), np.dtype(bool)) == np.uint32
    with pytest.raises(ValueError, match="unknown op 'blur'"):
        get_op("blur")
