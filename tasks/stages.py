"""Prefect tasks: one stage each, run on the flow's Dask cluster, passing references.

A large-image stage is one task that computes one step's chunk graph on the
cluster. A batch stage is one task per step over a group of images, each
image computed whole on a worker: Prefect's bookkeeping stays per stage,
never per chunk or per small image.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
from prefect import task

from imageops.registry import OpParams
from tasks import io, steps
from tasks.reference import ArrayRef, TableRef, fingerprint
from tasks.steps import StepResult, Upstream


@task(name="image-stage", task_run_name="{key}")
def image_stage(params: OpParams, upstream: Upstream, store: str, key: str, chunks: list[int] | None = None) -> StepResult:
    """Run one image-producing step over chunks on the cluster and write its store."""
    return steps.run_image_step(params, upstream, store, name=key, chunks=chunks)


@task(name="table-stage", task_run_name="{key}")
def table_stage(params: OpParams, labels: ArrayRef, table: str, key: str, intensity: Upstream | None = None) -> StepResult:
    """Measure objects over chunks on the cluster and write the table."""
    return steps.run_table_step(params, labels, table, intensity=intensity)


@task(name="batch-image-stage", task_run_name="{key}")
def batch_image_stage(
    params: OpParams, upstreams: dict[str, Upstream], stores: dict[str, str], key: str, chunks: list[int] | None = None
) -> dict[str, StepResult]:
    """Run one step on every image, each image on its own worker task, whole or in the given chunks."""
    work = [
        dask.delayed(steps.run_image_step)(
            params, upstream, stores[image], name=key, chunks=_image_chunks(upstream, chunks), compute=steps.local_compute
        )
        for image, upstream in upstreams.items()
    ]
    results = steps.cluster_compute(*work)
    return dict(zip(upstreams, results))


@task(name="batch-table-stage", task_run_name="{key}")
def batch_table_stage(
    params: OpParams,
    labels: dict[str, ArrayRef],
    table: str,
    key: str,
    intensity: dict[str, Upstream] | None = None,
) -> StepResult:
    """Measure every image's objects and write one table with an ``image`` column first."""
    work = [
        dask.delayed(steps.measure_columns)(
            params, ref, intensity=None if intensity is None else intensity[image], compute=steps.local_compute
        )
        for image, ref in labels.items()
    ]
    per_image = steps.cluster_compute(*work)
    columns = concatenate_tables(list(labels), per_image)
    io.write_table(columns, table)
    rows = len(columns["image"])
    parts = [ref.fingerprint for ref in labels.values()] + [params.model_dump(mode="json", exclude={"name"})]
    ref = TableRef(table, rows, tuple(columns), fingerprint(*parts))
    return StepResult(ref, 0.0, info={"rows": rows})


def concatenate_tables(images: list[str], tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One table from per-image tables, with the image's name as the first column."""
    names = list(tables[0]) if tables else []
    columns: dict[str, Any] = {"image": np.concatenate([np.full(len(t[names[0]]) if names else 0, image, dtype=object) for image, t in zip(images, tables)]) if tables else np.empty(0, object)}
    for name in names:
        columns[name] = np.concatenate([t[name] for t in tables])
    return columns


def _image_chunks(upstream: Upstream, chunks):
    """Batch images are processed whole unless the spec gives chunks."""
    if chunks is not None:
        return chunks
    return upstream.shape if isinstance(upstream, io.InputSpec) else None
