"""Preloaded by each local Dask worker as it starts: import what a stage task needs, before the first one arrives.

A fresh worker process otherwise pays these imports (Prefect's task engine,
SciPy, scikit-image, zarr) when its first stage task lands on it, one worker
after the other, while the flow waits; preloaded, the workers import them in
parallel while the cluster starts.
"""

from __future__ import annotations

import prefect.task_engine  # noqa: F401

import tasks.stages  # noqa: F401  (the stage tasks, and through them the ops, SciPy, scikit-image, zarr)
