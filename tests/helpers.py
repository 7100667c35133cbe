"""Shared test helpers: synthetic images and comparisons to whole-image references."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def blobs(shape, *, seed=0, sigma=2.0, fraction=0.3, dtype=np.uint16, noise=0.05) -> np.ndarray:
    """A deterministic image of smooth blobs on a noisy background."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    field = (field - field.min()) / (np.ptp(field) or 1.0)
    field = field + noise * rng.random(shape)
    field = field / field.max()
    if np.issubdtype(dtype, np.integer):
        return (field * (np.iinfo(dtype).max * 0.9)).astype(dtype)
    return field.astype(dtype)


def same_up_to_permutation(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images are equal after renaming labels one-to-one (0 stays 0)."""
    if a.shape != b.shape:
        return False
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def uneven_chunks(shape, seed=0):
    """A deliberately uneven chunking: each axis cut at random places, with a 1-voxel chunk."""
    rng = np.random.default_rng(seed)
    chunks = []
    for n in shape:
        cuts = sorted(set(rng.integers(1, n, size=min(3, n - 1)).tolist()) | ({1} if n > 2 else set()))
        edges = [0, *cuts, n]
        chunks.append(tuple(b - a for a, b in zip(edges[:-1], edges[1:]) if b > a))
    return tuple(chunks)


def axis_cuts(draw, n: int) -> tuple[int, ...]:
    """A chunking of an axis of length n, drawn by hypothesis (``draw`` of a composite); single-voxel chunks allowed."""
    from hypothesis import strategies as st

    sizes = []
    left = n
    while left:
        size = draw(st.integers(1, left))
        sizes.append(size)
        left -= size
    return tuple(sizes)
