"""Served flow runs forked from a process that has already imported haloflow.

Prefect's runner starts each run of a served flow in a new process with the
``spawn`` method (``prefect.flow_engine.run_flow_in_subprocess``), which then
imports Prefect and ``flows.pipeline`` again before the run's first step:
2.4-3.5 s on two cores, paid by every run started from the UI or a schedule.

:func:`forked_flow_runs` gives that function Python's ``forkserver`` method
instead: one server process, started when serving starts, imports those
modules once, and each run is a fork of it (about 15 ms). A run still gets a
fresh interpreter state of its own, the serving process's working directory,
``sys.path`` and environment at the time it starts (Prefect passes the
environment to the run itself), and is stopped as before (a signal to its
process id). Where ``forkserver`` is not available (Windows, macOS's default
is kept) or Prefect no longer takes its context this way, runs are spawned
as Prefect does it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import warnings
from collections.abc import Iterator, Sequence

from flows.runner import forkserver_usable

#: What the fork server imports once: Prefect's flow engine, the flows, and what a run imports lazily.
PRELOAD = ("prefect.flow_engine", "flows.pipeline", "flows.run_preload")


class _ForkserverFirst:
    """Stands in for the ``multiprocessing`` module where Prefect asks it for the ``spawn`` context."""

    def __init__(self, context):
        self._context = context

    def get_context(self, method=None):
        return self._context if method == "spawn" else multiprocessing.get_context(method)

    def __getattr__(self, name):
        return getattr(multiprocessing, name)


@contextlib.contextmanager
def forked_flow_runs(preload: Sequence[str] = PRELOAD) -> Iterator[bool]:
    """Within the block, served flow runs fork from a fork server that has imported `preload`; yield whether they do.

    Start it after the environment the runs need is set: the fork server
    imports `preload` with the environment of that moment.
    """
    import prefect.flow_engine as engine

    if not forkserver_usable() or engine.multiprocessing is not multiprocessing:
        yield False
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    try:
        multiprocessing.forkserver.ensure_running()  # now, not when the first run is waiting
    except OSError as error:  # no Unix socket or pipe for it here: runs are spawned as Prefect does it
        warnings.warn(f"haloflow serve: runs start in new processes, the fork server did not start: {error}",
                      RuntimeWarning, stacklevel=2)
        yield False
        return
    engine.multiprocessing = _ForkserverFirst(context)
    try:
        yield True
    finally:
        engine.multiprocessing = multiprocessing
