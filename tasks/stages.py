"""Prefect tasks: one stage each, run on the flow's Dask cluster, passing references.

A large-image stage is one task that computes one step's chunk graph on the
cluster. A batch image stage is one task for a run of image steps over all
the images, each image taken through those steps whole, on a worker, in one
call (with the table of a measure step of its labels alone); a batch table
stage one task for any other table: Prefect's bookkeeping stays per stage,
never per chunk or per small image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import dask
import numpy as np
from prefect import task

from imageops.registry import OpParams
from tasks import faults, io, steps
from tasks.artifacts import Progress
from tasks.cluster import cluster_threads
from tasks.reference import ArrayRef, TableRef, fingerprint
from tasks.steps import StepResult, Upstream


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect's retry condition: retry transient I/O failures and lost workers, nothing else."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as error:  # the failure the state holds
        return faults.is_transient(error)
    return False


def image_stage_key(context, parameters: dict[str, Any]) -> str:
    """Cache key of an image stage: its output's fingerprint."""
    return "stage-" + steps.step_fingerprint(parameters["params"], parameters["upstream"])


def table_stage_key(context, parameters: dict[str, Any]) -> str:
    """Cache key of a table stage: its table's fingerprint."""
    return "table-" + steps.step_fingerprint(parameters["params"], parameters["labels"], parameters.get("intensity"))


def batch_stage_key(context, parameters: dict[str, Any]) -> str:
    """Cache key of a batch stage: the fingerprints of all its images' outputs (its last step's: they include the others').

    A stage that also measures its labels (``measure``) has that step and
    its table's path in its key too.
    """
    links = parameters["links"]
    per_image = [(name, [link.name for link in links], chain_fingerprints(links, up)[-1])
                 for name, up in parameters["upstreams"].items()]
    measure = parameters.get("measure")
    return "batch-" + fingerprint(per_image, *([] if measure is None else [measure_identity(measure), parameters["table"]]))


def measure_identity(params: OpParams) -> dict[str, Any]:
    """What a measure step's table depends on, besides its labels: its op and parameters, not its name."""
    return params.model_dump(mode="json", exclude={"name"})


def joined_table_fingerprint(params: OpParams, labels: Sequence[str]) -> str:
    """The fingerprint of the table that ``params`` measures from label stores of these fingerprints, in order."""
    return fingerprint(*labels, measure_identity(params))


def chain_fingerprints(links: Sequence[steps.Link], upstream: Upstream) -> list[str]:
    """The fingerprint of each store a run of steps (:func:`batch_image_stage`) writes from ``upstream``."""
    found = []
    for index, link in enumerate(links):
        if index:
            upstream = link.on(steps.Planned(found[-1]))
        found.append(steps.step_fingerprint(link.params, upstream))
    return found


def batch_table_key(context, parameters: dict[str, Any]) -> str:
    """Cache key of a batch table stage: each image's table's fingerprint (what it measures, and how).

    Prefect's default key hashes a task's parameters: 0.07-0.18 s for a
    2000-image table stage's (the label stage's results, with each image's
    measurements, which an earlier version carried in them).
    """
    params, intensity = parameters["params"], parameters.get("intensity")
    refs = label_refs(parameters["labels"])
    per_image = [
        (name, steps.step_fingerprint(params, ref, None if intensity is None else intensity[name]))
        for name, ref in refs.items()
    ]
    return "batch-table-" + fingerprint(per_image)


class PerImage(Mapping):
    """A batch stage's per-image parameter or record (image name -> reference, path or entry), read-only, opaque to Prefect.

    Prefect walks every task parameter that is a dict, list or dataclass for
    futures (twice per submit), and Dask tokenizes each to name the submitted
    task: for 2000 images that took about a second per stage, in the flow,
    before the stage could start. This mapping is neither, so both see one
    object; it holds no futures, and the Dask key already holds a fresh
    task-run id, so its token is its identity.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"PerImage({len(self._items)} images)"

    def __dask_tokenize__(self) -> tuple:
        return ("haloflow-per-image", id(self), len(self._items))


#: Retries of a task whose failure may pass (storage or network), and none of one that cannot.
RETRY_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": retry_if_transient,
}
STAGE_OPTIONS: dict[str, Any] = {**RETRY_OPTIONS, "persist_result": True}


@task(name="image-stage", task_run_name="{key}", cache_key_fn=image_stage_key, **STAGE_OPTIONS)
def image_stage(
    params: OpParams, upstream: Upstream | StepResult, store: str, key: str, chunks: list[int] | None = None,
    artifact: str | None = None,
) -> StepResult:
    """Run one image-producing step over chunks on the cluster and write its store.

    ``upstream``: what the step reads, or the result of the stage that wrote
    it (the flow submits a stage before the one it reads has finished).
    ``artifact``: the key of the stage's progress artifact, updated as blocks
    are written. The flow publishes the stage's other artifacts (table,
    picture, link) once it has the result, beside the next stage.
    """
    with Progress(artifact, f"{key}: blocks written") if artifact else contextlib.nullcontext() as progress:
        return steps.run_image_step(params, steps.written(upstream), store, name=key, chunks=chunks,
                                    on_progress=progress)


@task(name="table-stage", task_run_name="{key}", cache_key_fn=table_stage_key, **STAGE_OPTIONS)
def table_stage(
    params: OpParams, labels: ArrayRef | StepResult, table: str, key: str,
    intensity: Upstream | StepResult | list[Upstream | StepResult] | None = None,
) -> StepResult:
    """Measure objects over chunks on the cluster and write the table (inputs given as for :func:`image_stage`)."""
    if isinstance(intensity, (list, tuple)):
        intensity = [steps.written(image) for image in intensity]
    elif intensity is not None:
        intensity = steps.written(intensity)
    return steps.run_table_step(params, steps.written(labels), table, intensity=intensity)


@task(name="batch-image-stage", task_run_name="{key}", cache_key_fn=batch_stage_key, **STAGE_OPTIONS)
def batch_image_stage(
    links: Sequence[steps.Link],
    upstreams: dict[str, Upstream],
    stores: Sequence[Mapping[str, str]],
    key: str,
    chunks: list[int] | None = None,
    measure: OpParams | None = None,
    table: str | None = None,
) -> ChainResults:
    """Run one or more image steps in a row on every image, in worker tasks of a few images each.

    ``links``: the kept steps, in order, each writing its own store
    (``stores``: one mapping, image -> store, per link) and read by the next;
    steps not kept between two links are fused on the later one's input
    (:class:`tasks.steps.Link`). Each image runs its links one after the
    other in the same call: an image held whole (the usual batch image) hands
    each result to the next link from memory, never reading back what it has
    just written. ``chunks``: the first link's chunks over the source image
    (default: the image whole).

    ``measure`` and ``table``: the measure step that reads the last link's
    labels next, and only them, and the table it writes. Each image's labels
    are then measured in the same call, from memory where they were just
    written (from the store when it was complete already), and this stage
    writes the table (:attr:`ChainResults.table`): no stage of its own reads
    every label store back. An image whose measuring fails is left out of
    the table and named in its result, as :func:`batch_table_stage` does.

    The results come as a :class:`ChainResults`: Prefect walks a task's
    result that is a dict, and a stage that reads this one walks its
    parameters, looking for futures: 0.3-0.4 s each time for 2000 images'
    results.
    """
    if (measure is None) != (table is None):
        raise ValueError("a batch image stage measures its labels given both the measure step and its table, not one")
    work = [
        partial(_run_links, links, upstream, [links_stores[image] for links_stores in stores], chunks, measure)
        for image, upstream in upstreams.items()
    ]
    done = dict(zip(upstreams, run_in_groups(work)))
    names = [link.name for link in links]
    chains = ChainResults(names, {image: chain for image, (chain, _) in done.items()})
    if measure is None:
        return chains
    measured = {image: found for image, (_, found) in done.items() if found is not None}
    spent = sum(seconds for _, seconds in measured.values())
    tables = {image: columns for image, (columns, _) in measured.items()}
    return chains.with_table(write_joined_table(measure, label_refs(chains), tables, table, seconds=spent))


def _run_links(
    links: Sequence[steps.Link], upstream: Upstream, stores: list[str], chunks: list[int] | None,
    measure: OpParams | None = None,
) -> tuple[list[StepResult | steps.ImageFailure], tuple[dict[str, np.ndarray] | steps.ImageFailure, float] | None]:
    """One image's links, in order, until one fails (its :class:`tasks.steps.ImageFailure` ends the list).

    With the image's table measured by ``measure`` from the last link's
    labels, or why it could not be, and the seconds that took; None when
    not measured (no ``measure``, or a link failed).
    """
    results: list[StepResult | steps.ImageFailure] = []
    held = None
    for index, (link, store) in enumerate(zip(links, stores)):
        if index:
            upstream, chunks = link.on(results[-1].ref), None
        try:
            if chunks is None and _held_whole(upstream):
                result, held = steps.whole_image_step(link.params, upstream, store, name=link.name, held=held)
            else:
                held = None
                result = steps.run_image_step(
                    link.params, upstream, store, name=link.name, chunks=_image_chunks(upstream, chunks),
                    compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks, pyramid=False,
                )
        except Exception as error:  # this image's failure is recorded; the batch goes on
            results.append(steps.ImageFailure(steps.describe_error(error)))
            break
        results.append(result)
    if measure is None or isinstance(results[-1], steps.ImageFailure):
        return results, None
    return results, _measure_labels(measure, results[-1].ref, None if held is None else held.array)


def _measure_labels(
    params: OpParams, labels: ArrayRef, held: np.ndarray | None
) -> tuple[dict[str, np.ndarray] | steps.ImageFailure, float]:
    """One image's table (or why there is none) from its labels, held in memory or else read whole; with its seconds."""
    started = time.perf_counter()
    found = steps.isolated(
        steps.measure_columns, params, labels, compute=steps.local_compute, whole=_held_whole(labels), held=held,
    )
    return found, time.perf_counter() - started


class ChainResults(PerImage):
    """A batch image stage's results: image -> its last step's result (or its failure), and each step's own.

    Read as a mapping, it is what a table stage measures: each image's last
    store, or why there is none. :meth:`step` gives one step's results,
    leaving out the images that failed before it. :attr:`table`: the table
    the stage measured from its labels, if it did (a :class:`StepResult`
    whose reference is the written table), else None.
    """

    __slots__ = ("names", "_chains", "table")

    def __init__(
        self, names: list[str], chains: Mapping[str, list[StepResult | steps.ImageFailure]], table: StepResult | None = None
    ) -> None:
        self.names = list(names)
        self._chains = dict(chains)
        self.table = table
        super().__init__({image: chain[-1] for image, chain in self._chains.items()})  # a chain cut short ends failed

    def step(self, name: str) -> dict[str, StepResult | steps.ImageFailure]:
        """Step ``name``'s result for each image that reached it."""
        index = self.names.index(name)
        return {image: chain[index] for image, chain in self._chains.items() if len(chain) > index}

    def with_table(self, table: StepResult) -> ChainResults:
        """The same results, with the table the stage measured from its labels."""
        return ChainResults(self.names, self._chains, table)

    def __repr__(self) -> str:
        return f"ChainResults({len(self)} images, steps {self.names}{', and a table' if self.table else ''})"


#: Fewest batch images whose headers are read on the cluster, a few images per worker task
#: (:func:`batch_headers`), rather than one after the other in the flow: about 1 ms of Python an image
#: (100 s for 100,000 images), against the 0.1-0.3 s a task costs.
HEADERS_ON_CLUSTER_FROM = 256


@task(name="batch-headers", task_run_name="{key}", **RETRY_OPTIONS)
def batch_headers(paths: Mapping[str, str], key: str = "00_headers") -> dict[str, io.InputSpec | io.InputError]:
    """Every batch image's header read (:func:`tasks.io.resolve_or_error`), in worker tasks of a few images each."""
    work = [partial(io.resolve_or_error, path) for path in paths.values()]
    return dict(zip(paths, run_in_groups(work, most=MAX_LIGHT_GROUP)))


@task(name="batch-table-stage", task_run_name="{key}", cache_key_fn=batch_table_key, **STAGE_OPTIONS)
def batch_table_stage(
    params: OpParams,
    labels: Mapping[str, ArrayRef] | Mapping[str, StepResult | steps.ImageFailure],
    table: str,
    key: str,
    intensity: dict[str, Upstream] | None = None,
) -> StepResult:
    """Measure every image's objects and write one table with an ``image`` column first.

    ``labels``: each image's label store, or a label stage's results (images
    it failed are left out). The flow runs this stage for a measure step that
    needs an intensity image or does not follow its labels; the label stage
    measures the others itself (:func:`batch_image_stage`).
    """
    labels = label_refs(labels)
    work = [
        partial(
            steps.isolated, steps.measure_columns, params, ref, intensity=None if intensity is None else intensity[image],
            compute=steps.local_compute, whole=_held_whole(ref),
        )
        for image, ref in labels.items()
    ]
    return write_joined_table(params, labels, dict(zip(labels, run_in_groups(work, most=MAX_LIGHT_GROUP))), table)


def write_joined_table(
    params: OpParams,
    labels: Mapping[str, ArrayRef],
    per_image: Mapping[str, dict[str, np.ndarray] | steps.ImageFailure],
    table: str,
    seconds: float = 0.0,
) -> StepResult:
    """Write one table of every image's columns, with an ``image`` column first; its result.

    ``per_image``: each image's columns, or why it has none: those images
    are left out of the table and named in the result's ``failed``. The
    table is marked with its fingerprint (:func:`joined_table_fingerprint`)
    when no image failed.
    """
    failed = {image: r.error for image, r in per_image.items() if isinstance(r, steps.ImageFailure)}
    measured = {image: r for image, r in per_image.items() if image not in failed}
    columns = concatenate_tables(list(measured), list(measured.values()))
    table_fingerprint = joined_table_fingerprint(params, [ref.fingerprint for ref in labels.values()])
    io.write_table(columns, table, fingerprint=None if failed else table_fingerprint)
    rows = len(columns["image"])
    ref = TableRef(table, rows, tuple(columns), table_fingerprint)
    info = {"rows": rows, "failed": failed} if failed else {"rows": rows}
    return StepResult(ref, seconds, info=info)


def label_refs(labels: Mapping[str, Any]) -> dict[str, ArrayRef]:
    """Each image's label store, given the stores or a label stage's results (its failed images left out)."""
    return {image: steps.written(r) for image, r in labels.items() if not isinstance(r, steps.ImageFailure)}


#: Most images one worker task of a batch stage processes: a task of a few images costs the scheduler
#: and the worker what a task of one does (a millisecond or two), while one small image takes 10-30 ms.
MAX_GROUP = 8
#: Most images per worker task where each takes under a millisecond (a header read, an image's table
#: rows). On 2000 images and two workers, 250 tasks of 8 cost 1.1-1.5 s for the headers and 1.9-2.2 s for
#: the table, against 0.5-0.8 s and 1.0-1.3 s in tasks of 64 or more (`benchmarks/RESULTS.md`): the
#: scheduler hands a worker its next task only as one finishes, a round trip of about 2 ms here.
MAX_LIGHT_GROUP = 64
#: Fewest tasks per worker thread, so that the last tasks still spread over the cluster.
TASKS_PER_THREAD = 4


def run_in_groups(calls: list[Callable[[], Any]], most: int | None = None) -> list[Any]:
    """Call every one of ``calls`` on the caller's cluster, a few per worker task; the results in order.

    A group holds at most ``most`` calls (default :data:`MAX_GROUP`), and
    fewer when there are not :data:`TASKS_PER_THREAD` groups per worker
    thread otherwise.
    """
    if not calls:
        return []
    most = MAX_GROUP if most is None else most
    size = max(1, min(most, len(calls) // (TASKS_PER_THREAD * cluster_threads())))
    groups = [calls[start:start + size] for start in range(0, len(calls), size)]
    done = steps.cluster_compute(*[dask.delayed(_call_all)(group) for group in groups])
    return [result for group in done for result in group]


def _call_all(calls: list[Callable[[], Any]]) -> list[Any]:
    return [call() for call in calls]


def concatenate_tables(images: list[str], tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One table from per-image tables, with the image's name as the first column.

    A column that some images lack (physical units known for some images
    only) is empty (NaN) on their rows.
    """
    names = list(dict.fromkeys(name for t in tables for name in t))
    columns: dict[str, Any] = {"image": np.concatenate([np.full(len(t[names[0]]) if names else 0, image, dtype=object) for image, t in zip(images, tables)]) if tables else np.empty(0, object)}
    for name in names:
        columns[name] = np.concatenate([t[name] if name in t else np.full(len(next(iter(t.values()))), np.nan) for t in tables])
    return columns


def _held_whole(upstream: Upstream) -> bool:
    """Whether a batch image is read in one block (a source image, or a store in one chunk): held in memory whole."""
    root = steps.stored_root(upstream)
    return isinstance(root, io.InputSpec) or tuple(root.chunks) == tuple(root.shape)


def _image_chunks(upstream: Upstream, chunks):
    """Batch images are processed whole unless the spec gives chunks."""
    if chunks is not None:
        return chunks
    root = steps.stored_root(upstream)
    return root.shape if isinstance(root, io.InputSpec) else None
