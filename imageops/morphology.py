"""Binary morphology, hole filling, small-object removal and label expansion on one NumPy block.

Each function equals its scikit-image / SciPy counterpart on the whole image
(scikit-image 0.26):

- ``binary_erosion`` .. ``binary_closing``: ``skimage.morphology.erosion``,
  ``dilation``, ``opening``, ``closing`` on a bool mask with ``disk(radius)``
  (2D) or ``ball(radius)`` (3D). Outside the image nothing changes the result
  (erosion sees True, dilation sees False: skimage's ``mode="ignore"``, which
  the deprecated ``binary_*`` functions used). For these footprints that is
  also what the default ``mode="reflect"`` gives (and ``"nearest"``,
  ``"mirror"``): a reflected voxel is never closer than the voxel it mirrors,
  and a disk or ball only holds offsets closer than ``radius``.
- ``fill_holes``: ``scipy.ndimage.binary_fill_holes``.
- ``remove_small_objects`` / ``remove_small_holes``: the 0.26 calls with
  ``max_size`` (remove objects / fill holes of ``max_size`` voxels *or
  fewer*). The older ``min_size`` / ``area_threshold`` (documented as
  strictly fewer) are deprecated there and not offered here; note that
  skimage 0.26.0 forwards a deprecated value to ``max_size``, so it too
  removes objects of exactly that size. A "hole" of ``remove_small_holes``
  is any connected background region, also one touching the image border.
- ``expand_labels``: ``skimage.segmentation.expand_labels``.

The halo rules say how far each op looks, so that a block processed with that
halo gives, inside the block, exactly what the op gives on the whole image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage import morphology as skmorph
from skimage import segmentation

from ._validation import check_array, check_connectivity


def footprint(radius: int, ndim: int) -> np.ndarray:
    """The footprint of the binary ops: ``disk(radius)`` in 2D, ``ball(radius)`` in 3D, as bool.

    Parameters
    ----------
    radius : int
        Radius in voxels, >= 0 (0 gives the single centre voxel).
    ndim : {2, 3}
        Number of axes of the image.

    Examples
    --------
    >>> footprint(1, 2).astype(int)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]])
    >>> footprint(2, 3).shape
    (5, 5, 5)
    """
    radius = _check_radius(radius)
    if ndim == 2:
        return skmorph.disk(radius).astype(bool)
    if ndim == 3:
        return skmorph.ball(radius).astype(bool)
    raise ValueError(f"mask must be 2D (disk footprint) or 3D (ball footprint), got {ndim} axes")


def footprint_halo(radius: int, ndim: int, passes: int = 1) -> tuple[int, ...]:
    """Reach of ``passes`` erosions or dilations by a disk or ball: ``passes * radius`` per axis.

    Opening and closing are two passes.

    Examples
    --------
    >>> footprint_halo(3, 2)
    (3, 3)
    >>> footprint_halo(2, 3, passes=2)
    (4, 4, 4)
    """
    return (passes * _check_radius(radius),) * ndim


def distance_halo(distance: float, ndim: int) -> tuple[int, ...]:
    """Reach of ``expand_labels`` by ``distance``: ``floor(distance)`` per axis.

    A label voxel at Euclidean distance <= ``distance`` is at most
    ``floor(distance)`` voxels away along every axis; every voxel farther along
    some axis is farther than ``distance``, so it can neither give its label
    nor tie with the nearest label.

    Examples
    --------
    >>> distance_halo(2.5, 2)
    (2, 2)
    >>> distance_halo(0.9, 3)
    (0, 0, 0)
    """
    return (math.floor(_check_distance(distance)),) * ndim


def binary_erosion(mask, radius: int = 1) -> np.ndarray:
    """Erosion of a bool mask by a disk (2D) or ball (3D) of ``radius``.

    Equal to ``skimage.morphology.erosion(mask, disk(radius))`` (or ``ball``):
    voxels beyond the border count as True, so the border erodes nothing.

    Parameters
    ----------
    mask : ndarray of bool
        2D or 3D mask.
    radius : int, optional
        Footprint radius in voxels, >= 0. The default (1) is skimage's
        default cross-shaped footprint.

    Returns
    -------
    ndarray of bool
        A new array; ``mask`` is not modified.

    Examples
    --------
    >>> mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
    >>> binary_erosion(mask, 1).astype(int).sum()
    np.int64(1)
    >>> binary_erosion(np.ones((3, 3), bool), 1).all()
    np.True_
    """
    mask = _check_mask(mask)
    return ndi.binary_erosion(mask, footprint(radius, mask.ndim), border_value=True)


def binary_dilation(mask, radius: int = 1) -> np.ndarray:
    """Dilation of a bool mask by a disk (2D) or ball (3D) of ``radius``.

    Equal to ``skimage.morphology.dilation(mask, disk(radius))`` (or ``ball``).

    Examples
    --------
    >>> mask = np.zeros((5, 5), bool); mask[2, 2] = True
    >>> binary_dilation(mask, 1).astype(int).sum()
    np.int64(5)
    """
    mask = _check_mask(mask)
    return ndi.binary_dilation(mask, footprint(radius, mask.ndim), border_value=False)


def binary_opening(mask, radius: int = 1) -> np.ndarray:
    """Erosion then dilation by a disk (2D) or ball (3D) of ``radius``.

    Equal to ``skimage.morphology.opening(mask, disk(radius))`` (or ``ball``).
    It looks ``2 * radius`` voxels away.

    Examples
    --------
    >>> mask = np.zeros((7, 7), bool); mask[2:5, 2:5] = True; mask[0, 0] = True
    >>> opened = binary_opening(mask, 1)
    >>> bool(opened[0, 0])  # the lone voxel goes
    False
    >>> opened[1:6, 1:6].astype(int)  # and the square's corners
    array([[0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    mask = _check_mask(mask)
    fp = footprint(radius, mask.ndim)
    eroded = ndi.binary_erosion(mask, fp, border_value=True)
    return ndi.binary_dilation(eroded, fp, border_value=False)


def binary_closing(mask, radius: int = 1) -> np.ndarray:
    """Dilation then erosion by a disk (2D) or ball (3D) of ``radius``.

    Equal to ``skimage.morphology.closing(mask, disk(radius))`` (or ``ball``).
    It looks ``2 * radius`` voxels away.

    Examples
    --------
    >>> mask = np.ones((5, 5), bool); mask[2, 2] = False
    >>> binary_closing(mask, 1).all()
    np.True_
    """
    mask = _check_mask(mask)
    fp = footprint(radius, mask.ndim)
    dilated = ndi.binary_dilation(mask, fp, border_value=False)
    return ndi.binary_erosion(dilated, fp, border_value=True)


def fill_holes(mask, *, connectivity: int = 1) -> np.ndarray:
    """Fill the background regions that do not reach the image border.

    Equal to ``scipy.ndimage.binary_fill_holes(mask, structure)`` with the
    structure of ``connectivity`` (SciPy's default is 1): background voxels
    joined under that connectivity form regions; a region holding a voxel on
    the image border stays background, every other one is filled.

    Parameters
    ----------
    mask : ndarray of bool
        Mask of any dimension.
    connectivity : int, optional
        Neighbours joined in the background: 1 (faces) up to ``mask.ndim``.

    Examples
    --------
    >>> ring = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1]], bool)
    >>> fill_holes(ring).astype(int)
    array([[0, 0, 0, 0],
           [0, 1, 1, 1],
           [0, 1, 1, 1],
           [0, 1, 1, 1]])
    """
    mask = _check_mask(mask, ndims=None)
    connectivity = check_connectivity(connectivity, mask.ndim)
    return ndi.binary_fill_holes(mask, ndi.generate_binary_structure(mask.ndim, connectivity))


def remove_small_objects(mask, max_size: int = 64, *, connectivity: int = 1) -> np.ndarray:
    """Remove the objects of ``max_size`` voxels or fewer.

    Equal to ``skimage.morphology.remove_small_objects(mask, max_size=max_size,
    connectivity=connectivity)`` in scikit-image 0.26 (the deprecated
    ``min_size`` removed objects of strictly fewer voxels).

    Parameters
    ----------
    mask : ndarray of bool
        Mask of any dimension.
    max_size : int, optional
        Objects of this many voxels or fewer are removed; 0 keeps everything.
    connectivity : int, optional
        Neighbours joined into one object: 1 (faces) up to ``mask.ndim``.

    Examples
    --------
    >>> mask = np.array([[1, 1, 0, 1], [1, 1, 0, 0]], bool)
    >>> remove_small_objects(mask, 1).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0]])
    """
    mask = _check_mask(mask, ndims=None)
    max_size = _check_size(max_size)
    connectivity = check_connectivity(connectivity, mask.ndim)
    return skmorph.remove_small_objects(mask, max_size=max_size, connectivity=connectivity)


def remove_small_holes(mask, max_size: int = 64, *, connectivity: int = 1) -> np.ndarray:
    """Fill the holes of ``max_size`` voxels or fewer.

    Equal to ``skimage.morphology.remove_small_holes(mask, max_size=max_size,
    connectivity=connectivity)`` in scikit-image 0.26: a hole is any region of
    background voxels joined under ``connectivity``, including one that
    touches the image border (unlike :func:`fill_holes`).

    Examples
    --------
    >>> mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0]], bool)
    >>> remove_small_holes(mask, 1).astype(int)
    array([[1, 1, 1, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 0]])
    >>> remove_small_holes(mask, 3).all()
    np.True_
    """
    mask = _check_mask(mask, ndims=None)
    max_size = _check_size(max_size)
    connectivity = check_connectivity(connectivity, mask.ndim)
    return skmorph.remove_small_holes(mask, max_size=max_size, connectivity=connectivity)


def expand_labels(labels, distance: float = 1.0) -> np.ndarray:
    """Grow every label into the background by up to ``distance`` voxels, without overlap.

    Equal to ``skimage.segmentation.expand_labels(labels, distance)``: a
    background voxel within Euclidean ``distance`` of a label takes the label
    of its nearest label voxel. Among equally near label voxels, SciPy's
    ``distance_transform_edt`` picks the one that comes first when positions
    are compared last axis first; that rule depends only on the nearest
    voxels and their relative places, so a block with a halo of
    :func:`distance_halo` chooses as the whole image does.

    Parameters
    ----------
    labels : ndarray of int
        Label image of any dimension, 0 for background; its dtype is kept.
    distance : float, optional
        Euclidean distance in voxels, >= 0.

    Examples
    --------
    >>> expand_labels(np.array([[1, 0, 0, 0, 2]], np.uint16), 2)
    array([[1, 1, 1, 2, 2]], dtype=uint16)
    >>> expand_labels(np.array([[1, 0, 2]]), 1)  # a tie: the first label voxel wins
    array([[1, 1, 2]])
    """
    labels = check_array(labels, "labels")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
    distance = _check_distance(distance)
    if not labels.any():  # no label to grow (and SciPy's indices are undefined then)
        return np.zeros_like(labels)
    return segmentation.expand_labels(labels, distance)


def _check_mask(mask, ndims=(2, 3)) -> np.ndarray:
    mask = check_array(mask, "mask")
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")
    if ndims is not None and mask.ndim not in ndims:
        raise ValueError(f"mask must be 2D (disk footprint) or 3D (ball footprint), got shape {mask.shape}")
    return mask


def _check_radius(radius) -> int:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)):
        raise TypeError(f"radius must be an integer, got {radius!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return int(radius)


def _check_size(max_size) -> int:
    if isinstance(max_size, (bool, np.bool_)) or not isinstance(max_size, (int, np.integer)):
        raise TypeError(f"max_size must be an integer, got {max_size!r}")
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    return int(max_size)


def _check_distance(distance) -> float:
    if isinstance(distance, (bool, np.bool_)) or not isinstance(distance, (int, float, np.integer, np.floating)):
        raise TypeError(f"distance must be a number, got {distance!r}")
    if not math.isfinite(distance) or distance < 0:
        raise ValueError(f"distance must be a finite number >= 0, got {distance}")
    return float(distance)
