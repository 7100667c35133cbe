"""What ``haloflow run`` prints: progress, a line per stage, the final line; ``--quiet`` and ``--verbose``."""

from __future__ import annotations

import importlib
import json
import io as _io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import prefect.main  # noqa: F401  (Prefect sets up its console logging at import: now, not on a stream a test captures)
import pytest
import tifffile
import yaml

from flows import console as console_module
from flows.cli import main as cli_main
from flows.console import Console, tame_logs
from flows.demo import demo_volume
from flows.progress import Progress

STEPS = [
    {"op": "gaussian", "sigma": 1.0},
    {"op": "threshold", "method": "otsu"},
    {"op": "label"},
    {"op": "measure", "properties": ["label", "area"], "intensity": None},
]
STAGES = ["01_gaussian", "02_threshold", "03_label", "04_measure"]


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("volume") / "volume.tif"
    tifffile.imwrite(path, demo_volume((16, 48, 40), n_objects=12, seed=3))
    return path


def write_spec(folder: Path, source: Path) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(source), "chunks": [8, 24, 20], "steps": STEPS, "output": str(folder / "out")}))
    return spec


def stage_summaries(stdout: str) -> list[str]:
    """The stages named by the output's summary lines (``  01_gaussian  computed  ...``), in order.

    A stage still running after 10 s also gets plain progress lines, indented
    the same (``  04_measure  measuring``): they are not summaries.
    """
    lines = [line.split() for line in stdout.splitlines() if line.startswith("  ")]
    return [words[0] for words in lines if len(words) > 1 and words[1] in ("computed", "cached", "resumed", "fused")]


def run_process(*args: str) -> subprocess.CompletedProcess:
    """``haloflow`` in its own process, reporting to the session's Prefect server (PREFECT_API_URL is inherited)."""
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300, env=env)


# --------------------------------------------------------------------------- the console alone


def test_live_progress_is_one_updating_line_then_the_stage_line():
    out = _io.StringIO()
    console = Console("normal", out=out, live=True)
    console.progress(Progress("01_gaussian", None, None, "blocks", "starting"))
    console.progress(Progress("01_gaussian", 2, 8, "blocks"))
    console.progress(Progress("01_gaussian", 8, 8, "blocks"))
    console.stage({"name": "01_gaussian", "status": "computed", "seconds": 0.5, "info": {"blocks": {"total": 8, "written": 8, "reused": 0}}})
    text = out.getvalue()
    assert "\r  01_gaussian     [" in text and "8/8 blocks  100%" in text
    assert text.count("\n") == 1  # the progress line is redrawn in place, the stage line ends it
    assert text.rsplit("\r", 1)[-1].startswith("  01_gaussian     computed     0.5 s  8 blocks")


def test_plain_progress_lines_when_not_a_terminal():
    out = _io.StringIO()
    console = Console("normal", out=out, live=False, every=0.0)
    console.progress(Progress("02_threshold", 3, 8, "blocks"))
    console.progress(Progress("02_threshold", 8, 8, "blocks"))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2 and "3/8 blocks   38%" in lines[0] and "8/8 blocks  100%" in lines[1]


def test_quiet_console_prints_errors_and_the_final_line_only():
    out, err = _io.StringIO(), _io.StringIO()
    console = Console("quiet", out=out, err=err)
    console.info("haloflow: 4 steps on a.tif into out")
    console.progress(Progress("01_gaussian", 2, 8, "blocks"))
    console.stage({"name": "01_gaussian", "status": "computed", "seconds": 0.5, "info": {}})
    console.error("haloflow: the run failed: boom")
    console.final("haloflow: done")
    assert out.getvalue() == "haloflow: done\n"
    assert err.getvalue() == "haloflow: the run failed: boom\n"


def test_tame_logs_raises_prefect_console_level_for_the_block_only():
    from prefect.logging.handlers import PrefectConsoleHandler

    handler = PrefectConsoleHandler(stream=_io.StringIO())
    handler.setLevel(logging.NOTSET)
    logger = logging.getLogger("haloflow-test-tame")
    logger.addHandler(handler)
    try:
        with tame_logs(Console("normal", out=_io.StringIO())):
            assert handler.level == logging.WARNING
            assert os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING") == "WARNING"
        assert handler.level == logging.NOTSET
    finally:
        logger.removeHandler(handler)


# --------------------------------------------------------------------------- whole runs


def test_run_draws_progress_and_a_summary_line_per_stage(tmp_path, volume_path, capsys, monkeypatch, dask_cluster):
    monkeypatch.setattr(console_module, "_is_terminal", lambda stream: True)
    spec = write_spec(tmp_path, volume_path)
    assert cli_main(["run", str(spec), "--cluster", dask_cluster]) == 0
    out = capsys.readouterr().out
    assert "\r" in out and "8/8 blocks  100%" in out  # the progress line, redrawn in place
    lines = [line.rsplit("\r", 1)[-1].strip() for line in out.splitlines()]
    summaries = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in STAGES}
    assert list(summaries) == STAGES
    assert all(line.split()[1] == "computed" for line in summaries.values())
    assert "8 blocks" in summaries["01_gaussian"] and "threshold" in summaries["02_threshold"]
    assert "objects" in summaries["03_label"] and "rows" in summaries["04_measure"]
    assert lines[-1].startswith("haloflow: done in ") and "objects" in lines[-1]


def test_normal_run_keeps_prefect_and_dask_logs_out(tmp_path, volume_path, dask_cluster):
    done = run_process("run", str(write_spec(tmp_path, volume_path)), "--cluster", dask_cluster)
    assert done.returncode == 0, done.stderr
    stages = stage_summaries(done.stdout)
    assert stages == STAGES, done.stdout
    assert done.stdout.splitlines()[-1].startswith("haloflow: done in ")
    for noise in ("INFO", "Beginning flow run", "dashboard", "Finished in state"):
        assert noise not in done.stdout + done.stderr, done.stderr


def test_quiet_run_prints_only_the_final_line(tmp_path, volume_path, dask_cluster):
    done = run_process("run", str(write_spec(tmp_path, volume_path)), "--cluster", dask_cluster, "--quiet")
    assert done.returncode == 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("haloflow: done in "), lines
    assert (tmp_path / "out" / "03_label.ome.zarr").is_dir()


def test_quiet_run_still_prints_errors(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"input": str(tmp_path / "missing.tif"), "steps": STEPS, "output": str(tmp_path / "out")}))
    assert cli_main(["run", str(spec), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "missing.tif" in captured.err


def test_verbose_run_shows_prefect_logs(tmp_path, volume_path, dask_cluster):
    done = run_process("run", str(write_spec(tmp_path, volume_path)), "--cluster", dask_cluster, "--verbose")
    assert done.returncode == 0, done.stderr
    assert "Beginning flow run" in done.stderr and "Finished in state Completed" in done.stderr
    assert stage_summaries(done.stdout) == STAGES


def test_a_batch_poll_looks_at_a_bounded_number_of_unfinished_images(tmp_path, monkeypatch):
    from flows import progress as progress_module
    from flows.spec import load_spec
    from tasks import storage

    spec = load_spec({"flow": "batch", "input": str(tmp_path / "*.tif"), "output": str(tmp_path / "out"),
                      "steps": [{"op": "gaussian", "sigma": 1.0}]})
    images = [f"img{i:03d}" for i in range(200)]
    finished = set(images[:100]) | {images[150]}  # in input order, and one far ahead
    for image in finished:  # sealed stores (the record gives no start time: each one's fingerprint is checked)
        (tmp_path / "out" / image / "01_gaussian.ome.zarr").mkdir(parents=True)
        (tmp_path / "out" / image / "01_gaussian.ome.zarr" / "zarr.json").write_text("{}")
    looked_at = []

    def is_complete(store, expected):
        looked_at.append(store)
        return storage.basename(storage.parent(store)) in finished

    monkeypatch.setattr(progress_module.io, "is_complete", is_complete)
    monkeypatch.setattr(progress_module, "step_fingerprint", lambda step, upstream: "fp")
    monkeypatch.setattr(progress_module, "BATCH_LOOKAHEAD", 64)
    watcher = progress_module.RunWatcher(spec, lambda p: None, lambda entry: None)
    monkeypatch.setattr(watcher, "_upstream", lambda stages, image: image)
    record = {"images": images, "stages": []}
    counts = []
    for _ in range(4):
        looked_at.clear()
        counts.append(watcher._batch_progress(record, 0, "01_gaussian").done)
        assert len(looked_at) <= progress_module.BATCH_LOOKAHEAD
    assert counts == [64, 100, 101, 101]  # the image finished ahead is counted once the poll reaches it


def test_a_batch_poll_counts_an_image_whose_header_failed_as_done(tmp_path, monkeypatch):
    """The record names it at the run's start: no store comes for it, and no stage has said so yet."""
    from flows import progress as progress_module
    from flows.record import RunRecord
    from flows.spec import load_spec

    spec = load_spec({"flow": "batch", "input": str(tmp_path / "*.tif"), "output": str(tmp_path / "out"),
                      "steps": [{"op": "gaussian", "sigma": 1.0}]})
    (tmp_path / "out").mkdir()
    failed = {"broken": {"step": "read", "error": "not a TIFF"}}
    RunRecord.start(spec, str(tmp_path / "out"), images=["a", "broken"], failed=failed)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["failed"] == failed and record["status"] == "running"
    watcher = progress_module.RunWatcher(spec, lambda p: None, lambda entry: None)
    monkeypatch.setattr(watcher, "_upstream", lambda stages, image: image)
    monkeypatch.setattr(progress_module, "step_fingerprint", lambda step, upstream: "fp")
    progress = watcher._batch_progress(record, 0, "01_gaussian")
    assert (progress.done, progress.total) == (1, 2)  # "a" has no store yet


def test_a_batch_poll_counts_stores_this_run_sealed_without_reading_their_images(tmp_path, monkeypatch):
    """Working out a store's fingerprint reads its image's header: at 2000 images the bar fell far behind."""
    from flows import progress as progress_module
    from flows.spec import load_spec
    from tasks import io

    spec = load_spec({"flow": "batch", "input": str(tmp_path / "*.tif"), "output": str(tmp_path / "out"),
                      "steps": [{"op": "gaussian", "sigma": 1.0}, {"op": "threshold", "method": "otsu"}]})
    data = np.zeros((4, 5), dtype=np.float32)
    for image in ("a", "b", "old"):
        (tmp_path / "out" / image).mkdir(parents=True)
    io.save_whole(data, tmp_path / "out" / "old" / "02_threshold.ome.zarr", chunks=(4, 5), kind="image",
                  fingerprint="from an earlier run", name="t")
    started = time.time() + 2  # the stores above were sealed before this run began
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    for image in ("a", "b"):
        io.save_whole(data, tmp_path / "out" / image / "02_threshold.ome.zarr", chunks=(4, 5), kind="image",
                      fingerprint="fp", name="t")
        os.utime(tmp_path / "out" / image / "02_threshold.ome.zarr" / "zarr.json", (started + 1.5, started + 1.5))
    watcher = progress_module.RunWatcher(spec, lambda p: None, lambda entry: None)
    upstreams = []
    monkeypatch.setattr(watcher, "_upstream", lambda stages, image: upstreams.append(image) or image)
    monkeypatch.setattr(progress_module, "step_fingerprint", lambda step, upstream: "fp")
    first = {"kind": "batch", "images": {"a": {"ref": {}}, "b": {"ref": {}}, "old": {"ref": {}}, "bad": {"error": "x"},
                                         "later": {"ref": {}}}}
    record = {"images": ["a", "b", "old", "bad", "later"], "stages": [first], "started_at": stamp}
    progress = watcher._batch_progress(record, 1, "02_threshold")
    assert (progress.done, progress.total) == (3, 5)  # a and b sealed by this run, bad failed before
    assert upstreams == ["old"]  # only the store sealed before the run has its fingerprint checked (it differs)
    again = progress_module.RunWatcher(spec, lambda p: None, lambda entry: None)
    monkeypatch.setattr(again, "_upstream", lambda stages, image: upstreams.append(image) or image)
    assert again._batch_progress({**record, "started_at": None}, 1, "02_threshold").done == 3
    assert upstreams == ["old", "a", "b", "old"]  # no start time known: every sealed store's fingerprint is checked


def test_the_flows_are_imported_in_the_background_and_a_failed_import_is_left_to_the_caller(tmp_path, monkeypatch):
    """The run imports its flows while the server and the cluster start; an import that fails is not hidden."""
    from flows.cli import _import_in_background

    (tmp_path / "slow_flows_module.py").write_text("import time\ntime.sleep(0.2)\nLOADED = True\n")
    (tmp_path / "broken_flows_module.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = _import_in_background("slow_flows_module")
    assert thread.daemon and thread.is_alive()  # the caller goes on meanwhile
    thread.join(timeout=10)
    assert sys.modules["slow_flows_module"].LOADED
    (tmp_path / "after_broken_module.py").write_text("LOADED = True\n")
    then = []
    _import_in_background("broken_flows_module", "after_broken_module",
                          then=lambda: then.append("after_broken_module" in sys.modules)).join(timeout=10)
    assert then == [True]  # what follows the imports runs once they are done, failed or not
    assert "broken_flows_module" not in sys.modules
    assert sys.modules["after_broken_module"].LOADED  # the next module is imported all the same
    with pytest.raises(ImportError, match="broken on purpose"):
        importlib.import_module("broken_flows_module")
    del sys.modules["slow_flows_module"], sys.modules["after_broken_module"]


def test_the_haloflow_command_returns_mains_code_and_freezes_what_is_left_for_the_exit(monkeypatch):
    import gc
    from importlib.metadata import entry_points

    from flows import cli

    (script,) = entry_points(group="console_scripts", name="haloflow")
    assert script.value == "flows.cli:console"
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv=None: seen.append(argv) or 3)
    before = gc.get_freeze_count()
    try:
        assert cli.console(["run", "spec.yaml"]) == 3
        assert seen == [["run", "spec.yaml"]] and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
