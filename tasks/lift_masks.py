"""Liftings of the global mask ops (registered with tasks.lift.lifts).

``fill_holes``, ``remove_small_objects`` and ``remove_small_holes`` decide
per connected region (of the mask, or of its background) from what the whole
region is: its voxel count, or whether it reaches the image border. A region
can run through many chunks, so the decision is made in two phases, as for
``label``:

1. every block is labelled once (``imageops.label.block_components``): its
   label count, its border layers, the voxel count of each label and the
   labels on the image's outer border; the layers on each chunk border give
   the equivalences of one lookup table to the regions of the whole image,
   whose counts and border flags are summed over blocks;
2. lazily, every block is labelled again and each voxel takes the value
   decided for its region.

Nothing is faked with a halo: a region's size or reach is exact whatever the
chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from imageops import label as label_ops
from imageops.catalog_masks import FillHolesParams, RemoveSmallHolesParams, RemoveSmallObjectsParams
from tasks.lift import Compute, lifts


@dataclass(frozen=True)
class Regions:
    """The connected regions of a (possibly inverted) mask, merged across chunks.

    ``offsets`` (block grid) shift each block's labels into one provisional
    numbering; ``lut`` maps provisional labels to regions 1..n (0 stays 0);
    ``sizes[r]`` is region r's voxel count and ``on_border[r]`` whether it
    holds a voxel on the image's outer border.
    """

    connectivity: int
    invert: bool
    offsets: np.ndarray
    lut: np.ndarray
    sizes: np.ndarray
    on_border: np.ndarray

    @property
    def n(self) -> int:
        """Number of regions."""
        return len(self.sizes) - 1


def regions(mask: da.Array, connectivity: int, *, invert: bool = False, compute: Compute = dask.compute) -> Regions:
    """Phase 1: the connected regions of ``mask`` (of ``~mask`` if ``invert``), their sizes and border flags.

    >>> mask = da.from_array(np.array([[1, 1, 0, 0, 1]], bool), chunks=2)
    >>> found = regions(mask, 1)
    >>> found.n, found.sizes.tolist()
    (2, [0, 2, 1])
    """
    _check_mask(mask)
    label_ops.structure(mask.ndim, connectivity)  # refuses a connectivity beyond the axes
    grid = mask.numblocks
    locations = list(np.ndindex(*grid))
    summaries = compute(
        *[
            dask.delayed(_block_summary)(block, connectivity, invert, label_ops.outer_faces(location, grid))
            for block, location in zip(mask.to_delayed().ravel(), locations)
        ]
    )
    counts = np.array([s["n"] for s in summaries], dtype=np.int64)
    offsets = (np.cumsum(counts) - counts).reshape(grid)
    faces = np.empty(grid, dtype=object)
    for location, summary in zip(locations, summaries):
        faces[location] = summary["faces"]
    pairs = label_ops.border_pairs(faces, offsets, connectivity)
    lut, n = label_ops.merge_equivalences(pairs, int(counts.sum()))
    # Provisional labels are numbered block after block, so the blocks' counts line up with lut[1:].
    provisional_sizes = np.concatenate([np.zeros(1, np.int64)] + [s["sizes"][1:] for s in summaries])
    sizes = np.zeros(n + 1, dtype=np.int64)
    np.add.at(sizes, lut.astype(np.intp), provisional_sizes)
    sizes[0] = 0
    on_border = np.zeros(n + 1, dtype=bool)
    for location, summary in zip(locations, summaries):
        on_border[lut[summary["outer"].astype(np.int64) + offsets[location]]] = True
    on_border[0] = False
    return Regions(connectivity, invert, offsets, lut, sizes, on_border)


def paint(mask: da.Array, found: Regions, value: np.ndarray) -> da.Array:
    """Phase 2, lazily: every voxel of region r becomes ``value[r]``; voxels in no region ``value[0]``.

    If that changes nothing, ``mask`` itself is returned and no block is labelled again.

    >>> mask = da.from_array(np.array([[1, 1, 0, 0, 1]], bool), chunks=2)
    >>> found = regions(mask, 1)
    >>> paint(mask, found, found.sizes > 1).compute().astype(int)
    array([[1, 1, 0, 0, 0]])
    """
    value = np.asarray(value, dtype=bool)
    if value.shape != found.sizes.shape:
        raise ValueError(f"value must have one entry per region and one for 0: {found.sizes.shape}, got {value.shape}")
    unchanged = value[0] == found.invert and bool(np.all(value[1:] != found.invert))
    if unchanged:
        return mask
    return mask.map_blocks(
        _paint_block,
        connectivity=found.connectivity,
        invert=found.invert,
        offsets=dask.delayed(found.offsets),
        table=dask.delayed(value[found.lut]),
        dtype=bool,
        meta=np.empty((0,) * mask.ndim, dtype=bool),
    )


def fill_holes(mask: da.Array, params: FillHolesParams, compute: Compute = dask.compute) -> tuple[da.Array, int]:
    """``scipy.ndimage.binary_fill_holes`` across chunks, and the number of holes filled."""
    background = regions(mask, params.connectivity, invert=True, compute=compute)
    keep = background.on_border.copy()
    keep[0] = False  # voxels of no background region are the mask's own
    return paint(mask, background, ~keep), int((~background.on_border[1:]).sum())


def remove_small_objects(
    mask: da.Array, params: RemoveSmallObjectsParams, compute: Compute = dask.compute
) -> tuple[da.Array, int]:
    """``skimage.morphology.remove_small_objects(max_size=...)`` across chunks, and the number removed."""
    objects = regions(mask, params.connectivity, compute=compute)
    keep = objects.sizes > params.max_size
    keep[0] = False
    return paint(mask, objects, keep), int((~keep[1:]).sum())


def remove_small_holes(
    mask: da.Array, params: RemoveSmallHolesParams, compute: Compute = dask.compute
) -> tuple[da.Array, int]:
    """``skimage.morphology.remove_small_holes(max_size=...)`` across chunks, and the number filled."""
    background = regions(mask, params.connectivity, invert=True, compute=compute)
    stays_background = background.sizes > params.max_size
    stays_background[0] = False
    return paint(mask, background, ~stays_background), int((~stays_background[1:]).sum())


@lifts("fill_holes")
def _fill_holes_stage(mask, params, compute):
    filled, n_filled = fill_holes(mask, params, compute)
    return filled, {"holes_filled": n_filled}


@lifts("remove_small_objects")
def _remove_small_objects_stage(mask, params, compute):
    kept, n_removed = remove_small_objects(mask, params, compute)
    return kept, {"objects_removed": n_removed}


@lifts("remove_small_holes")
def _remove_small_holes_stage(mask, params, compute):
    filled, n_filled = remove_small_holes(mask, params, compute)
    return filled, {"holes_filled": n_filled}


def _check_mask(mask) -> None:
    if not isinstance(mask, da.Array):
        raise TypeError(f"mask must be a dask array, got {type(mask).__name__}")
    if mask.dtype != bool:
        raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")


def _block_summary(block: np.ndarray, connectivity: int, invert: bool, outer) -> dict:
    """Phase 1 for one block (module-level, so graphs pickle by reference)."""
    return label_ops.block_components(~block if invert else block, connectivity, outer)


def _paint_block(block, connectivity: int, invert: bool, offsets: np.ndarray, table: np.ndarray, block_info=None):
    """Phase 2 for one block: label it again and look every voxel's region up in ``table``."""
    location = tuple(block_info[0]["chunk-location"])
    labels, n = label_ops.label_block(~block if invert else block, connectivity)
    return label_ops.relabel(labels, label_ops.block_table(table, int(offsets[location]), n))
