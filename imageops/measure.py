"""Per-object measurements made from per-block partial results.

A block gives, for each label it holds, sums, minima and maxima (voxel count,
coordinate sums, bounding box, intensity sum / min / max). Merging those over
blocks by label and finishing them gives the columns of
``skimage.measure.regionprops_table`` on the whole image.
"""

from __future__ import annotations

import numpy as np

from ._validation import check_array

PROPERTIES = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min", "intensity_max")
INTENSITY_PROPERTIES = ("intensity_mean", "intensity_min", "intensity_max")
_SUMMED = ("count", "coord_sum", "intensity_sum")
_MINIMA = ("bbox_min", "intensity_min")
_MAXIMA = ("bbox_max", "intensity_max")


def block_partials(labels, intensity=None, origin=None) -> dict[str, np.ndarray]:
    """Partial measurements of every label in one block.

    Parameters
    ----------
    labels : ndarray of int
        The block's labels (global numbering), 0 for background.
    intensity : ndarray, optional
        The intensity block, same shape.
    origin : sequence of int, optional
        The block's first voxel in the whole image (default: zeros).

    Returns
    -------
    dict of ndarray
        ``label`` (k,), ``count`` (k,), ``coord_sum``, ``bbox_min``,
        ``bbox_max`` (k, ndim), and with ``intensity``: ``intensity_sum``,
        ``intensity_min``, ``intensity_max`` (k,).

    Examples
    --------
    >>> p = block_partials(np.array([[0, 2], [2, 2]]), origin=(10, 0))
    >>> p["label"].tolist(), p["count"].tolist(), p["bbox_min"].tolist()
    ([2], [3], [[10, 0]])
    """
    labels = check_array(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must hold integers, got dtype {labels.dtype}")
    origin = np.zeros(labels.ndim, dtype=np.int64) if origin is None else np.asarray(origin, dtype=np.int64)
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    order = where[np.argsort(flat[where], kind="stable")]
    sorted_labels = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if len(order) else np.empty(0, np.int64)
    coords = np.stack(np.unravel_index(order, labels.shape), axis=1) + origin if len(order) else np.empty((0, labels.ndim), np.int64)
    parts = {
        "label": sorted_labels[starts].astype(np.int64),
        "count": np.diff(np.r_[starts, len(order)]).astype(np.int64),
        "coord_sum": _reduce(np.add, coords.astype(np.float64), starts),
        "bbox_min": _reduce(np.minimum, coords, starts),
        "bbox_max": _reduce(np.maximum, coords, starts),
    }
    if intensity is not None:
        intensity = check_array(intensity, "intensity")
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity has shape {intensity.shape} but labels have {labels.shape}")
        values = intensity.ravel()[order].astype(np.float64)
        parts["intensity_sum"] = _reduce(np.add, values, starts)
        parts["intensity_min"] = _reduce(np.minimum, values, starts)
        parts["intensity_max"] = _reduce(np.maximum, values, starts)
    return parts


def merge_partials(parts_list) -> dict[str, np.ndarray]:
    """Merge partial measurements of many blocks by label (sorted by label).

    >>> a = block_partials(np.array([[1, 1]]))
    >>> b = block_partials(np.array([[1, 0]]), origin=(1, 0))
    >>> m = merge_partials([a, b])
    >>> m["count"].tolist(), m["bbox_max"].tolist()
    ([3], [[1, 1]])
    """
    parts_list = [p for p in parts_list if len(p["label"])]
    if not parts_list:
        return {}
    keys = parts_list[0].keys()
    joined = {k: np.concatenate([p[k] for p in parts_list]) for k in keys}
    order = np.argsort(joined["label"], kind="stable")
    joined = {k: v[order] for k, v in joined.items()}
    labels = joined["label"]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    merged = {"label": labels[starts]}
    for key in keys:
        if key in _SUMMED:
            merged[key] = _reduce(np.add, joined[key], starts)
        elif key in _MINIMA:
            merged[key] = _reduce(np.minimum, joined[key], starts)
        elif key in _MAXIMA:
            merged[key] = _reduce(np.maximum, joined[key], starts)
    return merged


def regionprops_columns(merged, properties, ndim: int) -> dict[str, np.ndarray]:
    """Finish merged partials into ``regionprops_table``'s columns, rows sorted by label.

    >>> m = merge_partials([block_partials(np.array([[0, 3], [0, 3]]))])
    >>> cols = regionprops_columns(m, ["label", "area", "centroid"], 2)
    >>> {k: v.tolist() for k, v in cols.items()}
    {'label': [3], 'area': [2.0], 'centroid-0': [0.5], 'centroid-1': [1.0]}
    """
    unknown = [p for p in properties if p not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; known: {list(PROPERTIES)}")
    if any(p in INTENSITY_PROPERTIES for p in properties) and merged and "intensity_sum" not in merged:
        raise ValueError("intensity properties need an intensity image")
    if not merged:
        merged = _empty(ndim)
    count = merged["count"].astype(np.float64)
    columns: dict[str, np.ndarray] = {}
    for prop in properties:
        if prop == "label":
            columns["label"] = merged["label"]
        elif prop == "area":
            columns["area"] = count
        elif prop == "centroid":
            for axis in range(ndim):
                columns[f"centroid-{axis}"] = merged["coord_sum"][:, axis] / count
        elif prop == "bbox":
            for axis in range(ndim):
                columns[f"bbox-{axis}"] = merged["bbox_min"][:, axis].astype(np.int64)
            for axis in range(ndim):
                columns[f"bbox-{axis + ndim}"] = merged["bbox_max"][:, axis].astype(np.int64) + 1
        elif prop == "intensity_mean":
            columns["intensity_mean"] = merged.get("intensity_sum", np.empty(0)) / count
        elif prop in ("intensity_min", "intensity_max"):
            columns[prop] = merged.get(prop, np.empty(0))
    return columns


def _reduce(ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat`` over runs that start at ``starts`` (empty-safe)."""
    if len(starts) == 0:
        return values[:0]
    return ufunc.reduceat(values, starts, axis=0)


def _empty(ndim: int) -> dict[str, np.ndarray]:
    return {
        "label": np.empty(0, np.int64),
        "count": np.empty(0, np.int64),
        "coord_sum": np.empty((0, ndim)),
        "bbox_min": np.empty((0, ndim), np.int64),
        "bbox_max": np.empty((0, ndim), np.int64),
    }
