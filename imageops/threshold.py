"""Global thresholds from a histogram that can be summed over blocks.

``skimage.filters.threshold_otsu`` builds its histogram with one bin per
integer value for integer images and 256 bins over ``[min, max]`` for float
images. The functions here build exactly that histogram one block at a time,
so the sum over blocks equals the whole-image histogram and the threshold
equals the whole-image threshold.
"""

from __future__ import annotations

import numpy as np
from skimage import filters

from ._validation import check_array, check_real

METHODS = ("otsu", "manual")
FLOAT_BINS = 256


def value_range(block) -> tuple:
    """Smallest and largest value of a block, in the block's dtype.

    >>> value_range(np.array([3, 1, 2], dtype=np.uint8))
    (np.uint8(1), np.uint8(3))
    """
    block = check_array(block, "block")
    return block.min(), block.max()


def merge_ranges(ranges) -> tuple:
    """Combine per-block ``(min, max)`` pairs into the image's range.

    >>> merge_ranges([(np.uint8(2), np.uint8(5)), (np.uint8(0), np.uint8(3))])
    (np.uint8(0), np.uint8(5))
    """
    ranges = list(ranges)
    if not ranges:
        raise ValueError("cannot merge the ranges of zero blocks")
    lows, highs = zip(*ranges)
    return min(lows), max(highs)


def block_histogram(block, vmin, vmax, *, nbins: int = FLOAT_BINS) -> np.ndarray:
    """Counts of one block over the bins that the image range defines.

    Integer images get one bin per value in ``[vmin, vmax]``; float images
    ``nbins`` equal bins over ``[vmin, vmax]``, computed by ``np.histogram``
    exactly as on the whole image.

    >>> block_histogram(np.array([1, 1, 3], dtype=np.uint8), 1, 4)
    array([2, 0, 1, 0])
    """
    block = check_array(block, "block")
    check_real(block, "block")
    if _is_integer(block.dtype):
        shifted = block.ravel().astype(np.int64) - int(vmin)
        return np.bincount(shifted, minlength=int(vmax) - int(vmin) + 1).astype(np.int64)
    counts, _ = np.histogram(block, bins=nbins, range=(vmin, vmax))
    return counts.astype(np.int64)


def bin_centers(dtype, vmin, vmax, *, nbins: int = FLOAT_BINS) -> np.ndarray:
    """The bin centres that ``skimage.exposure.histogram`` reports for this range.

    >>> bin_centers(np.uint8, 2, 4)
    array([2, 3, 4])
    """
    dtype = np.dtype(dtype)
    if _is_integer(dtype):
        return np.arange(int(vmin), int(vmax) + 1)
    _, edges = np.histogram(np.empty(0, dtype=dtype), bins=nbins, range=(vmin, vmax))
    return (edges[:-1] + edges[1:]) / 2.0


def threshold_from_histogram(method: str, counts, centers, vmin, vmax, *, value=None):
    """The threshold that ``skimage.filters.threshold_<method>`` gives the whole image.

    Parameters
    ----------
    method : {'otsu', 'manual'}
    counts, centers : ndarray
        The whole image's histogram (summed over blocks) and its bin centres.
    vmin, vmax : scalar
        The image's range (a constant image has no threshold but its value).
    value : float, optional
        The threshold for ``method='manual'``.

    Examples
    --------
    >>> img = np.array([0, 0, 1, 9, 10, 10], dtype=np.uint8)
    >>> c = block_histogram(img, 0, 10)
    >>> int(threshold_from_histogram("otsu", c, bin_centers(img.dtype, 0, 10), 0, 10))
    1
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "manual":
        if value is None:
            raise ValueError("method 'manual' needs a value")
        return value
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"the image holds non-finite values (range {vmin} to {vmax}); no threshold")
    if vmin == vmax:
        return vmin
    return filters.threshold_otsu(hist=(np.asarray(counts), np.asarray(centers)))


def apply_threshold(block, value) -> np.ndarray:
    """Mask of the voxels brighter than ``value`` (``image > value``, as scikit-image).

    >>> apply_threshold(np.array([1, 5, 9]), 5)
    array([False, False,  True])
    """
    return np.asarray(block) > value


def _is_integer(dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.dtype(dtype) == bool
