"""tasks.steps: what one stage does without Prefect (reusing what its input's store recorded)."""

from __future__ import annotations

from functools import partial

import dask
import numpy as np
import pytest
import tifffile
import zarr
from skimage import filters

from imageops.catalog import GaussianParams, ThresholdParams
from tasks import io, steps
from tests.helpers import blobs


def _counting_compute(calls: list[int]):
    """``dask.compute`` in this thread, recording how many collections each call computes."""

    def compute(*collections, **kwargs):
        calls.append(len(collections))
        return dask.compute(*collections, scheduler="synchronous")

    return compute


@pytest.mark.parametrize("method", ["otsu", "yen", "triangle"])
def test_threshold_of_a_stored_stage_uses_its_recorded_range_and_equals_scikit_image(tmp_path, method):
    tifffile.imwrite(tmp_path / "in.tif", blobs((20, 45, 38), seed=4))
    run = dict(compute_blocks=steps.sync_compute_blocks)
    smooth = steps.run_image_step(GaussianParams(sigma=1.5), io.resolve_input(str(tmp_path / "in.tif")),
                                  str(tmp_path / "g.ome.zarr"), name="g", chunks=[7, 16, 13],
                                  compute=partial(dask.compute, scheduler="synchronous"), **run)
    image = zarr.open_array(smooth.ref.store, path="0", mode="r")[...]
    assert steps.recorded_range(smooth.ref, image.dtype) == (image.min(), image.max())
    calls: list[int] = []
    mask = steps.run_image_step(ThresholdParams(method=method), smooth.ref, str(tmp_path / "t.ome.zarr"), name="t",
                                compute=_counting_compute(calls), **run)
    expected = getattr(filters, f"threshold_{method}")(image)
    assert mask.info["threshold"] == expected
    assert calls == [1]  # the histogram; no pass for the image's range
    np.testing.assert_array_equal(zarr.open_array(mask.ref.store, path="0", mode="r")[...], image > expected)


def _store_with_stats(path, dtype, stats):
    ref = io.create_store(path, shape=(3, 4), dtype=dtype, chunks=(3, 4), kind="image", fingerprint="f", name="s")
    io.mark_complete(ref, stats=stats)
    return ref


def test_recorded_range_only_where_exact(tmp_path):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.arange(12, dtype=np.uint16).reshape(3, 4))
    assert steps.recorded_range(io.resolve_input(str(source)), np.uint16) is None  # the source recorded nothing
    wide = _store_with_stats(tmp_path / "a.ome.zarr", np.int64, {"min": 0.0, "max": 2.0**60, "mean": 1.0})
    assert steps.recorded_range(wide, np.int64) is None  # a float64 may not hold every int64
    empty = _store_with_stats(tmp_path / "b.ome.zarr", np.float32, {"min": None, "max": None, "mean": None})
    assert steps.recorded_range(empty, np.float32) is None
    narrow = _store_with_stats(tmp_path / "c.ome.zarr", np.int32, {"min": -5.0, "max": 7.0, "mean": 1.0})
    low, high = steps.recorded_range(narrow, np.int32)
    assert (low, high) == (-5, 7) and low.dtype == high.dtype == np.int32


@pytest.mark.parametrize("chunks, reads", [(None, 1), ([7, 16, 13], 2 * 8)])  # 8 blocks: read in each of 2 passes
def test_a_multi_pass_step_reads_a_stored_image_in_one_block_once(tmp_path, monkeypatch, chunks, reads):
    """A batch image (one block) is read once by a step that passes over it twice; a chunked one once per pass."""
    tifffile.imwrite(tmp_path / "in.tif", blobs((12, 30, 26), seed=7))
    run = dict(compute=partial(dask.compute, scheduler="synchronous"), compute_blocks=steps.sync_compute_blocks)
    smooth = steps.run_image_step(GaussianParams(sigma=1.0), io.resolve_input(str(tmp_path / "in.tif")),
                                  str(tmp_path / "g.ome.zarr"), name="g", chunks=chunks, **run)
    read = io._ZarrSource.__getitem__
    seen = []
    monkeypatch.setattr(io._ZarrSource, "__getitem__", lambda self, key: seen.append(key) or read(self, key))
    mask = steps.run_image_step(ThresholdParams(method="otsu"), smooth.ref, str(tmp_path / "t.ome.zarr"), name="t",
                                **run)
    assert len(seen) == reads  # one block: held in memory for both passes (histogram, mask)
    image = zarr.open_array(smooth.ref.store, path="0", mode="r")[...]
    expected = image > filters.threshold_otsu(image)
    np.testing.assert_array_equal(zarr.open_array(mask.ref.store, path="0", mode="r")[...], expected)
