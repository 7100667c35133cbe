"""``haloflow inspect OUT``: the summary table of a run and its PNG previews; anything else refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import prefect.main  # noqa: F401  (Prefect sets up its console logging at import: now, not on a stream a test captures)
import pytest
from PIL import Image

from flows.cli import main as cli_main
from flows.inspection import bar_chart, overlay

PREVIEWS = [
    "01_gaussian.png",
    "02_threshold.png",
    "02_threshold_histogram.png",
    "03_label.png",
    "03_label_overlay.png",
    "04_measure_sizes.png",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, dask_cluster) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli_main(["demo", "--shape", "12", "64", "48", "--output", str(out), "--cluster", dask_cluster, "--quiet"]) == 0
    return out


def test_inspect_prints_the_table_and_writes_the_previews(demo_run, capsys):
    assert cli_main(["inspect", str(demo_run)]) == 0
    out = capsys.readouterr().out
    record = json.loads((demo_run / "run.json").read_text())
    for stage in record["stages"]:
        row = next(line for line in out.splitlines() if line.startswith(stage["name"]))
        assert stage["op"] in row and stage["status"] in row
    assert "12x64x48" in out and "float32" in out and "uint32" in out
    written = [line.split("wrote ", 1)[1] for line in out.splitlines() if "wrote " in line]
    assert [Path(path).name for path in written] == PREVIEWS
    for name in PREVIEWS:
        with Image.open(demo_run / "previews" / name) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB"
            assert min(picture.size) >= 32
    with Image.open(demo_run / "previews" / "03_label.png") as labels:
        assert labels.size == (48, 64)  # width x height: the volume's last two axes, small enough to keep whole


def test_inspect_one_plane(demo_run, capsys):
    assert cli_main(["inspect", str(demo_run), "--slice", "6"]) == 0
    assert cli_main(["inspect", str(demo_run), "--slice", "12"]) == 2
    assert "plane 12" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "file", "no record", "not a record", "url"])
def test_inspect_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, make):
    target = tmp_path / "target"
    if make == "url":
        assert cli_main(["inspect", "s3://bucket/run"]) == 2
        assert "s3://bucket/run: haloflow inspect reads local output folders only" in capsys.readouterr().err
        return
    if make == "file":
        target.write_text("hello")
    elif make in ("no record", "not a record"):
        target.mkdir()
        if make == "not a record":
            (target / "run.json").write_text(json.dumps({"hello": 1}))
    assert cli_main(["inspect", str(target)]) == 2
    message = capsys.readouterr().err
    assert str(target) in message and "Traceback" not in message
    assert not (target / "previews").exists()


def test_overlay_colours_labels_only():
    grey = np.array([[0.0, 10.0], [5.0, 10.0]])
    labels = np.array([[0, 1], [0, 2]], np.uint32)
    rgb = overlay(grey, labels)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[:, 0, 0] == rgb[:, 0, 1]).all() and (rgb[:, 0, 1] == rgb[:, 0, 2]).all()  # background stays grey
    assert len(set(map(tuple, rgb[:, 1]))) == 2  # two labels, two colours


def test_bar_chart_marks_the_threshold():
    counts = np.array([5, 0, 2, 9])
    edges = np.linspace(0.0, 4.0, 5)
    plain = bar_chart(counts, edges, title="t", xlabel="x", ylabel="y")
    marked = bar_chart(counts, edges, title="t", xlabel="x", ylabel="y", marker=1.5)
    red = (marked[..., 0] > 180) & (marked[..., 1] < 80) & (marked[..., 2] < 80)
    assert red.any() and not ((plain[..., 0] > 180) & (plain[..., 1] < 80) & (plain[..., 2] < 80)).any()
    with pytest.raises(ValueError, match="edges"):
        bar_chart(counts, edges[:-1], title="t", xlabel="x", ylabel="y")


def test_readme_shows_the_demo_previews_committed_in_docs_images():
    """The README's worked example shows previews that `haloflow inspect` writes for the demo, committed as PNGs."""
    project = Path(__file__).resolve().parents[2]
    readme = (project / "README.md").read_text()
    shown = sorted(name for name in PREVIEWS if f"docs/images/demo_{name})" in readme)
    assert shown == ["01_gaussian.png", "02_threshold_histogram.png", "03_label_overlay.png", "04_measure_sizes.png"]
    for name in shown:
        with Image.open(project / "docs" / "images" / f"demo_{name}") as picture:
            assert picture.format == "PNG" and min(picture.size) >= 64
