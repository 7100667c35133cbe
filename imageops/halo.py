"""How far an op looks beyond a chunk: its halo, as a pure function of its parameters.

A chunk processed with this many extra voxels on each side gives, inside the
chunk, exactly what the op gives on the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence


def gaussian_halo(sigma: float | Sequence[float], truncate: float, ndim: int) -> tuple[int, ...]:
    """Radius of SciPy's Gaussian kernel per axis: ``int(truncate * sigma + 0.5)``.

    Examples
    --------
    >>> gaussian_halo(2.0, 4.0, 3)
    (8, 8, 8)
    >>> gaussian_halo([0.0, 1.0], 4.0, 2)
    (0, 4)
    """
    sigmas = _per_axis(sigma, ndim)
    return tuple(int(truncate * s + 0.5) for s in sigmas)


def size_halo(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Reach of a centred window of ``size`` voxels: ``size // 2`` per axis.

    Examples
    --------
    >>> size_halo(3, 2)
    (1, 1)
    >>> size_halo([4, 1], 2)
    (2, 0)
    """
    return tuple(int(s) // 2 for s in _per_axis(size, ndim))


def no_halo(ndim: int) -> tuple[int, ...]:
    """Pointwise ops look nowhere else.

    >>> no_halo(3)
    (0, 0, 0)
    """
    return (0,) * ndim


def _per_axis(value, ndim: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (value,) * ndim
    values = tuple(value)
    if len(values) != ndim:
        raise ValueError(f"expected {ndim} values, one per axis, got {values!r}")
    return values


def radius_halo(radius: int, ndim: int) -> tuple[int, ...]:
    """A kernel that reaches ``radius`` voxels on every axis (3-wide stencils: 1).

    Examples
    --------
    >>> radius_halo(1, 3)
    (1, 1, 1)
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return (radius,) * ndim


def opening_halo(radius: int, ndim: int) -> tuple[int, ...]:
    """Reach of an opening (erosion, then dilation) with a ball of ``radius``: ``2 * radius``.

    The dilation reads eroded values up to ``radius`` away, and each of those
    read the image up to ``radius`` further.

    Examples
    --------
    >>> opening_halo(3, 2)
    (6, 6)
    """
    return radius_halo(2 * int(radius), ndim)


def dog_sigmas(low_sigma: float, high_sigma: float | None) -> tuple[float, float]:
    """The two sigmas of a difference of Gaussians, ``high_sigma`` defaulting to ``1.6 * low_sigma``.

    >>> dog_sigmas(2.0, None)
    (2.0, 3.2)
    """
    low = float(low_sigma)
    return low, (low * 1.6 if high_sigma is None else float(high_sigma))


def dog_halo(low_sigma: float, high_sigma: float | None, truncate: float, ndim: int) -> tuple[int, ...]:
    """Reach of a difference of Gaussians: the radius of its wider Gaussian.

    Examples
    --------
    >>> dog_halo(1.0, None, 4.0, 2)  # high_sigma = 1.6: int(4 * 1.6 + 0.5)
    (6, 6)
    >>> dog_halo(1.0, 3.0, 4.0, 3)
    (12, 12, 12)
    """
    low, high = dog_sigmas(low_sigma, high_sigma)
    return gaussian_halo(max(low, high), truncate, ndim)


def threshold_local_halo(block_size: int, method: str, ndim: int) -> tuple[int, ...]:
    """Reach of ``skimage.filters.threshold_local``'s local statistic.

    ``'gaussian'`` smooths with sigma ``(block_size - 1) / 6`` and
    ``truncate=4.0`` (scikit-image's choice, covering > 99% of the weight);
    ``'median'`` reads a box of ``block_size``.

    Examples
    --------
    >>> threshold_local_halo(15, "gaussian", 2)  # sigma 14 / 6: int(4 * 2.33 + 0.5)
    (9, 9)
    >>> threshold_local_halo(15, "median", 2)
    (7, 7)
    """
    if method == "gaussian":
        return gaussian_halo((int(block_size) - 1) / 6.0, 4.0, ndim)
    if method == "median":
        return size_halo(block_size, ndim)
    raise ValueError(f"method must be 'gaussian' or 'median', got {method!r}")
