"""Channel and time axes: which axes of an image are not spatial, and running ops on each spatial piece.

An image may hold a channel axis and a time axis besides its 2 or 3 spatial
axes. Every op then runs on each *piece* (one channel at one time point: a
2D or 3D spatial image) on its own, exactly as scikit-image would on that
piece alone: no halo reaches across channels or time points, a global
threshold is the piece's own, labels are numbered 1..N in each piece.

:func:`map_pieces` splits a dask array along its channel and time axes into
pieces of one (so those axes are chunked by 1), keeps each piece's spatial
chunks, lifts the op onto every piece and stacks the results back in place.
:func:`resolve_axes` decides which axes they are, from a spec's
``channel_axis`` / ``time_axis`` and the input's own metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

#: Names of the spatial axes in OME-Zarr stores, the last one named ``x``.
SPATIAL_NAMES = ("z", "y", "x")
#: How many spatial axes an image may have once its channel and time axes are set aside.
SPATIAL_COUNTS = (2, 3)

#: What :func:`map_pieces` runs on each piece: ``piece -> (lazy result, what its global phase found)``.
PieceLift = Callable[[da.Array], tuple[da.Array, dict[str, Any]]]


@dataclass(frozen=True)
class ImageAxes:
    """Which axes of an ``ndim``-axis image hold channels and time points; every other axis is spatial.

    Positions count from 0 (see :func:`resolve_axes` for negative ones).

    >>> axes = ImageAxes(4, channel=0)
    >>> axes.split, axes.spatial, axes.names
    ((0,), (1, 2, 3), ('c', 'z', 'y', 'x'))
    >>> ImageAxes(4, channel=3, time=0).names
    ('t', 'y', 'x', 'c')
    """

    ndim: int
    channel: int | None = None
    time: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ndim, bool) or not isinstance(self.ndim, (int, np.integer)) or self.ndim < 1:
            raise ValueError(f"ndim must be a positive int, got {self.ndim!r}")
        object.__setattr__(self, "ndim", int(self.ndim))
        for field in ("channel", "time"):
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field} axis must be an int or None, got {value!r}")
            if not 0 <= value < self.ndim:
                raise ValueError(f"{field} axis {value} is out of range for an image of {self.ndim} axes")
            object.__setattr__(self, field, int(value))
        if self.channel is not None and self.channel == self.time:
            raise ValueError(f"the channel and time axes must differ, both are axis {self.channel}")

    @classmethod
    def from_types(cls, types: Sequence[str]) -> "ImageAxes":
        """From OME-NGFF axis types, one per axis: ``'channel'``, ``'time'``; anything else is spatial.

        >>> ImageAxes.from_types(["time", "channel", "space", "space"])
        ImageAxes(ndim=4, channel=1, time=0)
        """
        types = list(types)
        found: dict[str, int | None] = {"channel": None, "time": None}
        for position, kind in enumerate(types):
            if kind in found:
                if found[kind] is not None:
                    raise ValueError(f"axis types {types} name two {kind} axes ({found[kind]} and {position})")
                found[kind] = position
        return cls(len(types), **found)

    def without_channel(self) -> "ImageAxes":
        """The axes left once one channel is selected: the channel axis gone, the axes after it one place down.

        >>> ImageAxes(4, channel=1, time=0).without_channel()
        ImageAxes(ndim=3, channel=None, time=0)
        >>> ImageAxes(4, channel=0, time=3).without_channel().names
        ('y', 'x', 't')
        """
        if self.channel is None:
            raise ValueError(f"the image has no channel axis (axes {''.join(self.names)})")
        time = None if self.time is None else self.time - (self.time > self.channel)
        return ImageAxes(self.ndim - 1, time=time)

    @property
    def split(self) -> tuple[int, ...]:
        """The non-spatial axes (channel, time), in increasing order: the image is split along them."""
        return tuple(sorted(a for a in (self.channel, self.time) if a is not None))

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial axes, in order."""
        return tuple(a for a in range(self.ndim) if a not in self.split)

    @property
    def names(self) -> tuple[str, ...]:
        """OME-Zarr axis names: ``c`` and ``t`` in place, the spatial axes named ``z, y, x`` from the end."""
        n_spatial = len(self.spatial)
        if n_spatial > len(SPATIAL_NAMES):
            raise ValueError(f"an image with {n_spatial} spatial axes has no OME-Zarr axis names (at most 3)")
        spatial = iter(SPATIAL_NAMES[len(SPATIAL_NAMES) - n_spatial:])
        return tuple("c" if a == self.channel else "t" if a == self.time else next(spatial) for a in range(self.ndim))


def resolve_axes(
    shape: Sequence[int],
    *,
    channel_axis: int | None = None,
    time_axis: int | None = None,
    metadata: ImageAxes | None = None,
) -> ImageAxes:
    """The channel and time axes of an image of ``shape``: the fields given, else what its metadata says.

    ``channel_axis`` and ``time_axis`` count from 0, or from the end when
    negative. A field given wins over the metadata, also over a metadata
    axis of the other kind at the same position. What is left must be 2 or 3
    spatial axes.

    Raises
    ------
    ValueError
        A field out of range, both fields on one axis, or 1 or more than 3
        spatial axes left; the message names the field (or the metadata).

    Examples
    --------
    >>> resolve_axes((3, 20, 30), channel_axis=0).names
    ('c', 'y', 'x')
    >>> resolve_axes((20, 30, 3), channel_axis=-1)
    ImageAxes(ndim=3, channel=2, time=None)
    >>> resolve_axes((5, 2, 20, 30), time_axis=0, metadata=ImageAxes(4, channel=1)).names
    ('t', 'c', 'y', 'x')
    """
    shape = tuple(int(n) for n in shape)
    metadata = ImageAxes(len(shape)) if metadata is None else metadata
    if metadata.ndim != len(shape):
        raise ValueError(f"the input's axis metadata is for {metadata.ndim} axes, but its shape {shape} has {len(shape)}")
    channel = None if channel_axis is None else _position("channel_axis", channel_axis, shape)
    time = None if time_axis is None else _position("time_axis", time_axis, shape)
    if channel is not None and channel == time:
        raise ValueError(f"channel_axis and time_axis are the same axis ({channel}) of the image of shape {shape}")
    if channel_axis is None and metadata.channel != time:
        channel = metadata.channel
    if time_axis is None and metadata.time != channel:
        time = metadata.time
    axes = ImageAxes(len(shape), channel=channel, time=time)
    n_spatial = len(axes.spatial)
    if n_spatial not in SPATIAL_COUNTS:
        what = _described(axes, channel_axis is not None, time_axis is not None)
        raise ValueError(
            f"with {what}, the image of shape {shape} has {n_spatial} spatial axes but 2 or 3 are needed "
            "(channel_axis and time_axis say which axes are not spatial)"
        )
    return axes


def map_pieces(image: da.Array, axes: ImageAxes, function: PieceLift) -> tuple[da.Array, dict[str, Any]]:
    """Run ``function`` on every spatial piece of ``image`` and stack the results back in place.

    ``image`` is rechunked to 1 along its channel and time axes; each piece
    keeps its spatial chunks. What the pieces' global phases found comes back
    per key as a list over the split axis (nested lists, in axis order, when
    there are two), e.g. one threshold per channel.

    >>> x = da.from_array(np.arange(24).reshape(2, 3, 4), chunks=(2, 2, 3))
    >>> def lowest(piece):
    ...     low = int(piece.min().compute())
    ...     return piece - low, {"lowest": low}
    >>> result, found = map_pieces(x, ImageAxes(3, channel=0), lowest)
    >>> found, result.chunks
    ({'lowest': [0, 12]}, ((1, 1), (2, 1), (3, 1)))
    >>> bool((result.compute() == np.arange(24).reshape(2, 3, 4) % 12).all())
    True
    """
    if image.ndim != axes.ndim:
        raise ValueError(f"the image has {image.ndim} axes but {axes} describes {axes.ndim}")
    if not axes.split:
        return function(image)
    counts = tuple(image.shape[a] for a in axes.split)
    if 0 in counts:
        raise ValueError(f"the image of shape {image.shape} has an empty channel or time axis (axes {axes.split})")
    image = image.rechunk({a: 1 for a in axes.split})
    results, found = [], []
    for position in np.ndindex(*counts):
        result, piece_found = function(image[piece_index(axes, position)])
        results.append(result)
        found.append(piece_found)
    stacked = _nest(results, counts, da.stack)
    return da.moveaxis(stacked, tuple(range(len(counts))), axes.split), _gather(found, counts)


def piece_index(axes: ImageAxes, position: Sequence[int]) -> tuple:
    """The index of one piece: ``position`` on the split axes, everything on the spatial ones.

    >>> piece_index(ImageAxes(4, channel=3, time=0), (2, 1))
    (2, slice(None, None, None), slice(None, None, None), 1)
    """
    index: list[Any] = [slice(None)] * axes.ndim
    for axis, at in zip(axes.split, position):
        index[axis] = int(at)
    return tuple(index)


def _position(field: str, value: Any, shape: tuple[int, ...]) -> int:
    """``value`` as an axis position of an image of ``shape`` (negative: from the end)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{field} must be an int, got {value!r}")
    ndim = len(shape)
    if not -ndim <= value < ndim:
        raise ValueError(
            f"{field} {value} is out of range for an image of {ndim} axes (shape {shape}): "
            f"use 0 to {ndim - 1}, or -{ndim} to -1 from the end"
        )
    return int(value) % ndim


def _described(axes: ImageAxes, channel_given: bool, time_given: bool) -> str:
    """Where the non-spatial axes came from, naming the fields: for error messages."""
    parts = []
    for kind, position, given in (("channel", axes.channel, channel_given), ("time", axes.time, time_given)):
        if position is not None:
            parts.append(f"{kind}_axis {position}" if given else f"the input's {kind} axis {position} (from its metadata)")
    return " and ".join(parts) if parts else "no channel_axis and no time_axis"


def _nest(items: list[Any], counts: tuple[int, ...], join: Callable[[list[Any]], Any]) -> Any:
    """C-ordered ``items`` joined into nested groups of ``counts`` (``join`` makes each group)."""
    if len(counts) == 1:
        return join(list(items))
    step = len(items) // counts[0]
    return join([_nest(items[i * step:(i + 1) * step], counts[1:], join) for i in range(counts[0])])


def _gather(found: list[dict[str, Any]], counts: tuple[int, ...]) -> dict[str, Any]:
    """The pieces' findings, per key, as (nested) lists over the split axes."""
    keys = dict.fromkeys(key for piece in found for key in piece)
    return {key: _nest([piece.get(key) for piece in found], counts, list) for key in keys}
