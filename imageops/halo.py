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
