"""Channel selection: one channel of a multichannel image, the channel axis dropped.

The op ``channel`` is the first step of the usual microscopy pipeline on a
multichannel image: segment on one channel, then measure every channel
(``measure`` with ``intensity: input``).
"""

from __future__ import annotations

import numpy as np

from ._validation import check_array


def check_channel_index(index, count: int) -> int:
    """``index`` as a channel number of an image of ``count`` channels, or a ValueError saying the range.

    >>> check_channel_index(1, 3)
    1
    >>> check_channel_index(3, 2)
    Traceback (most recent call last):
    ...
    ValueError: index 3 is out of range for an image of 2 channels: use 0 to 1
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an int, got {index!r}")
    if not 0 <= index < count:
        raise ValueError(f"index {index} is out of range for an image of {count} channels: use 0 to {count - 1}")
    return int(index)


def select_channel(image, index: int, *, axis: int = 0) -> np.ndarray:
    """Channel ``index`` of ``image``, whose channel axis is ``axis``: the same dtype, one axis fewer.

    A view of the input, never a copy of the whole image.

    Parameters
    ----------
    image : ndarray
        Image with a channel axis.
    index : int
        The channel kept, from 0.
    axis : int, optional
        The channel axis (negative: from the end).

    Examples
    --------
    >>> image = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    >>> select_channel(image, 1).tolist()[0]
    [12, 13, 14, 15]
    >>> select_channel(image, 2, axis=-1).shape
    (2, 3)
    """
    image = check_array(image, min_ndim=2)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -image.ndim <= axis < image.ndim:
        raise ValueError(f"axis must be an int in [-{image.ndim}, {image.ndim - 1}], got {axis!r}")
    index = check_channel_index(index, image.shape[axis])
    return image[tuple(index if a == axis % image.ndim else slice(None) for a in range(image.ndim))]
