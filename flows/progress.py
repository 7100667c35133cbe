"""Follow a run from its output folder: which stage runs, how many of its blocks are written, which stages ended.

The stage tasks run on Dask worker processes, often not this one, but they
leave everything a spectator needs on disk: each image store holds a marker
per finished block (``.haloflow-done/``) and its fingerprint, and
``OUT/run.json`` gains an entry when a stage ends (written whole, then
renamed). :class:`RunWatcher` polls these from a thread of the process that
started the run and reports to two callbacks. It needs no channel from the
workers, so it works the same on a local cluster, a remote one sharing the
output folder, or Dask's synchronous scheduler.

No Prefect here: the command line starts the watcher before the flow runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows.record import stage_key
from imageops import get_op
from flows.spec import PipelineSpec, SpecError, input_with_axes
from tasks import io, storage
from tasks.reference import ArrayRef
from tasks.steps import fuse, step_fingerprint

__all__ = ["Progress", "RunWatcher"]

_THREAD = "haloflow-progress"
#: Loggers of the readers the watcher calls (their warnings about an input are the flow's to give).
_READER_LOGGERS = ("tifffile", "zarr")


@dataclass(frozen=True)
class Progress:
    """How far the running stage is: ``done`` of ``total`` units (``None``: not known yet).

    >>> Progress("01_gaussian", 3, 8, "blocks").fraction
    0.375
    >>> Progress("04_measure", None, None, "").fraction is None
    True
    """

    key: str
    done: int | None
    total: int | None
    unit: str
    phase: str = ""

    @property
    def fraction(self) -> float | None:
        if self.done is None or not self.total:
            return None
        return self.done / self.total


#: Largest share of one core the polls may take: a slow poll (a large batch) is followed by a longer pause.
#: At 20 % (the earlier setting), polling a batch of 2000 images took a tenth of a 2-core machine.
POLL_SHARE = 0.05
#: Longest pause between polls, however slow the last one was (the first poll of a batch reads every image's header).
MAX_PAUSE = 5.0
#: Unfinished images one poll of a batch stage looks at, in input order: a stage hands its images out in
#: that order, a few per task, so they finish nearly in it. A poll then costs the same at 5000 images
#: as at 50; an image finished far ahead of the others is counted once the poll reaches it. An image
#: not finished costs a file's status, one this run sealed that and its metadata read (0.07 ms): polls
#: follow some 700 images a second within :data:`POLL_SHARE` (at 64, 256 a second; 190 here).
BATCH_LOOKAHEAD = 256


class RunWatcher:
    """Poll a run's output folder in a thread; report progress and finished stages.

    Parameters
    ----------
    spec : PipelineSpec
        The run's spec (its output folder, steps and input).
    on_progress : callable
        ``on_progress(Progress)``, called on every poll while a stage runs.
    on_stage : callable
        ``on_stage(entry)``, called once per stage entry of ``run.json``, in order.
    interval : float
        Seconds between polls (stretched when a poll itself is slow, e.g. a
        large batch).

    A ``run.json`` already in the folder (a previous run's) is ignored until
    the new run replaces it. :meth:`stop` polls once more, so every stage the
    run recorded has been reported when it returns.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        on_progress: Callable[[Progress], None],
        on_stage: Callable[[dict[str, Any]], None],
        *,
        interval: float = 0.25,
    ):
        self.spec = spec
        self.out = storage.normalize(spec.output)
        self.on_progress = on_progress
        self.on_stage = on_stage
        self.interval = interval
        self._record_path = storage.join(self.out, "run.json")
        self._stale = _file_identity(self._record_path)
        self._reported = 0
        self._complete: set[tuple[str, str]] = set()
        self._expected: dict[tuple[str, str], str] = {}  # (stage, image): the fingerprint its store will have
        self._record: tuple[Any, dict[str, Any]] | None = None  # run.json's identity and contents when last read
        self._refs: dict[str, ArrayRef] = {}
        self._sources: dict[str, Any] = {}
        self._batch_paths: dict[str, str] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> "RunWatcher":
        # The watcher reads the batch images' headers again: a bad file's warnings are the flow's to give.
        for name in _READER_LOGGERS:
            logging.getLogger(name).addFilter(_not_from_watcher)
        self._thread = threading.Thread(target=self._loop, name=_THREAD, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, after one last poll that reports the stages recorded since the previous one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            for name in _READER_LOGGERS:
                logging.getLogger(name).removeFilter(_not_from_watcher)
        self.poll(progress=False)

    def __enter__(self) -> "RunWatcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except Exception:  # a half-made store, a file replaced under us: try again next time
                pass
            spent = time.monotonic() - started
            self._stop.wait(min(max(self.interval, spent / POLL_SHARE), MAX_PAUSE))

    # -- one poll --------------------------------------------------------------------
    def poll(self, progress: bool = True) -> None:
        """Report the stages ``run.json`` gained since the last poll, then the running stage's progress."""
        with self._lock:
            record = self._read_record()
            if record is None:
                return
            stages = record.get("stages", [])
            for entry in stages[self._reported:]:
                finished = _finished_progress(entry)
                if finished is not None:
                    self.on_progress(finished)
                self.on_stage(entry)
            self._reported = max(self._reported, len(stages))
            if progress and record.get("status") == "running" and len(stages) < len(self.spec.steps):
                self.on_progress(self._progress(record, len(stages)))

    def _read_record(self) -> dict[str, Any] | None:
        identity = _file_identity(self._record_path)
        if identity is None or identity == self._stale:
            return None
        if self._record is not None and self._record[0] == identity:  # unchanged since the last poll
            return self._record[1]
        try:
            record = json.loads(storage.read_text(self._record_path))
        except (OSError, ValueError):
            return None
        self._record = (identity, record)
        return record

    def _progress(self, record: dict[str, Any], index: int) -> Progress:
        step = self.spec.steps[index]
        key = stage_key(index + 1, step)
        if step.op == "measure":
            return Progress(key, None, None, "", "measuring")
        if self.spec.flow == "batch":
            return self._batch_progress(record, index, key)
        upstream = self._upstream(record["stages"], None)
        store = storage.join(self.out, f"{key}.ome.zarr")
        ref = self._store_ref(store, step_fingerprint(step, upstream))
        if ref is None:  # a global op's first pass, or the stage task not started yet
            local = get_op(step.op).family in ("pointwise", "neighbourhood")
            return Progress(key, None, None, "blocks", "starting" if local else "global pass")
        return Progress(key, len(io.done_blocks(ref)), _block_count(ref), "blocks")

    def _batch_progress(self, record: dict[str, Any], index: int, key: str) -> Progress:
        step = self.spec.steps[index]
        images = record.get("images", [])
        failed = record.get("failed", {})  # no store will come for these: their headers, or an earlier step, failed
        done = looked = 0
        since = _seconds_since_epoch(record.get("started_at"))
        for image in images:
            if (key, image) in self._complete or image in failed:
                done += 1
                continue
            if looked == BATCH_LOOKAHEAD:
                continue
            looked += 1
            store = storage.join(self.out, image, f"{key}.ome.zarr")
            sealed = _local_seal_time(store)
            if sealed is not None and since is not None and sealed >= since + 1 and io.is_complete(store):
                # Sealed by this run (a second after it began, its record's time being to the second): its
                # fingerprint is the step's, so not worked out here (a header read an image: the bar fell behind).
                self._complete.add((key, image))
                done += 1
                continue
            if sealed is None and not storage.is_url(store):  # no group metadata yet: unfinished, or failed before
                if _failed_before(record["stages"], image):
                    self._complete.add((key, image))
                    done += 1
                continue
            expected = self._expected.get((key, image))
            if expected is None:
                upstream = self._upstream(record["stages"], image)
                if upstream is None:  # failed earlier
                    done += 1
                    continue
                expected = self._expected[key, image] = step_fingerprint(step, upstream)
            if io.is_complete(store, expected):
                self._complete.add((key, image))
                done += 1
        return Progress(key, done, len(images), "images")

    def _upstream(self, stages: list[dict[str, Any]], image: str | None):
        """What the next image stage reads: the last image stage's store (or a step fused on it), or the input."""
        for index in reversed(range(len(stages))):
            entry = stages[index]
            if entry.get("kind") == "fused":
                below = self._upstream(stages[:index], image)
                return None if below is None else fuse(self.spec.steps[entry["step"] - 1], below, entry["name"])
            if image is None and entry.get("kind") == "array":
                return ArrayRef.from_dict(entry["ref"])
            if image is not None and "images" in entry:
                result = entry["images"].get(image, {})
                return ArrayRef.from_dict(result["ref"]) if "ref" in result else None
        return self._source(image)

    def _source(self, image: str | None):
        """The run's input (large image), or one batch image (``None`` if it cannot be read)."""
        name = image or ""
        if name not in self._sources:
            if image is None:
                self._sources[name] = input_with_axes(self.spec, io.resolve_input(self.spec.to_input()))
            else:
                if self._batch_paths is None:
                    self._batch_paths = {storage.basename(p).split(".")[0]: p for p in io.list_batch_images(self.spec.input)}
                try:
                    self._sources[name] = input_with_axes(self.spec, io.resolve_input(self._batch_paths[image]))
                except (KeyError, io.InputError, SpecError):
                    self._sources[name] = None
        return self._sources[name]

    def _store_ref(self, store: str, fingerprint: str) -> ArrayRef | None:
        """The store's reference once it was made for this fingerprint (a previous run's store is not it)."""
        ref = self._refs.get(store)
        if ref is not None and ref.fingerprint == fingerprint:
            return ref
        if not storage.isfile(storage.join(store, "zarr.json")):
            return None
        try:
            ref = io.open_store_ref(store)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if ref.fingerprint != fingerprint:
            return None
        self._refs[store] = ref
        return ref


def _finished_progress(entry: dict[str, Any]) -> Progress | None:
    """The last progress of a stage that computed something, from its run.json entry (polls may miss it)."""
    if entry.get("status") not in ("computed", "resumed"):
        return None
    if "images" in entry:
        return Progress(entry["name"], len(entry["images"]), len(entry["images"]), "images")
    blocks = (entry.get("info") or {}).get("blocks")
    if not blocks:
        return None
    return Progress(entry["name"], blocks["total"], blocks["total"], "blocks")


def _block_count(ref: ArrayRef) -> int:
    count = 1
    for n in io.block_grid(ref):
        count *= n
    return count


def _not_from_watcher(record: logging.LogRecord) -> bool:
    return record.threadName != _THREAD


def _failed_before(stages: list[dict[str, Any]], image: str) -> bool:
    """Whether a batch image failed in an earlier image stage (the record has no store for it); False before any."""
    for entry in reversed(stages):
        if "images" in entry:
            return "ref" not in entry["images"].get(image, {})
    return False


def _local_seal_time(store: str) -> float | None:
    """When a local store's group metadata was last written (a store is sealed by that write); None if it has none."""
    if storage.is_url(store):
        return None
    try:
        return os.stat(os.path.join(store, "zarr.json")).st_mtime
    except OSError:
        return None


def _seconds_since_epoch(stamp: Any) -> float | None:
    """A run record's ``started_at`` (``2026-12-01T11:49:40+0000``) as a POSIX time; None if it is not one."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def _file_identity(path: str) -> tuple[Any, ...] | None:
    """Inode, modification time and size (an object's size and version): a run record saved again has another."""
    try:
        if storage.is_url(path):
            return storage.stat(path)
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
