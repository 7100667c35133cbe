"""Lifting image ops onto dask arrays: block-wise, with a halo, and the global steps.

Local ops run per block, with the halo their parameters need
(``map_overlap(..., boundary="none")`` leaves the outer edges to the op's own
``mode``, so chunked equals whole-image). Global steps run in two phases:
a reduction computed now (``compute``), then a lazy block-wise map.

``compute`` is a callable with ``dask.compute``'s signature: the stage tasks
pass one that runs on the flow's cluster. Nothing here knows about Prefect.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np

from imageops import channels as channel_ops, get_op, label as label_ops, measure as measure_ops
from imageops import threshold as threshold_ops
from imageops.catalog import ChannelParams, LabelParams, MeasureParams, ThresholdParams
from imageops.registry import OpParams
from tasks.axes import ImageAxes, map_pieces

Compute = Callable[..., tuple]
#: A global op's lifting: ``(image, params, compute) -> (lazy result, what the global phase found)``.
GlobalLift = Callable[[da.Array, OpParams, Compute], tuple[da.Array, dict[str, Any]]]
#: The lifting of every op that is neither pointwise nor neighbourhood, by op name.
GLOBAL_LIFTS: dict[str, GlobalLift] = {}
#: The global ops whose lifting takes the image's known range (``value_range=(min, max)``) instead of a pass to find it.
TAKES_RANGE: set[str] = set()
#: A global op on an image held whole in memory: ``(image, params, value_range) -> (result, found)``.
WholeLift = Callable[[np.ndarray, OpParams, tuple | None], tuple[np.ndarray, dict[str, Any]]]
#: In-memory liftings: what the chunked lifting gives on one block, without building a graph.
WHOLE_LIFTS: dict[str, WholeLift] = {}


def lifts(op: str, *, takes_range: bool = False):
    """Register the decorated function as the lifting of global op ``op``.

    ``takes_range``: it accepts ``value_range=(min, max)``, the image's
    smallest and largest value when they are known already.
    """

    def register(function: GlobalLift) -> GlobalLift:
        if op in GLOBAL_LIFTS:
            raise ValueError(f"op {op!r} has two liftings")
        GLOBAL_LIFTS[op] = function
        if takes_range:
            TAKES_RANGE.add(op)
        return function

    return register


def lift(
    image: da.Array,
    params: OpParams,
    compute: Compute = dask.compute,
    *,
    axes: ImageAxes | None = None,
    value_range: tuple | None = None,
    region_source: Any = None,
) -> tuple[da.Array, dict[str, Any]]:
    """Any image-producing op on a dask array: the lazy result and what its global phase found.

    With ``axes`` naming a channel or time axis, every piece (one channel at
    one time point) is processed on its own, as if it were the whole image
    (:func:`tasks.axes.map_pieces`); what the global phases found comes back
    as a list over the pieces, e.g. one threshold per channel.

    >>> from imageops.catalog import ThresholdParams
    >>> x = da.from_array(np.array([[[0, 2], [4, 6]], [[0, 20], [40, 60]]]), chunks=1)
    >>> mask, found = lift(x, ThresholdParams(method="mean"), axes=ImageAxes(3, channel=0))
    >>> found
    {'threshold': [3.0, 30.0]}

    ``channel`` runs on the whole array, before any split into pieces: it
    takes the channel axis away (:func:`select_channel`, :func:`output_axes`).

    ``value_range``: the whole image's smallest and largest value, as scalars
    of its dtype, when they are known (a stored stage records them); a
    global op that needs them (:data:`TAKES_RANGE`) then skips its pass over
    the image to find them. Not used on pieces.

    ``region_source``: what ``image`` reads its blocks from, if any region of
    it can be read at about its size (:func:`lift_local`). Not used on pieces.
    """
    if params.op == "channel":
        return select_channel(image, params, axes), {}
    if axes is not None and axes.split:
        return map_pieces(image, axes, partial(lift, params=params, compute=compute))
    family = get_op(params.op).family
    if family in ("pointwise", "neighbourhood"):
        return lift_local(image, params, region_source=region_source), {}
    from tasks import lift_filters, lift_masks  # noqa: F401  (the op families register their liftings)

    if params.op not in GLOBAL_LIFTS:
        raise ValueError(f"op {params.op!r} has no lifting onto chunks")
    if value_range is not None and params.op in TAKES_RANGE:
        return GLOBAL_LIFTS[params.op](image, params, compute, value_range=value_range)
    return GLOBAL_LIFTS[params.op](image, params, compute)


def lift_whole(
    image: np.ndarray, params: OpParams, *, axes: ImageAxes | None = None, value_range: tuple | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Any image-producing op on an image held whole in memory: what :func:`lift` gives it as one block.

    Local ops and the global ops with an in-memory lifting
    (:data:`WHOLE_LIFTS`: threshold, label) run on the array itself, with no
    Dask graph: a batch image is small, and building a graph costs more than
    the op. Every other case (``channel``, images with channel or time axes,
    the other global ops) is :func:`lift` on one block with Dask's
    synchronous scheduler, so the result is the same either way.

    >>> from imageops.catalog import LabelParams
    >>> labels, found = lift_whole(np.array([[1, 0, 1], [0, 0, 1]], dtype=bool), LabelParams())
    >>> labels.tolist(), found
    ([[1, 0, 2], [0, 0, 2]], {'objects': 2})
    """
    image = np.asarray(image)
    family = get_op(params.op).family
    if params.op != "channel" and not (axes is not None and axes.split):
        if family in ("pointwise", "neighbourhood"):
            return _run_op(image, params), {}
        if params.op in WHOLE_LIFTS:
            return WHOLE_LIFTS[params.op](image, params, value_range)
    result, found = lift(_one_block(image), params, _synchronous, axes=axes, value_range=value_range)
    return np.asarray(result.compute(scheduler="synchronous")), found


def _one_block(image: np.ndarray) -> da.Array:
    """An array held in memory as a dask array of one block (for the liftings with no in-memory form)."""
    return da.from_array(image, chunks=image.shape, name=False)


def _synchronous(*collections):
    return dask.compute(*collections, scheduler="synchronous")


def lifts_whole(op: str):
    """Register the decorated function as the in-memory lifting of global op ``op`` (:func:`lift_whole`)."""

    def register(function: WholeLift) -> WholeLift:
        if op in WHOLE_LIFTS:
            raise ValueError(f"op {op!r} has two in-memory liftings")
        WHOLE_LIFTS[op] = function
        return function

    return register


def select_channel(image: da.Array, params: ChannelParams, axes: ImageAxes | None) -> da.Array:
    """Op ``channel``: one channel of ``image``, lazily, its channel axis (``axes.channel``) dropped.

    Every other axis keeps its chunks; the dtype is kept.

    >>> x = da.from_array(np.arange(24).reshape(3, 2, 4), chunks=(2, 1, 3))
    >>> one = select_channel(x, ChannelParams(index=1), ImageAxes(3, channel=1))
    >>> one.chunks, one.compute()[0].tolist()
    (((2, 1), (3, 1)), [4, 5, 6, 7])
    """
    if axes is None or axes.channel is None:
        raise ValueError(
            f"op 'channel' needs an image with a channel axis, but the image of shape {image.shape} has none "
            "(its OME metadata, or the spec's channel_axis, says which axis holds channels)"
        )
    if image.ndim != axes.ndim:
        raise ValueError(f"the image has {image.ndim} axes but {axes} describes {axes.ndim}")
    index = channel_ops.check_channel_index(params.index, image.shape[axes.channel])
    return image[tuple(index if a == axes.channel else slice(None) for a in range(image.ndim))]


def output_axes(params: OpParams, axes: ImageAxes) -> ImageAxes:
    """The channel and time axes of an op's result on an image with ``axes``: the same, but ``channel`` drops its axis.

    >>> from imageops.catalog import GaussianParams
    >>> output_axes(ChannelParams(index=0), ImageAxes(4, channel=0)), output_axes(GaussianParams(sigma=1), ImageAxes(3))
    (ImageAxes(ndim=3, channel=None, time=None), ImageAxes(ndim=3, channel=None, time=None))
    """
    return axes.without_channel() if params.op == "channel" else axes


def lift_local(image: da.Array, params: OpParams, *, region_source: Any = None) -> da.Array:
    """Run a pointwise or neighbourhood op on every block, with the op's halo.

    ``region_source``: an object ``image`` is read from, ``region_source[region]``
    being the image's values there, whose any region reads at about its size
    (:func:`tasks.io.region_source`). Each block then reads itself with its
    halo from it, in one task of its own (:func:`blocks_with_halos`), rather
    than taking the halo from its neighbours' blocks: the same values, but a
    block no longer waits in memory until its neighbours are computed, so a
    worker holds only the blocks it is computing.

    >>> from imageops.catalog import GaussianParams
    >>> x = da.ones((10, 10), chunks=(3, 7), dtype=np.uint16)
    >>> lift_local(x, GaussianParams(sigma=1.0)).dtype
    dtype('float32')
    """
    info = get_op(params.op)
    if info.block_fn is None or info.family not in ("pointwise", "neighbourhood"):
        raise ValueError(f"op {params.op!r} is not a local op; it has its own lifting")
    # A halo deeper than the image adds nothing beyond the whole axis (and dask refuses it).
    depth = tuple(min(d, n) for d, n in zip(info.halo(params, image.ndim), image.shape))
    dtype = info.out_dtype(params, image.dtype)
    meta = np.empty((0,) * image.ndim, dtype=dtype)
    if not any(depth):
        return image.map_blocks(_run_op, params=params, dtype=dtype, meta=meta)
    if region_source is not None:
        return blocks_with_halos(region_source, image.chunks, depth, params, meta)
    if info.inner_fn is not None and halo_fits_chunks(image.chunks, depth):
        # The op leaves each block's halo out itself (as it goes, for less work): nothing for dask to trim.
        return image.map_overlap(
            _run_op_inner, depth=dict(enumerate(depth)), boundary="none", trim=False, allow_rechunk=False,
            chunks=image.chunks, dtype=dtype, meta=meta, params=params, halo=depth,
        )
    return image.map_overlap(
        _run_op, depth=dict(enumerate(depth)), boundary="none", dtype=dtype, meta=meta, params=params
    )


def threshold_value(image: da.Array, params: ThresholdParams, compute: Compute = dask.compute, value_range=None):
    """The global threshold of ``image``, equal to scikit-image's on the whole image.

    ``value_range``: the image's ``(min, max)`` as scalars of its dtype, if
    known (no pass over the image to find them).
    """
    if params.method == "manual":
        return params.value
    if params.method in threshold_ops.PASS_METHODS:
        from tasks import lift_filters

        return lift_filters.threshold_by_passes(image, params.method, compute)
    vmin, vmax = value_range if value_range is not None else min_max(image, compute)

    def counts(centers):
        hists = [
            da.from_delayed(
                dask.delayed(threshold_ops.block_histogram)(block, vmin, vmax), shape=centers.shape, dtype=np.int64
            )
            for block in image.to_delayed().ravel()
        ]
        return compute(da.stack(hists).sum(axis=0))[0]

    return histogram_threshold(params.method, image.dtype, vmin, vmax, counts)


def histogram_threshold(method: str, dtype, vmin, vmax, counts: Callable[[np.ndarray], np.ndarray]):
    """A histogram method's threshold for an image of ``dtype`` and range ``[vmin, vmax]``.

    ``counts(centers)`` gives the image's histogram over those bin centres;
    it is not called when the range is empty or not finite.
    """
    if vmin == vmax or not (np.isfinite(vmin) and np.isfinite(vmax)):
        return threshold_ops.threshold_from_histogram(method, None, None, vmin, vmax)
    centers = threshold_ops.bin_centers(dtype, vmin, vmax)
    return threshold_ops.threshold_from_histogram(method, counts(centers), centers, vmin, vmax)


def min_max(image: da.Array, compute: Compute = dask.compute) -> tuple:
    """The smallest and largest value of ``image``, scalars of its dtype, in one pass (NaN if it holds NaN)."""
    vmin, vmax = compute(image.min(), image.max())
    return vmin[()], vmax[()]


def apply_threshold(image: da.Array, value) -> da.Array:
    """Lazy mask ``image > value``."""
    return image.map_blocks(threshold_ops.apply_threshold, value, dtype=bool, meta=np.empty((0,) * image.ndim, bool))


def threshold(
    image: da.Array, params: ThresholdParams, compute: Compute = dask.compute, value_range=None
) -> tuple[da.Array, Any]:
    """Global threshold: the value now, the mask lazily."""
    value = threshold_value(image, params, compute, value_range)
    return apply_threshold(image, value), value


def label(mask: da.Array, params: LabelParams, compute: Compute = dask.compute) -> tuple[da.Array, int]:
    """Connected components of ``mask``, merged across chunk borders, numbered 1..N.

    Every block is labelled on its own (phase 1: counts and border layers),
    the equivalences on the borders give one lookup table, and the lazy
    result labels each block again and maps it through the table.
    """
    connectivity = _checked_connectivity(params, mask.ndim)
    grid = mask.numblocks
    summaries = compute(*[dask.delayed(_label_summary)(b, connectivity) for b in mask.to_delayed().ravel()])
    counts = np.array([n for n, _ in summaries], dtype=np.int64)
    offsets = (np.cumsum(counts) - counts).reshape(grid)
    faces = np.empty(grid, dtype=object)
    for index, (_, block_faces) in zip(np.ndindex(*grid), summaries):
        faces[index] = block_faces
    pairs = _border_pairs(faces, offsets, connectivity)
    lut, n_objects = label_ops.merge_equivalences(pairs, int(counts.sum()))
    labels = mask.map_blocks(
        _relabel_block,
        connectivity=connectivity,
        offsets=dask.delayed(offsets),
        lut=dask.delayed(lut),
        dtype=label_ops.LABEL_DTYPE,
        meta=np.empty((0,) * mask.ndim, dtype=label_ops.LABEL_DTYPE),
    )
    return labels, n_objects


def measure(
    labels: da.Array,
    params: MeasureParams,
    intensity: da.Array | Sequence[da.Array] | None = None,
    compute: Compute = dask.compute,
) -> dict[str, np.ndarray]:
    """Per-object table as ``regionprops_table`` gives on the whole image.

    ``intensity`` is one image of the labels' shape, or that shape plus a last
    axis of channels, or a list of images of the labels' shape, measured as
    one image stacked on a last channel axis: columns ``intensity_mean-0``,
    ``intensity_mean-1``, ... in list order.
    """
    if intensity is not None:
        intensity = intensity_on_label_chunks(labels, intensity)
    wants_intensity = _wants_intensity(params, intensity)
    label_blocks = labels.to_delayed().ravel()
    intensity_blocks = intensity.to_delayed().ravel() if wants_intensity else [None] * len(label_blocks)
    origins = list(itertools.product(*[np.cumsum((0,) + c[:-1]) for c in labels.chunks]))
    parts = compute(
        *[
            dask.delayed(measure_ops.block_partials)(lb, ib, origin)
            for lb, ib, origin in zip(label_blocks, intensity_blocks, origins)
        ]
    )
    merged = measure_ops.merge_partials(parts)
    return measure_ops.regionprops_columns(merged, params.properties, labels.ndim)


def measure_whole(
    labels: np.ndarray, params: MeasureParams, intensity: da.Array | Sequence[da.Array] | None = None
) -> dict[str, np.ndarray]:
    """:func:`measure` on labels held whole in memory (a batch image): one block, no graph for the labels.

    ``intensity`` is as :func:`measure` takes it, lazily; it is read whole.
    """
    labels = np.asarray(labels)
    wants = _wants_intensity(params, intensity)
    if wants:
        lazy = intensity_on_label_chunks(_one_block(labels), intensity)
        intensity = np.asarray(lazy.compute(scheduler="synchronous"))
    part = measure_ops.block_partials(labels, intensity if wants else None, (0,) * labels.ndim)
    return measure_ops.regionprops_columns(measure_ops.merge_partials([part]), params.properties, labels.ndim)


def needs_intensity(params: MeasureParams) -> bool:
    """Whether any of the properties is measured on an intensity image."""
    return any(p in measure_ops.INTENSITY_PROPERTIES for p in params.properties)


def _wants_intensity(params: MeasureParams, intensity) -> bool:
    """Whether the properties need the intensity image (ValueError when they do and there is none)."""
    wants = needs_intensity(params)
    if wants and intensity is None:
        raise ValueError(f"properties {params.properties} need an intensity image")
    return wants


def intensity_on_label_chunks(labels: da.Array, intensity: da.Array | Sequence[da.Array]) -> da.Array:
    """The intensity image(s) chunked as the labels, a list stacked on a last (single-chunk) channel axis.

    >>> labels = da.zeros((4, 6), chunks=(3, 2), dtype=np.uint32)
    >>> intensity_on_label_chunks(labels, [da.ones((4, 6), chunks=4)] * 2).chunks
    ((3, 1), (2, 2, 2), (2,))
    """
    if isinstance(intensity, (list, tuple)):
        if not intensity:
            raise ValueError("intensity: an empty list of images")
        for index, image in enumerate(intensity):
            if image.shape != labels.shape:
                raise ValueError(f"intensity[{index}] has shape {image.shape} but labels have {labels.shape}")
        stacked = da.stack([image.rechunk(labels.chunks) for image in intensity], axis=-1)
        return stacked.rechunk(labels.chunks + ((len(intensity),),))
    if intensity.shape == labels.shape:
        return intensity.rechunk(labels.chunks)
    if intensity.ndim == labels.ndim + 1 and intensity.shape[:-1] == labels.shape:
        return intensity.rechunk(labels.chunks + ((intensity.shape[-1],),))
    raise ValueError(
        f"intensity image has shape {intensity.shape} but labels have {labels.shape} "
        "(give the labels' shape, or that shape plus a last axis of channels)"
    )


@lifts("threshold", takes_range=True)
def _threshold_stage(image, params, compute, value_range=None):
    mask, value = threshold(image, params, compute, value_range)
    return mask, _threshold_found(value)


@lifts_whole("threshold")
def _threshold_whole(image: np.ndarray, params: ThresholdParams, value_range=None):
    if params.method in threshold_ops.PASS_METHODS or params.method == "manual":
        value = threshold_value(_one_block(image), params, _synchronous, value_range)
    else:
        vmin, vmax = value_range if value_range is not None else (image.min(), image.max())
        counts = partial(_whole_histogram, image, vmin, vmax)
        value = histogram_threshold(params.method, image.dtype, vmin, vmax, counts)
    return threshold_ops.apply_threshold(image, value), _threshold_found(value)


def _whole_histogram(image: np.ndarray, vmin, vmax, centers: np.ndarray) -> np.ndarray:
    return threshold_ops.block_histogram(image, vmin, vmax)


def _threshold_found(value) -> dict[str, Any]:
    return {"threshold": value.item() if isinstance(value, np.generic) else value}


@lifts("label")
def _label_stage(mask, params, compute):
    labels, n_objects = label(mask, params, compute)
    return labels, {"objects": n_objects}


@lifts_whole("label")
def _label_whole(mask: np.ndarray, params: LabelParams, value_range=None):
    """One block labelled: no border to merge, so its labels 1..n are the final numbering."""
    labels, n_objects = label_ops.label_block(mask, _checked_connectivity(params, mask.ndim))
    return labels, {"objects": n_objects}


def _checked_connectivity(params: LabelParams, ndim: int) -> int | None:
    connectivity = params.connectivity
    if connectivity is not None and connectivity > ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim} for a {ndim}D image, got {connectivity}")
    return connectivity


def blocks_with_halos(source: Any, chunks: tuple[tuple[int, ...], ...], depth: tuple[int, ...], params: OpParams,
                      meta: np.ndarray) -> da.Array:
    """A local op's result in blocks of `chunks`, each one task reading its block and halo from ``source[region]``.

    The halo is cut at the image's edges, where the op's own ``mode`` extends
    the image, as ``map_overlap(boundary="none")`` does; chunks thinner than
    the halo need no rechunking.
    """
    shape = tuple(sum(sizes) for sizes in chunks)
    name = f"{params.op}-with-halos-{dask.base.tokenize(source, chunks, depth, params)}"
    starts = [np.cumsum((0, *sizes[:-1])) for sizes in chunks]
    graph = {}
    for index in np.ndindex(*(len(sizes) for sizes in chunks)):
        inner = [(int(s[i]), int(s[i]) + sizes[i]) for s, sizes, i in zip(starts, chunks, index)]
        padded = tuple(slice(max(a - d, 0), min(b + d, n)) for (a, b), d, n in zip(inner, depth, shape))
        margins = tuple((a - p.start, p.stop - b) for (a, b), p in zip(inner, padded))
        graph[(name, *index)] = (_run_op_on_region, source, padded, margins, params)
    return da.Array(graph, name, chunks, meta=meta)


def _run_op_on_region(source: Any, padded: tuple[slice, ...], margins: tuple[tuple[int, int], ...],
                      params: OpParams) -> np.ndarray:
    """One local op on one block read with its halo from ``source``; the block's own part of the result."""
    return _run_op_without_margins(source[padded], params, margins)


def _run_op_without_margins(block: np.ndarray, params: OpParams, margins: tuple[tuple[int, int], ...]) -> np.ndarray:
    """One local op on a block with its halo; the result without ``margins`` (the op leaves them out itself if it can)."""
    info = get_op(params.op)
    if info.inner_fn is not None:
        return info.inner_fn(block, params, margins)
    return info.block_fn(block, params)[tuple(slice(b, n - a) for (b, a), n in zip(margins, block.shape))]


def halo_fits_chunks(chunks: tuple[tuple[int, ...], ...], depth: tuple[int, ...]) -> bool:
    """Whether every block can take its whole halo from its neighbours: no chunk of a split axis is thinner than its depth.

    Where one is, dask rechunks before adding halos, and the blocks it hands
    over are not the image's.

    >>> halo_fits_chunks(((4, 4, 2), (10,)), (2, 3)), halo_fits_chunks(((4, 4, 1), (10,)), (2, 3))
    (True, False)
    """
    return all(len(sizes) == 1 or min(sizes) >= d for sizes, d in zip(chunks, depth))


def _run_op(block: np.ndarray, params: OpParams) -> np.ndarray:
    """One local op on one block (module-level, so graphs pickle by reference)."""
    return get_op(params.op).block_fn(block, params)


def _run_op_inner(block: np.ndarray, params: OpParams, halo: tuple[int, ...], block_info=None) -> np.ndarray:
    """One local op on one block with its halo, which the op leaves out itself (none at the image's edges)."""
    where, grid = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    margins = tuple((d if k > 0 else 0, d if k < n - 1 else 0) for d, k, n in zip(halo, where, grid))
    return _run_op_without_margins(block, params, margins)


def _label_summary(block: np.ndarray, connectivity: int | None):
    """Phase 1 for one block: its label count and its border layers."""
    labels, n = label_ops.label_block(block, connectivity)
    faces = {}
    for axis in range(block.ndim):
        faces[axis, 0] = np.take(labels, [0], axis=axis)
        faces[axis, 1] = np.take(labels, [labels.shape[axis] - 1], axis=axis)
    return n, faces


def _border_pairs(faces: np.ndarray, offsets: np.ndarray, connectivity: int | None) -> np.ndarray:
    """Equivalent label pairs on every chunk border of the grid."""
    grid = faces.shape
    found = [np.empty((0, 2), dtype=np.int64)]
    for axis, n_blocks in enumerate(grid):
        for k in range(n_blocks - 1):
            low = _assemble_layer(faces, offsets, axis, k, side=1)
            high = _assemble_layer(faces, offsets, axis, k + 1, side=0)
            found.append(label_ops.face_pairs(low, high, axis, connectivity))
    return np.concatenate(found)


def _assemble_layer(faces: np.ndarray, offsets: np.ndarray, axis: int, k: int, side: int) -> np.ndarray:
    """One border layer across the whole image, in the global provisional numbering."""
    index = [slice(None)] * faces.ndim
    index[axis] = slice(k, k + 1)
    index = tuple(index)
    pieces = np.empty(faces[index].shape, dtype=object)
    for pos in np.ndindex(*pieces.shape):
        src = tuple(p + (k if a == axis else 0) for a, p in enumerate(pos))
        pieces[pos] = label_ops.offset_labels(faces[src][axis, side], offsets[src])
    return np.block(pieces.tolist())


def _relabel_block(block: np.ndarray, connectivity, offsets: np.ndarray, lut: np.ndarray, block_info=None):
    """Phase 2 for one block: label it again and map it to the final numbering."""
    location = tuple(block_info[0]["chunk-location"])
    labels, n = label_ops.label_block(block, connectivity)
    return label_ops.relabel(labels, label_ops.block_table(lut, int(offsets[location]), n))
