"""Global thresholds and order statistics from reductions that can be summed over blocks.

``skimage.filters.threshold_<method>`` builds its histogram with one bin per
integer value for integer images and 256 bins over ``[min, max]`` for float
images. The functions here build exactly that histogram one block at a time,
so the sum over blocks equals the whole-image histogram and the threshold
equals the whole-image threshold (methods in :data:`HISTOGRAM_METHODS`).

``mean`` and, on float images, ``li`` need sums over the image itself
(:data:`PASS_METHODS`): :func:`mean_from_sum` and :func:`li_from_sums` take
those sums from a callable, so the caller decides how blocks are reduced.
Exact percentiles (:func:`select_order_statistics`) locate order statistics
with a few histogram passes, then gather the few values left.

``threshold_local`` is local, not global: :func:`threshold_local_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import filters

from ._validation import check_array, check_real

#: Thresholds computed from the whole image's histogram (the one scikit-image builds).
HISTOGRAM_METHODS = ("otsu", "yen", "isodata", "triangle", "minimum")
#: Thresholds found by passes over the image rather than from the histogram ``tasks.lift.threshold_value``
#: builds: ``mean`` (a sum: exact for integer images, any range) and ``li`` (one pass per iteration on float
#: images; integer images use the histogram, as scikit-image does).
PASS_METHODS = ("mean", "li")
METHODS = (*HISTOGRAM_METHODS, *PASS_METHODS, "manual")
#: The local methods of ``skimage.filters.threshold_local`` that give the same mask on chunks ('mean'
#: does not: SciPy's running-sum ``uniform_filter`` rounds differently from each line's start).
LOCAL_METHODS = ("gaussian", "median")
FLOAT_BINS = 256
#: Bins per refinement pass of :func:`select_order_statistics`.
ORDER_BINS = 4096
#: At most this many values are gathered in one place to pick an order statistic.
GATHER_LIMIT = 1 << 20


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
    counts = equal_bins_histogram(block, vmin, vmax, nbins)
    if counts is None:
        counts, _ = np.histogram(block, bins=nbins, range=(vmin, vmax))
    return counts.astype(np.int64)


#: Error bound, in units of the dtype's epsilon times the bin count, of a value's bin position as
#: ``np.histogram`` computes it (three roundings) and of its bin edges (``np.linspace``): generous.
_POSITION_ERROR = 16


def equal_bins_histogram(values: np.ndarray, first, last, nbins: int) -> np.ndarray | None:
    """``np.histogram(values, bins=nbins, range=(first, last))``'s counts, for float values within the range.

    NumPy finds each value's bin from its position ``(x - first) / (last -
    first) * nbins``, then compares every value with its bin's edges, since
    that position may be off by one within a rounding of an edge. Here the
    same position is computed with the same operations, and only the values
    whose position lies within a bound of an edge (:data:`_POSITION_ERROR`
    roundings) are compared with the edges, exactly as NumPy compares them:
    the same counts in about half the time (1.4 ms -> 0.8 ms on a 512x512
    float32 image). Where that arithmetic stays in the values' own float type
    (float32 or float64 values, a range of their type), the same is done by a
    compiled kernel in one pass (:mod:`imageops.histogram`): 0.6-0.8 ms
    against 1.2-1.8 ms for the NumPy passes on the batch benchmark's images.
    Returns None (use ``np.histogram``) for integer values,
    a range with a value outside it (or NaN), an empty range or one so
    narrow for its magnitude that the bound would not hold.

    >>> x = np.linspace(0, 1, 11, dtype=np.float32)
    >>> equal_bins_histogram(x, x.min(), x.max(), 4).tolist(), np.histogram(x, 4, (0, 1))[0].tolist()
    ([3, 2, 3, 3], [3, 2, 3, 3])
    """
    values = np.asarray(values)
    if values.dtype.kind != "f" or values.size == 0 or not all(isinstance(v, (float, np.floating)) for v in (first, last)):
        return None
    if not (np.isfinite(first) and np.isfinite(last) and first < last):
        return None
    try:
        edges = np.histogram_bin_edges(values[:0], bins=nbins, range=(first, last))
    except ValueError:  # more bins than values in the range: NumPy says so
        return None
    x = values.ravel().astype(edges.dtype, copy=False)
    span = np.subtract(last, first, dtype=np.result_type(last, first))
    resolution = np.finfo(np.result_type(x, first, span)).eps
    scale = max(abs(float(first)), abs(float(last))) / float(span)
    margin = _POSITION_ERROR * nbins * max(resolution, np.finfo(edges.dtype).eps) * (1.0 + scale)
    if margin > 0.25 or not (x.min() >= first and x.max() <= last):
        return None
    from imageops import histogram  # Numba's import, at the first float histogram

    if histogram.compiled_applies(x, first, span, edges):
        return histogram.equal_bin_counts(x, first, span, edges, margin)
    counts = np.zeros(nbins + 1, np.intp)
    for start in range(0, x.size, _SLICE):  # slices that stay in cache, as NumPy's own
        counts += _slice_counts(x[start:start + _SLICE], first, span, nbins, edges, margin)
    return counts[:nbins]


#: Values handled at once (NumPy's histogram works in slices of the same size).
_SLICE = 65536


def _slice_counts(x, first, span, nbins, edges, margin) -> np.ndarray:
    # As np.histogram: (x - first) / (last - first) * nbins, in the dtypes NumPy's promotion gives.
    position = (np.subtract(x, first, dtype=np.result_type(x, first)) / span) * nbins
    index = position.astype(np.intp)
    fraction = position - np.trunc(position)
    near = np.flatnonzero((fraction < margin) | (fraction > 1.0 - margin))
    counts = np.bincount(index, minlength=nbins + 1)
    if near.size:
        counts -= np.bincount(index[near], minlength=nbins + 1)
        counts += np.bincount(_edge_checked(x[near], index[near], edges, nbins), minlength=nbins + 1)
    return counts


def _edge_checked(x: np.ndarray, index: np.ndarray, edges: np.ndarray, nbins: int) -> np.ndarray:
    """Bins of values near an edge: NumPy's own correction of the computed bin, by comparison with the edges."""
    index = index.copy()
    index[index == nbins] -= 1  # the last value: the last bin includes its right edge
    index[x < edges[index]] -= 1
    index[(x >= edges[index + 1]) & (index != nbins - 1)] += 1
    return index


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

    Every method of :data:`HISTOGRAM_METHODS` on any image, and ``li`` and
    ``mean`` on integer images (whose histogram holds every value), give
    scikit-image's value exactly. ``li`` and ``mean`` on float images need
    sums over the image: :func:`li_from_sums`, :func:`mean_from_sum`.

    Constant images (``vmin == vmax``) give what scikit-image gives: the value
    (otsu, triangle, li, mean; yen and isodata on integer images), or a
    ValueError where scikit-image has no answer (minimum: "unable to find two
    maxima"; yen and isodata on float images: a value outside the image, or
    an IndexError).

    Parameters
    ----------
    method : {'otsu', 'yen', 'isodata', 'triangle', 'minimum', 'mean', 'li', 'manual'}
    counts, centers : ndarray
        The whole image's histogram (summed over blocks) and its bin centres.
    vmin, vmax : scalar
        The image's range, as scalars of the image's dtype.
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
    integer = _is_integer(np.asarray(vmin).dtype)
    if vmin == vmax:
        return _constant_threshold(method, vmin, integer)
    if method in PASS_METHODS and not integer:
        raise ValueError(
            f"method {method!r} on a float image needs sums over the image, not its histogram "
            f"(use mean_from_sum / li_from_sums)"
        )
    counts, centers = np.asarray(counts), np.asarray(centers)
    if method == "mean":
        total = int(np.dot(counts.astype(object), centers.astype(object)))
        return mean_from_sum(total, int(counts.sum()), np.asarray(vmin).dtype)
    if method == "li":
        return _li_from_histogram(counts, centers, vmin)
    if method == "triangle":
        return _triangle_from_histogram(counts, centers)
    if method == "minimum":
        return _minimum_from_histogram(counts, centers)
    function = getattr(filters, f"threshold_{method}")
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # skimage's own log(0) in yen: same value, no noise
            return function(hist=(counts, centers))
    except (RuntimeError, IndexError) as error:
        raise ValueError(f"threshold method {method!r} failed on this histogram: {error}") from None


def mean_from_sum(total, count: int, dtype):
    """``np.mean(image)`` from the sum and count of its values: what ``threshold_mean`` gives.

    Integer images: exact (``total`` an exact integer below 2**53, as in
    NumPy's float64 sum, which is then exact too). Float images: the
    correctly rounded mean, cast to the image's dtype; NumPy's pairwise
    float32 sum may differ from it in the last bit.

    >>> mean_from_sum(10, 4, np.uint8)
    np.float64(2.5)
    >>> mean_from_sum(1.0, 3, np.float32)
    np.float32(0.33333334)
    """
    dtype = np.dtype(dtype)
    if count < 1:
        raise ValueError("the mean of zero values is undefined")
    if _is_integer(dtype):
        return np.float64(int(total)) / count
    return dtype.type(float(total) / count)


PartitionSums = Callable[[object], tuple[float, int, float, int]]


def li_from_sums(partition_sums: PartitionSums, vmin, vmax, *, gap_at_least: Callable[[object], bool]):
    """``skimage.filters.threshold_li`` on a float image, from sums over its values.

    scikit-image shifts the image by its minimum (``image - vmin``, in the
    image's dtype), starts at the mean, and iterates
    ``t = (m_b - m_f) / (log m_b - log m_f)`` (means of the values at most
    ``t`` and above ``t``) until a step is at most half the smallest gap
    between distinct values, or the background mean is 0.

    Parameters
    ----------
    partition_sums : callable
        ``partition_sums(t) -> (sum_fore, n_fore, sum_back, n_back)`` over the
        shifted values ``image - vmin`` (``> t`` is foreground);
        ``t = -inf`` gives the total.
    vmin, vmax : scalar
        The image's range, as scalars of its float dtype.
    gap_at_least : callable
        ``gap_at_least(d) -> bool``: whether every two distinct shifted values
        are at least ``d`` apart. Asked only when a small step crosses values.

    Returns
    -------
    scalar of the image's dtype
        Equal to scikit-image's up to the rounding of the means (NumPy sums
        float32 pairwise; here sums are float64): the masks agree except for
        values within that rounding of the threshold.

    Examples
    --------
    >>> img = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 5.2], dtype=np.float32)
    >>> def sums(t):
    ...     v = (img - img.min())
    ...     return float(v[v > t].sum()), int((v > t).sum()), float(v[v <= t].sum()), int((v <= t).sum())
    >>> t = li_from_sums(sums, img.min(), img.max(), gap_at_least=lambda d: True)
    >>> t, bool(t == filters.threshold_li(img))
    (np.float32(1.2716739), True)
    """
    ftype = np.asarray(vmin).dtype.type
    vmin = ftype(vmin)
    if vmin == vmax:
        return vmin
    total, count, _, _ = partition_sums(ftype(-np.inf))
    t_next = ftype(float(total) / count)
    t_curr = None
    n_fore_curr = None
    while True:
        sums = partition_sums(t_next)
        if t_curr is not None:
            step = abs(t_next - t_curr)
            # scikit-image goes on while step > min_gap / 2. A step that moves no value between the classes
            # ends the iteration either way (the next t is the same), so the gaps are asked only otherwise.
            if step == 0 or sums[1] == n_fore_curr or gap_at_least(step * ftype(2)):
                break
        t_curr, n_fore_curr = t_next, sums[1]
        sum_fore, n_fore, sum_back, n_back = sums
        if n_fore == 0 or n_back == 0:
            raise ValueError(f"threshold method 'li': an empty class at t = {t_curr + vmin}; no threshold")
        mean_fore, mean_back = ftype(float(sum_fore) / n_fore), ftype(float(sum_back) / n_back)
        if mean_back == 0:
            break
        t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
    return t_next + vmin


def block_partition_sums(block, t, shift) -> np.ndarray:
    """``[sum_fore, n_fore, sum_back, n_back]`` of one block's values ``block - shift``, split at ``t``.

    The shift is made in the block's dtype (as scikit-image's ``image -= image_min``),
    sums in float64.

    >>> block_partition_sums(np.array([1.0, 2.0, 4.0], np.float32), np.float32(1.5), np.float32(1.0))
    array([3., 1., 1., 2.])
    """
    block = check_array(block, "block")
    values = (block - shift).ravel()
    fore = values > t
    n_fore = int(np.count_nonzero(fore))
    return np.array(
        [values[fore].sum(dtype=np.float64), n_fore, values[~fore].sum(dtype=np.float64), values.size - n_fore]
    )


def block_sum(block):
    """Exact sum of an integer block (a Python int), float64 sum of a float block.

    >>> block_sum(np.array([250, 250], np.uint8))
    500
    """
    block = check_array(block, "block")
    check_real(block, "block")
    if _is_integer(block.dtype):
        if block.dtype.itemsize < 8:
            return int(block.sum(dtype=np.int64))
        return sum(int(v) for v in block.ravel().tolist())
    return float(block.sum(dtype=np.float64))


def block_min_gap(block, shift) -> float:
    """Smallest gap between distinct values of ``block - shift`` (inf if fewer than two): an upper bound of the image's.

    >>> block_min_gap(np.array([1.0, 4.0, 6.0, 4.0]), 1.0)
    2.0
    """
    values = np.unique(check_array(block, "block") - shift)
    return float(np.diff(values).min()) if values.size > 1 else math.inf


def unique_with_gaps(block, shift, gap) -> np.ndarray | None:
    """Sorted distinct values of ``block - shift``, or None if two of them are closer than ``gap``.

    >>> unique_with_gaps(np.array([3.0, 1.0, 3.0]), 1.0, 1.5)
    array([0., 2.])
    >>> unique_with_gaps(np.array([3.0, 1.0, 2.0]), 1.0, 1.5) is None
    True
    """
    block = check_array(block, "block")
    values = np.unique(block - shift)
    return values if _gaps_at_least(values, gap) else None


def merge_unique_with_gaps(parts, gap) -> np.ndarray | None:
    """Union of sorted distinct-value arrays, or None if any input is None or two values are closer than ``gap``.

    >>> merge_unique_with_gaps([np.array([0.0, 4.0]), np.array([2.0])], 1.5)
    array([0., 2., 4.])
    >>> merge_unique_with_gaps([np.array([0.0, 4.0]), np.array([3.0])], 1.5) is None
    True
    """
    if any(p is None for p in parts):
        return None
    values = np.unique(np.concatenate(parts))
    return values if _gaps_at_least(values, gap) else None


def _gaps_at_least(values: np.ndarray, gap) -> bool:
    return values.size < 2 or bool(np.diff(values).min() >= gap)


def _constant_threshold(method: str, value, integer: bool):
    """What scikit-image gives a constant image, or a ValueError where it has no answer."""
    if method == "minimum":
        raise ValueError("threshold method 'minimum' needs a histogram with two peaks; the image is constant")
    if method in ("yen", "isodata") and not integer:
        raise ValueError(f"threshold method {method!r} is undefined on a constant float image")
    if method == "mean" and integer:
        return np.float64(value)
    return value


def _li_from_histogram(counts: np.ndarray, centers: np.ndarray, vmin):
    """``threshold_li`` of an integer image: scikit-image's integer branch, on the global histogram."""
    image_min = vmin
    bin_centers = centers.astype(np.int64) - int(vmin)
    hist = counts.astype("float32", copy=False)
    n = int(counts.sum())
    total = int(np.dot(counts.astype(object), bin_centers.astype(object)))
    tolerance = 0.5
    t_next = np.float64(total) / n
    t_curr = -2 * tolerance
    while abs(t_next - t_curr) > tolerance:
        t_curr = t_next
        foreground = bin_centers > t_curr
        background = ~foreground
        mean_fore = np.average(bin_centers[foreground], weights=hist[foreground])
        mean_back = np.average(bin_centers[background], weights=hist[background])
        if mean_back == 0:
            break
        t_next = (mean_back - mean_fore) / (np.log(mean_back) - np.log(mean_fore))
    return t_next + image_min


def _minimum_from_histogram(counts: np.ndarray, bin_centers: np.ndarray, max_num_iter: int = 10000):
    """``threshold_minimum``'s computation on a histogram, with its peak search vectorised.

    scikit-image smooths the histogram (``uniform_filter1d``, size 3, float32)
    until it has fewer than three local maxima, scanning for maxima in a
    Python loop: 75 s for a uint16 histogram that never gets down to two.
    The same scan as array operations gives the same maxima.
    """
    smooth_hist = counts.astype("float32", copy=False)
    maximum_idxs = np.empty(0, dtype=np.intp)
    counter = 0
    for counter in range(max_num_iter):
        smooth_hist = ndi.uniform_filter1d(smooth_hist, 3)
        maximum_idxs = _local_maxima(smooth_hist)
        if len(maximum_idxs) < 3:
            break
    if len(maximum_idxs) != 2:
        raise ValueError("threshold method 'minimum': unable to find two maxima in the histogram")
    if counter == max_num_iter - 1:
        raise ValueError("threshold method 'minimum': maximum iteration reached for histogram smoothing")
    threshold_idx = np.argmin(smooth_hist[maximum_idxs[0] : maximum_idxs[1] + 1])
    return bin_centers[maximum_idxs[0] + threshold_idx]


def _local_maxima(hist: np.ndarray) -> np.ndarray:
    """scikit-image's ``find_local_maxima_idx``: where a rise (or the start) turns into a fall; plateaus skipped.

    >>> _local_maxima(np.array([1, 3, 3, 2, 2, 5, 4], np.float32)).tolist()
    [2, 5]
    """
    steps = np.sign(np.diff(hist))
    moving = np.flatnonzero(steps)
    direction = steps[moving]
    before = np.concatenate([[1], direction[:-1]])
    return moving[(direction < 0) & (before > 0)]


def _triangle_from_histogram(hist: np.ndarray, bin_centers: np.ndarray):
    """``threshold_triangle``'s computation, line for line, on a given histogram (scikit-image takes only images)."""
    nbins = len(hist)
    arg_peak_height = np.argmax(hist)
    peak_height = hist[arg_peak_height]
    arg_low_level, arg_high_level = np.flatnonzero(hist)[[0, -1]]
    flip = arg_peak_height - arg_low_level < arg_high_level - arg_peak_height
    if flip:
        hist = hist[::-1]
        arg_low_level = nbins - arg_high_level - 1
        arg_peak_height = nbins - arg_peak_height - 1
    width = arg_peak_height - arg_low_level
    x1 = np.arange(width)
    y1 = hist[x1 + arg_low_level]
    norm = np.sqrt(peak_height**2 + width**2)
    peak_height = peak_height / norm
    width = width / norm
    length = peak_height * x1 - width * y1
    arg_level = np.argmax(length) + arg_low_level
    if flip:
        arg_level = nbins - arg_level - 1
    return bin_centers[arg_level]


def percentile_ranks(n: int, percentiles: Sequence[float]) -> list[tuple[int, int, float]]:
    """For each percentile, the ranks ``(k, k + 1)`` and weight that ``np.percentile`` interpolates.

    NumPy's default ('linear') method: virtual index ``(n - 1) * q / 100``;
    at or past the last value both ranks are ``n - 1``.

    >>> percentile_ranks(11, [0, 25, 100])
    [(0, 1, 0.0), (2, 3, 0.5), (10, 10, 0.0)]
    """
    if n < 1:
        raise ValueError("percentiles of zero values are undefined")
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    if q.ndim != 1 or not ((q >= 0) & (q <= 1)).all():
        raise ValueError(f"percentiles must be numbers in [0, 100], got {percentiles!r}")
    virtual = (n - 1) * q
    ranks = []
    for v in virtual:
        if v >= n - 1:
            ranks.append((n - 1, n - 1, 0.0))
        else:
            k = np.floor(v)
            ranks.append((int(k), int(k) + 1, float(v - k)))
    return ranks


def interpolate_percentile(low, high, gamma: float, dtype) -> np.float64:
    """NumPy's linear interpolation between two neighbouring order statistics, bit for bit.

    ``np.quantile`` of the two values at ``gamma`` runs NumPy's own ``_lerp``
    with the same operands (``high - low`` in the image's dtype, weights in
    float64) as ``np.percentile`` on the whole image.

    >>> interpolate_percentile(np.uint8(2), np.uint8(6), 0.25, np.uint8)
    np.float64(3.0)
    """
    pair = np.array([low, high], dtype=dtype)
    return np.quantile(pair, np.array([gamma], dtype=np.float64))[0]


Interval = tuple  # (lo, hi): the values v with lo <= v <= hi, scalars of the image's dtype


def interval_bins(values: np.ndarray, lo, hi, nbins: int) -> np.ndarray:
    """Bin of each value of ``[lo, hi]`` among ``nbins`` equal bins (monotone in the value).

    >>> interval_bins(np.array([0, 5, 9, 10]), 0, 10, 2)
    array([0, 1, 1, 1])
    """
    edges = np.linspace(float(lo), float(hi), nbins + 1)
    index = np.searchsorted(edges, values.astype(np.float64), side="right") - 1
    return np.clip(index, 0, nbins - 1)


def block_interval_stats(block, intervals: Sequence[Interval], nbins: int = ORDER_BINS):
    """Per interval, the count, smallest and largest value of one block's values in each bin.

    Returns ``(counts, mins, maxs)``, each of shape ``(len(intervals), nbins)``;
    empty bins hold the dtype's extreme values in ``mins``/``maxs``. Summing
    ``counts`` and taking the min/max of ``mins``/``maxs`` over blocks gives
    the whole image's.

    >>> c, lo, hi = block_interval_stats(np.array([1, 2, 9], np.uint8), [(np.uint8(1), np.uint8(9))], 2)
    >>> c.tolist(), lo.tolist(), hi.tolist()
    ([[2, 1]], [[1, 9]], [[2, 9]])
    """
    block = check_array(block, "block")
    flat = block.ravel()
    top, bottom = _extremes(flat.dtype)
    counts = np.zeros((len(intervals), nbins), dtype=np.int64)
    mins = np.full((len(intervals), nbins), top, dtype=flat.dtype)
    maxs = np.full((len(intervals), nbins), bottom, dtype=flat.dtype)
    for i, (lo, hi) in enumerate(intervals):
        lo, hi = flat.dtype.type(lo), flat.dtype.type(hi)
        values = flat[(flat >= lo) & (flat <= hi)]
        index = interval_bins(values, lo, hi, nbins)
        counts[i] = np.bincount(index, minlength=nbins)
        np.minimum.at(mins[i], index, values)
        np.maximum.at(maxs[i], index, values)
    return counts, mins, maxs


def block_values_in(block, intervals: Sequence[Interval]) -> list[np.ndarray]:
    """One block's values in each interval ``lo <= v <= hi``.

    >>> block_values_in(np.array([3, 1, 7], np.uint8), [(np.uint8(2), np.uint8(7))])
    [array([3, 7], dtype=uint8)]
    """
    flat = check_array(block, "block").ravel()
    return [flat[(flat >= flat.dtype.type(lo)) & (flat <= flat.dtype.type(hi))] for lo, hi in intervals]


IntervalStats = Callable[[list[Interval]], tuple[np.ndarray, np.ndarray, np.ndarray]]
GatherValues = Callable[[list[Interval]], list[np.ndarray]]


def select_order_statistics(
    ranks: Sequence[int], n: int, vmin, vmax, stats_in: IntervalStats, gather_in: GatherValues,
    *, gather_limit: int | None = None,
) -> dict[int, object]:
    """The values of rank ``r`` (0-based, ascending) of an image, exactly, for every ``r`` in ``ranks``.

    Each rank is known to lie among the values of an interval ``[lo, hi]``
    (at first the image's range). While an interval holds more than
    ``gather_limit`` values (default :data:`GATHER_LIMIT`), one pass bins them (``stats_in``: the summed
    :func:`block_interval_stats` of every block) and the interval narrows to
    the smallest and largest value of the rank's bin; once few enough are
    left (or all are equal), they are gathered (``gather_in``) and sorted.
    Every pass removes at least the interval's extreme values, and usually
    all but 1 / ``ORDER_BINS`` of them.

    Examples
    --------
    >>> img = np.array([5, 1, 4, 1, 9, 2], np.int16)
    >>> stats = lambda iv: block_interval_stats(img, iv)
    >>> gather = lambda iv: block_values_in(img, iv)
    >>> got = select_order_statistics([0, 3, 5], img.size, img.min(), img.max(), stats, gather, gather_limit=2)
    >>> {r: int(v) for r, v in got.items()} == {r: int(v) for r, v in enumerate(np.sort(img)) if r in (0, 3, 5)}
    True
    """
    dtype = np.asarray(vmin).dtype
    gather_limit = GATHER_LIMIT if gather_limit is None else gather_limit
    pending = {int(r): (dtype.type(vmin), dtype.type(vmax), 0, int(n)) for r in ranks}
    if any(not 0 <= r < n for r in pending):
        raise ValueError(f"ranks must be in [0, {n}), got {sorted(pending)}")
    found: dict[int, object] = {}
    stalled: set[int] = set()
    while pending:
        for r, (lo, hi, _, _) in list(pending.items()):
            if lo == hi:
                found[r] = lo
                del pending[r]
        gather = {r: s for r, s in pending.items() if s[3] <= gather_limit or r in stalled}
        if gather:
            intervals = sorted({(s[0], s[1]) for s in gather.values()})
            values = dict(zip(intervals, gather_in(intervals)))
            for r, (lo, hi, below, count) in gather.items():
                chosen = np.sort(values[lo, hi])
                if chosen.size != count:
                    raise RuntimeError(f"gathered {chosen.size} values in [{lo}, {hi}], expected {count}")
                found[r] = chosen[r - below]
                del pending[r]
        if not pending:
            break
        intervals = sorted({(s[0], s[1]) for s in pending.values()})
        counts, mins, maxs = stats_in(intervals)
        index = {iv: i for i, iv in enumerate(intervals)}
        for r, (lo, hi, below, count) in list(pending.items()):
            i = index[lo, hi]
            cumulative = np.cumsum(counts[i])
            if int(cumulative[-1]) != count:
                raise RuntimeError(f"binned {int(cumulative[-1])} values in [{lo}, {hi}], expected {count}")
            b = int(np.searchsorted(cumulative, r - below, side="right"))
            in_bin = int(counts[i, b])
            if in_bin == count:  # no progress (values the float64 bins cannot separate): gather next time
                stalled.add(r)
            pending[r] = (mins[i, b], maxs[i, b], below + int(cumulative[b]) - in_bin, in_bin)
    return found


def exact_percentiles(n: int, percentiles: Sequence[float], vmin, vmax, stats_in, gather_in, **kwargs) -> list:
    """``np.percentile(image, percentiles)`` (default 'linear' method), exactly, from block passes.

    >>> img = np.array([[7, 3], [1, 10]], np.uint16)
    >>> stats = lambda iv: block_interval_stats(img, iv)
    >>> gather = lambda iv: block_values_in(img, iv)
    >>> exact_percentiles(img.size, [2, 98], img.min(), img.max(), stats, gather) == list(np.percentile(img, [2, 98]))
    True
    """
    dtype = np.asarray(vmin).dtype
    ranks = percentile_ranks(n, percentiles)
    values = select_order_statistics(sorted({r for k, k1, _ in ranks for r in (k, k1)}), n, vmin, vmax,
                                     stats_in, gather_in, **kwargs)
    return [interpolate_percentile(values[k], values[k1], gamma, dtype) for k, k1, gamma in ranks]


def threshold_local_mask(image, block_size, *, method: str = "gaussian", offset: float = 0.0,
                         mode: str = "reflect") -> np.ndarray:
    """Mask of the voxels brighter than their neighbourhood: ``image > threshold_local(image, ...)``.

    Equal to ``image > skimage.filters.threshold_local(image, block_size,
    method=method, offset=offset, mode=mode)``; the 'gaussian' method smooths
    with sigma ``(block_size - 1) / 6``.

    Examples
    --------
    >>> img = np.zeros((7, 7), np.uint8); img[3, 3] = 50
    >>> threshold_local_mask(img, 3).sum(), bool(threshold_local_mask(img, 3)[3, 3])
    (np.int64(1), True)
    """
    from .filters import MODES  # filters imports nothing from here; kept local to keep the modules apart

    image = check_array(image)
    check_real(image)
    sizes = (block_size,) * image.ndim if np.ndim(block_size) == 0 else tuple(block_size)
    if len(sizes) != image.ndim:
        raise ValueError(f"block_size has {len(sizes)} entries but the image has {image.ndim} axes: {block_size!r}")
    if any(s != int(s) or int(s) < 1 or int(s) % 2 == 0 for s in sizes):
        raise ValueError(f"block_size must be odd whole numbers >= 1, got {block_size!r}")
    if method not in LOCAL_METHODS:
        raise ValueError(f"method must be one of {LOCAL_METHODS}, got {method!r}")
    if not np.isfinite(offset):
        raise ValueError(f"offset must be a finite number, got {offset!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    local = filters.threshold_local(image, tuple(int(s) for s in sizes), method=method, offset=offset, mode=mode)
    return image > local


def apply_threshold(block, value) -> np.ndarray:
    """Mask of the voxels brighter than ``value`` (``image > value``, as scikit-image).

    >>> apply_threshold(np.array([1, 5, 9]), 5)
    array([False, False,  True])
    """
    return np.asarray(block) > value


def _is_integer(dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.dtype(dtype) == bool


def _extremes(dtype: np.dtype) -> tuple:
    """The largest and smallest value of a dtype (infinities for floats)."""
    if np.issubdtype(dtype, np.floating):
        return dtype.type(np.inf), dtype.type(-np.inf)
    if dtype == bool:
        return True, False
    info = np.iinfo(dtype)
    return info.max, info.min
