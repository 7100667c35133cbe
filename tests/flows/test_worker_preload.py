"""The local workers' preload: imports, and the worker settings it makes before the worker starts its timers."""

from __future__ import annotations

import platform

import dask
import distributed
import pytest

from flows import worker_preload


def _worker_settings(dask_worker):
    import sys

    from prefect.context import SettingsContext

    kernels = sys.modules.get("imageops.smoothing")
    loaded = set() if kernels is None else {tuple(str(a.dtype) for a in sig[:2]) for sig in kernels._rows.signatures}
    histogram = sys.modules.get("imageops.histogram")
    if histogram is not None:
        loaded |= {("histogram", str(sig[0].dtype)) for sig in histogram._count.signatures}
    return (dask.config.get("distributed.worker.profile.enabled"), sorted(dask_worker.periodic_callbacks),
            "flows.pipeline" in sys.modules, loaded, getattr(SettingsContext, "_haloflow_reuses_settings", False))


def test_preloaded_workers_run_no_statistical_profiler_and_have_imported_the_flows():
    """The flows too: a stage task carries its flow run's context, and the worker imports the flow to read it.

    And the compiled smoothing and histogram kernels are loaded before the first task (a process's first call
    costs about 0.4 s), and Prefect's settings are built once per run, not once per task.
    """
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, preload=["flows.worker_preload"]) as cluster:
        with distributed.Client(cluster) as client:
            ((enabled, callbacks, flows_imported, kernels, reuses),) = client.run(_worker_settings).values()
    assert enabled is False
    assert "profile" not in callbacks and "heartbeat" in callbacks
    assert flows_imported
    assert ("uint16", "float32") in kernels
    assert {("histogram", "float32"), ("histogram", "float64")} <= kernels
    assert reuses  # each task's Prefect settings built once per run (flows.prefect_settings)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt only")
def test_tune_malloc_sets_glibc_thresholds():
    assert worker_preload.tune_malloc() is True
