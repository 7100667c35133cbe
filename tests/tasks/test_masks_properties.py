"""Property: on random small 2D/3D masks and labels, random chunkings and random parameters, chunked == whole image."""

from functools import partial

import dask
import dask.array as da
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage import morphology as skmorph, segmentation

from imageops.catalog_masks import (
    BinaryClosingParams, BinaryDilationParams, BinaryErosionParams, BinaryOpeningParams, ExpandLabelsParams,
    FillHolesParams, RemoveSmallHolesParams, RemoveSmallObjectsParams,
)
from tasks import lift, lift_masks  # noqa: F401  (registers the global mask liftings)

SETTINGS = settings(max_examples=25, deadline=None, database=None)
SYNC = partial(dask.compute, scheduler="synchronous")
MAX_SIDE = {2: 14, 3: 7}


@st.composite
def chunkings(draw, shape):
    """Any chunking of ``shape``: up to four random cuts per axis (so 1-voxel chunks too)."""
    chunks = []
    for n in shape:
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=4))) if n > 1 else []
        edges = [0, *cuts, n]
        chunks.append(tuple(b - a for a, b in zip(edges[:-1], edges[1:])))
    return tuple(chunks)


@st.composite
def images(draw, kind="mask"):
    """A small image, its chunking: masks of random voxels or of smoothed noise (objects, holes); sparse labels."""
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, MAX_SIDE[ndim]), min_size=ndim, max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "mask":
        field = rng.random(shape)
        if draw(st.booleans()):
            field = ndi.gaussian_filter(field, draw(st.sampled_from([0.7, 1.0, 1.5])))
            field = (field - field.min()) / (np.ptp(field) or 1.0)
        image = field < draw(st.floats(0.1, 0.9))
    else:
        seeds = rng.random(shape) < draw(st.floats(0.0, 0.3))
        image = (seeds * rng.integers(1, draw(st.integers(2, 6)), shape)).astype(draw(st.sampled_from([np.uint16, np.int32])))
    return image, draw(chunkings(shape))


def _chunked(image, chunks, params):
    result, _ = lift.lift(da.from_array(image, chunks=chunks), params, compute=SYNC)
    return result.compute(scheduler="synchronous")


BINARY = [
    (BinaryErosionParams, skmorph.erosion, 1),
    (BinaryDilationParams, skmorph.dilation, 1),
    (BinaryOpeningParams, skmorph.opening, 2),
    (BinaryClosingParams, skmorph.closing, 2),
]


@SETTINGS
@given(case=images(), op=st.sampled_from(BINARY), data=st.data())
def test_binary_ops_chunked_equal_whole(case, op, data):
    mask, chunks = case
    model, reference, passes = op
    radius = data.draw(st.integers(0, min(3, min(mask.shape) // passes)), label="radius")
    footprint = skmorph.disk(radius) if mask.ndim == 2 else skmorph.ball(radius)
    np.testing.assert_array_equal(_chunked(mask, chunks, model(radius=radius)), reference(mask, footprint))


@SETTINGS
@given(case=images(), op=st.sampled_from(["fill_holes", "remove_small_objects", "remove_small_holes"]), data=st.data())
def test_global_ops_chunked_equal_whole(case, op, data):
    mask, chunks = case
    connectivity = data.draw(st.integers(1, mask.ndim), label="connectivity")
    max_size = data.draw(st.integers(0, 20), label="max_size")
    if op == "fill_holes":
        params = FillHolesParams(connectivity=connectivity)
        reference = ndi.binary_fill_holes(mask, ndi.generate_binary_structure(mask.ndim, connectivity))
    elif op == "remove_small_objects":
        params = RemoveSmallObjectsParams(max_size=max_size, connectivity=connectivity)
        reference = skmorph.remove_small_objects(mask, max_size=max_size, connectivity=connectivity)
    else:
        params = RemoveSmallHolesParams(max_size=max_size, connectivity=connectivity)
        reference = skmorph.remove_small_holes(mask, max_size=max_size, connectivity=connectivity)
    np.testing.assert_array_equal(_chunked(mask, chunks, params), reference)


@SETTINGS
@given(case=images(kind="labels"), data=st.data())
def test_expand_labels_chunked_equal_whole(case, data):
    labels, chunks = case
    # Exact distances of voxel pairs (where ties live) and arbitrary ones, with the halo inside the image.
    exact = st.sampled_from([1.0, np.sqrt(2), 2.0, np.sqrt(5), np.sqrt(8), 3.0])
    distance = data.draw(st.one_of(exact, st.floats(0, 3.99)), label="distance")
    if np.floor(distance) > min(labels.shape):
        distance = float(min(labels.shape))
    result = _chunked(labels, chunks, ExpandLabelsParams(distance=distance))
    assert result.dtype == labels.dtype
    np.testing.assert_array_equal(result, segmentation.expand_labels(labels, distance))
