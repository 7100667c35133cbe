"""The mask and label ops: binary morphology, hole filling, small-object removal, label expansion.

Erosion, dilation, opening, closing and ``expand_labels`` are neighbourhood
ops (a halo from their parameters); ``fill_holes``, ``remove_small_objects``
and ``remove_small_holes`` are global (their liftings, in
``tasks.lift_masks``, merge connected regions across chunk borders).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from . import halo, morphology
from .registry import OpInfo, OpParams, register

_RADIUS = {
    "title": "Radius",
    "description": "Radius in voxels of the footprint: a disk in 2D, a ball in 3D (1: the cross of face neighbours).",
}
_CONNECTIVITY = {
    "title": "Connectivity",
    "description": "Neighbours joined into one region: 1 (faces) up to the number of axes (corners).",
}
_MAX_SIZE_OBJECTS = {
    "title": "Largest removed size",
    "description": "Objects of this many voxels or fewer are removed (scikit-image 0.26 'max_size').",
}
_MAX_SIZE_HOLES = {
    "title": "Largest filled size",
    "description": "Background regions of this many voxels or fewer are filled, even at the border (scikit-image 0.26 'max_size').",
}


class BinaryErosionParams(OpParams):
    """Erosion of a mask by a disk / ball (skimage.morphology.erosion)."""

    op: Literal["binary_erosion"] = "binary_erosion"
    radius: int = Field(1, ge=0, le=64, **_RADIUS)


class BinaryDilationParams(OpParams):
    """Dilation of a mask by a disk / ball (skimage.morphology.dilation)."""

    op: Literal["binary_dilation"] = "binary_dilation"
    radius: int = Field(1, ge=0, le=64, **_RADIUS)


class BinaryOpeningParams(OpParams):
    """Opening (erosion, then dilation) of a mask by a disk / ball (skimage.morphology.opening)."""

    op: Literal["binary_opening"] = "binary_opening"
    radius: int = Field(1, ge=0, le=64, **_RADIUS)


class BinaryClosingParams(OpParams):
    """Closing (dilation, then erosion) of a mask by a disk / ball (skimage.morphology.closing)."""

    op: Literal["binary_closing"] = "binary_closing"
    radius: int = Field(1, ge=0, le=64, **_RADIUS)


class FillHolesParams(OpParams):
    """Fill the background regions that do not reach the image border (scipy.ndimage.binary_fill_holes)."""

    op: Literal["fill_holes"] = "fill_holes"
    connectivity: int = Field(1, ge=1, le=3, **_CONNECTIVITY)


class RemoveSmallObjectsParams(OpParams):
    """Remove the objects of max_size voxels or fewer (skimage.morphology.remove_small_objects)."""

    op: Literal["remove_small_objects"] = "remove_small_objects"
    max_size: int = Field(64, ge=0, **_MAX_SIZE_OBJECTS)
    connectivity: int = Field(1, ge=1, le=3, **_CONNECTIVITY)


class RemoveSmallHolesParams(OpParams):
    """Fill the background regions of max_size voxels or fewer (skimage.morphology.remove_small_holes)."""

    op: Literal["remove_small_holes"] = "remove_small_holes"
    max_size: int = Field(64, ge=0, **_MAX_SIZE_HOLES)
    connectivity: int = Field(1, ge=1, le=3, **_CONNECTIVITY)


class ExpandLabelsParams(OpParams):
    """Grow labels into the background without overlap (skimage.segmentation.expand_labels)."""

    op: Literal["expand_labels"] = "expand_labels"
    distance: float = Field(
        1.0, ge=0, le=1000, allow_inf_nan=False, title="Distance",
        description="Euclidean distance in voxels by which labels grow; the nearest label wins.",
    )


def _mask_dtype(params, dtype) -> np.dtype:
    return np.dtype(bool)


def _same_dtype(params, dtype) -> np.dtype:
    return np.dtype(dtype)


def _binary(name, params, function, passes, summary) -> OpInfo:
    return OpInfo(
        name, "1", params, "neighbourhood", ("mask",), "mask",
        halo=lambda p, ndim: morphology.footprint_halo(p.radius, ndim, passes),
        out_dtype=_mask_dtype,
        block_fn=lambda block, p: function(block, p.radius),
        summary=summary,
    )


def _global(name, params, summary) -> OpInfo:
    return OpInfo(
        name, "1", params, "global", ("mask",), "mask",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=_mask_dtype,
        summary=summary,
    )


for _info in (
    _binary("binary_erosion", BinaryErosionParams, morphology.binary_erosion, 1,
            "Erosion by a disk / ball of `radius`; the image border erodes nothing."),
    _binary("binary_dilation", BinaryDilationParams, morphology.binary_dilation, 1,
            "Dilation by a disk / ball of `radius`."),
    _binary("binary_opening", BinaryOpeningParams, morphology.binary_opening, 2,
            "Opening (erosion, then dilation) by a disk / ball of `radius`."),
    _binary("binary_closing", BinaryClosingParams, morphology.binary_closing, 2,
            "Closing (dilation, then erosion) by a disk / ball of `radius`."),
    _global("fill_holes", FillHolesParams,
            "Fill background regions that do not reach the image border, across chunks."),
    _global("remove_small_objects", RemoveSmallObjectsParams,
            "Remove objects of `max_size` voxels or fewer, counted across chunks."),
    _global("remove_small_holes", RemoveSmallHolesParams,
            "Fill background regions of `max_size` voxels or fewer, counted across chunks."),
    OpInfo(
        "expand_labels", "1", ExpandLabelsParams, "neighbourhood", ("labels",), "labels",
        halo=lambda p, ndim: morphology.distance_halo(p.distance, ndim),
        out_dtype=_same_dtype,
        block_fn=lambda block, p: morphology.expand_labels(block, p.distance),
        summary="Grow labels by `distance` voxels into the background; keeps the dtype.",
    ),
):
    register(_info)
