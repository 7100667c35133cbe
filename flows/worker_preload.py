"""Preloaded by each local Dask worker as it starts: import what a stage task needs, before the first one arrives.

A fresh worker process otherwise pays these imports (Prefect's task engine,
SciPy, scikit-image, zarr, the compiled smoothing and histogram kernels) when
its first stage task lands on it, one worker after the other, while the flow
waits; preloaded, the workers import them in
parallel while the cluster starts.  A worker of haloflow's own local cluster
is forked from a process that has imported them already
(:func:`flows.runner.forked_workers`), so it reads Prefect's settings again
from its own environment (:func:`refresh_prefect_settings`).

It also gives the worker's memory allocator back the thresholds glibc
settles on by itself (:func:`tune_malloc`), and turns off the worker's
statistical profiler (:data:`QUIET`), read after preloads run.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import dask

from flows.prefect_settings import reuse_prefect_settings
from flows.runner import prepare_worker_code

# Prefect's task engine, the stage tasks (the ops, SciPy, scikit-image, zarr) and the compiled smoothing and histogram
# kernels: already there in a worker forked from a process that prepared them.
prepare_worker_code()

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: Blocks below this size come from the heap, not from a fresh ``mmap`` each (whose every page the
#: kernel zero-fills on first touch). 48 MiB holds a default block of float32 (32 MiB) and the filter's
#: arrays of it with its halo (43 MiB for 128x256x256 and sigma 2). Cold 256x1024x1024 runs, four
#: alternating pairs: 15.2-15.7 s against 16.1-16.7 s with 4 MiB; the run's peak memory (PSS of the
#: process tree) 0.90-0.94 GiB with :data:`ARENAS`, against 0.82 GiB with 4 MiB.
MMAP_THRESHOLD = 48 * 2**20
#: Free memory kept at the top of a heap before it is returned to the system: the same (32, 64 MiB
#: and 64 MiB with twice that kept, as glibc pairs them by itself, were no quicker).
TRIM_THRESHOLD = MMAP_THRESHOLD
#: Heaps ("arenas") a worker's threads share: the task thread, the event loop's, those of seceded stage
#: tasks. glibc gives threads up to 8 per core, each keeping its own free memory: over five served runs
#: on one cluster, its process tree's peak RSS rose 1.17 -> 1.50 GiB with as many arenas as glibc
#: likes, 1.15 -> 1.25 GiB with two.
ARENAS = 2


def tune_malloc() -> bool:
    """Let temporaries under :data:`MMAP_THRESHOLD` reuse heap memory instead of a fresh ``mmap`` (and page faults) each.

    The worker's threads share :data:`ARENAS` heaps, so what is kept free for
    reuse is kept a bounded number of times.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; set at
    all, it stops glibc from raising its mmap threshold as it otherwise does,
    so every array over 128 KiB is mapped, zeroed by the kernel and unmapped
    again. Measured on a 4-Mvoxel float32 block: ``np.histogram`` 0.09-0.14 CPU s
    in such a worker, 0.04 s in a plain process, 0.05-0.06 s with a 4 MiB
    threshold (see :data:`MMAP_THRESHOLD` for the one set now). Returns
    False where there is no glibc ``mallopt`` (nothing changed).
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENAS))
    return all([mallopt(option, value) for option, value in settings])  # every one tried, even after a refusal


#: Dask settings of the worker process. Its profiler samples every computing thread's stack every
#: 10 ms (for the dashboard, which local clusters here do not serve): about 1 CPU s of a 10 s
#: 64x1024x1024 run's stages on two workers.
QUIET = {"distributed.worker.profile.enabled": False}


def refresh_prefect_settings() -> None:
    """Read Prefect's settings again from this worker's environment.

    A worker forked from a process that imported Prefect
    (:func:`flows.runner.forked_workers`) holds that process's settings,
    read before the nanny gave the worker its environment (the run's
    ``PREFECT_API_URL``).  A task run brings its flow's settings with it;
    this is for everything else in the worker.
    """
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def dask_setup(worker) -> None:
    """Called by distributed in each worker as it starts, after this module's import.

    A worker forked from a process that had imported this module already
    (:func:`flows.runner.forked_from_here`) does not run the module's code
    again: it inherits the malloc thresholds and the Dask settings, but
    Prefect's settings must still be read from its own environment.
    """
    refresh_prefect_settings()


tune_malloc()
dask.config.set(QUIET)
refresh_prefect_settings()
reuse_prefect_settings()  # each task's settings built once per run, not once per task
