"""The benchmark pipeline without haloflow: what the other benchmarks time in a fresh process.

The pipeline, everywhere: gaussian (sigma 2, on float32, edge mode "nearest")
-> Otsu threshold -> label (connectivity 1) -> measure (label, area,
centroid; no intensity image).  Three ways to run it without haloflow:

* ``skimage SRC OUT``: SciPy / scikit-image on the whole volume in memory
  (``scipy.ndimage.gaussian_filter``, ``skimage.filters.threshold_otsu``,
  ``skimage.measure.label``, ``skimage.measure.regionprops_table``); writes
  ``OUT/labels.tif`` and ``OUT/measure.csv``.
* ``dask-image SRC OUT --chunks Z Y X``: dask-image on chunks with Dask's
  threaded scheduler, each stage stored to zarr as haloflow stores its stages
  (``dask_image.ndfilters.gaussian_filter``; Otsu on a ``dask.array.histogram``
  over the image's range, as scikit-image bins it; ``dask_image.ndmeasure.label``);
  the table is made with a per-block ``numpy.bincount`` reduced over the blocks,
  since ``dask_image.ndmeasure.area`` / ``center_of_mass`` take one pass over the
  image per label (hours for thousands of labels).
* ``block-once SRC OUT --chunks Z Y X``: plain Dask (threaded scheduler), in
  memory, the issue's fastest chunked variant: the gaussian by ``map_overlap``
  with SciPy's kernel radius as halo, Otsu as above, each block labelled once
  by ``scipy.ndimage.label``, the labels on touching block faces merged
  (``scipy.sparse.csgraph.connected_components``), the table as above; only
  ``OUT/measure.csv`` is written.
* ``batch 'GLOB' OUT``: a plain Python for-loop over 2D TIFFs, one process: read,
  gaussian, Otsu, label, write ``OUT/labels/STEM.tif``; one ``OUT/measure.csv``
  with an ``image`` column first.

Each prints one JSON line (objects found, seconds per step, threshold) on
stdout.  Timing starts before the imports, so the import time is reported too.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SIGMA = 2.0
MODE = "nearest"
CONNECTIVITY = 1
PROPERTIES = ["label", "area", "centroid"]


class StepTimer:
    """Seconds per named step, the imports first."""

    def __init__(self):
        self.seconds = {"import": time.perf_counter() - _T0}

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def write_table(path: Path, table: dict[str, np.ndarray], first: tuple[str, list] | None = None) -> int:
    """Write a regionprops-style table (columns of equal length) as CSV; ``first``: a leading text column."""
    names = list(table)
    with open(path, "w") as f:
        f.write(",".join(([first[0]] if first else []) + names) + "\n")
        columns = [table[n] for n in names]
        lead = first[1] if first else None
        for i, row in enumerate(zip(*columns)):
            values = [repr(v.item()) for v in row]
            f.write(",".join(([str(lead[i])] if lead is not None else []) + values) + "\n")
    return len(columns[0]) if columns else 0


# --------------------------------------------------------------------------- whole volume
def skimage_pipeline(src: str, out: Path) -> dict:
    """The pipeline with SciPy / scikit-image on the whole volume in memory."""
    import tifffile
    from scipy import ndimage as ndi
    from skimage import filters, measure

    timer = StepTimer()
    out.mkdir(parents=True, exist_ok=True)
    with timer.step("read"):
        image = tifffile.imread(src)
    with timer.step("gaussian"):
        smooth = ndi.gaussian_filter(image.astype(np.float32), SIGMA, mode=MODE)
    with timer.step("threshold"):
        threshold = filters.threshold_otsu(smooth)
        mask = smooth > threshold
    with timer.step("label"):
        labels = measure.label(mask, connectivity=CONNECTIVITY)
    with timer.step("measure"):
        table = measure.regionprops_table(labels, properties=PROPERTIES)
    with timer.step("write"):
        tifffile.imwrite(out / "labels.tif", labels)
        write_table(out / "measure.csv", table)
    return {"objects": int(labels.max()), "threshold": float(threshold), "labels_dtype": str(labels.dtype),
            "seconds": timer.rounded()}


# --------------------------------------------------------------------------- dask-image
def otsu_on_dask(smooth) -> float:
    """scikit-image's Otsu threshold of a dask array: 256 bins over [min, max], as ``threshold_otsu`` bins it."""
    import dask
    import dask.array as da
    from skimage import filters

    lo, hi = dask.compute(smooth.min(), smooth.max())
    counts, edges = da.histogram(smooth, bins=256, range=(lo, hi))
    counts = counts.compute()
    centers = (edges[:-1] + edges[1:]) / 2.0
    return float(filters.threshold_otsu(hist=(counts, centers)))


def block_moments(labels: np.ndarray, offset: tuple[int, ...], n: int) -> np.ndarray:
    """Per label 0..n of one block: voxel count and the sums of each coordinate, shape (1 + ndim, n + 1)."""
    flat = labels.ravel()
    rows = [np.bincount(flat, minlength=n + 1).astype(np.float64)]
    for axis, start in enumerate(offset):
        shape = [1] * labels.ndim
        shape[axis] = labels.shape[axis]
        coords = np.broadcast_to(np.arange(start, start + labels.shape[axis]).reshape(shape), labels.shape)
        rows.append(np.bincount(flat, weights=coords.ravel(), minlength=n + 1))
    return np.stack(rows)


def measure_on_dask(labels, n: int) -> dict[str, np.ndarray]:
    """label, area, centroid-i of a dask label image: per-block moments summed over the blocks."""
    import itertools

    import dask

    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in labels.chunks]
    blocks = labels.to_delayed()
    parts = [dask.delayed(block_moments)(blocks[index], tuple(int(s[i]) for s, i in zip(starts, index)), n)
             for index in itertools.product(*(range(len(c)) for c in labels.chunks))]
    total = dask.delayed(sum)(parts).compute()
    area = total[0, 1:]
    table = {"label": np.arange(1, n + 1), "area": area.astype(np.int64)}
    for axis in range(labels.ndim):
        table[f"centroid-{axis}"] = total[1 + axis, 1:] / np.maximum(area, 1)
    return table


def dask_image_pipeline(src: str, out: Path, chunks: tuple[int, ...], workers: int | None) -> dict:
    """The pipeline with dask-image on chunks (threaded scheduler), each stage stored to zarr."""
    import dask
    import dask.array as da
    import tifffile
    import zarr
    from dask_image import ndfilters, ndmeasure
    from scipy import ndimage as ndi

    timer = StepTimer()
    out.mkdir(parents=True, exist_ok=True)
    dask.config.set(scheduler="threads", **({"num_workers": workers} if workers else {}))
    image = da.from_zarr(zarr.open(tifffile.imread(src, aszarr=True), mode="r")).rechunk(chunks)
    with timer.step("gaussian"):
        smooth = ndfilters.gaussian_filter(image.astype(np.float32), sigma=SIGMA, mode=MODE)
        smooth.to_zarr(str(out / "01_gaussian.zarr"), overwrite=True)
        smooth = da.from_zarr(str(out / "01_gaussian.zarr"))
    with timer.step("threshold"):
        threshold = otsu_on_dask(smooth)
        mask = smooth > threshold
    with timer.step("label"):
        labels, count = ndmeasure.label(mask, structure=ndi.generate_binary_structure(image.ndim, CONNECTIVITY))
        stored = labels.to_zarr(str(out / "03_label.zarr"), overwrite=True, compute=False)
        _, n = dask.compute(stored, count)
        n = int(n)
        labels = da.from_zarr(str(out / "03_label.zarr"))
    with timer.step("measure"):
        table = measure_on_dask(labels, n)
    with timer.step("write"):
        write_table(out / "measure.csv", table)
    return {"objects": n, "threshold": threshold, "labels_dtype": str(labels.dtype), "blocks": int(np.prod(image.numblocks)),
            "seconds": timer.rounded()}


# --------------------------------------------------------------------------- block-once
def block_faces(labels: np.ndarray, offset: int) -> dict[tuple[int, int], np.ndarray]:
    """A block's first and last layer on every axis, its labels shifted by ``offset`` (background stays 0)."""
    faces = {}
    for axis in range(labels.ndim):
        for side, index in ((0, 0), (1, labels.shape[axis] - 1)):
            layer = np.take(labels, index, axis=axis).astype(np.int64)
            faces[axis, side] = np.where(layer > 0, layer + offset, 0)
    return faces


def merged_numbering(faces: dict, grid: tuple[int, ...], n: int) -> tuple[np.ndarray, int]:
    """Lookup table from provisional labels 0..n to final ones 0..N: labels touching across a face (connectivity 1) merge."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = [np.empty((0, 2), dtype=np.int64)]
    for index in np.ndindex(*grid):
        for axis in range(len(grid)):
            if index[axis] + 1 < grid[axis]:
                after = tuple(i + (a == axis) for a, i in enumerate(index))
                low, high = faces[index][axis, 1], faces[after][axis, 0]
                both = (low > 0) & (high > 0)
                pairs.append(np.stack([low[both], high[both]], axis=1))
    edges = np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    kept, final = np.unique(component[1:], return_inverse=True)
    return np.concatenate([[0], final + 1]).astype(np.int64), len(kept)


def block_once_pipeline(src: str, out: Path, chunks: tuple[int, ...], workers: int | None) -> dict:
    """The pipeline in plain Dask (threaded scheduler), in memory: each block labelled once, then a face merge.

    The smoothed volume and the blocks' labels are held in memory
    (``persist``), not stored; only the table is written.
    """
    import functools

    import dask
    import dask.array as da
    import tifffile
    import zarr
    from scipy import ndimage as ndi

    timer = StepTimer()
    out.mkdir(parents=True, exist_ok=True)
    dask.config.set(scheduler="threads", **({"num_workers": workers} if workers else {}))
    image = da.from_zarr(zarr.open(tifffile.imread(src, aszarr=True), mode="r")).rechunk(chunks)
    radius = int(4.0 * SIGMA + 0.5)  # SciPy's kernel radius (truncate 4): the halo that makes blocks exact
    with timer.step("gaussian"):
        smooth = image.astype(np.float32).map_overlap(
            functools.partial(ndi.gaussian_filter, sigma=SIGMA, mode=MODE), depth=radius, boundary="nearest",
            dtype=np.float32).persist()
    with timer.step("threshold"):
        threshold = otsu_on_dask(smooth)
    structure = ndi.generate_binary_structure(image.ndim, CONNECTIVITY)
    with timer.step("label"):
        local = (smooth > threshold).map_blocks(lambda m: ndi.label(m, structure=structure)[0].astype(np.int32),
                                                dtype=np.int32).persist()
        del smooth
        blocks = local.to_delayed()
        counts = np.array(dask.compute(*[dask.delayed(np.max)(b) for b in blocks.ravel()]), dtype=np.int64)
        offsets = (np.cumsum(counts) - counts).reshape(local.numblocks)
        found = dask.compute(*[dask.delayed(block_faces)(blocks[i], int(offsets[i])) for i in np.ndindex(*local.numblocks)])
        lut, n = merged_numbering(dict(zip(np.ndindex(*local.numblocks), found)), local.numblocks, int(counts.sum()))

        def relabel(block, block_info=None):
            offset = offsets[tuple(block_info[0]["chunk-location"])]
            return lut[np.where(block > 0, block.astype(np.int64) + offset, 0)]

        labels = local.map_blocks(relabel, dtype=np.int64)
    with timer.step("measure"):
        table = measure_on_dask(labels, n)
    with timer.step("write"):
        write_table(out / "measure.csv", table)
    return {"objects": n, "threshold": threshold, "labels_dtype": "int64", "blocks": int(np.prod(image.numblocks)),
            "seconds": timer.rounded()}


# --------------------------------------------------------------------------- batch
def batch_loop(pattern: str, out: Path) -> dict:
    """The pipeline on each 2D TIFF of a glob in a plain for-loop: labels TIFF per image, one CSV."""
    import glob

    import tifffile
    from scipy import ndimage as ndi
    from skimage import filters, measure

    timer = StepTimer()
    (out / "labels").mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(p) for p in glob.glob(pattern))
    objects = {}
    with timer.step("loop"), open(out / "measure.csv", "w") as f:
        f.write(",".join(["image", "label", "area"] + [f"centroid-{i}" for i in range(2)]) + "\n")
        for path in paths:
            image = tifffile.imread(path)
            smooth = ndi.gaussian_filter(image.astype(np.float32), SIGMA, mode=MODE)
            labels = measure.label(smooth > filters.threshold_otsu(smooth), connectivity=CONNECTIVITY)
            tifffile.imwrite(out / "labels" / f"{path.stem}.tif", labels)
            table = measure.regionprops_table(labels, properties=PROPERTIES)
            stem = path.name.split(".")[0]
            for row in zip(*table.values()):
                f.write(",".join([stem] + [repr(v.item()) for v in row]) + "\n")
            objects[stem] = int(labels.max())
    return {"objects": sum(objects.values()), "images": len(paths), "per_image": objects, "seconds": timer.rounded()}


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="how", required=True)
    sk = sub.add_parser("skimage", help="SciPy / scikit-image on the whole volume")
    di = sub.add_parser("dask-image", help="dask-image on chunks, stages stored to zarr")
    bo = sub.add_parser("block-once", help="plain Dask in memory: each block labelled once, then a face merge")
    for p in (sk, di, bo):
        p.add_argument("src", help="the input TIFF")
        p.add_argument("out", type=Path, help="output folder")
    for p in (di, bo):
        p.add_argument("--chunks", type=int, nargs="+", required=True, help="block shape, one entry per axis")
        p.add_argument("--workers", type=int, default=None,
                       help="threads of Dask's threaded scheduler (default: one per core)")
    batch = sub.add_parser("batch", help="a plain for-loop over 2D TIFFs")
    batch.add_argument("pattern", help="a glob of TIFFs (quote it)")
    batch.add_argument("out", type=Path, help="output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.how == "skimage":
        info = skimage_pipeline(args.src, args.out)
    elif args.how == "dask-image":
        info = dask_image_pipeline(args.src, args.out, tuple(args.chunks), args.workers)
    elif args.how == "block-once":
        info = block_once_pipeline(args.src, args.out, tuple(args.chunks), args.workers)
    else:
        info = batch_loop(args.pattern, args.out)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
