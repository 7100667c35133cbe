"""Bad input gets a short, clear answer before any work; a batch goes on past bad images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from flows.cli import main as cli_main
from flows.demo import demo_volume
from tasks import io

STEPS = [{"op": "gaussian", "sigma": 1.0}, {"op": "threshold"}, {"op": "label"}, {"op": "measure", "properties": ["label", "area"], "intensity": None}]


def run_spec(tmp_path: Path, capsys, spec: dict, *extra: str) -> tuple[int, str]:
    """Exit code, and what the terminal shows (the summary on stdout, then the errors on stderr)."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = cli_main(["run", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def good_tiff(tmp_path) -> Path:
    path = tmp_path / "good.tif"
    tifffile.imwrite(path, demo_volume((8, 32, 32), n_objects=5, seed=1))
    return path


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(p.name.endswith(".ome.zarr") for p in out.iterdir())


def corrupt(path: Path) -> Path:
    path.write_bytes(b"II*\x00 this is not really a TIFF file " * 10)
    return path


def tiles_that_do_not_fit(tmp_path: Path) -> dict:
    shapes = {"a": (10, 10), "b": (10, 12), "c": (10, 10), "d": (7, 12)}  # d is too short for its row
    for name, shape in shapes.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", np.zeros(shape, np.uint16))
    return {"tiles": [[str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], [str(tmp_path / "c.tif"), str(tmp_path / "d.tif")]]}


CASES = {
    "missing input": (lambda tmp, good: {"input": str(tmp / "missing.tif")}, ["missing.tif"]),
    "glob matching nothing": (lambda tmp, good: {"input": str(tmp / "nothing_*.tif")}, ["nothing_*.tif"]),
    "corrupt TIFF": (lambda tmp, good: {"input": str(corrupt(tmp / "broken.tif"))}, ["broken.tif"]),
    "tiles that do not fit": (lambda tmp, good: {"input": tiles_that_do_not_fit(tmp)}, ["d.tif", "(7, 12)"]),
    "chunks of the wrong rank": (lambda tmp, good: {"input": str(good), "chunks": [4, 16]}, ["chunks", "3 axes"]),
    "unknown field": (lambda tmp, good: {"input": str(good), "sigmaa": 2}, ["sigmaa"]),
    "unknown op": (lambda tmp, good: {"input": str(good), "steps": [{"op": "blur", "sigma": 1}]}, ["unknown op 'blur'"]),
    "unknown step field": (lambda tmp, good: {"input": str(good), "steps": [{"op": "gaussian", "sigma": 1, "radius": 2}]}, ["steps[0] (gaussian) radius", "Extra inputs"]),
    "parameter out of bounds": (lambda tmp, good: {"input": str(good), "steps": [{"op": "gaussian", "sigma": -2}]}, ["steps[0] (gaussian) sigma", "greater than 0"]),
    "wrong kind of input for a step": (lambda tmp, good: {"input": str(good), "steps": [{"op": "label"}]}, ["steps[0]", "takes mask"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_work(case, tmp_path, capsys, good_tiff):
    make, words = CASES[case]
    out = tmp_path / "out"
    spec = {"input": str(good_tiff), "steps": STEPS, "output": str(out), **make(tmp_path, good_tiff)}
    code, message = run_spec(tmp_path, capsys, spec)
    assert code == 2, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) <= 6
    assert nothing_written(out)


def test_output_that_is_a_file(tmp_path, capsys, good_tiff):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    code, message = run_spec(tmp_path, capsys, {"input": str(good_tiff), "steps": STEPS, "output": str(out)})
    assert code == 2 and "out.txt" in message and "is a file" in message and "Traceback" not in message
    assert out.read_text() == "not a folder"


def test_output_holding_another_inputs_run(tmp_path, capsys, good_tiff):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"spec": {"input": "/elsewhere/other.tif"}, "status": "completed"}))
    code, message = run_spec(tmp_path, capsys, {"input": str(good_tiff), "steps": STEPS, "output": str(out)})
    assert code == 2 and "another input" in message and "/elsewhere/other.tif" in message
    assert json.loads((out / "run.json").read_text())["spec"]["input"] == "/elsewhere/other.tif"


def test_flow_call_refuses_bad_input_with_the_same_message(tmp_path, dask_cluster):
    from flows import large_image_flow
    from flows.runner import make_task_runner

    flow = large_image_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    with pytest.raises(io.InputError, match="missing.tif"):
        flow(input=str(tmp_path / "missing.tif"), steps=STEPS, output=str(tmp_path / "out"))
    assert nothing_written(tmp_path / "out")


@pytest.mark.slow
def test_batch_goes_on_past_bad_images(tmp_path, capsys, dask_cluster, monkeypatch):
    """Headers read on the cluster, as for a large batch (a small one reads them in the flow, as other tests do)."""
    from tasks import stages

    monkeypatch.setattr(stages, "HEADERS_ON_CLUSTER_FROM", 2)
    readers = tmp_path / "readers.log"
    resolve = io.resolve_or_error

    def logged(path):  # which process reads each header (travels to the workers by value)
        import os

        with open(readers, "a") as log:
            log.write(f"{os.getpid()}\n")
        return resolve(path)

    monkeypatch.setattr(io, "resolve_or_error", logged)
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in (1, 2, 3):
        tifffile.imwrite(folder / f"good_{seed}.tif", demo_volume((40, 40), n_objects=6, seed=seed))
    corrupt(folder / "corrupt.tif")
    nan_image = demo_volume((40, 40), n_objects=6, seed=4).astype(np.float32)
    nan_image[3, 3] = np.nan  # readable, but no threshold exists for it
    tifffile.imwrite(folder / "with_nan.tif", nan_image)
    out = tmp_path / "out"
    spec = {"flow": "batch", "input": str(folder / "*.tif"), "steps": STEPS, "output": str(out)}
    code, message = run_spec(tmp_path, capsys, spec, "--cluster", dask_cluster)
    assert code == 1, message
    last_lines = "\n".join(message.strip().splitlines()[-3:])
    assert "corrupt.tif" in last_lines or "corrupt:" in last_lines
    assert "with_nan" in last_lines and "non-finite" in last_lines
    assert "Traceback" not in message
    for seed in (1, 2, 3):
        for name in ("01_gaussian", "02_threshold", "03_label"):
            assert io.is_complete(out / f"good_{seed}" / f"{name}.ome.zarr")
    assert not io.is_complete(out / "with_nan" / "02_threshold.ome.zarr")
    assert io.is_complete(out / "with_nan" / "01_gaussian.ome.zarr")  # written before its threshold failed, kept
    table = io.read_table(out / "04_measure.csv")
    assert set(table["image"]) == {"good_1", "good_2", "good_3"}
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed"
    assert set(record["failed"]) == {"corrupt", "with_nan"}
    assert record["failed"]["with_nan"]["step"] == "02_threshold"
    pids = readers.read_text().split()
    assert len(pids) == 5
    assert str(os.getpid()) not in pids  # read by the workers, not by the flow (this process)
