"""Compute Dask collections on the cluster a stage task is running on.

Pure Dask: this module must not import prefect.  Stage tasks build a chunk
graph (``dask.array`` ...) and call :func:`compute_on_cluster` to run it.
"""

from __future__ import annotations

import os
from typing import Any

import dask

__all__ = ["StageCancelled", "cluster_threads", "compute_each", "compute_on_cluster", "current_worker_address"]

#: States of a worker's task that is still wanted: running, or running seceded (``worker_client``).
_RUNNING_STATES = ("executing", "long-running")


class StageCancelled(RuntimeError):
    """The worker task running a stage was released by the scheduler: its chunk tasks were cancelled."""


def _current_worker():
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_worker()
    except ValueError:
        return None


def _default_client():
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    if getattr(client, "asynchronous", False) or client.status not in ("running", "connecting"):
        return None
    return client


def current_worker_address() -> str | None:
    """Address of the Dask worker running the caller, or ``None`` outside workers."""
    worker = _current_worker()
    return None if worker is None else worker.address


def cluster_threads() -> int:
    """How many tasks the caller's cluster runs at once: its workers' threads, or this machine's cores outside one."""
    if _current_worker() is not None:
        from distributed import get_client

        client = get_client()
    else:
        client = _default_client()
    if client is None:
        return os.cpu_count() or 1
    return max(1, sum(client.nthreads().values()))


def compute_on_cluster(*collections: Any, **compute_kwargs: Any) -> Any:
    """Compute Dask collections where the caller runs, the way ``dask.compute`` does.

    * Inside a Dask worker (e.g. a Prefect task on a ``DaskTaskRunner``): on the
      same cluster through :func:`distributed.worker_client`, which *secedes*
      the calling thread from the worker's pool while the graph runs, so the
      chunk tasks can use that slot too (``prefect_dask.get_dask_client`` does
      not secede, and would hold one slot idle per stage).
    * Else, if a default ``distributed.Client`` exists: with that client.
    * Else: ``dask.compute`` with the threaded scheduler.

    Returns the single result for one collection, a tuple for several.
    ``compute_kwargs`` go to ``Client.compute`` / ``dask.compute``.

    Examples
    --------
    >>> import dask.array as da
    >>> int(compute_on_cluster(da.ones((4, 4), chunks=2).sum()))
    16
    >>> a, b = compute_on_cluster(da.ones(3, chunks=2).sum(), da.zeros(2, chunks=1).sum())
    >>> float(a), float(b)
    (3.0, 0.0)
    """
    if not collections:
        raise TypeError("compute_on_cluster() needs at least one collection")

    worker = _current_worker()
    if worker is not None:
        from distributed import worker_client

        key = _current_task_key(worker)
        with worker_client() as client:
            results = _gather_while_wanted(client, client.compute(list(collections), **compute_kwargs), worker, key)
    else:
        client = _default_client()
        if client is not None:
            results = client.gather(client.compute(list(collections), **compute_kwargs))
        else:
            compute_kwargs.setdefault("scheduler", "threads")
            results = dask.compute(*collections, **compute_kwargs)

    return results[0] if len(collections) == 1 else tuple(results)


def compute_each(collections: list[Any], on_done=None, *, every: float = 0.5) -> list[Any]:
    """Compute many collections on the caller's cluster, reporting progress as they finish.

    ``on_done(done, total)`` is called at most every ``every`` seconds while
    results arrive, and once at the end. Results come back in input order.
    Outside a cluster, everything is computed at once with the threaded
    scheduler and ``on_done`` is called once.

    >>> import dask.array as da
    >>> seen = []
    >>> [int(r) for r in compute_each([da.ones(2).sum(), da.ones(3).sum()], lambda d, t: seen.append((d, t)))]
    [2, 3]
    >>> seen[-1]
    (2, 2)
    """
    import time

    collections = list(collections)
    total = len(collections)
    if not total:
        if on_done:
            on_done(0, 0)
        return []
    worker, client = _current_worker(), None
    if worker is None:
        client = _default_client()
        if client is None:
            results = list(dask.compute(*collections, scheduler="threads"))
            if on_done:
                on_done(total, total)
            return results

    from distributed import worker_client

    last = time.monotonic()

    def report(done: int) -> None:
        nonlocal last
        if on_done and (time.monotonic() - last >= every or done == total):
            on_done(done, total)
            last = time.monotonic()

    if worker is not None:
        key = _current_task_key(worker)
        with worker_client() as active:
            return _gather_while_wanted(active, active.compute(collections), worker, key, report)
    return _gather_while_wanted(client, client.compute(collections), None, None, report)


def _gather_while_wanted(client, futures: list[Any], worker, key, report=None) -> list[Any]:
    """The futures' results in their order, as they finish; stopped when the calling worker task is released.

    A stage task computes its chunk tasks from a worker (``worker_client``);
    they belong to that worker's client, not to the flow run's. If the flow
    run goes away (cancelled from the UI, its process killed), the scheduler
    releases the stage task, but the thread running it goes on: without this
    check its remaining chunk tasks would run to the end on a cluster shared
    with other runs. Checked each time a chunk task finishes: the remaining
    ones are cancelled and :class:`StageCancelled` is raised.
    """
    from distributed import as_completed

    position = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    done = 0
    try:
        for future in as_completed(futures):
            if key is not None and not _still_wanted(worker, key):
                raise StageCancelled(
                    f"the task {key!r} was released by the Dask scheduler (its flow run was cancelled or went "
                    f"away): its {len(futures) - done} unfinished chunk task(s) were cancelled")
            results[position[future.key]] = future.result()
            done += 1
            if report is not None:
                report(done)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def _current_task_key(worker):
    """The key of the task the calling thread runs on ``worker``; ``None`` outside a task."""
    try:
        return worker.get_current_task()
    except (KeyError, AttributeError):
        return None


def _still_wanted(worker, key) -> bool:
    """Whether the worker still runs ``key`` for the scheduler (not released or cancelled meanwhile)."""
    state = worker.state.tasks.get(key)
    return state is not None and state.state in _RUNNING_STATES
