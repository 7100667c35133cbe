"""Deterministic synthetic uint16 volumes of any shape, written to a TIFF slab by slab.

The look of ``flows.demo.demo_volume`` (bright ellipsoidal blobs, a gaussian
blur of sigma 1, noise), made so that generating it never needs the whole
volume in memory: the blobs are drawn from one seeded list, each slab of
planes is drawn with a margin of ``MARGIN`` planes on either side (the reach of
the blur), and the noise of plane ``z`` comes from its own generator seeded
``(seed, z)``.  The result does not depend on the slab size.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOXELS_PER_BLOB = 40_000  # as flows.demo.demo_volume
MARGIN = 4  # reach of the gaussian blur of sigma 1 (truncate 4)
SLAB = 32  # planes drawn at once


@dataclass(frozen=True)
class Blobs:
    centres: np.ndarray  # (n, ndim)
    radii: np.ndarray  # (n, ndim)
    levels: np.ndarray  # (n,)


def make_blobs(shape: tuple[int, ...], seed: int) -> Blobs:
    """The blobs of a volume: one per ``VOXELS_PER_BLOB`` voxels, radii 2-7, brightness 0.5-1."""
    rng = np.random.default_rng(seed)
    n = max(1, int(np.prod(shape) / VOXELS_PER_BLOB))
    radii = rng.uniform(2.0, 7.0, size=(n, len(shape)))
    centres = rng.uniform(0, 1, size=(n, len(shape))) * np.array(shape)
    levels = rng.uniform(0.5, 1.0, size=n)
    return Blobs(centres, radii, levels)


def draw_blobs(canvas: np.ndarray, z0: int, blobs: Blobs) -> None:
    """Draw the blobs that reach planes ``z0 .. z0 + len(canvas)`` into ``canvas`` (maximum where they overlap)."""
    shape = np.array(canvas.shape)
    for centre, radius, level in zip(blobs.centres, blobs.radii, blobs.levels):
        centre = centre - np.array([z0] + [0] * (len(shape) - 1))
        lo = np.maximum(np.floor(centre - radius).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[window]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0
        region = canvas[window]
        np.maximum(region, inside * np.float32(level), out=region)


def slab(shape: tuple[int, ...], z0: int, z1: int, blobs: Blobs, seed: int) -> np.ndarray:
    """Planes ``z0 .. z1`` of the volume, uint16."""
    from scipy import ndimage as ndi

    lo, hi = max(0, z0 - MARGIN), min(shape[0], z1 + MARGIN)
    canvas = np.zeros((hi - lo, *shape[1:]), dtype=np.float32)
    draw_blobs(canvas, lo, blobs)
    planes = ndi.gaussian_filter(canvas, 1.0)[z0 - lo:z1 - lo]
    for i, z in enumerate(range(z0, z1)):
        noise = np.random.default_rng((seed, z)).normal(0.1, 0.05, size=shape[1:]).astype(np.float32)
        planes[i] += noise
    np.clip(planes, 0, 1, out=planes)
    return (planes * 60000).astype(np.uint16)


def iter_planes(shape: tuple[int, ...], seed: int):
    """The volume's planes, one at a time, drawn ``SLAB`` planes at once."""
    blobs = make_blobs(shape, seed)
    for z0 in range(0, shape[0], SLAB):
        yield from slab(shape, z0, min(shape[0], z0 + SLAB), blobs, seed)


def volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The whole volume in memory (for small shapes and tests).

    >>> v = volume((10, 16, 16)); v.dtype, v.shape
    (dtype('uint16'), (10, 16, 16))
    >>> bool((v == np.stack(list(iter_planes((10, 16, 16), 0)))).all())
    True
    """
    return np.stack(list(iter_planes(tuple(shape), seed)))


def write_volume(path: Path, shape: tuple[int, ...], seed: int = 0) -> float:
    """Write the volume to a multi-page TIFF (one page per plane) without holding it; returns the seconds taken."""
    import tifffile

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, iter_planes(shape, seed), shape=shape, dtype=np.uint16, photometric="minisblack")
    return time.perf_counter() - started


def cached_volume(folder: Path, shape: tuple[int, ...], seed: int = 0) -> tuple[Path, float | None]:
    """The volume's TIFF in ``folder``, written unless a complete one is there.

    Returns the path and the seconds it took to write (None: it was there).
    """
    name = "volume_" + "x".join(map(str, shape)) + f"_seed{seed}"
    path, done = folder / f"{name}.tif", folder / f"{name}.done"
    if path.is_file() and done.is_file() and json.loads(done.read_text()).get("bytes") == path.stat().st_size:
        return path, None
    seconds = write_volume(path, shape, seed)
    done.write_text(json.dumps({"shape": list(shape), "seed": seed, "bytes": path.stat().st_size, "seconds": seconds}))
    return path, seconds
