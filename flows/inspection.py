"""``haloflow inspect OUT``: a run's summary table, and PNG previews of its stages in ``OUT/previews/``.

Everything comes from the output folder: ``run.json`` says what ran, the
stores and tables hold the results, the spec names the input. Pictures are
drawn with NumPy and Pillow only; reading is lazy and strided, so a preview of
a large stage reads each chunk once and keeps a few hundred pixels a side.

Previews, for a stage ``NN_NAME``:

- ``NN_NAME.png``: an image, mask or label stage, as its maximum projection
  over the leading axes (or one plane of the first axis, ``plane=INDEX``),
  labels in colour;
- ``NN_NAME_overlay.png``: a label stage's colours over the run's input;
- ``NN_NAME_histogram.png``: a threshold stage's input histogram (log counts),
  the threshold marked;
- ``NN_NAME_sizes.png``: a table stage's object sizes (its ``area`` column).

Batch runs get the same previews for their first :data:`MAX_IMAGES` images,
in ``OUT/previews/IMAGE/``, and the size distribution of all images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flows.console import short_number
from tasks import io, storage
from tasks.preview import label_colours, png_bytes, to_rgb
from tasks.reference import ArrayRef

__all__ = ["MAX_IMAGES", "InspectError", "NotARunError", "inspect_run", "load_record", "summary_table", "write_previews"]

#: Longest side of an image preview, in pixels (pictures are strided down to at most this).
PREVIEW_SIDE = 384
#: Batch runs: previews of this many images (the first, by name).
MAX_IMAGES = 4
#: Chart size in pixels, and its margins (left, top, right, bottom).
CHART_SIZE = (640, 360)
_MARGINS = (70, 46, 20, 52)
_OVERLAY_ALPHA = 0.7


class InspectError(ValueError):
    """A run that cannot be inspected as asked; the message names the folder or option and the problem."""


class NotARunError(InspectError):
    """The folder given is not the output folder of a haloflow run; the message says why."""


def inspect_run(out: str | Path, *, plane: int | None = None) -> tuple[str, list[Path]]:
    """Summarise the run in ``out`` and write its previews: ``(table text, PNG paths written)``."""
    folder, record = load_record(out)
    return summary_table(record, folder), write_previews(folder, record, plane=plane)


def load_record(out: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder and its parsed ``run.json``, or :class:`NotARunError` naming the folder and the problem."""
    if storage.is_url(out):
        raise NotARunError(f"{out}: haloflow inspect reads local output folders only; copy the run's folder here first")
    folder = Path(out).expanduser().absolute()
    if not folder.exists():
        raise NotARunError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotARunError(f"{folder}: not a folder; give the output folder of a haloflow run")
    path = folder / "run.json"
    if not path.is_file():
        raise NotARunError(f"{folder}: not a haloflow output folder (it has no run.json)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise NotARunError(f"{path}: not a haloflow run record ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), list) or "spec" not in record:
        raise NotARunError(f"{path}: not a haloflow run record (it has no 'spec' and 'stages')")
    return folder, record


# --------------------------------------------------------------------------- the table


def summary_table(record: dict[str, Any], folder: Path | None = None) -> str:
    """The run in a few lines, then one row per stage: status, seconds, shape, dtype, statistics, what it found.

    >>> record = {"spec": {"flow": "large_image", "input": "v.tif"}, "status": "completed", "seconds": 2.0,
    ...           "stages": [{"name": "01_gaussian", "op": "gaussian", "status": "computed", "seconds": 1.5,
    ...                       "kind": "array", "ref": {"shape": [4, 8], "dtype": "float32"},
    ...                       "info": {"stats": {"min": 0.0, "max": 2.5, "mean": 1.25}}}]}
    >>> print(summary_table(record))
    run: large_image, completed in 2.0 s
    input: v.tif
    <BLANKLINE>
    stage        op        status    seconds  shape  dtype    min  max  mean  found
    01_gaussian  gaussian  computed  1.5      4x8    float32  0    2.5  1.25
    """
    spec = record.get("spec", {})
    lines = [f"run: {spec.get('flow', '?')}, {record.get('status', '?')}"
             + (f" in {record['seconds']:.1f} s" if "seconds" in record else "")
             + (f" (started {record['started_at']})" if "started_at" in record else "")]
    if folder is not None:
        lines.append(f"output: {folder}")
    lines.append(f"input: {_describe_input(spec.get('input'))}")
    if record.get("failed"):
        lines.append("failed: " + "; ".join(f"{image} ({f.get('step')}: {f.get('error')})" for image, f in record["failed"].items()))
    header = ["stage", "op", "status", "seconds", "shape", "dtype", "min", "max", "mean", "found"]
    rows = [_stage_row(stage) for stage in record.get("stages", [])]
    return "\n".join(lines + [""] + _align([header] + rows))


def _stage_row(stage: dict[str, Any]) -> list[str]:
    info = stage.get("info") or {}
    ref = stage.get("ref") or {}
    stats = info.get("stats") or {}
    found = []
    if "threshold" in info:
        found.append(f"threshold {short_number(info['threshold'])}")
    if "objects" in info:
        found.append(f"{info['objects']} objects")
    if "rows" in info:
        found.append(f"{info['rows']} rows")
    if "images" in stage:
        shape = f"{len(stage['images'])} images"
        dtype = ""
        found.append(f"{len(stage.get('computed_images', []))} computed, {len(stage.get('failed_images', []))} failed")
    elif stage.get("kind") == "table":
        shape = f"{ref.get('rows', '?')} rows x {len(ref.get('columns', []))}"
        dtype = "table"
    else:
        shape = "x".join(str(n) for n in ref.get("shape", [])) or "?"
        dtype = ref.get("dtype", "?")
    return [stage.get("name", "?"), stage.get("op", "?"), stage.get("status", "?"), f"{stage.get('seconds', 0.0):.1f}",
            shape, dtype, short_number(stats.get("min")), short_number(stats.get("max")), short_number(stats.get("mean")), "; ".join(found)]


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _describe_input(value) -> str:
    if isinstance(value, dict):
        return value.get("zarr") or f"a grid of {len(_flatten(value.get('tiles', [])))} tiles"
    return str(value)


def _flatten(nested) -> list:
    return [leaf for item in nested for leaf in (_flatten(item) if isinstance(item, list) else [item])]


# --------------------------------------------------------------------------- the previews


def write_previews(folder: Path, record: dict[str, Any], *, plane: int | None = None) -> list[Path]:
    """Write the run's previews to ``folder/previews/``; return their paths, in stage order."""
    spec = record["spec"]
    stages = record["stages"]
    shapes = [s["ref"]["shape"] for s in stages if s.get("kind") == "array" and "shape" in s.get("ref", {})]
    if plane is not None and shapes and len(shapes[0]) > 2 and not -shapes[0][0] <= plane < shapes[0][0]:
        raise InspectError(f"--slice {plane}: plane {plane} is outside the first axis (length {shapes[0][0]})")
    target = folder / "previews"
    target.mkdir(exist_ok=True)
    if spec.get("flow") == "batch":
        done = {image for stage in stages for image, result in stage.get("images", {}).items() if "ref" in result}
        images = sorted(done)[:MAX_IMAGES]
        sources = _batch_sources(spec.get("input"), images)
        written: list[Path] = []
        for image in images:
            per_image = [_one_image(stage, image) for stage in stages]
            if any(per_image):  # an image that failed at once has nothing to show
                written += _previews(target / image, per_image, sources.get(image), plane)
        written += [p for stage in stages if stage.get("kind") == "table" for p in _sizes(target, stage)]
        return written
    return _previews(target, stages, spec.get("input"), plane)


def _previews(target: Path, stages: list[dict[str, Any] | None], source, plane: int | None) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    upstream = source  # what the next image stage read: the input, then the last image stage's store
    for stage in stages:
        if stage is None:
            continue
        name = stage["name"]
        if stage.get("kind") == "table":
            written += _sizes(target, stage)
            continue
        ref = ArrayRef.from_dict(stage["ref"])
        if not io.is_complete(ref.store):
            continue
        array = io.read_ref(ref)
        picture = _picture(array, plane)
        written.append(_save(target / f"{name}.png", to_rgb(picture, ref.kind)))
        if ref.kind == "labels" and source is not None:
            background = _open(source)
            if background is not None and background.shape == array.shape:
                written.append(_save(target / f"{name}_overlay.png", overlay(_picture(background, plane), picture)))
        threshold = (stage.get("info") or {}).get("threshold")
        if stage.get("op") == "threshold" and isinstance(threshold, (int, float)):  # one threshold, not one per channel
            before = _open(upstream)
            if before is not None:
                counts, edges = histogram(before)
                chart = bar_chart(counts, edges, title=f"{name}: histogram of its input, threshold {short_number(threshold)}",
                                  xlabel="value", ylabel="voxels (log scale)", log=True, marker=float(threshold))
                written.append(_save(target / f"{name}_histogram.png", chart))
        upstream = ref
    return written


def _sizes(target: Path, stage: dict[str, Any]) -> list[Path]:
    """The size distribution of a table stage's objects, if the table has an ``area`` column."""
    path = Path((stage.get("ref") or {}).get("path", ""))
    if not path.is_file():
        return []
    table = io.read_table(path)
    if "area" not in table or not len(table["area"]):
        return []
    area = np.asarray(table["area"], dtype=np.float64)
    bins = min(40, max(1, int(math.sqrt(area.size)) * 2))
    counts, edges = np.histogram(area, bins=bins)
    chart = bar_chart(counts, edges, title=f"{stage['name']}: sizes of {area.size} objects (median {np.median(area):.6g})",
                      xlabel="area (pixels or voxels)", ylabel="objects")
    target.mkdir(parents=True, exist_ok=True)
    return [_save(target / f"{stage['name']}_sizes.png", chart)]


def _one_image(stage: dict[str, Any], image: str) -> dict[str, Any] | None:
    """A batch stage seen as one image's stage (``None`` if that image failed there); tables are left out."""
    result = stage.get("images", {}).get(image)
    if result is None or "ref" not in result:
        return None
    return {**result, "name": stage["name"], "op": stage.get("op")}


def _batch_sources(pattern, images: list[str]) -> dict[str, str]:
    try:
        paths = io.list_batch_images(pattern)
    except (io.InputError, TypeError):
        return {}
    return {storage.basename(p).split(".")[0]: p for p in paths if storage.basename(p).split(".")[0] in images}


def _open(source) -> da.Array | None:
    """A stage's store or the run's input, lazily (``None`` if it is gone)."""
    try:
        return io.read_ref(source) if isinstance(source, ArrayRef) else io.imread(source)
    except (OSError, ValueError, TypeError):
        return None


def _picture_lazy(array: da.Array, plane: int | None, side: int = PREVIEW_SIDE) -> da.Array:
    """One plane of the first axis (``plane``) or the maximum over the leading axes, strided to ``side`` a side."""
    if array.ndim > 2 and plane is not None:
        if not -array.shape[0] <= plane < array.shape[0]:
            raise InspectError(f"--slice {plane}: plane {plane} is outside the first axis (length {array.shape[0]})")
        array = array[plane]
    steps = tuple(max(1, -(-n // side)) for n in array.shape[-2:])
    array = array[(Ellipsis, slice(None, None, steps[0]), slice(None, None, steps[1]))]
    if array.ndim > 2:
        array = array.max(axis=tuple(range(array.ndim - 2)))
    return array


def _picture(array: da.Array, plane: int | None) -> np.ndarray:
    return np.asarray(_picture_lazy(array, plane).compute())


def overlay(grey: np.ndarray, labels: np.ndarray, alpha: float = _OVERLAY_ALPHA) -> np.ndarray:
    """Labels in colour over a grey picture of the image; background left grey.

    >>> overlay(np.array([[0.0, 1.0]]), np.array([[0, 0]]))[0].tolist()
    [[0, 0, 0], [255, 255, 255]]
    """
    base = to_rgb(grey, "image").astype(np.float64)
    colours = label_colours(labels).astype(np.float64)
    inside = (np.asarray(labels) > 0)[..., None]
    return np.where(inside, (1 - alpha) * base + alpha * colours, base).round().astype(np.uint8)


def histogram(array: da.Array, bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the whole array between its minimum and maximum (two passes)."""
    values = array.astype(np.float64) if array.dtype == bool else array
    low, high = (float(v) for v in dask.compute(values.min(), values.max()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"the array holds non-finite values (range {low} to {high}); no histogram")
    if high == low:
        high = low + 1.0
    counts, edges = da.histogram(values, bins=bins, range=(low, high))
    return np.asarray(counts.compute()), np.asarray(edges)


def bar_chart(
    counts: np.ndarray,
    edges: np.ndarray,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    marker: float | None = None,
    size: tuple[int, int] = CHART_SIZE,
) -> np.ndarray:
    """A histogram as an RGB picture: bars between ``edges``, axes with a few ticks, an optional red line at ``marker``.

    >>> bar_chart(np.array([1, 3]), np.array([0.0, 1.0, 2.0]), title="t", xlabel="x", ylabel="y").shape
    (360, 640, 3)
    """
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ValueError(f"edges must have one entry more than counts, got {edges.shape} and {counts.shape}")
    width, height = size
    left, top, right, bottom = _MARGINS
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(12)
    heights = np.log10(counts + 1) if log else counts
    top_value = heights.max() if heights.size and heights.max() > 0 else 1.0
    low, high = edges[0], edges[-1]
    span = (high - low) or 1.0

    def x_of(value: float) -> float:
        return left + (value - low) / span * plot_w

    for count, a, b in zip(heights, edges[:-1], edges[1:]):
        if count <= 0:
            continue
        y = top + plot_h * (1 - count / top_value)
        draw.rectangle([x_of(a), y, max(x_of(a), x_of(b) - 1), top + plot_h], fill=(70, 110, 170))
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for value in np.linspace(low, high, 5):
        x = x_of(value)
        draw.line([x, top + plot_h, x, top + plot_h + 4], fill="black")
        _text(draw, (x, top + plot_h + 6), short_number(float(value)), font, anchor="ma")
    if log:  # powers of ten, at most six of them
        step = max(1, math.ceil((int(top_value) + 1) / 6))
        powers = range(step, int(top_value) + 1, step)
        ticks = [(math.log10(10**k + 1) / top_value, f"{10**k:g}") for k in powers]
    else:
        ticks = [(fraction, short_number(float(fraction * top_value))) for fraction in (0.5, 1.0)]
    for fraction, label in [(0.0, "0"), *ticks]:
        y = top + plot_h * (1 - fraction)
        draw.line([left - 4, y, left, y], fill="black")
        _text(draw, (left - 6, y), label, font, anchor="rm")
    if marker is not None and low <= marker <= high:
        x = x_of(marker)
        draw.line([x, top, x, top + plot_h], fill=(210, 30, 30), width=2)
    _text(draw, (width / 2, 8), title, _font(14), anchor="ma")
    _text(draw, (left + plot_w / 2, height - 18), xlabel, font, anchor="ma")
    _text(draw, (8, top - 24), ylabel, font, anchor="la")
    return np.asarray(image)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, anchor: str) -> None:
    try:
        draw.text(xy, text, fill="black", font=font, anchor=anchor)
    except ValueError:  # a bitmap font takes no anchor
        draw.text(xy, text, fill="black", font=font)


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.write_bytes(png_bytes(rgb))
    return path
