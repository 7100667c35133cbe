"""Liftings of the global filter and threshold ops (registered with tasks.lift.lifts).

- ``rescale_intensity``: exact whole-image percentiles (NumPy's 'linear'
  method) from a few passes over the blocks, then a lazy pointwise map.
- Thresholds that need passes over the image rather than its histogram
  (``mean``; ``li`` on float images): :func:`threshold_by_passes`, which
  ``tasks.lift.threshold_value`` calls for those methods.

``compute`` has ``dask.compute``'s signature, as in :mod:`tasks.lift`.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from imageops import filters as filter_ops, threshold as threshold_ops
from imageops.catalog_filters import RescaleIntensityParams
from tasks.lift import Compute, lifts

#: Inputs merged per task when gathering distinct values (a tree, so no task holds every block's).
MERGE_FAN_IN = 8


def image_range(image: da.Array, compute: Compute = dask.compute) -> tuple:
    """The image's smallest and largest value (scalars of its dtype); a ValueError if either is not finite."""
    vmin, vmax = compute(image.min(), image.max())
    vmin, vmax = vmin[()], vmax[()]
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"the image holds non-finite values (range {vmin} to {vmax})")
    return vmin, vmax


def percentiles(image: da.Array, qs, compute: Compute = dask.compute) -> list[np.float64]:
    """``np.percentile(image, qs)`` on the whole image, exactly, over its chunks.

    Finds the order statistics NumPy interpolates with a few histogram passes
    (:func:`imageops.threshold.select_order_statistics`), then interpolates
    them as NumPy does.

    >>> x = da.from_array(np.arange(100, dtype=np.uint16)[::-1].reshape(10, 10), chunks=3)
    >>> [float(v) for v in percentiles(x, [2.5, 50])]
    [2.475, 49.5]
    """
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        raise TypeError(f"percentiles need a numeric image, got dtype {image.dtype}")
    vmin, vmax = image_range(image, compute)
    blocks = image.to_delayed().ravel()

    def stats_in(intervals):
        nbins = threshold_ops.ORDER_BINS
        shape = (len(intervals), nbins)
        parts = [dask.delayed(threshold_ops.block_interval_stats, nout=3)(b, intervals, nbins) for b in blocks]
        counts = da.stack([da.from_delayed(p[0], shape, dtype=np.int64) for p in parts]).sum(axis=0)
        mins = da.stack([da.from_delayed(p[1], shape, dtype=image.dtype) for p in parts]).min(axis=0)
        maxs = da.stack([da.from_delayed(p[2], shape, dtype=image.dtype) for p in parts]).max(axis=0)
        return compute(counts, mins, maxs)

    def gather_in(intervals):
        parts = compute(*[dask.delayed(threshold_ops.block_values_in)(b, intervals) for b in blocks])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(intervals))]

    return threshold_ops.exact_percentiles(image.size, qs, vmin, vmax, stats_in, gather_in)


def rescale_intensity(
    image: da.Array, params: RescaleIntensityParams, compute: Compute = dask.compute
) -> tuple[da.Array, tuple[float, float]]:
    """The whole image's percentiles now, the rescaled image lazily.

    Equal to ``skimage.exposure.rescale_intensity(image, in_range=tuple(np.percentile(image, [low, high])),
    out_range=out_range)`` on the whole image.
    """
    low, high = percentiles(image, [params.low_percentile, params.high_percentile], compute)
    in_range = (float(low), float(high))
    dtype = filter_ops.skimage_float(image.dtype)
    rescaled = image.map_blocks(
        filter_ops.rescale_intensity, in_range=in_range, out_range=tuple(params.out_range),
        dtype=dtype, meta=np.empty((0,) * image.ndim, dtype=dtype),
    )
    return rescaled, in_range


def threshold_by_passes(image: da.Array, method: str, compute: Compute = dask.compute):
    """The global ``mean`` or ``li`` threshold, equal to scikit-image's on the whole image.

    - ``mean``: exact integer sums for integer images (so exactly ``np.mean``),
      float64 sums combined with ``math.fsum`` for float images (NumPy's
      pairwise float32 sum may differ in the last bit).
    - ``li`` on integer images: scikit-image's integer branch on the global
      histogram (exact); on float images: one pass per Li iteration
      (:func:`imageops.threshold.li_from_sums`), and a distinct-values check
      only if a small step crosses values.
    """
    if method not in threshold_ops.PASS_METHODS:
        raise ValueError(f"method must be one of {threshold_ops.PASS_METHODS}, got {method!r}")
    blocks = image.to_delayed().ravel()
    if method == "mean":
        sums = compute(*[dask.delayed(threshold_ops.block_sum)(b) for b in blocks])
        integer = _is_integer(image.dtype)
        total = sum(sums) if integer else math.fsum(sums)
        if not integer and not np.isfinite(total):
            raise ValueError("the image holds non-finite values; no threshold")
        return threshold_ops.mean_from_sum(total, image.size, image.dtype)
    vmin, vmax = image_range(image, compute)
    if vmin == vmax:
        return threshold_ops.threshold_from_histogram(method, None, None, vmin, vmax)
    if _is_integer(image.dtype):
        counts, centers = _histogram(image, vmin, vmax, compute)
        return threshold_ops.threshold_from_histogram(method, counts, centers, vmin, vmax)

    def partition_sums(t):
        parts = np.stack(compute(*[dask.delayed(threshold_ops.block_partition_sums)(b, t, vmin) for b in blocks]))
        return math.fsum(parts[:, 0]), int(parts[:, 1].sum()), math.fsum(parts[:, 2]), int(parts[:, 3].sum())

    upper_gap = []  # the smallest gap inside any one block: an upper bound of the image's smallest gap

    def gap_at_least(gap) -> bool:
        if not upper_gap:
            upper_gap.append(min(compute(*[dask.delayed(threshold_ops.block_min_gap)(b, vmin) for b in blocks])))
        if gap > upper_gap[0]:
            return False
        level = [dask.delayed(threshold_ops.unique_with_gaps)(b, vmin, gap) for b in blocks]
        while len(level) > 1:
            level = [
                dask.delayed(threshold_ops.merge_unique_with_gaps)(level[i:i + MERGE_FAN_IN], gap)
                for i in range(0, len(level), MERGE_FAN_IN)
            ]
        (merged,) = compute(level[0])
        return merged is not None

    return threshold_ops.li_from_sums(partition_sums, vmin, vmax, gap_at_least=gap_at_least)


@lifts("rescale_intensity")
def _rescale_intensity_stage(image, params, compute) -> tuple[da.Array, dict[str, Any]]:
    rescaled, in_range = rescale_intensity(image, params, compute)
    return rescaled, {"in_range": list(in_range)}


def _histogram(image: da.Array, vmin, vmax, compute: Compute):
    """The whole image's histogram as scikit-image builds it (as in ``tasks.lift.threshold_value``)."""
    centers = threshold_ops.bin_centers(image.dtype, vmin, vmax)
    hists = [
        da.from_delayed(dask.delayed(threshold_ops.block_histogram)(b, vmin, vmax), shape=centers.shape, dtype=np.int64)
        for b in image.to_delayed().ravel()
    ]
    (counts,) = compute(da.stack(hists).sum(axis=0))
    return counts, centers


def _is_integer(dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.dtype(dtype) == bool
