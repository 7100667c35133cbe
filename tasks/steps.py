"""Run one pipeline step from a stored (or source) input to its own store, with Dask only.

These functions are what a stage does, with no Prefect in sight: the large-image
stage tasks call them with a ``compute`` that runs on the flow's cluster; the
batch stage calls them once per image with Dask's synchronous scheduler.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np

from imageops import get_op
from imageops.measure import physical_columns
from imageops.registry import OpParams
from tasks import io, lift, ome, storage
from tasks.axes import ImageAxes
from tasks.cluster import compute_each, compute_on_cluster
from tasks.ome import Calibration
from tasks.reference import ArrayRef, TableRef, fingerprint

@dataclass(frozen=True)
class Fused:
    """A step whose store is not kept: computed inside the chunk tasks of the step that reads it.

    ``upstream`` is what the fused step itself reads; ``fingerprint`` is the
    fingerprint its store would have had (:func:`fuse`), so the steps after
    it get the fingerprints, cache keys and stores of a run that keeps all.
    """

    params: OpParams
    upstream: "Upstream"
    name: str
    fingerprint: str


# What a step reads: a stored stage, the pipeline's source image, or a step computed on the fly.
Upstream = ArrayRef | io.InputSpec | Fused

#: Op families whose lifting passes over its input more than once (a global phase, then the result).
_MULTI_PASS = ("global", "label")


def fuse(params: OpParams, upstream: Upstream, name: str) -> Fused:
    """Step ``params`` on ``upstream``, not stored: the next step computes it in its own chunk tasks.

    Any image-producing op can be fused; a global one (threshold, label)
    runs its global phase when the reading step builds its graph.
    """
    if get_op(params.op).gives not in io.STORE_KINDS:
        raise ValueError(f"step {name} ({params.op}) gives a {get_op(params.op).gives}, not an image: it cannot be fused")
    return Fused(params, upstream, name, step_fingerprint(params, upstream))


@dataclass(frozen=True)
class Planned:
    """A store before the step that writes it has run: its fingerprint, for the fingerprints of the steps after it."""

    fingerprint: str


@dataclass(frozen=True)
class Link:
    """One kept step of a batch stage that runs several in a row (:func:`tasks.stages.batch_image_stage`).

    ``fused``: the steps not kept between the previous kept step and this
    one, as (params, name), fused on what the previous one wrote.
    """

    params: OpParams
    name: str
    fused: tuple[tuple[OpParams, str], ...] = ()

    def on(self, written: Upstream) -> Upstream:
        """What this step reads, given what the previous kept step wrote."""
        for params, name in self.fused:
            written = fuse(params, written, name)
        return written


def stored_root(upstream: Upstream) -> ArrayRef | io.InputSpec:
    """The stored stage or source image beneath any fused steps."""
    while isinstance(upstream, Fused):
        upstream = upstream.upstream
    return upstream


@dataclass(frozen=True)
class StepResult:
    """What one step wrote, how long it took, and what it found (threshold, objects)."""

    ref: ArrayRef | TableRef
    seconds: float
    status: str = "computed"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Its output's fingerprint: a later step may name the result itself as what it reads."""
        return self.ref.fingerprint

    def to_dict(self) -> dict[str, Any]:
        kind = "table" if isinstance(self.ref, TableRef) else "array"
        return {"kind": kind, "ref": self.ref.to_dict(), "seconds": self.seconds, "status": self.status, "info": self.info}


@dataclass(frozen=True)
class ImageFailure:
    """One image of a batch that could not be read or processed, and why."""

    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"status": "failed", "error": self.error}


def isolated(function, *args, **kwargs):
    """Run one image's work; a failure becomes an :class:`ImageFailure` instead of stopping the batch."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # every failure of one image is recorded, the batch goes on
        return ImageFailure(describe_error(error))


def describe_error(error: BaseException) -> str:
    """One line: the error's type (unless it is a plain ValueError) and its message."""
    message = " ".join(str(error).split()) or type(error).__name__
    plain = type(error).__name__ in ("ValueError", "InputError", "InputNotFoundError")
    return message if plain else f"{type(error).__name__}: {message}"


def cluster_compute(*collections):
    """``dask.compute``'s signature on the cluster the caller runs on."""
    result = compute_on_cluster(*collections)
    return result if len(collections) > 1 else (result,)


local_compute = partial(dask.compute, scheduler="synchronous")


def upstream_fingerprint(upstream: Upstream | StepResult) -> str:
    """The fingerprint of what a step reads (a source image computes its own from its files)."""
    found = upstream.fingerprint
    return found() if callable(found) else found


def written(upstream: Upstream | StepResult) -> Upstream:
    """What a step reads, given either it or the result of the stage that wrote it.

    A stage submitted before the one it reads has finished is handed that
    stage's result once it has one (a Prefect future's value), not its store.
    """
    return upstream.ref if isinstance(upstream, StepResult) else upstream


def step_fingerprint(
    params: OpParams, upstream: Upstream, intensity: Upstream | list[Upstream] | None = None
) -> str:
    """Fingerprint of a step's output: its input's, the op's name and version, its parameters."""
    info = get_op(params.op)
    parts = [upstream_fingerprint(upstream), info.name, info.version, params.model_dump(mode="json", exclude={"name"})]
    if isinstance(intensity, (list, tuple)):
        parts.append([upstream_fingerprint(image) for image in intensity])
    elif intensity is not None:
        parts.append(upstream_fingerprint(intensity))
    return fingerprint(*parts)


def open_lazy(upstream: Upstream, chunks=None) -> da.Array:
    """The lazy dask array of a stored stage or of the source image."""
    if isinstance(upstream, ArrayRef):
        array = io.read_ref(upstream)
        return array if chunks is None else array.rechunk(chunks)
    return io.imread(upstream, chunks=chunks)


def open_upstream(upstream: Upstream, chunks=None, compute=cluster_compute) -> tuple[da.Array, dict[str, Any]]:
    """The lazy array a step reads, with any fused steps beneath it lifted on, and what their global phases found.

    ``chunks`` apply to the stored stage or source image at the bottom;
    what was found is keyed by the fused steps' names. An image in one
    block (a batch image, read whole) has each fused step computed once and
    held in memory, not again in each pass the next step makes over it.
    """
    if not isinstance(upstream, Fused):
        return open_lazy(upstream, chunks), {}
    image, found = open_upstream(upstream.upstream, chunks, compute)
    known = recorded_range(upstream.upstream, image.dtype)
    result, own = lift.lift(image, upstream.params, compute, axes=upstream_axes(upstream.upstream), value_range=known,
                            region_source=io.region_source(image))
    return hold_one_block(result, compute), {**found, upstream.name: own}


def hold_one_block(array: da.Array, compute=cluster_compute) -> da.Array:
    """An array in one block computed now and held in memory, so that each pass over it reads nothing again.

    Arrays in several blocks are returned as they are (held, they would not
    be bounded by the block size).
    """
    if any(n != 1 for n in array.numblocks):
        return array
    return da.from_array(compute(array)[0], chunks=array.chunks, name=False)


def upstream_axes(upstream: Upstream) -> ImageAxes:
    """The channel and time axes of a step's input: as its store's OME metadata, or the source image, says."""
    if isinstance(upstream, Fused):
        return lift.output_axes(upstream.params, upstream_axes(upstream.upstream))
    return io.store_axes(upstream.store) if isinstance(upstream, ArrayRef) else upstream.axes


def upstream_calibration(upstream: Upstream) -> Calibration:
    """The physical pixel sizes and units of a step's input: its store's OME metadata, or the source image's."""
    if isinstance(upstream, Fused):
        below = upstream_calibration(upstream.upstream)
        return _kept_calibration(below, upstream_axes(upstream.upstream), upstream_axes(upstream))
    return io.store_calibration(upstream.store) if isinstance(upstream, ArrayRef) else upstream.calibration


def run_image_step(
    params: OpParams,
    upstream: Upstream,
    store: str,
    *,
    name: str,
    chunks=None,
    compute=cluster_compute,
    compute_blocks=None,
    on_progress=None,
    pyramid: bool = True,
) -> StepResult:
    """Apply one image-, mask- or label-producing op and write its OME-Zarr store.

    A store that is complete for this fingerprint is reused as it is
    (``cached``); one made for this fingerprint but interrupted is finished,
    computing only its missing blocks (``resumed``); otherwise a new store is
    created empty, filled block by block, and marked complete by its last write.
    The store carries its input's physical pixel sizes; a large one gets its
    lower-resolution levels and a label store its ``image-label`` colours
    before it is marked complete. A new store's blocks write their own part
    of every level as they are written (:func:`tasks.io.block_levels`); a
    resumed one's levels, or those of blocks the level factors do not divide,
    are made from the store afterwards (:func:`tasks.io.write_pyramid`).

    ``compute_blocks(collections, on_done)`` computes the block writes (default:
    on the caller's cluster, reporting progress to ``on_progress(done, total)``).
    ``pyramid=False``: no lower-resolution levels (a batch image, small enough
    to be processed whole, is read whole by a viewer too).
    """
    started = time.perf_counter()
    info = get_op(params.op)
    fp = step_fingerprint(params, upstream)
    if io.is_complete(store, fp):
        return _cached_result(store, started)
    image, fused = open_upstream(upstream, chunks, compute)
    if info.family in _MULTI_PASS and not isinstance(upstream, Fused):
        image = hold_one_block(image, compute)  # a batch image: its store read once, not once per pass
    axes = upstream_axes(upstream)
    result, found = lift.lift(image, params, compute, axes=axes, value_range=recorded_range(upstream, image.dtype),
                              region_source=io.region_source(image))
    if fused:
        found = {**found, "fused": fused}
    out_axes = lift.output_axes(params, axes)  # a ``channel`` step drops the channel axis
    ref = io.resumable(store, fp)
    status = "computed" if ref is None else "resumed"
    levels = None  # lower-resolution levels written block by block with the blocks: a new store's
    if ref is None:
        ref = io.create_store(
            store, shape=result.shape, dtype=result.dtype, chunks=_regular_chunks(result),
            kind=info.gives, fingerprint=fp, name=name, axes=out_axes.names,
            calibration=_kept_calibration(upstream_calibration(upstream), axes, out_axes),
        )
        levels = io.block_levels(ref) if pyramid else None
        if levels is not None:
            io.create_block_levels(ref, levels)
    done = io.done_blocks(ref)
    writes = io.write_blocks(result, ref, skip=done, levels=levels)
    (compute_blocks or compute_each)(list(writes.values()), on_progress)
    stats = io.merge_block_stats(io.done_block_stats(ref).values())
    if stats["count"] != int(np.prod(ref.shape)):
        raise RuntimeError(f"{store}: {stats['count']} of {int(np.prod(ref.shape))} voxels were written")
    blocks = {"total": int(np.prod(io.block_grid(ref))), "written": len(writes), "reused": len(done)}
    found = {**found, "stats": {k: v for k, v in stats.items() if k != "count"}, "blocks": blocks}
    if levels is not None:
        shapes = io.register_levels(ref, levels.factors)
    else:  # a resumed store (its done blocks may have no part of the levels), or blocks the factors do not divide
        shapes = io.write_pyramid(ref, compute) if pyramid else []
    if shapes:
        found["levels"] = [list(ref.shape), *map(list, shapes)]
    _seal(ref, upstream, stats, found)
    return StepResult(ref, time.perf_counter() - started, status=status, info=found)


def run_whole_image_step(params: OpParams, upstream: Upstream, store: str, *, name: str) -> StepResult:
    """:func:`run_image_step` for an image small enough to be held whole (a batch image): no Dask graph.

    The stored input is read once; it, any fused steps beneath, and the op
    run in memory (:func:`tasks.lift.lift_whole`), and the result is written
    as the store's one block. The store, its metadata and what is recorded
    are those :func:`run_image_step` gives the image in one block, without
    lower-resolution levels. A store left unfinished is made again.
    """
    return whole_image_step(params, upstream, store, name=name)[0]


@dataclass(frozen=True)
class Held:
    """A store's whole content, still in memory where it was just written: the next step reads it from here."""

    ref: ArrayRef
    array: np.ndarray


def whole_image_step(
    params: OpParams, upstream: Upstream, store: str, *, name: str, held: Held | None = None
) -> tuple[StepResult, Held | None]:
    """:func:`run_whole_image_step`, and what it wrote, held for a next step (None when the store was complete already).

    ``held``: the stored input (or the store beneath its fused steps), as it
    was written: read from memory instead of from the store.
    """
    started = time.perf_counter()
    info = get_op(params.op)
    fp = step_fingerprint(params, upstream)
    if io.is_complete(store, fp):
        return _cached_result(store, started), None
    image, fused = read_upstream_whole(upstream, held)
    axes = upstream_axes(upstream)
    result, found = lift.lift_whole(image, params, axes=axes, value_range=recorded_range(upstream, image.dtype))
    if fused:
        found = {**found, "fused": fused}
    out_axes = lift.output_axes(params, axes)
    chunks = _piece_chunks(result.shape, out_axes)
    blocks = int(np.prod([-(-n // c) for n, c in zip(result.shape, chunks)]))
    found = {**found, "blocks": {"total": blocks, "written": blocks, "reused": 0}}
    # Written and sealed in one go: an unfinished store is made again, not resumed.
    ref, stats = io.save_whole(
        result, store, chunks=chunks, kind=info.gives, fingerprint=fp, name=name, axes=out_axes.names,
        calibration=_kept_calibration(upstream_calibration(upstream), axes, out_axes), found=found,
        label_source=_label_source(upstream, store),
    )
    found = {**found, "stats": {k: v for k, v in stats.items() if k != "count"}}
    return StepResult(ref, time.perf_counter() - started, info=found), Held(ref, np.asarray(result))


def read_upstream_whole(upstream: Upstream, held: Held | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The image a step reads, in memory, with any fused steps beneath it applied; what their global phases found.

    ``held``: a store's content already in memory, taken instead of reading that store.
    """
    if isinstance(upstream, ArrayRef):
        if held is not None and held.ref == upstream:
            return held.array, {}
        return io.read_ref_whole(upstream), {}
    if not isinstance(upstream, Fused):
        return io.read_whole(upstream), {}
    image, found = read_upstream_whole(upstream.upstream, held)
    known = recorded_range(upstream.upstream, image.dtype)
    result, own = lift.lift_whole(image, upstream.params, axes=upstream_axes(upstream.upstream), value_range=known)
    return result, {**found, upstream.name: own}


def _seal(ref: ArrayRef, upstream: Upstream, stats: dict[str, Any], found: dict[str, Any]) -> None:
    """Mark a written store complete with what the step found; a label store also gets its colours and source."""
    if ref.kind != "labels":
        io.mark_complete(ref, **found)
        return
    io.mark_complete(ref, image_label=io.stored_image_label(stats, _label_source(upstream, ref.store)), **found)


def _label_source(upstream: Upstream, store: str) -> str | None:
    """A label store's ``image-label`` source: the stored image it labels, relative to it (local stores only)."""
    local = isinstance(upstream, ArrayRef) and "://" not in upstream.store + store
    return os.path.relpath(upstream.store, store) if local else None


def recorded_range(upstream: Upstream, dtype) -> tuple | None:
    """The smallest and largest value a stored stage recorded when it was written, as scalars of ``dtype``.

    None for the source image, for a store that recorded none (or not
    finite ones), and for dtypes whose values a float64 may not hold exactly
    (integers wider than 32 bits): the caller then finds them itself.
    """
    dtype = np.dtype(dtype)
    exact = dtype.kind == "f" or (dtype.kind in "iu" and dtype.itemsize <= 4)
    if not isinstance(upstream, ArrayRef) or not exact:
        return None
    stats = io.store_info(upstream.store).get("stats") or {}
    low, high = stats.get("min"), stats.get("max")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not np.isfinite([low, high]).all():
        return None
    return dtype.type(low), dtype.type(high)


def sync_compute_blocks(collections, on_done=None):
    """Compute block writes in this thread (batch images: one image per worker task)."""
    results = list(dask.compute(*collections, scheduler="synchronous"))
    if on_done:
        on_done(len(results), len(results))
    return results


def _cached_result(store: str, started: float) -> StepResult:
    """A complete store for this fingerprint: nothing to compute."""
    ref = io.open_store_ref(store)
    recorded = {k: v for k, v in io.store_info(store).items() if k not in ("fingerprint", "kind", "complete")}
    return StepResult(ref, time.perf_counter() - started, status="cached", info=recorded)


def run_table_step(
    params: OpParams,
    labels: ArrayRef,
    table_path: str,
    *,
    intensity: Upstream | None = None,
    compute=cluster_compute,
) -> StepResult:
    """Measure objects over chunks and write the table as CSV (temporary name, then renamed)."""
    started = time.perf_counter()
    fp = step_fingerprint(params, labels, intensity)
    if io.table_is_complete(table_path, fp):
        record = json.loads(storage.read_text(io.table_record_path(table_path)))
        ref = TableRef(str(table_path), record["rows"], tuple(record["columns"]), fp)
        return StepResult(ref, time.perf_counter() - started, status="cached", info={"rows": record["rows"]})
    columns = measure_columns(params, labels, intensity=intensity, compute=compute)
    io.write_table(columns, table_path, fingerprint=fp)
    rows = len(next(iter(columns.values()))) if columns else 0
    ref = TableRef(str(table_path), rows, tuple(columns), fp)
    return StepResult(ref, time.perf_counter() - started, info={"rows": rows})


def measure_columns(
    params: OpParams,
    labels: ArrayRef,
    *,
    intensity: Upstream | list[Upstream] | None = None,
    compute=cluster_compute,
    whole: bool = False,
    held: np.ndarray | None = None,
):
    """The measurement table's columns, computed over the label store's chunks.

    ``whole``: the labels are read whole into memory and measured there
    (:func:`tasks.lift.measure_whole`; a batch image), not chunk by chunk.
    ``held``: the store's labels, still in memory where they were just
    written: measured whole from there, not read back (the store's metadata
    is still read, once, for its axes and units).

    ``intensity``: one image, or a list of images (per-image columns ``-0``, ``-1``, ... in list order).
    One image may have a channel axis (the labels then come from one of its
    channels, picked by a ``channel`` step): per-channel columns ``-0``,
    ``-1``, ... as ``regionprops_table`` gives for channels on the last axis.
    When the label store's metadata gives every spatial axis a physical size
    with a unit, ``area`` and ``centroid`` also come in physical units
    (:func:`imageops.measure.physical_columns`, e.g. ``area_micrometer^3``).
    """
    if not lift.needs_intensity(params):
        intensity = None  # the default intensity image (the input) is read only for a property that needs it
    axes, calibration = io.store_axes_and_calibration(labels.store)
    if axes.split:
        raise ValueError(
            f"the labels {labels.store} have a channel or time axis (axes {''.join(axes.names)}): "
            "measure the labels of one channel, selected by {op: channel, index: N} before segmenting"
        )
    if isinstance(intensity, (list, tuple)):
        for index, image in enumerate(intensity):
            if upstream_axes(image).split:
                raise ValueError(
                    f"intensity[{index}] has a channel or time axis (axes {''.join(upstream_axes(image).names)}): "
                    "in a list of intensity images its columns -0, -1, ... would be ambiguous; "
                    "measure a multichannel image on its own (intensity: its name)"
                )
        intensity_array = [open_lazy(image) for image in intensity]
    else:
        intensity_array = None if intensity is None else _channels_last(intensity)
    if held is not None:
        columns = lift.measure_whole(held, params, intensity=intensity_array)
    elif whole:
        columns = lift.measure_whole(io.read_ref_whole(labels), params, intensity=intensity_array)
    else:
        columns = lift.measure(io.read_ref(labels), params, intensity=intensity_array, compute=compute)
    physical = ome.common_unit(calibration, axes.spatial)
    if physical is not None:
        columns.update(physical_columns(columns, *physical))
    return columns


def measures_labels_only(params: OpParams | None) -> bool:
    """Whether ``params`` is a measure step that reads only the labels (none of its properties needs an intensity image)."""
    return params is not None and params.op == "measure" and not lift.needs_intensity(params)


def _channels_last(upstream: Upstream) -> da.Array:
    """An intensity image, lazily, its channel axis (if any) moved last: how ``regionprops_table`` takes channels."""
    image, axes = open_lazy(upstream), upstream_axes(upstream)
    if axes.time is not None:
        raise ValueError(f"the intensity image has a time axis (axes {''.join(axes.names)}): it cannot be measured")
    return image if axes.channel is None else da.moveaxis(image, axes.channel, -1)


def _kept_calibration(calibration: Calibration, axes: ImageAxes, out_axes: ImageAxes) -> Calibration:
    """The input's calibration for the output's axes: without the channel axis when the step dropped it."""
    if out_axes.ndim == axes.ndim:
        return calibration
    kept = [a for a in range(axes.ndim) if a != axes.channel]
    return Calibration(tuple(calibration.scale[a] for a in kept), tuple(calibration.units[a] for a in kept))


def _piece_chunks(shape: tuple[int, ...], axes: ImageAxes) -> tuple[int, ...]:
    """Chunks of a store for an image processed whole: one piece (a channel at a time point) per chunk.

    As :func:`run_image_step` stores it, its channel and time axes split into pieces.
    """
    return tuple(1 if a in axes.split else n for a, n in enumerate(shape))


def _regular_chunks(image: da.Array) -> tuple[int, ...]:
    """The largest chunk on each axis: the regular chunk shape of the output store."""
    return tuple(max(c) for c in image.chunks)
