"""Neighbourhood and pointwise filters on one NumPy block, with SciPy's / scikit-image's names and defaults.

Dtype rules, stated once:

- SciPy filters that smooth or differentiate (``gaussian``, ``uniform``,
  ``laplace``, ``gaussian_laplace``) compute in float32: integer and float32
  images give float32, float64 images keep float64 (:func:`working_float`).
- Filters defined by scikit-image (``sobel``, ``difference_of_gaussians``,
  ``rescale_intensity``) keep scikit-image's own rule, so they equal it bit
  for bit: float16 and float32 give float32, everything else float64; integer
  images are first scaled by ``img_as_float`` where scikit-image does so
  (:func:`skimage_float`).
- Order filters and pointwise ops (``median``, ``minimum``, ``maximum``,
  ``white_tophat``, ``clip``) keep the input dtype.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import exposure, morphology
from skimage import filters as sk_filters

from ._validation import check_array, check_real, per_axis

MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


def gaussian(image, sigma, *, truncate: float = 4.0, mode: str = "nearest") -> np.ndarray:
    """Gaussian smoothing, computed in float32.

    Equal to ``scipy.ndimage.gaussian_filter(image.astype(np.float32), ...)``:
    integer and float32 images give float32; float64 images keep float64.

    Parameters
    ----------
    image : ndarray
        Image of any dimension.
    sigma : float or sequence of float
        Standard deviation of the kernel, per axis or for all axes.
    truncate : float, optional
        Kernel radius in standard deviations.
    mode : {'nearest', 'reflect', 'constant', 'mirror', 'wrap'}, optional
        How the image is extended beyond its edges.

    Examples
    --------
    >>> out = gaussian(np.eye(5, dtype=np.uint8) * 100, 1.0)
    >>> out.dtype, out.shape
    (dtype('float32'), (5, 5))
    """
    return gaussian_inner(image, sigma, ((0, 0),) * np.ndim(image), truncate=truncate, mode=mode)


def gaussian_inner(image, sigma, margins, *, truncate: float = 4.0, mode: str = "nearest") -> np.ndarray:
    """:func:`gaussian` of `image` without its `margins`: ``gaussian(image, ...)[inner]`` bit for bit, on less work.

    The filter is separable, and SciPy smooths the axes one after the other
    (each line in float64, rounded to the output dtype after each axis).
    Once an axis is smoothed, its margins are no longer needed by the axes
    that follow: they are not computed at all, and the later axes smooth
    fewer lines. Each axis is smoothed by
    :func:`imageops.smoothing.filter_along`: SciPy's line filter compiled,
    computing each kept value from the same values in the same order, so the
    result is the same to the bit, 3-4x sooner. Each axis writes a new array
    (the compiled filter cannot work in place): at most two block-sized
    float arrays at a time, besides the input.

    Parameters
    ----------
    image : ndarray
        Image of any dimension, typically a block with its halo.
    sigma : float or sequence of float
        Standard deviation of the kernel, per axis or for all axes.
    margins : sequence of (int, int)
        Per axis, how many voxels to drop before and after the inner region.
    truncate, mode
        As for :func:`gaussian`.

    Examples
    --------
    >>> block = np.arange(36, dtype=np.uint16).reshape(6, 6)
    >>> inner = gaussian_inner(block, 1.0, [(2, 1), (0, 3)])
    >>> inner.shape, bool((inner == gaussian(block, 1.0)[2:5, 0:3]).all())
    ((3, 3), True)
    """
    image = check_array(image)
    check_real(image)
    sigmas = per_axis(sigma, image.ndim, "sigma")
    if any(s < 0 for s in sigmas):
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    _check_mode(mode)
    margins = _check_margins(margins, image.shape)
    dtype = working_float(image.dtype)
    # The first smoothed axis reads the image as it is (each line is read into float64, so an integer image
    # gives the same values as its float32 copy would) into a new float32 array, and so does every later axis.
    # No float32 copy of the input first: a pass over the block less, the same values.
    from . import smoothing  # Numba: imported by the first smoothing, not by every user of the ops

    work, owned = (image, False) if _read_as_is(image.dtype, dtype) else (image.astype(dtype), True)
    for axis, (s, (before, after)) in enumerate(zip(sigmas, margins)):
        if s > 1e-15:  # as scipy.ndimage.gaussian_filter: an axis of sigma 0 is left as it is
            work = smoothing.filter_along(work, axis, s, truncate=truncate, mode=mode, dtype=dtype, keep=(before, after))
            owned = True
        else:
            work = work[(slice(None),) * axis + (slice(before, work.shape[axis] - after),)]
    return work if owned else work.astype(dtype)


def median(image, size, *, mode: str = "nearest") -> np.ndarray:
    """Median over a box of ``size`` voxels per axis, keeping the input dtype.

    Equal to ``scipy.ndimage.median_filter(image, size=size, mode=mode)``.

    Examples
    --------
    >>> median(np.array([[0, 9, 0], [0, 0, 0], [0, 0, 0]], dtype=np.uint8), 3)[0, 1]
    np.uint8(0)
    """
    image = check_array(image)
    check_real(image)
    sizes = per_axis(size, image.ndim, "size")
    if any(s < 1 or s != int(s) for s in sizes):
        raise ValueError(f"size must be whole numbers >= 1, got {size!r}")
    _check_mode(mode)
    return ndi.median_filter(image, size=tuple(int(s) for s in sizes), mode=mode)


def _read_as_is(dtype: np.dtype, working: np.dtype) -> bool:
    """Whether SciPy can smooth ``dtype`` directly into ``working`` with the values of a ``working`` copy.

    SciPy reads every line into float64. That equals reading a float32 copy
    for dtypes that float32 holds exactly (bool, 8- and 16-bit integers,
    float32), not for wider integers, which float32 rounds; float16 SciPy
    refuses.
    """
    return dtype == working or dtype == bool or (dtype.kind in "iu" and dtype.itemsize <= 2)


def working_float(dtype) -> np.dtype:
    """The dtype SciPy-based smoothing filters compute in and return: float64 stays, all else float32.

    >>> working_float(np.uint16), working_float(np.float64)
    (dtype('float32'), dtype('float64'))
    """
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def skimage_float(dtype) -> np.dtype:
    """scikit-image's float dtype for an input dtype: float16/float32 give float32, all else float64.

    >>> skimage_float(np.uint8), skimage_float(np.float32)
    (dtype('float64'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype in (np.float16, np.float32) else np.dtype(np.float64)


def uniform(image, size, *, mode: str = "nearest") -> np.ndarray:
    """Mean over a box of ``size`` voxels per axis, computed in float32.

    Equal to ``scipy.ndimage.uniform_filter(image.astype(np.float32), size, mode=mode)``
    (float64 images are filtered as they are). SciPy keeps a running sum
    along each line, so values computed on a chunk can differ from the
    whole-image ones in the last bit (the sum is double, the result rounded).

    Parameters
    ----------
    image : ndarray
        Image of any dimension.
    size : int or sequence of int
        Width of the box, per axis or for all axes.
    mode : {'nearest', 'reflect', 'constant', 'mirror', 'wrap'}, optional
        How the image is extended beyond its edges.

    Examples
    --------
    >>> uniform(np.array([0, 3, 0], dtype=np.uint8), 3)
    array([1., 1., 1.], dtype=float32)
    """
    image = check_array(image)
    check_real(image)
    sizes = _check_sizes(size, image.ndim)
    _check_mode(mode)
    return ndi.uniform_filter(_as_working_float(image), size=sizes, mode=mode)


def minimum(image, size, *, mode: str = "nearest") -> np.ndarray:
    """Smallest value over a box of ``size`` voxels per axis, keeping the dtype.

    Equal to ``scipy.ndimage.minimum_filter(image, size=size, mode=mode)``.

    Examples
    --------
    >>> minimum(np.array([5, 1, 5, 5], dtype=np.uint8), 3)
    array([1, 1, 1, 5], dtype=uint8)
    """
    image = check_array(image)
    check_real(image)
    sizes = _check_sizes(size, image.ndim)
    _check_mode(mode)
    return ndi.minimum_filter(image, size=sizes, mode=mode)


def maximum(image, size, *, mode: str = "nearest") -> np.ndarray:
    """Largest value over a box of ``size`` voxels per axis, keeping the dtype.

    Equal to ``scipy.ndimage.maximum_filter(image, size=size, mode=mode)``.

    Examples
    --------
    >>> maximum(np.array([0, 7, 0, 0], dtype=np.uint8), 3)
    array([7, 7, 7, 0], dtype=uint8)
    """
    image = check_array(image)
    check_real(image)
    sizes = _check_sizes(size, image.ndim)
    _check_mode(mode)
    return ndi.maximum_filter(image, size=sizes, mode=mode)


def sobel(image, *, mode: str = "reflect") -> np.ndarray:
    """Sobel gradient magnitude, as ``skimage.filters.sobel(image, mode=mode)``.

    In n dimensions scikit-image filters along each axis with ``[1, 0, -1]``
    times ``[1, 2, 1] / 4`` on every other axis and returns
    ``sqrt(sum(g_i ** 2) / ndim)``. Integer images are scaled to [0, 1] first
    (``img_as_float``); the result is float64, or float32 for float32 input.
    The kernel reaches one voxel on every axis.

    Examples
    --------
    >>> sobel(np.array([[0, 0, 1, 1]] * 3, dtype=np.float32))[1]
    array([0.        , 0.70710677, 0.70710677, 0.        ], dtype=float32)
    """
    image = check_array(image)
    check_real(image)
    _check_mode(mode)
    return sk_filters.sobel(image, mode=mode)


def laplace(image, *, mode: str = "reflect") -> np.ndarray:
    """Discrete Laplacian (``[1, -2, 1]`` summed over the axes), computed in float32.

    Equal to ``scipy.ndimage.laplace(image.astype(np.float32), mode=mode)``;
    SciPy's default ``mode='reflect'``.

    Examples
    --------
    >>> laplace(np.array([0, 0, 4, 0, 0], dtype=np.uint8))
    array([ 0.,  4., -8.,  4.,  0.], dtype=float32)
    """
    image = check_array(image)
    check_real(image)
    _check_mode(mode)
    return ndi.laplace(_as_working_float(image), mode=mode)


def gaussian_laplace(image, sigma, *, truncate: float = 4.0, mode: str = "reflect") -> np.ndarray:
    """Laplacian of Gaussian, computed in float32.

    Equal to ``scipy.ndimage.gaussian_laplace(image.astype(np.float32), sigma,
    mode=mode, truncate=truncate)``; SciPy's default ``mode='reflect'``.

    Examples
    --------
    >>> out = gaussian_laplace(np.eye(7, dtype=np.uint8), 1.0)
    >>> out.dtype, bool(out[3, 3] < 0)
    (dtype('float32'), True)
    """
    image = check_array(image)
    check_real(image)
    sigmas = per_axis(sigma, image.ndim, "sigma")
    if any(not s > 0 for s in sigmas):
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    _check_truncate(truncate)
    _check_mode(mode)
    return ndi.gaussian_laplace(_as_working_float(image), sigmas, mode=mode, truncate=truncate)


def difference_of_gaussians(
    image, low_sigma, high_sigma=None, *, truncate: float = 4.0, mode: str = "nearest"
) -> np.ndarray:
    """Band-pass: Gaussian of ``low_sigma`` minus Gaussian of ``high_sigma``.

    Equal to ``skimage.filters.difference_of_gaussians(image, low_sigma,
    high_sigma, mode=mode, truncate=truncate)``: ``high_sigma`` defaults to
    ``1.6 * low_sigma``; integer images are scaled to [0, 1] first; float64
    out, or float32 for float32 input.

    Examples
    --------
    >>> out = difference_of_gaussians(np.eye(9, dtype=np.uint8) * 255, 1.0)
    >>> out.dtype, bool(out[4, 4] > 0)
    (dtype('float64'), True)
    """
    image = check_array(image)
    check_real(image)
    lows = per_axis(low_sigma, image.ndim, "low_sigma")
    if any(s < 0 for s in lows):
        raise ValueError(f"low_sigma must be >= 0, got {low_sigma!r}")
    highs = tuple(1.6 * s for s in lows) if high_sigma is None else per_axis(high_sigma, image.ndim, "high_sigma")
    if any(h < low for h, low in zip(highs, lows)):
        raise ValueError(f"high_sigma must be >= low_sigma on every axis, got {high_sigma!r} < {low_sigma!r}")
    _check_truncate(truncate)
    _check_mode(mode)
    high = None if high_sigma is None else highs
    return sk_filters.difference_of_gaussians(image, lows, high, mode=mode, truncate=truncate)


def tophat_footprint(radius: int, ndim: int) -> np.ndarray:
    """The footprint of :func:`white_tophat`: ``disk(radius)`` in 2D, ``ball(radius)`` in 3D.

    >>> tophat_footprint(1, 2)
    array([[0, 1, 0],
           [1, 1, 1],
           [0, 1, 0]], dtype=uint8)
    """
    if ndim == 2:
        return morphology.disk(radius)
    if ndim == 3:
        return morphology.ball(radius)
    raise ValueError(f"white_tophat needs a 2D or 3D image (a disk or a ball), got {ndim} axes")


def white_tophat(image, radius: int, *, mode: str = "reflect") -> np.ndarray:
    """Bright details smaller than a disk (2D) or ball (3D) of ``radius``: image minus its opening.

    Equal to ``skimage.morphology.white_tophat(image, tophat_footprint(radius,
    image.ndim), mode=mode)``; keeps the dtype.

    Examples
    --------
    >>> img = np.zeros((5, 5), np.uint8); img[2, 2] = 9
    >>> int(white_tophat(img, 1)[2, 2])
    9
    """
    image = check_array(image)
    check_real(image)
    if radius != int(radius) or int(radius) < 0:
        raise ValueError(f"radius must be a whole number >= 0, got {radius!r}")
    if mode not in MODES or mode == "wrap":
        raise ValueError(f"mode must be one of {MODES[:-1]}, got {mode!r}")
    return morphology.white_tophat(image, tophat_footprint(int(radius), image.ndim), mode=mode)


def clip(image, low, high) -> np.ndarray:
    """Values limited to ``[low, high]``, keeping the dtype.

    Float images: ``np.clip(image, low, high)``. Integer images: the bounds
    are first rounded inwards (``ceil(low)``, ``floor(high)``) and limited to
    the dtype's range, so the result stays in the dtype and within
    ``[low, high]``; equal to ``np.clip`` for whole bounds.

    Examples
    --------
    >>> clip(np.array([0, 100, 250], dtype=np.uint8), 10.5, 300)
    array([ 11, 100, 250], dtype=uint8)
    """
    image = check_array(image)
    check_real(image)
    if image.dtype == bool:
        raise TypeError("clip needs a numeric image, got dtype bool")
    for name, bound in (("low", low), ("high", high)):
        if not np.isfinite(bound):
            raise ValueError(f"{name} must be a finite number, got {bound!r}")
    if not low <= high:
        raise ValueError(f"low must be <= high, got low={low!r}, high={high!r}")
    if image.dtype.kind in "iu":
        info = np.iinfo(image.dtype)
        lo, hi = max(int(np.ceil(low)), info.min), min(int(np.floor(high)), info.max)
        if lo > hi:
            raise ValueError(f"no {image.dtype} value lies between low={low!r} and high={high!r}")
        return np.clip(image, image.dtype.type(lo), image.dtype.type(hi))
    return np.clip(image, image.dtype.type(low), image.dtype.type(high))


def rescale_intensity(image, in_range, out_range=(0.0, 1.0)) -> np.ndarray:
    """Map ``in_range`` linearly onto ``out_range``, clipping outside values.

    Equal to ``skimage.exposure.rescale_intensity(image, in_range=in_range,
    out_range=out_range)`` with both ranges given as numbers: float64 out, or
    float32 for float32 input. Pointwise: the global part (the percentiles
    that give ``in_range``) is computed elsewhere, over the whole image.

    Examples
    --------
    >>> rescale_intensity(np.array([0, 50, 100, 200], dtype=np.uint8), (50, 150))
    array([0. , 0. , 0.5, 1. ])
    """
    image = check_array(image)
    check_real(image)
    if image.dtype == bool:
        raise TypeError("rescale_intensity needs a numeric image, got dtype bool")
    in_range = _finite_pair(in_range, "in_range")
    out_range = _finite_pair(out_range, "out_range")
    if not in_range[0] <= in_range[1]:
        raise ValueError(f"in_range must be (low, high) with low <= high, got {in_range!r}")
    return exposure.rescale_intensity(image, in_range=in_range, out_range=out_range)


def _as_working_float(image: np.ndarray) -> np.ndarray:
    return image.astype(working_float(image.dtype), copy=False)


def _check_sizes(size, ndim: int) -> tuple[int, ...]:
    sizes = per_axis(size, ndim, "size")
    if any(s < 1 or s != int(s) for s in sizes):
        raise ValueError(f"size must be whole numbers >= 1, got {size!r}")
    return tuple(int(s) for s in sizes)


def _check_margins(margins, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    pairs = tuple(tuple(int(m) for m in pair) for pair in margins)
    if len(pairs) != len(shape) or any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"margins must give (before, after) for each of the image's {len(shape)} axes, got {margins!r}")
    for n, (before, after) in zip(shape, pairs):
        if before < 0 or after < 0 or before + after > n:
            raise ValueError(f"margins {margins!r} do not fit in an image of shape {shape}")
    return pairs


def _check_truncate(truncate: float) -> None:
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0, got {truncate!r}")


def _finite_pair(values, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {values!r}") from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{name} must hold finite numbers, got {values!r}")
    return low, high


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
