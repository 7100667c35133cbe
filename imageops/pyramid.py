"""Lower-resolution levels of an image: window means for images, every n-th pixel for masks and labels.

Pure NumPy (the means also take Dask arrays): how a level's values are
computed, bit for bit the same whether the whole image or one block at a
time is downsampled, as long as a block holds whole windows.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np


def level_step(factors: Sequence[int], previous: Sequence[int] | None) -> dict[int, int]:
    """The windows that make a mean level from the one before it (``previous``: its factors; None for level 0).

    >>> level_step((1, 4, 4), (1, 2, 2))
    {1: 2, 2: 2}
    """
    previous = previous or (1,) * len(factors)
    return {axis: f // p for axis, (f, p) in enumerate(zip(factors, previous)) if f != p}


def window_mean(windows: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """``np.mean(windows, axis=axis)`` for the small windows of a pyramid level, bit for bit, several times faster.

    ``np.mean`` reduces each window with a strided loop; here whole slices
    are added in the order NumPy adds a window's values (the last window
    axis first, in pairs, then the rest one after the other in C order), so
    the rounding is the same; ``tests/tasks/test_io_ome.py`` checks it
    against ``np.mean``. Float input only (integer images are averaged in float64).
    """
    if windows.dtype.kind != "f":
        raise TypeError(f"pyramid means are taken on floats, got {windows.dtype}")
    if axis is None:  # dask's coarsen asks for its meta this way
        return np.mean(windows)
    wide = [a for a in axis if windows.shape[a] > 1]
    if not wide:
        return windows.sum(axis=axis)
    inner = wide[-1]
    pairs = functools.reduce(operator.add, (_take(windows, inner, i) for i in range(windows.shape[inner])))
    outer = [a - (a > inner) for a in axis if a != inner]  # the remaining window axes, in ``pairs``
    positions = list(np.ndindex(*(pairs.shape[a] for a in outer)))
    if len(positions) == 1:
        total = _at(pairs, outer, positions[0]).copy()
    else:  # the first two added into a new array: the same sum as a copy of the first plus the second, one pass less
        total = np.add(_at(pairs, outer, positions[0]), _at(pairs, outer, positions[1]))
    for position in positions[2:]:
        total += _at(pairs, outer, position)
    total /= math.prod(windows.shape[a] for a in axis)
    return total


def cast_mean(mean, dtype: np.dtype):
    """Window means (float64) in the image's dtype: rounded and clipped to range for integers (NumPy or Dask arrays)."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype, copy=False)  # the means of a float32 image are float32 already


def block_levels(block: np.ndarray, factors: Sequence[Sequence[int]], *, centred: bool) -> list[np.ndarray]:
    """Every level of ``block``, one per entry of ``factors`` (each relative to level 0).

    ``centred``: window means, each level from the one before it (integers
    averaged in float64 and rounded back), as the whole image's levels are
    made; otherwise every n-th pixel. A partial window at the block's end is
    dropped. The block is assumed to start at a multiple of every factor.

    >>> [level.tolist() for level in block_levels(np.arange(6.0), [(2,), (4,)], centred=True)]
    [[0.5, 2.5, 4.5], [1.5]]
    >>> [level.tolist() for level in block_levels(np.arange(6), [(2,), (4,)], centred=False)]
    [[0, 2, 4], [0]]
    """
    levels, previous = [], None
    current = block.astype(np.float64) if centred and block.dtype.kind != "f" else block
    for level_factors in factors:
        if centred:
            current = _coarsen(current, level_step(level_factors, previous))
            levels.append(cast_mean(current, block.dtype))
        else:
            levels.append(block[tuple(slice(0, n // f * f, f) for n, f in zip(block.shape, level_factors))])
        previous = level_factors
    return levels


def _coarsen(array: np.ndarray, step: dict[int, int]) -> np.ndarray:
    """Means over whole ``step`` windows (a partial window at the end dropped), as ``dask.array.coarsen`` takes them."""
    steps = [step.get(axis, 1) for axis in range(array.ndim)]
    array = array[tuple(slice(0, n // s * s) for n, s in zip(array.shape, steps))]
    windows = array.reshape([v for n, s in zip(array.shape, steps) for v in (n // s, s)])
    return window_mean(windows, axis=tuple(range(1, 2 * array.ndim, 2)))


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``array[..., index, ...]`` on ``axis`` (a view, the axis dropped)."""
    return array[(slice(None),) * axis + (index,)]


def _at(array: np.ndarray, axes: list[int], position: tuple[int, ...]) -> np.ndarray:
    """The view of ``array`` at ``position`` on ``axes`` (those axes dropped)."""
    index: list[Any] = [slice(None)] * array.ndim
    for a, p in zip(axes, position):
        index[a] = p
    return array[tuple(index)]
