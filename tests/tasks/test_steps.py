"""tasks.steps: what one stage does without Prefect (reusing what its input's store recorded)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi
from skimage import filters, measure as skimage_measure

from imageops.catalog import GaussianParams, LabelParams, ThresholdParams
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


def _store_documents(store):
    """The group's and the array's metadata, and the array, of a store."""
    group = json.loads((Path(store) / "zarr.json").read_text())
    array = json.loads((Path(store) / "0" / "zarr.json").read_text())
    return group, array, zarr.open_array(store, path="0", mode="r")[...]


def _same_store(whole, chunked):
    """The same documents and values; the store written whole keeps its chunks as files beside level 0's metadata."""
    g1, a1, x1 = _store_documents(whole)
    g2, a2, x2 = _store_documents(chunked)
    assert a1.pop("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "."}}
    assert a2.pop("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
    assert g1 == g2 and a1 == a2
    assert not [p for p in (Path(whole) / "0").iterdir() if p.is_dir()]  # no folders for its chunks
    assert x1.dtype == x2.dtype
    np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("fused", [False, True], ids=["every step stored", "gaussian and threshold fused"])
def test_a_step_on_an_image_held_whole_writes_the_store_the_chunked_step_writes_in_one_block(tmp_path, fused):
    tifffile.imwrite(tmp_path / "in.tif", blobs((48, 41), seed=5))
    source = io.resolve_input(str(tmp_path / "in.tif"))
    one_block = dict(compute=partial(dask.compute, scheduler="synchronous"),
                     compute_blocks=steps.sync_compute_blocks, pyramid=False)
    steps_ = [("g", GaussianParams(sigma=2.0)), ("t", ThresholdParams(method="otsu")), ("l", LabelParams(connectivity=1))]
    whole_up = chunked_up = source
    for name, params in steps_:
        whole_store, chunked_store = (str(tmp_path / way / f"{name}.ome.zarr") for way in ("whole", "chunked"))
        if fused and name != "l":
            whole_up, chunked_up = steps.fuse(params, whole_up, name), steps.fuse(params, chunked_up, name)
            continue
        whole = steps.run_whole_image_step(params, whole_up, whole_store, name=name)
        chunked = steps.run_image_step(params, chunked_up, chunked_store, name=name, chunks=source.shape, **one_block)
        assert whole.status == chunked.status == "computed"
        assert whole.info == chunked.info
        _same_store(whole_store, chunked_store)
        assert io.done_blocks(whole.ref) == set() and len(io.done_blocks(chunked.ref)) == 1  # made again, not resumed
        whole_up, chunked_up = whole.ref, chunked.ref
    image = blobs((48, 41), seed=5)
    smooth = ndi.gaussian_filter(image.astype(np.float32), 2.0, mode="nearest", truncate=4.0)
    expected = skimage_measure.label(smooth > filters.threshold_otsu(smooth), connectivity=1)
    np.testing.assert_array_equal(zarr.open_array(whole_up.store, path="0", mode="r")[...], expected)
    labels_meta = json.loads((Path(whole_up.store) / "zarr.json").read_text())["attributes"]
    assert len(labels_meta["ome"]["image-label"]["colors"]) == expected.max() + 1
    assert ("source" in labels_meta["ome"]["image-label"]) is not fused  # a stored threshold store is the source


def test_a_step_held_whole_reuses_a_complete_store_and_makes_an_unfinished_one_again(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", blobs((30, 33), seed=6))
    source = io.resolve_input(str(tmp_path / "in.tif"))
    store = str(tmp_path / "g.ome.zarr")
    first = steps.run_whole_image_step(GaussianParams(sigma=1.0), source, store, name="g")
    again = steps.run_whole_image_step(GaussianParams(sigma=1.0), source, store, name="g")
    assert (first.status, again.status) == ("computed", "cached") and again.info["stats"] == first.info["stats"]
    io.create_store(store, shape=first.ref.shape, dtype=first.ref.dtype, chunks=first.ref.shape, kind="image",
                    fingerprint=first.ref.fingerprint, name="g")  # interrupted before its block was written
    assert not io.is_complete(store)
    redone = steps.run_whole_image_step(GaussianParams(sigma=1.0), source, store, name="g")
    assert redone.status == "computed" and io.is_complete(store, first.ref.fingerprint)
    assert redone.info["stats"] == first.info["stats"]


@pytest.mark.parametrize("whole", [True, False])
def test_measure_reads_the_default_intensity_image_only_for_a_property_that_needs_it(tmp_path, whole):
    from imageops.catalog import MeasureParams

    image = blobs((24, 30), seed=5)
    labels = skimage_measure.label(image > filters.threshold_otsu(image)).astype(np.uint32)
    assert labels.max() > 1
    tifffile.imwrite(tmp_path / "in.tif", image)
    source = io.resolve_input(str(tmp_path / "in.tif"))
    chunks = labels.shape if whole else (11, 13)
    ref = io.create_store(tmp_path / "l.ome.zarr", shape=labels.shape, dtype=labels.dtype, chunks=chunks,
                          kind="labels", fingerprint="l", name="l")
    zarr.open_array(ref.store, path="0", mode="r+")[...] = labels
    (tmp_path / "in.tif").unlink()  # reading the intensity image now fails
    shape_only = MeasureParams(properties=["label", "area", "centroid"])  # intensity: the input, by default
    columns = steps.measure_columns(shape_only, ref, intensity=source, compute=steps.local_compute, whole=whole)
    expected = skimage_measure.regionprops_table(labels, properties=["label", "area", "centroid"])
    assert list(columns) == list(expected)
    for name in expected:
        np.testing.assert_allclose(columns[name], expected[name])
    with pytest.raises(Exception, match="in.tif"):
        steps.measure_columns(MeasureParams(properties=["label", "intensity_mean"]), ref, intensity=source,
                              compute=steps.local_compute, whole=whole)
