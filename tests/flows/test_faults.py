"""Faults a cluster has: a worker killed mid-stage, a write refused. Nothing is lost or looks done when it is not."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from scipy import ndimage as ndi

from flows.demo import demo_volume
from tasks import io

pytestmark = pytest.mark.slow

STEPS = [{"op": "gaussian", "sigma": 1.0}, {"op": "median", "size": 5}, {"op": "threshold"}]


def reference(image: np.ndarray) -> dict[str, np.ndarray]:
    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0, mode="nearest")
    median = ndi.median_filter(smooth, size=5, mode="nearest")
    from skimage.filters import threshold_otsu

    return {"01_gaussian": smooth, "02_median": median, "03_threshold": median > threshold_otsu(median)}


def stored(out, name):
    return zarr.open_array(str(out / f"{name}.ome.zarr"), path="0", mode="r")[...]


def test_worker_killed_mid_stage_still_gives_the_right_result(tmp_path):
    import distributed

    from flows import large_image_flow
    from flows.runner import make_task_runner

    image = demo_volume((48, 160, 160), n_objects=120, seed=9)
    tifffile.imwrite(tmp_path / "v.tif", image)
    out = tmp_path / "out"
    markers = out / "02_median.ome.zarr" / ".haloflow-done"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            distributed.Client(cluster) as client:
        killed = []

        def kill_one_worker_mid_stage():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if markers.is_dir() and len(os.listdir(markers)) >= 4:
                    pids = client.run(os.getpid)
                    victim = sorted(pids)[-1]
                    os.kill(pids[victim], signal.SIGKILL)  # the nanny starts a new worker process
                    killed.append(victim)
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_one_worker_mid_stage, daemon=True)
        killer.start()
        flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=cluster.scheduler_address))
        result = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[12, 40, 40])
        killer.join(timeout=5)
    assert killed, "no worker was killed: the stage ended too fast to interrupt"
    expected = reference(image)
    for name, values in expected.items():
        assert io.is_complete(out / f"{name}.ome.zarr")
        np.testing.assert_allclose(stored(out, name), values, atol=1e-5 * float(np.ptp(values)) if values.dtype != bool else 0)
    assert result["status"] == "completed"


class _RefuseWrites:
    """Stand-in for ``tasks.io._write_block`` in one store: the disk is full."""

    def __init__(self, original, store_suffix):
        self.original, self.store_suffix, self.calls = original, store_suffix, 0

    def __call__(self, block, store, *args, **kwargs):
        if store.endswith(self.store_suffix):
            self.calls += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)", store)
        return self.original(block, store, *args, **kwargs)


def test_refused_write_is_a_clear_error_and_nothing_looks_complete(tmp_path, monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import large_image_flow

    image = demo_volume((12, 48, 48), n_objects=10, seed=3)
    tifffile.imwrite(tmp_path / "v.tif", image)
    out = tmp_path / "out"
    refuse = _RefuseWrites(io._write_block, "02_median.ome.zarr")
    monkeypatch.setattr(io, "_write_block", refuse)
    flow = large_image_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))
    state = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[6, 24, 24], return_state=True)
    assert state.is_failed()
    assert "No space left on device" in state.message
    assert refuse.calls >= 1
    assert io.is_complete(out / "01_gaussian.ome.zarr")  # the earlier stage is intact
    assert not io.is_complete(out / "02_median.ome.zarr")
    assert not (out / "03_threshold.ome.zarr").exists()
    gaussian_times = {p: p.stat().st_mtime_ns for p in (out / "01_gaussian.ome.zarr").rglob("*") if p.is_file()}

    monkeypatch.setattr(io, "_write_block", refuse.original)  # the disk has room again
    state = flow(input=str(tmp_path / "v.tif"), steps=STEPS, output=str(out), chunks=[6, 24, 24], return_state=True)
    assert state.is_completed()
    assert {p: p.stat().st_mtime_ns for p in (out / "01_gaussian.ome.zarr").rglob("*") if p.is_file()} == gaussian_times
    for name, values in reference(image).items():
        np.testing.assert_allclose(stored(out, name), values, atol=1e-5 * float(np.ptp(values)) if values.dtype != bool else 0)


def test_prefect_api_lost_mid_run_keeps_the_chunk_work_and_a_rerun_resumes(tmp_path):
    """The Prefect server dies while a stage's chunks are being written: the run ends saying so, what was
    written stays, and the same command run again resumes the stage from the blocks already written."""
    from skimage.filters import threshold_otsu

    from flows.runner import LocalServer

    image = demo_volume((32, 128, 128), n_objects=60, seed=8)
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, image)
    out = tmp_path / "out"
    slow_steps = [{"op": "gaussian", "sigma": 1.0}, {"op": "median", "size": 7}, {"op": "threshold"}]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(source), "chunks": [16, 32, 32], "steps": slow_steps, "output": str(out)}))
    command = [sys.executable, "-m", "flows.cli", "run", str(spec), "--workers", "1"]
    median_store = out / "02_median.ome.zarr"
    markers = median_store / ".haloflow-done"
    total = 2 * 4 * 4

    server = LocalServer.start(home=tmp_path / "prefect-home", ui=False, seed_database=True)
    # Prefect's client retries a lost connection 5 times with backoff (minutes in all); the server is
    # gone for good here, so no client retries (the stage task's own retries still run).
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if markers.is_dir() and len(os.listdir(markers)) >= 4:
                break
            time.sleep(0.01)
        assert first.poll() is None, "the run ended before the API could be taken away: " + first.stderr.read()[-2000:]
        server.process.kill()  # the API is gone, abruptly, mid-stage
        server.process.wait(timeout=30)
        _, first_err = first.communicate(timeout=300)
    finally:
        server.stop()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 1, first_err[-3000:]
    last_lines = "\n".join(first_err.strip().splitlines()[-2:])
    assert f"lost the Prefect API at {server.api_url}" in last_lines and "run the same command again" in last_lines
    assert "Traceback" not in last_lines
    # The chunk work written while (and after) the API went away is on disk; nothing unfinished looks complete.
    kept = len([n for n in os.listdir(markers) if not n.endswith(".tmp")])
    assert kept >= 4
    assert io.is_complete(out / "01_gaussian.ome.zarr")
    if kept < total:  # (with every block written, the stage may or may not have sealed its store before the end)
        assert not io.is_complete(median_store)
    assert not io.is_complete(out / "03_threshold.ome.zarr")

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)  # the session's API
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    record = {s["name"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert record["01_gaussian"]["status"] == "cached"
    median = record["02_median"]
    if kept < total:
        assert median["status"] == "resumed"
        assert median["info"]["blocks"] == {"total": total, "reused": kept, "written": total - kept}
    else:
        assert median["status"] in ("cached", "resumed")
        assert median["status"] == "cached" or median["info"]["blocks"]["written"] == 0
    expected = ndi.median_filter(ndi.gaussian_filter(image.astype(np.float32), 1.0, mode="nearest"), size=7, mode="nearest")
    np.testing.assert_array_equal(zarr.open_array(str(median_store), path="0", mode="r")[...], expected)
    np.testing.assert_array_equal(stored(out, "03_threshold"), expected > threshold_otsu(expected))
    print(f"API lost: {kept} of {total} median blocks kept; the rerun: {median['status']} {median['info'].get('blocks')}")
