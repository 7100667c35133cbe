"""Reading inputs from, and writing stores and tables to, ``s3://`` URLs: the same results as local files.

Against a real S3 server on loopback (moto's server mode, ``tests/s3.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from tasks.api import op_params
from tasks import io, steps, storage
from tests.s3 import S3

TIFF_LAYOUTS = {"contiguous": {}, "strips": {"compression": "zlib", "rowsperstrip": 8}, "tiles": {"tile": (16, 16)}}


def _volume(shape=(5, 40, 34), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(np.uint16)


@pytest.mark.parametrize("layout", TIFF_LAYOUTS, ids=list(TIFF_LAYOUTS))
def test_a_tiff_on_s3_reads_like_the_local_file_on_uneven_chunks(s3: S3, tmp_path, layout):
    data = _volume()
    tifffile.imwrite(tmp_path / "v.tif", data, **TIFF_LAYOUTS[layout])
    url = s3.put(tmp_path / "v.tif", "in", "v.tif")
    spec = io.resolve_input(url)
    assert spec.kind == "tiff" and spec.paths == (url,) and spec.shape == data.shape
    np.testing.assert_array_equal(io.imread(url, chunks=(2, 17, 11)).compute(scheduler="synchronous"), data)


def test_zarr_and_glob_inputs_on_s3(s3: S3, tmp_path):
    data = _volume((3, 20, 18))
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(1, 8, 8))
    url = s3.put(tmp_path / "a.zarr", "in", "a.zarr")
    spec = io.resolve_input({"zarr": url})
    assert spec.kind == "zarr" and spec.shape == data.shape
    np.testing.assert_array_equal(io.imread(spec, chunks=(2, 7, 9)).compute(scheduler="synchronous"), data)
    for index in range(3):
        tifffile.imwrite(tmp_path / f"p{index}.tif", data[index])
        s3.put(tmp_path / f"p{index}.tif", "planes", f"p{index}.tif")
    stack = io.resolve_input(s3.url("planes", "p*.tif"))
    assert stack.kind == "glob" and stack.paths == tuple(s3.url("planes", f"p{i}.tif") for i in range(3))
    np.testing.assert_array_equal(io.imread(stack).compute(scheduler="synchronous"), data)
    assert io.list_batch_images(s3.url("planes")) == list(stack.paths)


def test_missing_inputs_on_s3_are_named(s3: S3):
    with pytest.raises(io.InputNotFoundError, match=f"s3://{s3.bucket}/nothing.tif"):
        io.resolve_input(s3.url("nothing.tif"))
    with pytest.raises(io.InputError, match="matches no files"):
        io.resolve_input(s3.url("none", "*.tif"))


def test_fingerprint_of_an_s3_input_follows_a_rewrite(s3: S3, tmp_path):
    tifffile.imwrite(tmp_path / "v.tif", _volume((2, 8, 8)))
    url = s3.put(tmp_path / "v.tif", "v.tif")
    first = io.resolve_input(url).fingerprint()
    assert io.resolve_input(url).fingerprint() == first
    tifffile.imwrite(tmp_path / "v.tif", _volume((2, 8, 8), seed=1))
    s3.put(tmp_path / "v.tif", "v.tif")
    assert io.resolve_input(url).fingerprint() != first


def test_a_table_on_s3_round_trips_and_records_its_fingerprint(s3: S3):
    url = s3.url("out", "t.csv")
    columns = {"label": np.array([1, 2]), "area": np.array([0.1, 1 / 3]), "image": np.array(["a", "b"])}
    io.write_table(columns, url, fingerprint="fp")
    assert io.table_is_complete(url, "fp") and not io.table_is_complete(url, "other")
    back = io.read_table(url)
    assert list(back) == list(columns)
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values)
    assert storage.list_names(s3.url("out")) == [".t.csv.haloflow.json", "t.csv"]  # no temporary left


def test_an_interrupted_stage_on_s3_resumes_only_its_missing_blocks(s3: S3, tmp_path):
    data = _volume((8, 32, 32))
    tifffile.imwrite(tmp_path / "v.tif", data)
    source = io.resolve_input(s3.put(tmp_path / "v.tif", "v.tif"))
    params = op_params("gaussian", sigma=1.0)
    store = s3.url("out", "01_gaussian.ome.zarr")
    run = dict(name="01_gaussian", chunks=[4, 16, 16], compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    first = steps.run_image_step(params, source, store, **run)
    assert first.status == "computed" and first.info["blocks"] == {"total": 8, "written": 8, "reused": 0}
    expected = zarr.open_array(storage.zarr_store(store), path="0", mode="r")[...]
    # Interrupted: the seal not written, and three blocks' markers never came.
    group = zarr.open_group(storage.zarr_store(store), mode="r+")
    group.attrs["haloflow"] = {**group.attrs["haloflow"], "complete": False}
    for name in ["0_0_0", "1_1_0", "1_1_1"]:
        storage.remove(storage.join(store, ".haloflow-done", name))
    assert io.done_blocks(first.ref) == {(0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1)}
    again = steps.run_image_step(params, source, store, **run)
    assert again.status == "resumed" and again.info["blocks"] == {"total": 8, "written": 3, "reused": 5}
    np.testing.assert_array_equal(zarr.open_array(storage.zarr_store(store), path="0", mode="r")[...], expected)
    assert steps.run_image_step(params, source, store, **run).status == "cached"


def test_create_store_on_s3_replaces_an_old_store_but_not_other_objects(s3: S3):
    store = s3.url("o", "a.ome.zarr")
    io.create_store(store, shape=(4, 4), dtype="uint8", chunks=(2, 2), kind="image", fingerprint="f", name="a")
    storage.write_text(storage.join(store, "0", "c", "9", "9"), "stale")
    io.create_store(store, shape=(4, 4), dtype="uint8", chunks=(2, 2), kind="image", fingerprint="g", name="a")
    assert not storage.exists(storage.join(store, "0", "c", "9", "9"))
    storage.write_text(s3.url("o", "notes", "readme.txt"), "mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        io.create_store(s3.url("o", "notes"), shape=(4, 4), dtype="uint8", chunks=(2, 2), kind="image", fingerprint="f", name="a")
    assert storage.read_text(s3.url("o", "notes", "readme.txt")) == "mine"


def test_storage_paths_and_urls():
    assert storage.is_url("s3://b/k") and storage.is_url("gs://b") and not storage.is_url("file:///tmp/x")
    assert not storage.is_url("/tmp/a://b")
    assert storage.normalize("file:///tmp/x") == "/tmp/x" and storage.normalize("s3://b/k/") == "s3://b/k"
    assert storage.join("s3://b/k", "a", "b.csv") == "s3://b/k/a/b.csv"
    assert storage.parent("s3://b/k/a.csv") == "s3://b/k" and storage.basename("s3://b/k/a.csv") == "a.csv"
    with pytest.raises(storage.StorageError, match="nosuchscheme"):
        storage.exists("nosuchscheme://x/y")


def test_unusable_urls_are_refused_naming_them(s3: S3):
    from flows.record import OutputError, check_output

    with pytest.raises(io.InputError, match="nosuchscheme://b/v.tif"):
        io.resolve_input("nosuchscheme://b/v.tif")
    with pytest.raises(io.InputError, match="nosuchscheme://b"):
        io.list_batch_images("nosuchscheme://b/*.tif")
    with pytest.raises(OutputError, match="output nosuchscheme://b/out"):
        check_output("nosuchscheme://b/out")
    with pytest.raises(io.InputNotFoundError, match="s3://no-such-bucket-here/v.tif"):
        io.resolve_input("s3://no-such-bucket-here/v.tif")
