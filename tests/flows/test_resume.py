"""Stages never redo work and never lose it: content caching, chunk-level resume, retries."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import yaml
import zarr
from scipy import ndimage as ndi

from flows.demo import demo_volume
from tasks import io

pytestmark = pytest.mark.slow

STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold", "method": "otsu"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area"], "intensity": None},
]


def modification_times(out: Path) -> dict[str, int]:
    """Every file the stages wrote, with its modification time (ns)."""
    return {
        str(path.relative_to(out)): path.stat().st_mtime_ns
        for path in out.rglob("*")
        if path.is_file() and ".haloflow" not in path.relative_to(out).parts[:1] and path.name != "run.json"
    }


def stage_statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((out / "run.json").read_text())["stages"]}


def task_run_states(api_url: str, flow_run_id: str) -> dict[str, str]:
    response = httpx.post(f"{api_url}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    response.raise_for_status()
    return {run["name"]: run["state"]["name"] for run in response.json()}


@pytest.fixture
def run_flow(dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))

    def run(source, out, steps=STEPS, chunks=(10, 24, 20)):
        state = flow(input=str(source), steps=steps, output=str(out), chunks=list(chunks), return_state=True)
        assert state.is_completed(), state
        return state

    return run


def test_identical_rerun_is_cached_and_rewrites_nothing(tmp_path, run_flow, prefect_api_url):
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, demo_volume((24, 48, 40), n_objects=30, seed=5))
    out = tmp_path / "out"
    first = run_flow(source, out)
    before = modification_times(out)
    assert any(name.endswith("zarr.json") for name in before) and "04_measure.csv" in before
    second = run_flow(source, out)
    assert modification_times(out) == before
    assert set(stage_statuses(out).values()) == {"cached"}
    states = task_run_states(prefect_api_url, str(second.state_details.flow_run_id))
    assert set(states.values()) == {"Cached"}, states
    assert first.state_details.flow_run_id != second.state_details.flow_run_id

    # A changed threshold recomputes threshold, label and measure; gaussian stays as it was.
    changed = [STEPS[0], {"op": "threshold", "method": "manual", "value": 30000}, *STEPS[2:]]
    run_flow(source, out, steps=changed)
    assert stage_statuses(out) == {"01_gaussian": "cached", "02_threshold": "computed", "03_label": "computed", "04_measure": "computed"}
    after = modification_times(out)
    assert {k: v for k, v in after.items() if k.startswith("01_")} == {k: v for k, v in before.items() if k.startswith("01_")}
    assert after["04_measure.csv"] != before["04_measure.csv"]

    # A deleted store is recomputed, not trusted from Prefect's cache.
    import shutil

    shutil.rmtree(out / "01_gaussian.ome.zarr")
    run_flow(source, out, steps=changed)
    statuses = stage_statuses(out)
    assert statuses["01_gaussian"] == "computed"
    assert io.is_complete(out / "01_gaussian.ome.zarr")
    # Its content is the same, so the later stages' fingerprints are too: they stay cached.
    assert statuses["02_threshold"] == statuses["03_label"] == "cached"


def test_incomplete_store_is_never_trusted(tmp_path, run_flow):
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, demo_volume((20, 40, 40), n_objects=20, seed=6))
    out = tmp_path / "out"
    run_flow(source, out)
    # Undo the seal of the label store, as a crash before its last write would leave it.
    group = zarr.open_group(str(out / "03_label.ome.zarr"), mode="r+")
    group.attrs["haloflow"] = {**group.attrs["haloflow"], "complete": False}
    run_flow(source, out)
    assert stage_statuses(out)["03_label"] in ("computed", "resumed")
    assert io.is_complete(out / "03_label.ome.zarr")


SLOW_STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "median", "size": 7},
    {"op": "threshold", "method": "otsu"},
]


def test_killed_run_resumes_only_missing_blocks(tmp_path):
    image = demo_volume((32, 192, 192), n_objects=100, seed=8)
    source = tmp_path / "volume.tif"
    tifffile.imwrite(source, image)
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(source), "chunks": [16, 48, 48], "steps": SLOW_STEPS, "output": str(out)}))
    command = [sys.executable, "-m", "flows.cli", "run", str(spec), "--workers", "1"]
    median_store = out / "02_median.ome.zarr"
    markers = median_store / ".haloflow-done"
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if markers.is_dir() and len(os.listdir(markers)) >= 12:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be interrupted: " + process.stderr.read().decode()[-2000:]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    gaussian_times = {p: p.stat().st_mtime_ns for p in (out / "01_gaussian.ome.zarr").rglob("*") if p.is_file()}
    assert io.is_complete(out / "01_gaussian.ome.zarr")
    assert not io.is_complete(median_store)
    done_at_kill = len([n for n in os.listdir(markers) if not n.endswith(".tmp")])
    total = 2 * 4 * 4
    assert 12 <= done_at_kill < total

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    record = {s["name"]: s for s in json.loads((out / "run.json").read_text())["stages"]}
    assert record["01_gaussian"]["status"] == "cached"
    assert {p: p.stat().st_mtime_ns for p in (out / "01_gaussian.ome.zarr").rglob("*") if p.is_file()} == gaussian_times
    median = record["02_median"]
    assert median["status"] == "resumed"
    assert median["info"]["blocks"] == {"total": total, "reused": done_at_kill, "written": total - done_at_kill}
    expected = ndi.median_filter(ndi.gaussian_filter(image.astype(np.float32), 1.0, mode="nearest"), size=7, mode="nearest")
    np.testing.assert_array_equal(zarr.open_array(str(median_store), path="0", mode="r")[...], expected)
    print(f"resumed: {total - done_at_kill} of {total} blocks recomputed ({(total - done_at_kill) / total:.0%})")


class _FailOnce:
    """Wraps ``tasks.steps.open_lazy``: the first call raises ``error``."""

    def __init__(self, original, error):
        self.original, self.error, self.calls = original, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.original(*args, **kwargs)


def _thread_pool_flow():
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows import large_image_flow

    return large_image_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))


def test_transient_read_error_succeeds_through_a_retry(tmp_path, monkeypatch):
    from tasks import steps

    tifffile.imwrite(tmp_path / "v.tif", demo_volume((10, 30, 30), n_objects=5, seed=1))
    flaky = _FailOnce(steps.open_lazy, OSError(errno.EIO, "input/output error (injected)"))
    monkeypatch.setattr(steps, "open_lazy", flaky)
    state = _thread_pool_flow()(input=str(tmp_path / "v.tif"), steps=STEPS[:1], output=str(tmp_path / "out"), return_state=True)
    assert state.is_completed()
    assert flaky.calls == 2
    assert io.is_complete(tmp_path / "out" / "01_gaussian.ome.zarr")


def test_data_error_is_not_retried(tmp_path, monkeypatch):
    from tasks import steps

    tifffile.imwrite(tmp_path / "v.tif", demo_volume((10, 30, 30), n_objects=5, seed=1))
    broken = _FailOnce(steps.open_lazy, ValueError("bad data (injected)"))
    monkeypatch.setattr(steps, "open_lazy", broken)
    state = _thread_pool_flow()(input=str(tmp_path / "v.tif"), steps=STEPS[:1], output=str(tmp_path / "out"), return_state=True)
    assert state.is_failed()
    assert broken.calls == 1
    assert "bad data (injected)" in str(state.message) or "bad data" in repr(state.result(raise_on_failure=False))
    assert not io.is_complete(tmp_path / "out" / "01_gaussian.ome.zarr")
