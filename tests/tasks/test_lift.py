"""Every lifted op on deliberately uneven chunks equals its whole-image SciPy / scikit-image reference."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import filters, measure

from imageops.catalog import ChannelParams, GaussianParams, LabelParams, MeasureParams, MedianParams, ThresholdParams
from imageops.catalog_filters import RescaleIntensityParams
from imageops.catalog_masks import FillHolesParams
from tasks import lift
from tasks.axes import ImageAxes
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


@pytest.mark.parametrize(("chunks", "inner_path"), [
    (((9, 14), (12, 10, 16), (8, 21)), True),  # every chunk at least the halo (8): blocks leave it out themselves
    (((9, 9, 5), (38,), (29,)), False),  # a chunk of 5: dask rechunks first, then trims
])
def test_gaussian_blocks_equal_the_whole_image_bit_for_bit_with_or_without_their_own_halo_cutting(
        chunks, inner_path, monkeypatch):
    from imageops import filters as hf

    calls = []
    inner = hf.gaussian_inner
    monkeypatch.setattr(hf, "gaussian_inner", lambda *a, **k: calls.append(a[2]) or inner(*a, **k))
    image = blobs(SHAPES[3], seed=4, dtype=np.uint16)
    chunked = lift.lift_local(da.from_array(image, chunks=chunks), GaussianParams(sigma=2.0))
    result = chunked.compute(scheduler="sync")
    np.testing.assert_array_equal(result, ndi.gaussian_filter(image.astype(np.float32), 2.0, mode="nearest"))
    # Whole blocks with no margins to cut go through gaussian_inner as well (via gaussian), so look at the margins.
    cut = [m for m in calls if any(any(pair) for pair in m)]
    assert bool(cut) == inner_path
    if inner_path:
        assert chunked.chunks == chunks and len(calls) == 2 * 3 * 2
        assert ((8, 0), (8, 8), (8, 0)) in cut and ((0, 8), (0, 8), (0, 8)) in cut


class _RecordedReads:
    """An array-like source that records every region read from it."""

    def __init__(self, array):
        self.array, self.reads = array, []

    def __getitem__(self, region):
        self.reads.append(region)
        return self.array[region]


@pytest.mark.parametrize("params", [GaussianParams(sigma=2.0), MedianParams(size=5)], ids=["gaussian", "median"])
@pytest.mark.parametrize("chunks", [((9, 14), (12, 10, 16), (8, 21)), ((5, 9, 9), (38,), (3, 26))],
                         ids=["halo-deep chunks", "chunks thinner than the halo"])
def test_blocks_reading_their_own_halo_from_the_source_equal_the_whole_image_and_depend_on_nothing(params, chunks):
    image = blobs(SHAPES[3], seed=6, dtype=np.uint16)
    source = _RecordedReads(image)
    result = lift.lift_local(da.from_array(image, chunks=chunks), params, region_source=source)
    if params.op == "gaussian":
        expected = ndi.gaussian_filter(image.astype(np.float32), 2.0, mode="nearest")
    else:
        expected = ndi.median_filter(image, size=5, mode="nearest")
    np.testing.assert_array_equal(result.compute(scheduler="sync"), expected)
    assert result.chunks == chunks
    assert len(dict(result.__dask_graph__())) == result.npartitions  # one task per block, reading the source itself
    depth = 8 if params.op == "gaussian" else 2
    starts = [np.cumsum((0, *sizes[:-1])) for sizes in chunks]
    expected_reads = {  # each block and its halo, cut at the image's edges, read once
        tuple((max(int(s[i]) - depth, 0), min(int(s[i]) + sizes[i] + depth, n))
              for s, sizes, i, n in zip(starts, chunks, index, image.shape))
        for index in np.ndindex(*result.numblocks)
    }
    reads = [tuple((r.start, r.stop) for r in region) for region in source.reads]
    assert len(reads) == result.npartitions and set(reads) == expected_reads


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


def _one_block(image):
    return da.from_array(image, chunks=image.shape)


_WHOLE_CASES = [
    ("gaussian", GaussianParams(sigma=2.0), np.uint16, None),
    ("otsu", ThresholdParams(method="otsu"), np.float32, None),
    ("otsu of integers", ThresholdParams(method="otsu"), np.uint16, None),
    ("yen", ThresholdParams(method="yen"), np.float32, None),
    ("li (passes)", ThresholdParams(method="li"), np.float32, None),
    ("mean (passes)", ThresholdParams(method="mean"), np.uint16, None),
    ("manual", ThresholdParams(method="manual", value=0.4), np.float32, None),
    ("label", LabelParams(connectivity=1), bool, None),
    ("label, full connectivity", LabelParams(), bool, None),
    ("rescale_intensity (no in-memory lifting)", RescaleIntensityParams(low_percentile=2, high_percentile=98), np.uint16, None),
    ("fill_holes (no in-memory lifting)", FillHolesParams(), bool, None),
    ("otsu per channel (channel axis)", ThresholdParams(method="otsu"), np.float32, ImageAxes(3, channel=0)),
    ("channel", ChannelParams(index=1), np.uint16, ImageAxes(3, channel=0)),
]


@pytest.mark.parametrize("case, params, dtype, axes", _WHOLE_CASES, ids=[c[0] for c in _WHOLE_CASES])
def test_an_op_on_an_image_held_whole_equals_its_chunked_lifting_on_one_block(case, params, dtype, axes):
    shape = (3, 40, 52) if axes is not None else (45, 38)
    image = blobs(shape, seed=3, dtype=np.float32 if dtype is bool else dtype)
    if dtype is bool:
        image = image > 0.5
    expected, expected_found = lift.lift(_one_block(image), params, axes=axes)
    result, found = lift.lift_whole(image, params, axes=axes)
    assert isinstance(result, np.ndarray) and result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected.compute())
    assert found == expected_found


def test_otsu_and_label_held_whole_equal_scikit_image():
    image = blobs((57, 44), seed=8, dtype=np.float32)
    mask, found = lift.lift_whole(image, ThresholdParams(method="otsu"))
    assert found == {"threshold": filters.threshold_otsu(image)}
    np.testing.assert_array_equal(mask, image > filters.threshold_otsu(image))
    labels, found = lift.lift_whole(mask, LabelParams(connectivity=1))
    np.testing.assert_array_equal(labels, measure.label(mask, connectivity=1))
    assert found == {"objects": int(measure.label(mask, connectivity=1).max())}


def test_an_image_held_whole_keeps_its_known_range():
    image = blobs((30, 31), seed=2, dtype=np.float32)
    wide = (np.float32(-1.0), np.float32(2.0))  # a stored stage's recorded range is used, not found again
    _, found = lift.lift_whole(image, ThresholdParams(method="otsu"), value_range=wide)
    _, expected = lift.lift(_one_block(image), ThresholdParams(method="otsu"), value_range=wide)
    assert found == expected and found != {"threshold": filters.threshold_otsu(image)}


def test_a_bad_connectivity_is_refused_held_whole_as_on_chunks():
    mask = np.zeros((5, 6), bool)
    with pytest.raises(ValueError, match="connectivity must be between 1 and 2 for a 2D image, got 3"):
        lift.lift_whole(mask, LabelParams(connectivity=3))


@pytest.mark.parametrize("intensity", ["none", "one image", "a list of two", "channels last"])
def test_measure_of_labels_held_whole_equals_regionprops_table(intensity):
    image = blobs((50, 43), seed=9, dtype=np.uint16)
    labels = measure.label(image > filters.threshold_otsu(image))
    other = blobs((50, 43), seed=10, dtype=np.uint16)
    props = ["label", "area", "centroid", "bbox"] + (["intensity_mean", "intensity_max"] if intensity != "none" else [])
    given, reference_image = {
        "none": (None, None),
        "one image": (_one_block(image), image),
        "a list of two": ([_one_block(image), _one_block(other)], np.stack([image, other], axis=-1)),
        "channels last": (_one_block(np.stack([image, other], axis=-1)), np.stack([image, other], axis=-1)),
    }[intensity]
    table = lift.measure_whole(labels, MeasureParams(properties=props), intensity=given)
    reference = measure.regionprops_table(labels, reference_image, properties=props)
    assert list(table) == list(reference)
    for key in reference:
        np.testing.assert_allclose(table[key], reference[key], rtol=1e-9, err_msg=key)


def test_measure_held_whole_asks_for_the_intensity_its_properties_need():
    with pytest.raises(ValueError, match="need an intensity image"):
        lift.measure_whole(np.ones((4, 4), np.uint32), MeasureParams(properties=["label", "intensity_mean"]))
