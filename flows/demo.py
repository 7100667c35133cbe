"""Synthetic data for the demo: a 3D volume of blob-like objects with noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

DEMO_SHAPE = (128, 512, 512)


def demo_volume(shape=DEMO_SHAPE, *, n_objects: int | None = None, seed: int = 0) -> np.ndarray:
    """A deterministic uint16 volume of bright ellipsoidal blobs on a noisy background.

    >>> demo_volume((16, 32, 32), n_objects=3).dtype
    dtype('uint16')
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    if n_objects is None:
        n_objects = max(1, int(np.prod(shape) / 40_000))
    volume = np.zeros(shape, dtype=np.float32)
    radii = rng.uniform(2.0, 7.0, size=(n_objects, len(shape)))
    centres = rng.uniform(0, 1, size=(n_objects, len(shape))) * np.array(shape)
    brightness = rng.uniform(0.5, 1.0, size=n_objects)
    for centre, radius, level in zip(centres, radii, brightness):
        lo = np.maximum(np.floor(centre - radius).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0
        region = volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
        np.maximum(region, inside * level, out=region)
    volume = ndi.gaussian_filter(volume, 1.0)
    volume += rng.normal(0.1, 0.05, size=shape).astype(np.float32)
    np.clip(volume, 0, 1, out=volume)
    return (volume * 60000).astype(np.uint16)


def write_demo_tiff(path: str | Path, shape=DEMO_SHAPE, *, seed: int = 0) -> Path:
    """Write the demo volume as a multi-page TIFF (one page per slice).

    A file that already holds exactly this volume is left untouched, so that
    running the demo again finds every stage cached (the input's fingerprint
    includes its modification time).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = demo_volume(shape, seed=seed)
    if not _holds(path, volume):
        tifffile.imwrite(path, volume, photometric="minisblack")
    return path


def _holds(path: Path, volume: np.ndarray) -> bool:
    """Whether the TIFF at `path` exists and holds exactly `volume`."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if tuple(series.shape) != volume.shape or series.dtype != volume.dtype:
                return False
            return bool(np.array_equal(series.asarray(), volume))
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False


def demo_spec(input_path: str, output: str) -> dict:
    """The demo pipeline: gaussian -> Otsu -> label -> measure."""
    return {
        "flow": "large_image",
        "input": str(input_path),
        "chunks": [64, 256, 256],
        "steps": [
            {"op": "gaussian", "sigma": 2.0},
            {"op": "threshold", "method": "otsu"},
            {"op": "label"},
            {"op": "measure", "properties": ["label", "area", "centroid", "intensity_mean"], "intensity": "input"},
        ],
        "output": str(output),
    }
