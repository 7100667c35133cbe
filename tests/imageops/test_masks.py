"""The mask and label ops on whole NumPy images: agreement with scikit-image / SciPy, border rules, ties, validation."""

import itertools

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage as ndi
from skimage import morphology as skmorph
from skimage import segmentation

from imageops import get_op, label as hl, morphology as hm
from imageops.catalog_masks import (
    BinaryClosingParams, BinaryDilationParams, BinaryErosionParams, BinaryOpeningParams, ExpandLabelsParams,
    FillHolesParams, RemoveSmallHolesParams, RemoveSmallObjectsParams,
)
from tests.helpers import blobs

SHAPES = {2: (31, 26), 3: (13, 17, 11)}
BINARY = {
    "binary_erosion": (hm.binary_erosion, skmorph.erosion, "binary_erosion"),
    "binary_dilation": (hm.binary_dilation, skmorph.dilation, "binary_dilation"),
    "binary_opening": (hm.binary_opening, skmorph.opening, "binary_opening"),
    "binary_closing": (hm.binary_closing, skmorph.closing, "binary_closing"),
}


def _mask(ndim, seed=0, level=0.5):
    return blobs(SHAPES[ndim], seed=seed, sigma=1.5, dtype=np.float64) > level


def _deprecated_skimage(name, mask, footprint):
    """skimage.morphology.binary_* (deprecated in 0.26: FutureWarning)."""
    with pytest.warns(FutureWarning, match="deprecated"):
        return getattr(skmorph, name)(mask, footprint)


# --- binary morphology -------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_ops_equal_skimage_with_every_local_border_mode(name, radius, ndim):
    ours, gray, deprecated = BINARY[name]
    mask = _mask(ndim, seed=radius)
    footprint = skmorph.disk(radius) if ndim == 2 else skmorph.ball(radius)
    out = ours(mask, radius)
    assert out.dtype == bool
    # The non-deprecated call with its default mode ("reflect"), the deprecated binary_* ("ignore"),
    # and every other mode that reads only the image: one and the same result for a disk or a ball.
    np.testing.assert_array_equal(out, gray(mask, footprint))
    np.testing.assert_array_equal(out, _deprecated_skimage(deprecated, mask, footprint))
    for mode in ("ignore", "nearest", "mirror"):
        np.testing.assert_array_equal(out, gray(mask, footprint, mode=mode), err_msg=mode)


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_border_erodes_nothing_and_dilates_nothing(ndim):
    full = np.ones((6,) * ndim, bool)
    assert hm.binary_erosion(full, 2).all()
    assert hm.binary_opening(full, 2).all()
    empty = np.zeros((6,) * ndim, bool)
    assert not hm.binary_dilation(empty, 2).any()
    assert not hm.binary_closing(empty, 2).any()
    # A constant-mode erosion (outside = False) would eat the border; ours equals skimage's default.
    assert not skmorph.erosion(full, hm.footprint(2, ndim), mode="constant", cval=0).all()


def test_default_radius_is_skimage_default_footprint():
    mask = _mask(2, seed=3)
    np.testing.assert_array_equal(hm.binary_erosion(mask), skmorph.erosion(mask))
    np.testing.assert_array_equal(hm.binary_dilation(mask), skmorph.dilation(mask))
    np.testing.assert_array_equal(hm.footprint(1, 3), ndi.generate_binary_structure(3, 1))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_footprint_halo_is_the_reach_of_the_ops(ndim, radius):
    delta = np.zeros((21,) * ndim, bool)
    delta[(10,) * ndim] = True
    reach = np.argwhere(hm.binary_dilation(delta, radius)) - 10
    assert hm.footprint_halo(radius, ndim) == (int(np.abs(reach).max()),) * ndim
    # Opening / closing: a change at one voxel moves results 2 * radius away, not further.
    mask = np.ones((21,) * ndim, bool)
    hole = mask.copy()
    hole[(10,) * ndim] = False
    changed = np.argwhere(hm.binary_opening(mask, radius) != hm.binary_opening(hole, radius)) - 10
    assert np.abs(changed).max() <= hm.footprint_halo(radius, ndim, passes=2)[0]


def test_footprint_is_disk_in_2d_and_ball_in_3d():
    np.testing.assert_array_equal(hm.footprint(3, 2), skmorph.disk(3).astype(bool))
    np.testing.assert_array_equal(hm.footprint(2, 3), skmorph.ball(2).astype(bool))
    assert hm.footprint(0, 2).tolist() == [[True]]


# --- fill_holes, remove_small_objects, remove_small_holes --------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_fill_holes_equals_scipy(ndim):
    mask = _mask(ndim, seed=4, level=0.45)
    np.testing.assert_array_equal(hm.fill_holes(mask), ndi.binary_fill_holes(mask))
    for connectivity in range(1, ndim + 1):
        structure = ndi.generate_binary_structure(ndim, connectivity)
        np.testing.assert_array_equal(
            hm.fill_holes(mask, connectivity=connectivity), ndi.binary_fill_holes(mask, structure)
        )


def test_fill_holes_keeps_background_that_reaches_the_border():
    mask = np.ones((5, 5), bool)
    mask[2, 2] = False  # a hole
    mask[1:3, 4] = False  # background on the border, not a hole
    out = hm.fill_holes(mask)
    assert out[2, 2] and not out[1:3, 4].any()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("max_size", [0, 1, 5, 30])
def test_remove_small_objects_and_holes_equal_skimage(ndim, max_size):
    mask = _mask(ndim, seed=5, level=0.55)
    for connectivity in range(1, ndim + 1):
        np.testing.assert_array_equal(
            hm.remove_small_objects(mask, max_size, connectivity=connectivity),
            skmorph.remove_small_objects(mask, max_size=max_size, connectivity=connectivity),
        )
        np.testing.assert_array_equal(
            hm.remove_small_holes(mask, max_size, connectivity=connectivity),
            skmorph.remove_small_holes(mask, max_size=max_size, connectivity=connectivity),
        )


def test_max_size_removes_objects_of_exactly_that_size():
    mask = np.zeros((4, 8), bool)
    mask[0, 0:3] = True  # 3 voxels
    mask[2:4, 4:6] = True  # 4 voxels
    assert hm.remove_small_objects(mask, 3).sum() == 4
    assert hm.remove_small_objects(mask, 2).sum() == 7
    holes = ~mask
    assert hm.remove_small_holes(holes, 3).sum() == holes.sum() + 3


def test_remove_small_holes_fills_small_background_at_the_border_too():
    mask = np.ones((5, 6), bool)
    mask[0, 2] = False  # on the border: not a hole for fill_holes, a hole for remove_small_holes
    mask[2, 2] = False
    assert hm.remove_small_holes(mask, 1).all()
    assert not hm.fill_holes(mask)[0, 2]


# --- expand_labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("distance", [0, 0.5, 1, 1.5, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_expand_labels_equals_skimage_and_keeps_dtype(ndim, distance, dtype):
    rng = np.random.default_rng(ndim)
    labels = ((rng.random(SHAPES[ndim]) < 0.03) * rng.integers(1, 9, SHAPES[ndim])).astype(dtype)
    out = hm.expand_labels(labels, distance)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, segmentation.expand_labels(labels, distance))


def test_expand_labels_of_no_labels_is_zeros():
    labels = np.zeros((4, 5), np.uint32)
    out = hm.expand_labels(labels, 3)
    assert out.dtype == np.uint32 and not out.any()
    np.testing.assert_array_equal(out, segmentation.expand_labels(labels, 3))


def _nearest_label_last_axis_first(labels, distance):
    """Brute force: the nearest label voxel; among equally near ones, the first compared last axis first."""
    out = np.zeros_like(labels)
    seeds = np.argwhere(labels != 0)
    for voxel in np.ndindex(labels.shape):
        d2 = ((seeds - voxel) ** 2).sum(axis=1)
        if len(seeds) == 0 or d2.min() > distance**2:
            continue
        tied = seeds[d2 == d2.min()]
        first = tied[np.lexsort(tied.T)[0]]  # lexsort: the last key (last axis) is the primary one
        out[voxel] = labels[tuple(first)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_expand_labels_breaks_ties_by_position_last_axis_first(seed):
    """The rule that makes a halo of floor(distance) exact: ties go by position among the nearest voxels only."""
    rng = np.random.default_rng(seed)
    ndim = 2 + seed % 2
    shape = tuple(rng.integers(3, 9, ndim))
    labels = ((rng.random(shape) < 0.15) * rng.integers(1, 5, shape)).astype(np.int32)
    distance = float(rng.choice([1, np.sqrt(2), 2, np.sqrt(5), 3]))
    expected = _nearest_label_last_axis_first(labels, distance)
    np.testing.assert_array_equal(hm.expand_labels(labels, distance), expected)
    np.testing.assert_array_equal(segmentation.expand_labels(labels, distance), expected)


def test_expand_labels_tie_examples():
    # Equally near along one axis: the first voxel wins.
    assert hm.expand_labels(np.array([[1, 0, 0, 0, 2]]), 2).tolist() == [[1, 1, 1, 2, 2]]
    # Equally near on two axes: the one first on the last axis wins, not the one first on axis 0.
    labels = np.zeros((3, 3), int)
    labels[0, 2], labels[2, 0] = 1, 2
    assert hm.expand_labels(labels, 2)[0, 0] == 2


@pytest.mark.parametrize("distance", [0.5, 1, 1.5, 2, 2.9, 3])
def test_distance_halo_is_the_reach_of_expand_labels(distance):
    labels = np.zeros((15, 15), np.uint8)
    labels[7, 7] = 1
    reach = np.argwhere(hm.expand_labels(labels, distance)) - 7
    assert hm.distance_halo(distance, 2) == (int(np.abs(reach).max()),) * 2


# --- no mutation, validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: hm.binary_erosion(m, 2), lambda m: hm.binary_dilation(m, 2), lambda m: hm.binary_opening(m, 1),
        lambda m: hm.binary_closing(m, 1), hm.fill_holes, lambda m: hm.remove_small_objects(m, 5),
        lambda m: hm.remove_small_holes(m, 5),
    ],
)
def test_mask_ops_do_not_mutate_input(call):
    mask = _mask(2, seed=7)
    before = mask.copy()
    out = call(mask)
    np.testing.assert_array_equal(mask, before)
    assert out is not mask


def test_expand_labels_does_not_mutate_input():
    labels = np.zeros((6, 6), np.uint16)
    labels[2, 2] = 3
    before = labels.copy()
    hm.expand_labels(labels, 2)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: hm.binary_erosion([[True]], 1), TypeError, "mask must be an array"),
        (lambda: hm.binary_dilation(np.zeros((3, 3), np.uint8), 1), TypeError, "mask must be boolean, got dtype uint8"),
        (lambda: hm.binary_opening(np.zeros(5, bool), 1), ValueError, r"mask must be 2D .* or 3D .*got shape \(5,\)"),
        (lambda: hm.binary_closing(np.zeros((3, 3), bool), -1), ValueError, "radius must be >= 0, got -1"),
        (lambda: hm.binary_erosion(np.zeros((3, 3), bool), 1.5), TypeError, "radius must be an integer, got 1.5"),
        (lambda: hm.footprint(1, 4), ValueError, "got 4 axes"),
        (lambda: hm.fill_holes(np.zeros((3, 3), bool), connectivity=3), ValueError, "connectivity must be between 1 and 2"),
        (lambda: hm.fill_holes(np.zeros((3, 3), int)), TypeError, "mask must be boolean"),
        (lambda: hm.remove_small_objects(np.zeros((3, 3), bool), -1), ValueError, "max_size must be >= 0, got -1"),
        (lambda: hm.remove_small_objects(np.zeros((3, 3), bool), 2.0), TypeError, "max_size must be an integer"),
        (lambda: hm.remove_small_holes(np.zeros((3, 3), bool), 1, connectivity=0), ValueError, "connectivity must be"),
        (lambda: hm.expand_labels(np.zeros((3, 3)), 1), TypeError, "labels must hold integers, got dtype float64"),
        (lambda: hm.expand_labels(np.zeros((3, 3), bool), 1), TypeError, "labels must hold integers, got dtype bool"),
        (lambda: hm.expand_labels(np.zeros((3, 3), int), -1), ValueError, "distance must be a finite number >= 0"),
        (lambda: hm.expand_labels(np.zeros((3, 3), int), np.inf), ValueError, "distance must be a finite number >= 0"),
        (lambda: hm.expand_labels(np.zeros((3, 3), int), "2"), TypeError, "distance must be a number"),
    ],
)
def test_pure_ops_refuse_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        (BinaryErosionParams, {"radius": -1}, "greater than or equal to 0"),
        (BinaryDilationParams, {"radius": 65}, "less than or equal to 64"),
        (BinaryOpeningParams, {"radius": 1.5}, "valid integer"),
        (BinaryClosingParams, {"footprint": "square"}, "Extra inputs are not permitted"),
        (FillHolesParams, {"connectivity": 4}, "less than or equal to 3"),
        (RemoveSmallObjectsParams, {"min_size": 10}, "Extra inputs are not permitted"),
        (RemoveSmallObjectsParams, {"max_size": -1}, "greater than or equal to 0"),
        (RemoveSmallHolesParams, {"area_threshold": 10}, "Extra inputs are not permitted"),
        (ExpandLabelsParams, {"distance": float("inf")}, "finite number"),
        (ExpandLabelsParams, {"distance": -0.5}, "greater than or equal to 0"),
    ],
)
def test_params_refuse_bad_values(model, fields, message):
    with pytest.raises(ValidationError, match=message):
        model(**fields)


@pytest.mark.parametrize(
    ("params", "family", "takes", "gives", "dtype_in", "dtype_out", "halo_2d"),
    [
        (BinaryErosionParams(radius=3), "neighbourhood", ("mask",), "mask", bool, bool, (3, 3)),
        (BinaryDilationParams(radius=2), "neighbourhood", ("mask",), "mask", bool, bool, (2, 2)),
        (BinaryOpeningParams(radius=3), "neighbourhood", ("mask",), "mask", bool, bool, (6, 6)),
        (BinaryClosingParams(radius=1), "neighbourhood", ("mask",), "mask", bool, bool, (2, 2)),
        (FillHolesParams(), "global", ("mask",), "mask", bool, bool, (0, 0)),
        (RemoveSmallObjectsParams(), "global", ("mask",), "mask", bool, bool, (0, 0)),
        (RemoveSmallHolesParams(), "global", ("mask",), "mask", bool, bool, (0, 0)),
        (ExpandLabelsParams(distance=2.5), "neighbourhood", ("labels",), "labels", np.uint16, np.uint16, (2, 2)),
    ],
)
def test_registry_entries(params, family, takes, gives, dtype_in, dtype_out, halo_2d):
    info = get_op(params.op)
    assert (info.family, info.takes, info.gives, info.version) == (family, takes, gives, "1")
    assert info.out_dtype(params, np.dtype(dtype_in)) == np.dtype(dtype_out)
    assert info.halo(params, 2) == halo_2d and info.halo(params, 3) == halo_2d + halo_2d[:1]
    assert info.summary and (info.block_fn is None) == (family == "global")


def test_defaults_are_skimage_defaults():
    assert BinaryErosionParams().radius == 1
    assert RemoveSmallObjectsParams().max_size == RemoveSmallHolesParams().max_size == 64
    assert RemoveSmallObjectsParams().connectivity == FillHolesParams().connectivity == 1
    assert ExpandLabelsParams().distance == 1.0


# --- label.py additions ------------------------------------------------------------------------------


def test_block_components_sizes_and_outer_labels():
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]], bool)
    summary = hl.block_components(mask, 1, outer=[(0, 0)])
    assert summary["n"] == 3
    assert summary["sizes"].tolist() == [7, 2, 2, 1]
    assert summary["outer"].tolist() == [1]
    assert hl.block_components(mask, 1)["outer"].tolist() == []
    everywhere = hl.block_components(mask, 1, outer=hl.outer_faces((0, 0), (1, 1)))
    assert everywhere["outer"].tolist() == [1, 2, 3]


def test_outer_faces_of_every_block_of_a_grid():
    grid = (3, 1, 2)
    on_border = {loc: hl.outer_faces(loc, grid) for loc in itertools.product(*map(range, grid))}
    assert on_border[1, 0, 0] == ((1, 0), (1, 1), (2, 0))
    assert sum(len(v) for v in on_border.values()) == 2 * (1 * 2) + 2 * (3 * 2) + 2 * (3 * 1)
