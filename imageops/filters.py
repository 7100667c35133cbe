"""Neighbourhood filters on one NumPy block, with SciPy's names and defaults."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

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
    image = check_array(image)
    check_real(image)
    sigmas = per_axis(sigma, image.ndim, "sigma")
    if any(s < 0 for s in sigmas):
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    _check_mode(mode)
    work = image if image.dtype == np.float64 else image.astype(np.float32, copy=False)
    return ndi.gaussian_filter(work, sigmas, mode=mode, truncate=truncate)


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


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
