"""The mask and label ops lifted onto deliberately uneven chunks equal their whole-image scikit-image / SciPy references."""

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure, morphology as skmorph, segmentation

from imageops.catalog import LabelParams
from imageops.catalog_masks import (
    BinaryClosingParams, BinaryDilationParams, BinaryErosionParams, BinaryOpeningParams, ExpandLabelsParams,
    FillHolesParams, RemoveSmallHolesParams, RemoveSmallObjectsParams,
)
from tasks import lift, lift_masks
from tests.helpers import blobs, same_up_to_permutation, uneven_chunks

SHAPES = {2: (61, 47), 3: (23, 38, 29)}
BINARY = {
    BinaryErosionParams: skmorph.erosion,
    BinaryDilationParams: skmorph.dilation,
    BinaryOpeningParams: skmorph.opening,
    BinaryClosingParams: skmorph.closing,
}


def _mask(ndim, seed=0, level=0.5, sigma=1.5):
    return blobs(SHAPES[ndim], seed=seed, sigma=sigma, dtype=np.float64) > level


def _lifted(array, params, chunks):
    """The generic entry point, as the stages call it: lazy result and what the global phase found."""
    result, info = lift.lift(da.from_array(array, chunks=chunks), params, compute=dask.compute)
    assert isinstance(result, da.Array)
    return result.compute(), info


def _fill_holes_reference(mask, connectivity):
    return ndi.binary_fill_holes(mask, ndi.generate_binary_structure(mask.ndim, connectivity))


# --- neighbourhood ops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("model", list(BINARY), ids=lambda m: m.model_fields["op"].default)
def test_binary_ops_on_uneven_chunks_equal_whole_image(model, radius, ndim):
    mask = _mask(ndim, seed=radius + ndim)
    footprint = skmorph.disk(radius) if ndim == 2 else skmorph.ball(radius)
    chunks = uneven_chunks(mask.shape, seed=radius)
    assert 1 in chunks[0], "the chunking should hold 1-voxel chunks"
    result, info = _lifted(mask, model(radius=radius), chunks)
    assert result.dtype == bool and info == {}
    np.testing.assert_array_equal(result, BINARY[model](mask, footprint))


@pytest.mark.parametrize("model", list(BINARY), ids=lambda m: m.model_fields["op"].default)
def test_binary_ops_at_the_image_border_on_one_voxel_chunks(model):
    # Foreground touching every image border, chunks of one voxel: every block edge is a border or a halo edge.
    mask = np.ones((9, 10), bool)
    mask[3:6, 4:7] = False
    mask[0, 2] = mask[8, 8] = False
    footprint = skmorph.disk(2)
    result, _ = _lifted(mask, model(radius=2), 1)
    np.testing.assert_array_equal(result, BINARY[model](mask, footprint))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("distance", [0.5, 1, 1.5, np.sqrt(2), 2.5, 4])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_expand_labels_on_uneven_chunks_equals_whole_image(ndim, distance, dtype):
    labels = measure.label(_mask(ndim, seed=3, level=0.7)).astype(dtype)
    assert labels.max() > 3
    result, info = _lifted(labels, ExpandLabelsParams(distance=distance), uneven_chunks(labels.shape, seed=8))
    assert result.dtype == dtype and info == {}
    np.testing.assert_array_equal(result, segmentation.expand_labels(labels, distance))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_expand_labels_with_many_ties_on_one_voxel_chunks(ndim, seed):
    # Sparse single-voxel seeds on a grid: many background voxels are equally near two labels.
    rng = np.random.default_rng(seed)
    shape = (12, 13) if ndim == 2 else (7, 8, 6)
    labels = np.zeros(shape, np.int32)
    grid = np.indices(shape).sum(axis=0) % 4 == 0
    labels[grid] = rng.integers(1, 6, grid.sum())
    for distance, chunks in [(1, 1), (np.sqrt(2), 2), (2, 3), (3, uneven_chunks(shape, seed=seed))]:
        result, _ = _lifted(labels, ExpandLabelsParams(distance=distance), chunks)
        np.testing.assert_array_equal(result, segmentation.expand_labels(labels, distance))


def test_expand_labels_tie_across_a_chunk_border():
    # Voxel (0, 0) is 2 away from label 1 at (0, 2) and from label 2 at (2, 0); SciPy gives it 2
    # (first on the last axis). Chunk borders between all of them.
    labels = np.zeros((3, 3), np.uint16)
    labels[0, 2], labels[2, 0] = 1, 2
    reference = segmentation.expand_labels(labels, 2)
    assert reference[0, 0] == 2
    for chunks in (1, 2, ((1, 2), (2, 1))):
        np.testing.assert_array_equal(_lifted(labels, ExpandLabelsParams(distance=2), chunks)[0], reference)


def test_halo_deeper_than_the_image():
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    result, _ = _lifted(mask, BinaryDilationParams(radius=6), 2)
    np.testing.assert_array_equal(result, skmorph.dilation(mask, skmorph.disk(6)))


# --- global ops on blobs -------------------------------------------------------------------------------


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
def test_fill_holes_on_uneven_chunks_equals_whole_image(ndim, connectivity):
    mask = _mask(ndim, seed=2, level=0.42)
    reference = _fill_holes_reference(mask, connectivity)
    assert (reference & ~mask).any(), "the test image should hold holes"
    result, info = _lifted(mask, FillHolesParams(connectivity=connectivity), uneven_chunks(mask.shape, seed=4))
    np.testing.assert_array_equal(result, reference)
    assert info["holes_filled"] == measure.label(reference & ~mask, connectivity=connectivity).max()


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 3)])
@pytest.mark.parametrize("max_size", [0, 3, 20, 200])
def test_remove_small_objects_on_uneven_chunks_equals_whole_image(ndim, connectivity, max_size):
    mask = _mask(ndim, seed=6, level=0.55, sigma=1.0)
    reference = skmorph.remove_small_objects(mask, max_size=max_size, connectivity=connectivity)
    result, info = _lifted(
        mask, RemoveSmallObjectsParams(max_size=max_size, connectivity=connectivity), uneven_chunks(mask.shape, seed=5)
    )
    np.testing.assert_array_equal(result, reference)
    n_before = measure.label(mask, connectivity=connectivity).max()
    assert info["objects_removed"] == n_before - measure.label(reference, connectivity=connectivity).max()


@pytest.mark.parametrize(("ndim", "connectivity"), [(2, 1), (2, 2), (3, 1), (3, 3)])
@pytest.mark.parametrize("max_size", [0, 3, 20, 200])
def test_remove_small_holes_on_uneven_chunks_equals_whole_image(ndim, connectivity, max_size):
    mask = _mask(ndim, seed=7, level=0.45, sigma=1.0)
    reference = skmorph.remove_small_holes(mask, max_size=max_size, connectivity=connectivity)
    result, info = _lifted(
        mask, RemoveSmallHolesParams(max_size=max_size, connectivity=connectivity), uneven_chunks(mask.shape, seed=6)
    )
    np.testing.assert_array_equal(result, reference)
    assert info["holes_filled"] == measure.label(reference & ~mask, connectivity=connectivity).max()


@pytest.mark.parametrize("ndim", [2, 3])
def test_global_ops_on_one_voxel_chunks(ndim):
    mask = blobs((12, 11) if ndim == 2 else (7, 6, 8), seed=9, sigma=1.0, dtype=np.float64) > 0.5
    for params, reference in [
        (FillHolesParams(), ndi.binary_fill_holes(mask)),
        (RemoveSmallObjectsParams(max_size=4), skmorph.remove_small_objects(mask, max_size=4)),
        (RemoveSmallHolesParams(max_size=4, connectivity=ndim), skmorph.remove_small_holes(mask, max_size=4, connectivity=ndim)),
    ]:
        np.testing.assert_array_equal(_lifted(mask, params, 1)[0], reference, err_msg=params.op)


def test_label_still_works_and_agrees_with_the_regions_of_the_global_ops():
    mask = _mask(3, seed=1, level=0.55)
    chunks = uneven_chunks(mask.shape, seed=2)
    labels, info = lift.lift(da.from_array(mask, chunks=chunks), LabelParams(connectivity=1))
    reference = measure.label(mask, connectivity=1)
    assert info == {"objects": reference.max()}
    assert same_up_to_permutation(labels.compute(), reference)
    found = lift_masks.regions(da.from_array(mask, chunks=chunks), 1)
    assert found.n == reference.max()
    assert sorted(found.sizes[1:].tolist()) == sorted(np.bincount(reference.ravel())[1:].tolist())


# --- hand-made objects and holes across chunk borders --------------------------------------------------


def _ring(shape=(12, 12)):
    """A square ring centred on the corner where four 6x6 chunks meet; its 4x4 hole spans the four chunks."""
    mask = np.zeros(shape, bool)
    mask[2:10, 2:10] = True
    mask[4:8, 4:8] = False
    return mask


def test_hole_spanning_four_chunks_is_filled():
    mask = _ring()
    for params in (FillHolesParams(), RemoveSmallHolesParams(max_size=16)):
        result, info = _lifted(mask, params, 6)
        assert result[2:10, 2:10].all() and info["holes_filled"] == 1
    # Each chunk holds 4 voxels of the hole; only the whole (16 voxels) counts against max_size.
    result, info = _lifted(mask, RemoveSmallHolesParams(max_size=15), 6)
    np.testing.assert_array_equal(result, mask)
    assert info["holes_filled"] == 0


def test_background_reaching_the_border_through_several_chunks_is_not_a_hole():
    # A winding background channel from the centre to the left border, through five of the nine 4x4 chunks.
    mask = np.ones((12, 12), bool)
    mask[5, 1:7] = False  # row 5, columns 1..6
    mask[5:10, 6] = False  # down column 6
    mask[9, 0:7] = False  # row 9 back to the left border
    mask[1:3, 8:10] = False  # and a real hole in one chunk
    reference = ndi.binary_fill_holes(mask)
    assert not reference[5, 3] and reference[1, 8]
    result, info = _lifted(mask, FillHolesParams(), 4)
    np.testing.assert_array_equal(result, reference)
    assert info["holes_filled"] == 1
    # The same channel, cut from the border: now a hole running through five chunks.
    closed = mask.copy()
    closed[9, 0] = True
    result, info = _lifted(closed, FillHolesParams(), 4)
    assert result.all() and info["holes_filled"] == 2


def test_background_touching_the_border_only_diagonally_is_a_hole():
    # With connectivity 1 a region whose only way out is a corner-to-corner step is enclosed.
    mask = np.ones((8, 8), bool)
    mask[1:4, 1:4] = False
    mask[0, 0] = False  # touches the region at (1, 1) by a corner only
    for connectivity, filled in [(1, True), (2, False)]:
        result, _ = _lifted(mask, FillHolesParams(connectivity=connectivity), 2)
        np.testing.assert_array_equal(result, _fill_holes_reference(mask, connectivity))
        assert result[2, 2] == filled


@pytest.mark.parametrize("ndim", [2, 3])
def test_object_split_over_chunks_counts_as_a_whole(ndim):
    # A bar of 12 voxels cut by chunk borders into parts of 3 and 4 and 5 voxels.
    mask = np.zeros((12,) + (5,) * (ndim - 1), bool)
    mask[(slice(0, 12),) + (2,) * (ndim - 1)] = True
    mask[(0,) * ndim] = True  # a lone voxel: removed for any max_size >= 1
    chunks = ((3, 4, 5),) + ((5,),) * (ndim - 1)
    for max_size, kept_bar in [(5, True), (11, True), (12, False)]:
        result, info = _lifted(mask, RemoveSmallObjectsParams(max_size=max_size), chunks)
        np.testing.assert_array_equal(result, skmorph.remove_small_objects(mask, max_size=max_size))
        assert result[(slice(0, 12),) + (2,) * (ndim - 1)].all() == kept_bar
        assert not result[(0,) * ndim]
        assert info["objects_removed"] == (1 if kept_bar else 2)


def test_object_joined_only_across_a_chunk_corner():
    # Two 2x2 squares that touch at one corner, that corner being where four chunks meet.
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = mask[4:6, 4:6] = True
    for connectivity, kept in [(1, False), (2, True)]:
        result, _ = _lifted(mask, RemoveSmallObjectsParams(max_size=5, connectivity=connectivity), 4)
        np.testing.assert_array_equal(result, skmorph.remove_small_objects(mask, max_size=5, connectivity=connectivity))
        assert result.any() == kept


def test_nothing_to_change_gives_the_input_back_without_relabelling():
    mask = da.from_array(_ring(), chunks=5)
    assert lift.lift(mask, RemoveSmallObjectsParams(max_size=3))[0] is mask
    assert lift.lift(mask, RemoveSmallHolesParams(max_size=3))[0] is mask
    filled = da.from_array(ndi.binary_fill_holes(_ring()), chunks=5)
    assert lift.lift(filled, FillHolesParams())[0] is filled
    # The ring is a hole of its complement: there is something to change.
    assert lift.lift(~mask, FillHolesParams())[0].compute().all()


def test_empty_and_full_masks():
    for mask in (np.zeros((7, 9), bool), np.ones((7, 9), bool)):
        for params, reference in [
            (FillHolesParams(), ndi.binary_fill_holes(mask)),
            (RemoveSmallObjectsParams(max_size=100), skmorph.remove_small_objects(mask, max_size=100)),
            (RemoveSmallHolesParams(max_size=100), skmorph.remove_small_holes(mask, max_size=100)),
        ]:
            np.testing.assert_array_equal(_lifted(mask, params, 3)[0], reference)


def test_compute_is_the_one_passed():
    calls = []

    def counting_compute(*collections):
        calls.append(len(collections))
        return dask.compute(*collections, scheduler="synchronous")

    mask = da.from_array(_ring(), chunks=4)
    lift.lift(mask, FillHolesParams(), compute=counting_compute)
    assert calls == [9], "one compute over the nine blocks' summaries"


# --- validation ----------------------------------------------------------------------------------------


def test_global_ops_refuse_connectivity_above_ndim():
    mask = da.zeros((6, 6), dtype=bool, chunks=3)
    with pytest.raises(ValueError, match="connectivity must be between 1 and 2 for a 2D image, got 3"):
        lift.lift(mask, RemoveSmallObjectsParams(connectivity=3))


def test_global_ops_refuse_non_boolean_masks():
    with pytest.raises(TypeError, match="mask must be boolean, got dtype uint8"):
        lift.lift(da.zeros((6, 6), dtype=np.uint8, chunks=3), FillHolesParams())


def test_regions_refuse_numpy_arrays():
    with pytest.raises(TypeError, match="mask must be a dask array, got ndarray"):
        lift_masks.regions(np.zeros((4, 4), bool), 1)


def test_paint_refuses_a_table_of_the_wrong_length():
    mask = da.from_array(_ring(), chunks=6)
    found = lift_masks.regions(mask, 1)
    with pytest.raises(ValueError, match="value must have one entry per region and one for 0"):
        lift_masks.paint(mask, found, np.ones(found.n, bool))


def test_neighbourhood_ops_refuse_bad_blocks_with_the_ops_message():
    with pytest.raises(TypeError, match="mask must be boolean"):
        lift.lift(da.zeros((6, 6), dtype=np.uint8, chunks=3), BinaryErosionParams())[0].compute()
    with pytest.raises(TypeError, match="labels must hold integers"):
        lift.lift(da.zeros((6, 6), dtype=np.float32, chunks=3), ExpandLabelsParams())[0].compute()
