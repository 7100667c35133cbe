"""The two Prefect flows, ``large-image`` and ``batch``: they only compose stage tasks."""

# No ``from __future__ import annotations`` here: a served run gets its flow pickled by value, and the
# parameters' annotations must travel as objects, not as names only this module's globals resolve.
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from flows import headers
from flows.cluster import check_workers_reach
from flows.publishing import ArtifactPublisher
from flows.record import RunRecord, check_chunks, prepare_output, stage_key
from flows.runner import make_task_runner, started_here
from flows.spec import (InputField, PipelineSpec, SpecError, StepChoice, check_data_roots, input_with_axes, kept_steps,
                        spec_paths, step_name)
from tasks import io, stages, storage
from tasks.artifacts import artifact_key, publish_batch_stage, publish_failures, publish_stage
from tasks.cluster import compute_on_cluster
from tasks.reference import fingerprint
from tasks.steps import ImageFailure, Link, Planned, StepResult, fuse, measures_labels_only, step_fingerprint, stored_root
from tasks.stages import PerImage, batch_headers, batch_image_stage, batch_table_stage, image_stage, table_stage


@flow(name="large-image", task_runner=make_task_runner(), log_prints=False, validate_parameters=True)
def large_image_flow(
    input: InputField,
    steps: list[StepChoice],
    output: str,
    chunks: list[int] | None = None,
    channel_axis: int | None = None,
    time_axis: int | None = None,
    keep: list[str] | None = None,
) -> dict[str, Any]:
    """One image too large for memory: every step over chunks, exact across chunk borders."""
    spec = PipelineSpec(
        flow="large_image", input=input, steps=steps, output=output, chunks=chunks,
        channel_axis=channel_axis, time_axis=time_axis, keep=keep,
    )
    check_data_roots(spec)
    source = input_with_axes(spec, io.resolve_input(spec.to_input()))
    check_chunks(spec.chunks, source.shape)
    out = prepare_output(spec.output, spec.input)
    saving = in_background(result_storage, out)  # Prefect's API calls, while the cluster is reached
    check_cluster_reach(spec, out)
    record = RunRecord.start(spec, out, source=source)
    results_at = saving.result()
    logger = get_run_logger()
    images: dict[str, Any] = {"input": source}
    upstream: Any = source
    compute = flow_compute()
    with ArtifactPublisher(logger) as publisher:
        chain = StageChain(record, logger, partial(publish_now, publisher, compute=compute))
        for number, (step, kept) in enumerate(zip(spec.steps, kept_steps(spec.steps, spec.keep)), start=1):
            key = stage_key(number, step)
            artifact = artifact_key("large-image", key)
            if not kept:  # computed inside the next stage's chunk tasks, never written
                upstream = fuse(step, chain.finish_all(upstream), key)
                record.add_fused(number, step, upstream)
                continue
            if step.op == "measure":
                intensity = measure_intensity(step, images)
                table = storage.join(out, f"{key}.csv")
                output = step_fingerprint(step, chain.planned(upstream), chain.planned(intensity))
                stage = table_stage.with_options(**stage_options(results_at, not io.table_is_complete(table, output)))
                chain.submit(number, step, artifact, output, stage, step, upstream, table, key, intensity)
            else:
                first_chunks = spec.chunks if stored_root(upstream) is source else None
                store = storage.join(out, f"{key}.ome.zarr")
                output = step_fingerprint(step, chain.planned(upstream))
                stage = image_stage.with_options(**stage_options(results_at, not io.is_complete(store, output)))
                upstream = chain.submit(number, step, artifact, output, stage, step, upstream, store, key, first_chunks,
                                        artifact)
                images.setdefault(step_name(step), upstream)
        chain.finish_all()
    return record.finish()


@flow(name="batch", task_runner=make_task_runner(), log_prints=False, validate_parameters=True)
def batch_flow(
    input: str,
    steps: list[StepChoice],
    output: str,
    chunks: list[int] | None = None,
    channel_axis: int | None = None,
    time_axis: int | None = None,
    keep: list[str] | None = None,
) -> dict[str, Any]:
    """Many images, each processed on its own; tables joined with an ``image`` column first."""
    spec = PipelineSpec(
        flow="batch", input=input, steps=steps, output=output, chunks=chunks,
        channel_axis=channel_axis, time_axis=time_axis, keep=keep,
    )
    check_data_roots(spec)
    paths = io.list_batch_images(spec.input)
    out = prepare_output(spec.output, spec.input)
    saving = in_background(result_storage, out)  # Prefect's API calls, while the cluster and the headers are read
    check_cluster_reach(spec, out)
    failures: dict[str, dict[str, str]] = {}
    sources: dict[str, Any] = {}
    for stem, header in read_headers(image_stems(paths)).items():
        try:
            if isinstance(header, io.InputError):
                raise header
            sources[stem] = input_with_axes(spec, header)
        except (io.InputError, SpecError) as error:  # one unreadable image must not stop the others
            failures[stem] = {"step": "read", "error": str(error)}
    record = RunRecord.start(spec, out, images=list(sources) + list(failures), failed=failures)
    results_at = saving.result()
    logger = get_run_logger()
    images: dict[str, dict[str, Any]] = {"input": dict(sources)}
    upstream: dict[str, Any] = dict(sources)
    measured_ahead: dict[int, tuple[StepResult, float]] = {}  # step number -> its table, measured by the label stage
    with ArtifactPublisher(logger) as publisher:
        kept_flags = kept_steps(spec.steps, spec.keep)
        done_up_to = 0  # the steps a batch image stage ran in a row, with the first
        for number, (step, kept) in enumerate(zip(spec.steps, kept_flags), start=1):
            if number <= done_up_to:
                continue
            key = stage_key(number, step)
            started = time.perf_counter()
            if not kept:  # computed, image by image, inside the next kept stage's work, never written
                upstream = {stem: fuse(step, up, key) for stem, up in upstream.items()}
                record.add_fused(number, step)
                continue
            if step.op == "measure":
                if number in measured_ahead:
                    result, seconds = measured_ahead.pop(number)
                else:
                    named = {stem: {n: found[stem] for n, found in images.items() if stem in found} for stem in upstream}
                    intensity = {stem: measure_intensity(step, named[stem]) for stem in upstream} if step.intensity else None
                    stage = batch_table_stage.with_options(**stage_options(results_at, True))
                    result, _ = run_stage(
                        stage, step, PerImage(upstream), storage.join(out, f"{key}.csv"), key,
                        None if intensity is None else PerImage(intensity), submitted=publisher.release,
                    )
                    seconds = time.perf_counter() - started
                for stem, error in result.info.get("failed", {}).items():
                    failures[stem] = {"step": key, "error": error}
                record.add_stage(number, step, result, seconds=seconds)
                logger.info("%s: %d images in %.1f s", key, len(upstream), seconds)
                continue
            span = image_run(spec.steps, kept_flags, number)
            done_up_to = span[-1]
            links = run_links(spec.steps, kept_flags, span)
            names = [link.name for link in links]
            stores = [{stem: storage.join(out, stem, f"{name}.ome.zarr") for stem in upstream} for name in names]
            first_chunks = spec.chunks if all(stored_root(up) is sources[s] for s, up in upstream.items()) else None
            planned = {stem: stages.chain_fingerprints(links, up) for stem, up in upstream.items()}
            fresh = not all(
                io.is_complete(stores[index][stem], output)
                for stem, outputs in planned.items() for index, output in enumerate(outputs)
            )
            # A measure step that reads only these labels is measured by this stage, from the labels in memory.
            following = spec.steps[done_up_to] if done_up_to < len(spec.steps) else None
            measure, table = None, None
            if measures_labels_only(following):
                measure, table = following, storage.join(out, f"{stage_key(done_up_to + 1, following)}.csv")
                expected = stages.joined_table_fingerprint(measure, [outputs[-1] for outputs in planned.values()])
                fresh = fresh or not io.table_is_complete(table, expected)
            stage = batch_image_stage.with_options(**stage_options(results_at, fresh))
            future = stage.submit(tuple(links), PerImage(upstream), tuple(map(PerImage, stores)), "+".join(names),
                                  first_chunks, measure, table)
            publisher.release()
            chain = future.result()
            cached = future.state.name == "Cached"
            elapsed = time.perf_counter() - started
            per_step = {name: chain.step(name) for name in names}
            spent = [step_seconds(per_step[name]) for name in names]
            shares = seconds_shares(elapsed, spent + ([chain.table.seconds] if measure is not None else []))
            if measure is not None:
                measured_ahead[done_up_to + 1] = (replace(chain.table, status="cached") if cached else chain.table, shares[-1])
            for at in span:
                at_step, at_key = spec.steps[at - 1], stage_key(at, spec.steps[at - 1])
                if at_key not in per_step:
                    record.add_fused(at, at_step, save=False)
                    continue
                results = per_step[at_key]
                if cached:
                    results = {stem: replace(r, status="cached") for stem, r in results.items()}
                publisher.publish(at_key, publish_batch_stage, artifact_key("batch", at_key), results, future.task_run_id)
                for stem, r in results.items():
                    if isinstance(r, ImageFailure):
                        failures[stem] = {"step": at_key, "error": r.error}
                upstream = {stem: r.ref for stem, r in results.items() if not isinstance(r, ImageFailure)}
                images.setdefault(step_name(at_step), upstream)
                record.add_batch_stage(at, at_step, results, seconds=shares[names.index(at_key)], save=False)
            record.save()  # once for the stage's steps: 2000 images' entries take 0.1-0.3 s to write
            logger.info("%s: %d images in %.1f s", ", ".join(names), len(upstream), elapsed)
    if failures:
        publish_failures(artifact_key("batch", "failures"), failures)
        summary = record.finish(failures=failures)
        names = "; ".join(f"{stem} ({f['step']}: {f['error']})" for stem, f in failures.items())
        return Failed(message=f"{len(failures)} of {len(failures) + len(upstream)} images failed: {names}", data=summary)
    return record.finish()


def image_run(steps: list, kept: list[bool], start: int) -> list[int]:
    """The step numbers one batch image stage runs, from the kept image step ``start``.

    Each image goes through the image steps after it, up to the last kept
    one before a measure step (or the end), in the same worker call: what a
    step wrote is handed to the next from memory, not read back from its
    store in another stage. Steps not kept are fused into the next kept one.

    >>> from flows.spec import GaussianStep, ThresholdStep, LabelStep, MeasureStep
    >>> steps = [GaussianStep(sigma=1), ThresholdStep(method="otsu"), LabelStep(), MeasureStep()]
    >>> image_run(steps, [True, False, True, True], 1)
    [1, 2, 3]
    """
    run, last = [start], start
    for number in range(start + 1, len(steps) + 1):
        if steps[number - 1].op == "measure":
            break
        run.append(number)
        if kept[number - 1]:
            last = number
    return [number for number in run if number <= last]


def run_links(steps: list, kept: list[bool], run: list[int]) -> list[Link]:
    """The kept steps of a run of step numbers (:func:`image_run`), each with the steps not kept just before it."""
    links: list[Link] = []
    pending: list[tuple[Any, str]] = []
    for number in run:
        step, key = steps[number - 1], stage_key(number, steps[number - 1])
        if kept[number - 1]:
            links.append(Link(step, key, tuple(pending)))
            pending = []
        else:
            pending.append((step, key))
    return links


def step_seconds(results: dict[str, Any]) -> float:
    """The time one step took over all the images it computed (failures count none)."""
    return sum(r.seconds for r in results.values() if isinstance(r, StepResult))


def seconds_shares(elapsed: float, spent: list[float]) -> list[float]:
    """A stage's wall time shared among the steps it ran, in proportion to the time each took (equally if none).

    >>> seconds_shares(9.0, [2.0, 1.0])
    [6.0, 3.0]
    """
    total = sum(spent)
    if total <= 0:
        return [elapsed / len(spent)] * len(spent)
    return [elapsed * part / total for part in spent]


def read_headers(paths: dict[str, str]) -> dict[str, io.InputSpec | io.InputError]:
    """Each batch image's header, or the error reading it.

    Headers the command read ahead (:mod:`flows.headers`) are taken as they
    are; the others are read on the cluster for many images, here for a few.
    """
    known, rest = headers.recall(paths)
    if len(rest) >= stages.HEADERS_ON_CLUSTER_FROM:
        found = batch_headers.submit(PerImage(rest)).result()
    else:
        found = {stem: io.resolve_or_error(path) for stem, path in rest.items()}
    return {stem: known[stem] if stem in known else found[stem] for stem in paths}


def check_cluster_reach(spec: PipelineSpec, out: str) -> None:
    """Before any stage: the workers of a cluster on other machines must see the input and the output folder.

    URLs (object storage) are left to the workers' own credentials.
    """
    client = remote_cluster_client()
    if client is not None:
        paths = {path: field for field, path in spec_paths(spec) if field != "output" and not storage.is_url(path)}
        check_workers_reach(client, paths, None if storage.is_url(out) else out)


def task_runner_client():
    """The flow run's Dask client (its ``DaskTaskRunner``'s); None when it runs its tasks otherwise."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    return runner.client if isinstance(runner, DaskTaskRunner) else None


def remote_cluster_client():
    """The flow run's Dask client when its workers may be on other machines; None for a local cluster or no Dask."""
    import distributed

    client = task_runner_client()
    if client is None or isinstance(client.cluster, distributed.LocalCluster) or started_here(client.scheduler.address):
        return None
    return client


#: Dask priority of the graphs the flow computes for artifacts: above the stages' chunk tasks (0).
ARTIFACT_PRIORITY = 10


def flow_compute():
    """How the flow computes a small graph (a stage's picture): on its tasks' cluster, else as ``compute_on_cluster``.

    The task runner's client is not Dask's default client, so the flow names it.
    The graph goes ahead of the chunk tasks already queued (Dask's
    ``priority``): a stage's picture is made beside the next stage, and must
    not wait for that stage's last chunk, nor hold the run's end after it.
    """
    client = task_runner_client()
    if client is None:
        return compute_on_cluster

    def compute(*collections):
        results = client.gather(client.compute(list(collections), priority=ARTIFACT_PRIORITY))
        return results[0] if len(collections) == 1 else tuple(results)

    return compute


def measure_intensity(step, images: dict[str, Any]):
    """A measure step's intensity image by name: none, one, or a list of them (its ``intensity`` is a list)."""
    if isinstance(step.intensity, list):
        return [images[name] for name in step.intensity]
    return images[step.intensity] if step.intensity else None


def stage_options(storage, fresh: bool) -> dict[str, Any]:
    """Stage results persist in the output folder, so the cache lives as long as the outputs do.

    ``storage``: the saved block of :func:`result_storage`. ``fresh``: the
    stage's store is missing or incomplete, so a cached result must not be
    trusted (``refresh_cache``).
    """
    return {"result_storage": storage, "refresh_cache": fresh}


def result_storage(out: str):
    """A saved file-system block for ``OUT/.haloflow/results`` (Prefect needs it saved), given to the stages as it is.

    A local folder gets a LocalFileSystem block; a URL (``s3://...``) a
    RemoteFileSystem block, which reaches it through fsspec with the same
    credentials as the stores. The stages get the block itself, not its name:
    given a name, every stage task would first read the block back from the
    API (about 0.1 s a stage).
    """
    basepath = storage.join(out, ".haloflow", "results")
    name = "haloflow-results-" + fingerprint(basepath)[:16]
    block = RemoteFileSystem(basepath=basepath) if storage.is_url(basepath) else LocalFileSystem(basepath=basepath)
    block.save(name, overwrite=True)
    return block


def in_background(function: Callable[..., Any], *args: Any) -> Future:
    """``function(*args)`` started in a thread of its own, in this context (the flow run's, its settings); its future.

    The thread ends with the call: nothing waits for it unless the future is asked.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"haloflow-{function.__name__}")
    try:
        return pool.submit(contextvars.copy_context().run, function, *args)
    finally:
        pool.shutdown(wait=False)


class StageChain:
    """The large image's stages, each submitted before the one it reads has finished, then seen through in order.

    A stage is handed the future of the stage it reads: Dask starts it as
    soon as that one's task ends, without a round trip through the flow
    (0.2-0.3 s a stage). The flow takes the results in order as they come,
    recording and publishing each while the next stage runs. A stage whose
    input failed ends ``NotReady`` and writes nothing; the failure is raised
    from the stage that failed.
    """

    def __init__(self, record: RunRecord, logger, publish: Callable[[str, StepResult, Any], None]) -> None:
        self.record, self.logger, self.publish = record, logger, publish
        self.pending: list[tuple[int, Any, str, Any]] = []
        self.outputs: dict[int, tuple[Any, str]] = {}  # id(future) -> the future (kept: ids stay unique), fingerprint
        self.last_done = time.perf_counter()

    def submit(self, number: int, step, artifact: str, output: str, stage, *args) -> Any:
        """Submit ``stage(*args)``, whose output's fingerprint is ``output``; its future, for the stages that read it."""
        future = stage.submit(*args)
        self.pending.append((number, step, artifact, future))
        self.outputs[id(future)] = (future, output)
        return future

    def planned(self, upstream: Any) -> Any:
        """``upstream`` for fingerprints: a submitted stage's future stands for its output (also inside a list)."""
        if isinstance(upstream, list):
            return [self.planned(item) for item in upstream]
        known = self.outputs.get(id(upstream))
        return upstream if known is None else Planned(known[1])

    def finish_all(self, upstream: Any = None) -> Any:
        """Wait for every stage submitted, in order; ``upstream``'s value if it is one of their futures."""
        while self.pending:
            number, step, artifact, future = self.pending.pop(0)
            result = stage_result(future, since=self.last_done)
            self.last_done = time.perf_counter()
            self.publish(artifact, result, future.task_run_id)
            self.record.add_stage(number, step, result)
            self.logger.info("%s: %s in %.1f s %s", stage_key(number, step), result.status, result.seconds,
                             result.info or "")
            if upstream is future:
                upstream = result.ref
        return upstream


def publish_now(publisher: ArtifactPublisher, key: str, result: StepResult, task_run: Any, compute) -> None:
    """A stage's artifacts, made in the background at once (every stage is already submitted)."""
    publisher.publish(key, publish_stage, key, result, task_run, compute=compute)
    publisher.release()


def run_stage(stage, *args, submitted=None) -> tuple[StepResult, Any]:
    """Submit a stage, wait for it, and say whether Prefect served it from its cache; with its task run's id.

    ``submitted()``, if given, is called once the stage is submitted, before waiting for it.
    """
    started = time.perf_counter()
    future = stage.submit(*args)
    if submitted is not None:
        submitted()
    return stage_result(future, since=started), future.task_run_id


def stage_result(future, since: float) -> StepResult:
    """A submitted stage's result, once it ends; ``cached``, timed from ``since``, when Prefect served it from its cache."""
    result = future.result()
    if future.state.name == "Cached":
        result = replace(result, status="cached", seconds=time.perf_counter() - since)
    return result


def image_stems(paths: list[str]) -> dict[str, str]:
    """Each image's folder name (its file stem), refusing two images with the same stem."""
    stems: dict[str, str] = {}
    for path in paths:
        stem = storage.basename(path).split(".")[0]
        if stem in stems:
            raise io.InputError(f"{path} and {stems[stem]} would share the output folder {stem!r}; rename one")
        stems[stem] = path
    return stems
