"""Prefect artifacts of a stage: its table, its picture, a link to its store, its progress."""

from __future__ import annotations

import contextvars
import re
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    LinkArtifact,
    MarkdownArtifact,
    TableArtifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks import preview, storage
from tasks.cluster import compute_on_cluster
from tasks.reference import ArrayRef, TableRef
from tasks.steps import StepResult


def artifact_key(*parts: str) -> str:
    """A key the Prefect UI accepts: lowercase letters, digits and dashes.

    >>> artifact_key("large-image", "03_label")
    'large-image-03-label'
    """
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


class Progress:
    """A progress artifact for one stage, updated as its blocks finish.

    The artifact is created in a thread of its own while the stage starts
    its work (an API call: 20-30 ms at each stage's start otherwise), for the
    task run the stage runs in. Updates wait for it; leaving the ``with``
    block waits for it too, and an error in making it is raised there, or at
    the first update, as it would have been at the start.
    """

    def __init__(self, key: str, description: str):
        self._last = 0.0
        self._made: dict[str, Any] = {}
        run_here = contextvars.copy_context().run  # the task run the artifact belongs to
        self._thread = threading.Thread(target=run_here, args=(self._create, key, description), daemon=True,
                                        name=f"haloflow-progress-{key}")
        self._thread.start()

    def _create(self, key: str, description: str) -> None:
        try:
            self._made["id"] = create_progress_artifact(0.0, key=f"{key}-progress", description=description)
        except BaseException as error:  # handed to the stage's thread (:attr:`id`)
            self._made["error"] = error

    @property
    def id(self) -> UUID:
        """The artifact's id, once it is made."""
        self._thread.join()
        if "error" in self._made:
            raise self._made["error"]
        return self._made["id"]

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join()
        if exc[0] is None and "error" in self._made:
            raise self._made["error"]

    def __call__(self, done: int, total: int) -> None:
        percent = 100.0 * done / total if total else 100.0
        if percent >= 100.0 or time.monotonic() - self._last > 1.0:
            update_progress_artifact(self.id, percent)
            self._last = time.monotonic()


def publish_stage(key: str, result: StepResult, task_run_id: UUID | None = None, *, compute=compute_on_cluster) -> None:
    """Table, picture and link artifacts for a stage's result.

    ``task_run_id``: the stage's task run, which the artifacts belong to
    when they are published from elsewhere (the flow, once the stage has
    returned); by default, the run this is called in. ``compute``: how the
    picture's projection is computed (a Dask collection -> its value).
    """
    ref = result.ref
    owner = {"task_run_id": task_run_id} if task_run_id is not None else {}
    TableArtifact(table=summary_rows(result), key=key, description=f"{key}: {result.status} in {result.seconds:.1f} s",
                  **owner).create()
    if isinstance(ref, ArrayRef):
        plane = compute(preview.projection(ref))
        picture = preview.png_data_uri(preview.enlarge(preview.to_rgb(plane, ref.kind)))
        what = "maximum projection" if ref.ndim > 2 else "image"
        MarkdownArtifact(markdown=f"### {key}\n\n![{key} {what}]({picture})\n", key=f"{key}-picture",
                         description=f"{key}: {what}", **owner).create()
    where = _where(ref)
    link = where if storage.is_url(where) else Path(where).absolute().as_uri()
    LinkArtifact(link=link, link_text=where, key=f"{key}-store", description=f"{key}: where the result is", **owner).create()


def summary_rows(result: StepResult) -> list[dict[str, str]]:
    """The rows of a stage's table artifact: shape, dtype, chunks, statistics, objects, seconds, status, store.

    >>> from tasks.reference import TableRef
    >>> rows = summary_rows(StepResult(TableRef("t.csv", 3, ("label",), "f"), 0.5))
    >>> [r["field"] for r in rows][:2]
    ['rows', 'columns']
    """
    ref, info = result.ref, result.info
    rows: list[tuple[str, object]] = []
    if isinstance(ref, ArrayRef):
        rows += [("shape", ref.shape), ("dtype", ref.dtype), ("chunks", ref.chunks), ("kind", ref.kind)]
        for stat in ("min", "max", "mean"):
            rows.append((stat, _number(info.get("stats", {}).get(stat))))
        if "objects" in info:
            rows.append(("objects", info["objects"]))
        if "threshold" in info:
            rows.append(("threshold", _number(info["threshold"])))
        blocks = info.get("blocks")
        if blocks:
            rows.append(("blocks written / reused / total", f"{blocks['written']} / {blocks['reused']} / {blocks['total']}"))
    elif isinstance(ref, TableRef):
        rows += [("rows", ref.rows), ("columns", ", ".join(ref.columns))]
    rows += [("seconds", f"{result.seconds:.2f}"), ("status", result.status), ("store", _where(ref)), ("fingerprint", ref.fingerprint)]
    return [{"field": field, "value": str(value)} for field, value in rows]


def _where(ref) -> str:
    return ref.store if isinstance(ref, ArrayRef) else ref.path


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def publish_batch_stage(key: str, results: dict[str, StepResult], task_run_id: UUID | None = None) -> None:
    """One table for a batch stage: each image, whether it was computed or reused, and its store.

    ``task_run_id``: as for :func:`publish_stage`.
    """
    computed = sorted(image for image, r in results.items() if getattr(r, "status", "failed") == "computed")
    rows = [
        {"image": image, "status": r.status, "seconds": f"{r.seconds:.2f}", "store": _where(r.ref)}
        if isinstance(r, StepResult)
        else {"image": image, "status": "failed", "seconds": "-", "store": r.error}
        for image, r in results.items()
    ]
    description = (
        f"{key}: computed {len(computed)} new or changed image(s) of {len(results)}; "
        f"reused {sum(getattr(r, 'status', '') == 'cached' for r in results.values())} unchanged"
    )
    failed = [image for image, r in results.items() if not isinstance(r, StepResult)]
    if failed:
        description += f"; {len(failed)} failed: {', '.join(failed)}"
    owner = {"task_run_id": task_run_id} if task_run_id is not None else {}
    TableArtifact(table=rows, key=key, description=description, **owner).create()


def publish_failures(key: str, failures: dict[str, dict[str, str]]) -> None:
    """A table of the images a batch run could not process, the step and the reason."""
    rows = [{"image": image, "step": f["step"], "error": f["error"]} for image, f in failures.items()]
    create_table_artifact(rows, key=key, description=f"{len(rows)} image(s) failed")
