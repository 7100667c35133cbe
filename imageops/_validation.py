"""Private checks shared by the image ops: cheap, at the top of public functions."""

from __future__ import annotations

import numpy as np


def check_array(image, name: str = "image", *, min_ndim: int = 1) -> np.ndarray:
    """Return ``image`` as an ndarray, or raise a TypeError/ValueError naming it."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(image).__name__}")
    image = np.asarray(image)
    if image.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axes, got shape {image.shape}")
    return image


def check_real(image: np.ndarray, name: str = "image") -> None:
    """Refuse complex, object and string arrays."""
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise TypeError(f"{name} must hold real numbers, got dtype {image.dtype}")


def per_axis(value, ndim: int, name: str) -> tuple[float, ...]:
    """Broadcast a scalar or a sequence to one value per axis, checking its length."""
    if np.ndim(value) == 0:
        return (float(value),) * ndim
    values = tuple(float(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"{name} has {len(values)} entries but the image has {ndim} axes: {value!r}")
    return values


def check_connectivity(connectivity: int | None, ndim: int) -> int:
    """skimage's rule: 1..ndim, None meaning ndim."""
    if connectivity is None:
        return ndim
    if not 1 <= int(connectivity) <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim} for a {ndim}D image, got {connectivity}")
    return int(connectivity)
