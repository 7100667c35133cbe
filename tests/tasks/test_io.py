"""Tests for tasks.io: lazy input reading, OME-Zarr stores and CSV tables."""

from __future__ import annotations

import math
import os
import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from distributed import Client, LocalCluster

from tasks.io import (
    InputError,
    InputNotFoundError,
    create_store,
    default_chunks,
    imread,
    is_complete,
    list_batch_images,
    mark_complete,
    open_store_ref,
    read_image,
    read_ref,
    read_table,
    resolve_input,
    write_blocks,
    block_grid,
    done_blocks,
    merge_block_stats,
    resumable,
    volume_chunks,
    write_table,
    write_whole,
)
from tasks import io as io_module
from tasks.reference import ArrayRef


@pytest.fixture(scope="module")
def client():
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _volume(shape=(7, 40, 30), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, size=shape).astype(dtype)


def _write_tiff(path, data, **kwargs):
    tifffile.imwrite(path, data, **kwargs)
    return str(path)


# ---------------------------------------------------------------- TIFF


TIFF_LAYOUTS = [{}, {"compression": "zlib", "rowsperstrip": 8}, {"tile": (16, 16)}]


@pytest.mark.parametrize("options", TIFF_LAYOUTS, ids=["contiguous", "strips", "tiles"])
def test_tiff_default_and_uneven_chunks(tmp_path, options):
    data = _volume()
    path = _write_tiff(tmp_path / "v.tif", data, **options)
    expected = tifffile.imread(path)
    lazy = imread(path)
    assert lazy.shape == data.shape and lazy.dtype == np.uint16
    np.testing.assert_array_equal(lazy.compute(), expected)
    uneven = imread(path, chunks=(3, 17, 11))
    assert uneven.chunks == ((3, 3, 1), (17, 17, 6), (11, 11, 8))
    np.testing.assert_array_equal(uneven.compute(), expected)


@pytest.mark.parametrize(("shape", "dtype", "options"), [
    ((64, 48), np.uint16, {}),
    ((7, 40, 30), np.uint16, {}),
    ((37, 29), np.float32, {"byteorder": ">"}),
    ((5, 6, 7, 3), np.uint8, {"photometric": "rgb"}),
])
def test_contiguous_tiff_regions_equal_tifffile_and_boxes_of_slices_are_read_without_a_memory_map(
        tmp_path, monkeypatch, shape, dtype, options):
    data = (np.random.default_rng(1).random(shape) * 200).astype(dtype)
    path = _write_tiff(tmp_path / "c.tif", data, **options)
    expected = tifffile.imread(path)
    full = tuple(slice(0, n) for n in expected.shape)
    rows = (slice(1, 4), *full[1:])
    part = (slice(1, 4), slice(2, 5), *full[2:])
    box = tuple(slice(min(1, n - 1), max(2, n - 1)) for n in expected.shape)  # cut on every axis: a block with its halo
    empty = (slice(2, 2), *full[1:])
    stepped = (slice(0, None, 2), *full[1:])
    np.testing.assert_array_equal(io_module._read_tiff_region(path, stepped), expected[stepped])  # a memory map

    def no_memory_map(*args, **kwargs):
        raise AssertionError("a box of slices is read without a memory map")

    monkeypatch.setattr(io_module.np, "memmap", no_memory_map)
    for region in (full, rows, part, box, empty):
        got = io_module._read_tiff_region(path, region)
        assert got.dtype == expected.dtype and got.dtype.isnative
        np.testing.assert_array_equal(got, expected[region])


def test_a_box_cut_short_in_a_contiguous_tiff_names_the_file(tmp_path):
    path = _write_tiff(tmp_path / "b.tif", _volume((4, 20, 10)))
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 500)
    with pytest.raises(InputError, match=r"b\.tif is truncated: plane 2 rows 5-19"):
        io_module._read_tiff_region(path, (slice(2, 4), slice(5, 20), slice(2, 8)))


def test_an_integer_index_into_a_contiguous_tiff_reads_through_the_memory_map(tmp_path):
    data = _volume((4, 20, 10))
    path = _write_tiff(tmp_path / "i.tif", data)
    np.testing.assert_array_equal(io_module._read_tiff_region(path, (2, slice(0, 20), slice(0, 10))), data[2])


@pytest.mark.parametrize(("shape", "options", "offered"), [
    ((4, 48, 32), {}, True),  # contiguous pages
    ((48, 32), {"compression": "zlib", "rowsperstrip": 8}, True),  # strips of whole rows
    ((4, 48, 32), {"compression": "zlib", "rowsperstrip": 8}, False),  # strips inside each page: not whole planes
    ((4, 48, 32), {"tile": (16, 16)}, False),
], ids=["contiguous pages", "2D strips", "3D strips", "tiles"])
def test_region_source_is_offered_for_the_array_imread_makes_over_a_tiff_in_whole_rows_only(
        tmp_path, shape, options, offered):
    data = _volume(shape)
    path = _write_tiff(tmp_path / "r.tif", data, **options)
    image = imread(path, chunks=(2, 16, 16)[-len(shape):])
    source = io_module.region_source(image)
    assert (source is not None) == offered
    if offered:
        region = (slice(1, 4), slice(5, 30), slice(0, 32))[-len(shape):]
        np.testing.assert_array_equal(source[region], data[region])
    assert io_module.region_source(image + 1) is None  # a derived array reads nothing from the file itself
    zarr.create_array(str(tmp_path / "r.zarr"), data=data, chunks=(2, 16, 16)[-len(shape):])
    assert io_module.region_source(imread(str(tmp_path / "r.zarr"))) is None


def test_a_contiguous_tiff_cut_short_after_it_was_resolved_names_the_file_when_read(tmp_path):
    path = _write_tiff(tmp_path / "t.tif", _volume((4, 20, 10)))
    spec = resolve_input(path)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 500)
    with pytest.raises(InputError, match=r"t\.tif is truncated"):
        io_module._read_tiff_region(path, tuple(slice(0, n) for n in spec.shape))


def test_tiff_graph_computes_on_worker_processes(tmp_path, client):
    data = _volume((9, 50, 20))
    path = _write_tiff(tmp_path / "v.tif", data, compression="zlib")
    lazy = imread(path, chunks=(4, 13, 20))
    pickle.dumps(lazy.__dask_graph__())
    np.testing.assert_array_equal(client.compute(lazy, sync=True), data)
    contiguous = imread(_write_tiff(tmp_path / "raw.tif", data), chunks=(2, 50, 7))
    np.testing.assert_array_equal(client.compute(contiguous, sync=True), data)


def test_default_chunks_fill_planes_in_whole_native_chunks():
    assert default_chunks((10, 64, 64), 2, (1, 64, 64)) == (10, 64, 64)
    assert default_chunks((100, 4096, 4096), 2, (1, 4096, 4096)) == (2, 4096, 4096)
    assert default_chunks((3, 50000, 50000), 1, (1, 16, 50000)) == (1, 1328, 50000)
    assert default_chunks((1000, 10000, 10000), 1, (64, 64, 64)) == (64, 64, 10000)


def test_default_tiff_chunks_are_whole_planes(tmp_path):
    path = _write_tiff(tmp_path / "v.tif", _volume((5, 64, 48)))
    assert imread(path).chunks == ((5,), (64,), (48,))


@pytest.mark.parametrize("shape, itemsize, native", [
    ((256, 1024, 1024), 2, (1, 1024, 1024)),  # TIFF pages
    ((1000, 2048, 2048), 2, (64, 256, 256)),  # zarr chunks
    ((300, 700, 90), 4, (1, 700, 90)),
    ((64, 100000, 3), 1, (64, 512, 3)),
])
def test_volume_chunks_are_near_cubes_within_the_limit_on_native_chunks(shape, itemsize, native):
    limit = 2**24
    block = volume_chunks(shape, itemsize, native, limit)
    assert math.prod(block) * itemsize <= limit
    for b, s, n in zip(block, shape, native):
        assert 0 < b <= s
        assert b == s or n >= s or b % n == 0  # whole native chunks where the native chunk splits the axis
    # Every axis cut short is as long as the limit lets it be: doubling it would go over.
    for axis in range(3):
        if block[axis] < shape[axis]:
            assert math.prod(block) // block[axis] * min(shape[axis], 2 * block[axis]) * itemsize > limit
    # Halo work: a sigma-2 gaussian's halo (8 voxels a side) costs less than on slabs of whole planes.
    def overhead(b):
        return math.prod((x + 16 if x < s else x) for x, s in zip(b, shape)) / math.prod(b)
    assert overhead(block) <= overhead(default_chunks(shape, itemsize, native, limit))


def test_volume_chunks_keep_a_volume_within_the_limit_whole():
    assert volume_chunks((100, 512, 512), 2, (1, 512, 512), 2**26) == (100, 512, 512)


def test_default_chunks_of_a_tiff_volume_are_near_cubes_but_planes_with_channels(tmp_path, monkeypatch):
    monkeypatch.setattr(io_module, "DEFAULT_BLOCK_BYTES", 2**16)  # 64 KiB: small images split like big ones
    monkeypatch.setattr(io_module, "VOLUME_BLOCK_BYTES", 2**16)
    volume = _write_tiff(tmp_path / "v.tif", _volume((32, 256, 192)))
    # Sized for float32, the filters' working type: half the uint16 voxels a block of 64 KiB would hold.
    assert imread(volume).chunksize == volume_chunks((32, 256, 192), 4, (1, 256, 192), 2**16) == (4, 64, 64)
    channels = tmp_path / "channels.tif"  # an ImageJ stack of 3 channels: not a volume
    tifffile.imwrite(channels, np.zeros((3, 256, 512), np.uint8), imagej=True, metadata={"axes": "CYX"})
    assert resolve_input(str(channels)).channel_axis == 0
    assert imread(str(channels)).chunksize == default_chunks((3, 256, 512), 1, (1, 256, 512), 2**16) == (1, 128, 512)


# ---------------------------------------------------------------- glob and tiles


def test_glob_stacks_sorted_files(tmp_path, client):
    planes = [_volume((20, 30), seed=i) for i in range(5)]
    for i, plane in enumerate(planes):
        _write_tiff(tmp_path / f"z{i:02d}.tif", plane)
    pattern = str(tmp_path / "z*.tif")
    spec = resolve_input(pattern)
    assert spec.kind == "glob" and spec.shape == (5, 20, 30)
    assert list(spec.paths) == sorted(spec.paths)
    np.testing.assert_array_equal(imread(pattern).compute(), np.stack(planes))
    per_file = imread(pattern, chunks=(1, 20, 30))
    assert per_file.numblocks == (5, 1, 1)
    on_workers = client.compute(imread(pattern, chunks=(2, 7, 30)), sync=True)
    np.testing.assert_array_equal(on_workers, np.stack(planes))


def test_glob_as_path_and_spec_dict_round_trip(tmp_path):
    for i in range(3):
        _write_tiff(tmp_path / f"p{i}.tif", _volume((4, 6), seed=i))
    spec = resolve_input(tmp_path / "p?.tif")
    assert spec.kind == "glob" and spec.shape == (3, 4, 6)
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_glob_with_mixed_shapes_is_rejected(tmp_path):
    _write_tiff(tmp_path / "a.tif", _volume((20, 30)))
    _write_tiff(tmp_path / "b.tif", _volume((20, 31)))
    with pytest.raises(InputError, match="b.tif"):
        resolve_input(str(tmp_path / "*.tif"))


def _tile_grid(tmp_path, arrays, prefix="t"):
    def write(node, where):
        if isinstance(node, list):
            return [write(child, f"{where}{i}") for i, child in enumerate(node)]
        return _write_tiff(tmp_path / f"{prefix}{where}.tif", node)

    return write(arrays, "")


@pytest.mark.parametrize(
    "arrays",
    [
        # 2x2 with non-uniform row heights and column widths
        [[_volume((10, 7)), _volume((10, 12))], [_volume((5, 7)), _volume((5, 12))]],
        # 2x1
        [[_volume((6, 9))], [_volume((4, 9))]],
        # 3D tiles in a 2x2 grid over (y, x)
        [[_volume((3, 8, 5)), _volume((3, 8, 6))], [_volume((3, 2, 5)), _volume((3, 2, 6))]],
        # 3D tiles in a 2x1x2 grid over (z, y, x)
        [[[_volume((2, 4, 3)), _volume((2, 4, 5))]], [[_volume((3, 4, 3)), _volume((3, 4, 5))]]],
    ],
    ids=["2x2", "2x1", "3d-2x2", "3d-2x1x2"],
)
def test_tiles_assemble_like_np_block(tmp_path, arrays):
    tiles = _tile_grid(tmp_path, arrays)
    expected = np.block(arrays)
    spec = resolve_input({"tiles": tiles})
    assert spec.kind == "tiles" and spec.shape == expected.shape
    assert spec.grid == np.array(tiles, dtype=object).shape
    np.testing.assert_array_equal(imread({"tiles": tiles}).compute(), expected)
    np.testing.assert_array_equal(imread(spec, chunks=(3,) * expected.ndim).compute(), expected)


def test_tiles_that_do_not_fit_name_the_tile(tmp_path):
    arrays = [[_volume((10, 7)), _volume((10, 12))], [_volume((5, 7)), _volume((6, 12))]]
    tiles = _tile_grid(tmp_path, arrays)
    with pytest.raises(InputError, match=r"t11\.tif.*\(5, 12\)"):
        resolve_input({"tiles": tiles})


def test_ragged_tile_lists_are_rejected(tmp_path):
    a = _write_tiff(tmp_path / "a.tif", _volume((4, 4)))
    with pytest.raises(InputError, match=r"tiles\[1\]"):
        resolve_input({"tiles": [[a, a], [a]]})


# ---------------------------------------------------------------- zarr


def test_plain_zarr_array_and_component(tmp_path, client):
    data = _volume((6, 20, 10))
    array = zarr.create_array(
        str(tmp_path / "plain.zarr"), shape=data.shape, dtype=data.dtype, chunks=(2, 8, 10)
    )
    array[...] = data
    lazy = imread(str(tmp_path / "plain.zarr"))
    assert lazy.chunks[0] == (6,)
    np.testing.assert_array_equal(client.compute(lazy, sync=True), data)

    group = zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    group.create_array("raw", shape=data.shape, dtype=data.dtype, chunks=(3, 20, 10))[...] = data
    source = {"zarr": tmp_path / "group.zarr", "component": "raw"}
    np.testing.assert_array_equal(imread(source, chunks=(4, 7, 3)).compute(), data)
    with pytest.raises(InputError, match="group.zarr.*multiscales"):
        resolve_input(tmp_path / "group.zarr")


def test_ome_zarr_04_image(tmp_path):
    data = _volume((12, 9))
    group = zarr.open_group(str(tmp_path / "v2.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=data.shape, dtype=data.dtype, chunks=(5, 9))[...] = data
    multiscale = {"version": "0.4", "datasets": [{"path": "s0"}], "axes": ["y", "x"]}
    group.attrs["multiscales"] = [multiscale]
    spec = resolve_input(str(tmp_path / "v2.ome.zarr"))
    assert spec.component == "s0"
    np.testing.assert_array_equal(imread(spec).compute(), data)


@pytest.mark.parametrize("fill", ["none", "some", "all"])
def test_the_statistics_of_a_mask_written_block_by_block_are_its_own(tmp_path, fill):
    data = np.zeros((5, 9, 7), bool) if fill == "none" else np.ones((5, 9, 7), bool)
    if fill == "some":
        data[1:3, ::2] = False
    ref = create_store(tmp_path / "mask.ome.zarr", shape=data.shape, dtype="bool", chunks=(2, 4, 7), kind="mask",
                       fingerprint="f", name="m")
    stats = write_whole(data, ref)
    assert stats["count"] == data.size
    assert (stats["min"], stats["max"]) == (float(data.min()), float(data.max()))
    assert stats["mean"] == float(data.mean())


def test_store_round_trip_on_worker_processes(tmp_path, client):
    data = _volume((9, 33, 21), dtype=np.float32)
    store = tmp_path / "out.ome.zarr"
    ref = create_store(
        store, shape=data.shape, dtype="float32", chunks=(4, 16, 16),
        kind="image", fingerprint="fp1", name="gauss",
    )
    assert ref == ArrayRef(str(store), "0", data.shape, "float32", (4, 16, 16), "image", "fp1")
    source = da.from_array(data, chunks=(5, 10, 7))  # uneven, misaligned with the store
    written = write_blocks(source, ref)
    assert not is_complete(store)  # lazy: nothing is sealed yet
    stats = merge_block_stats(client.gather(client.compute(list(written.values()))))
    assert stats["count"] == data.size
    assert stats["min"] == data.min() and stats["max"] == data.max()
    assert stats["mean"] == pytest.approx(float(data.astype(np.float64).mean()))
    assert done_blocks(ref) == set(np.ndindex(*block_grid(ref)))
    assert resumable(store, "fp1") == ref
    assert not is_complete(store)
    mark_complete(ref, mean=np.float32(data.mean()))
    assert is_complete(store) and is_complete(store, "fp1")
    assert not is_complete(store, "other")
    assert not is_complete(tmp_path / "missing.zarr")
    assert open_store_ref(store) == ref
    np.testing.assert_array_equal(client.compute(read_ref(ref), sync=True), data)
    assert read_ref(ref).chunks[1] == (16, 16, 1)
    spec = resolve_input(store)
    assert (spec.kind, spec.component) == ("zarr", "0")
    np.testing.assert_array_equal(imread(store).compute(), data)
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    assert attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in attrs["ome"]["multiscales"][0]["axes"]] == ["z", "y", "x"]
    expected = {"fingerprint": "fp1", "kind": "image", "complete": True, "mean": float(data.mean())}
    assert attrs["haloflow"] == expected


def _small_store(path, kind="image", fingerprint="a", **overrides):
    options = dict(shape=(4, 4), dtype="uint8", chunks=(2, 2), kind=kind, fingerprint=fingerprint)
    return create_store(path, name="small", **{**options, **overrides})


def test_create_store_overwrites_old_store_but_not_other_directories(tmp_path):
    store = tmp_path / "labels.ome.zarr"
    old = _small_store(store)
    dask.compute(*write_blocks(da.ones((4, 4), dtype="uint8", chunks=2), old).values())
    mark_complete(old)
    ref = _small_store(store, "labels", "b", shape=(6, 5), dtype="int32", chunks=(4, 4))
    assert not is_complete(store)
    assert read_ref(ref).compute().sum() == 0
    assert "image-label" in zarr.open_group(str(store), mode="r").attrs["ome"]
    (tmp_path / "precious").mkdir()
    with pytest.raises(ValueError, match="precious"):
        _small_store(tmp_path / "precious")


@pytest.mark.parametrize(
    ("shape", "axes", "names"),
    [
        ((4, 4), None, ["y", "x"]),
        ((2, 3, 4, 4), None, ["t", "z", "y", "x"]),
        ((2, 4, 4), ("c", "y", "x"), ["c", "y", "x"]),
    ],
)
def test_store_axes(tmp_path, shape, axes, names):
    ref = _small_store(tmp_path / "s.zarr", shape=shape, chunks=shape, axes=axes)
    ome = zarr.open_group(ref.store, mode="r").attrs["ome"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == names
    assert zarr.open_array(ref.store, path="0", mode="r").metadata.dimension_names == tuple(names)


def test_mark_complete_refuses_another_fingerprint(tmp_path):
    ref = _small_store(tmp_path / "s.zarr", "mask")
    stale = ArrayRef(ref.store, "0", ref.shape, ref.dtype, ref.chunks, "mask", "b")
    with pytest.raises(ValueError, match="s.zarr"):
        mark_complete(stale)


def test_mark_complete_sets_a_label_stores_colours_in_the_same_write_and_refuses_them_elsewhere(tmp_path):
    labels = _small_store(tmp_path / "l.zarr", "labels")
    mark_complete(labels, image_label={"version": "0.5", "colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]}]}, objects=0)
    group = zarr.open_group(labels.store, mode="r")  # zarr reads the rewritten metadata
    assert group.attrs["ome"]["image-label"]["colors"][0]["label-value"] == 0
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    assert group.attrs["haloflow"]["objects"] == 0 and is_complete(labels.store, labels.fingerprint)
    mask = _small_store(tmp_path / "m.zarr", "mask")
    with pytest.raises(ValueError, match="m.zarr holds mask, not labels"):
        mark_complete(mask, image_label={"version": "0.5"})
    assert not is_complete(mask.store)


def test_mark_complete_keeps_non_finite_statistics_as_zarr_writes_them(tmp_path):
    ref = _small_store(tmp_path / "s.zarr", "image")
    mark_complete(ref, stats={"min": float("nan"), "max": float("inf")})
    stats = zarr.open_group(ref.store, mode="r").attrs["haloflow"]["stats"]
    assert np.isnan(stats["min"]) and stats["max"] == float("inf")


def test_write_whole_writes_and_records_every_block_of_the_store(tmp_path):
    ref = create_store(tmp_path / "s.zarr", shape=(3, 4, 5), dtype="uint16", chunks=(1, 4, 5), kind="image",
                       fingerprint="f", name="s")
    data = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    assert io_module.write_whole(data, ref) == {"count": 60, "min": 0.0, "max": 59.0, "mean": 29.5}
    np.testing.assert_array_equal(zarr.open_array(ref.store, path="0", mode="r")[...], data)
    assert io_module.done_blocks(ref) == {(0, 0, 0), (1, 0, 0), (2, 0, 0)}
    assert io_module.done_block_stats(ref)[1, 0, 0] == [20.0, 20.0, 39.0, float(np.arange(20, 40).sum())]
    with pytest.raises(ValueError, match="s.zarr holds shape .3, 4, 5. dtype uint16, not the float32 array"):
        io_module.write_whole(data.astype(np.float32), ref)


def test_write_whole_without_block_records_writes_the_same_store_and_statistics(tmp_path):
    data = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    refs = [create_store(tmp_path / f"{name}.zarr", shape=(3, 4, 5), dtype="uint16", chunks=(1, 4, 5), kind="image",
                         fingerprint="f", name=name) for name in ("recorded", "bare")]
    assert io_module.write_whole(data, refs[0]) == io_module.write_whole(data, refs[1], record_blocks=False)
    for ref in refs:
        np.testing.assert_array_equal(zarr.open_array(ref.store, path="0", mode="r")[...], data)
    assert io_module.done_blocks(refs[1]) == set() and not (tmp_path / "bare.zarr" / ".haloflow-done").exists()
    assert len(io_module.done_blocks(refs[0])) == 3


def test_save_whole_seals_the_store_the_three_step_write_seals(tmp_path):
    data = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    ref = create_store(tmp_path / "steps.zarr", shape=(3, 4, 5), dtype="uint16", chunks=(1, 4, 5), kind="labels",
                       fingerprint="f", name="s")
    stats = write_whole(data, ref, record_blocks=False)
    mark_complete(ref, image_label=io_module.ome.image_label(59, "../in"), found={"x": 1},
                  stats={k: v for k, v in stats.items() if k != "count"})
    saved, saved_stats = io_module.save_whole(data, tmp_path / "once.zarr", chunks=(1, 4, 5), kind="labels",
                                              fingerprint="f", name="s", found={"found": {"x": 1}},
                                              label_source="../in")
    assert saved == ArrayRef(str(tmp_path / "once.zarr"), "0", (3, 4, 5), "uint16", (1, 4, 5), "labels", "f")
    assert saved_stats == stats and is_complete(saved.store, "f")
    assert zarr.open_group(saved.store, mode="r").attrs.asdict() == zarr.open_group(ref.store, mode="r").attrs.asdict()
    np.testing.assert_array_equal(zarr.open_array(saved.store, path="0", mode="r")[...], data)
    np.testing.assert_array_equal(io_module.read_ref_whole(saved), data)
    assert sorted(p.name for p in (tmp_path / "once.zarr" / "0").iterdir()) == ["c.0.0.0", "c.1.0.0", "c.2.0.0", "zarr.json"]
    with pytest.raises(ValueError, match=r"\['complete', 'stats'\] are reserved"):
        io_module.save_whole(data, tmp_path / "bad.zarr", chunks=(1, 4, 5), kind="image", fingerprint="f", name="s",
                             found={"stats": {}, "complete": False})
    assert not (tmp_path / "bad.zarr").exists()


def test_a_store_save_whole_did_not_finish_is_not_complete_and_is_made_again(tmp_path, monkeypatch):
    data = np.ones((4, 5), dtype=np.float32)
    store = tmp_path / "s.zarr"

    def interrupted(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io_module, "write_whole", interrupted)
    with pytest.raises(OSError, match="disk full"):
        io_module.save_whole(data, store, chunks=(4, 5), kind="image", fingerprint="f", name="s")
    assert (store / "0" / "zarr.json").exists() and not (store / "zarr.json").exists()
    assert not is_complete(store) and not is_complete(store, "f")
    monkeypatch.undo()
    ref, _ = io_module.save_whole(data, store, chunks=(4, 5), kind="image", fingerprint="f", name="s")
    assert is_complete(store, "f")
    np.testing.assert_array_equal(io_module.read_ref_whole(ref), data)
    (store / "zarr.json").unlink()  # as if interrupted again: create_store replaces it too
    assert create_store(store, shape=(4, 5), dtype="float32", chunks=(4, 5), kind="image", fingerprint="g", name="s")
    (tmp_path / "mine" / "0").mkdir(parents=True)  # a folder without zarr metadata is still refused
    with pytest.raises(ValueError, match="mine exists and is not a zarr store"):
        io_module.save_whole(data, tmp_path / "mine", chunks=(4, 5), kind="image", fingerprint="f", name="s")


def test_open_store_ref_rejects_foreign_store(tmp_path):
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(ValueError, match="foreign.zarr"):
        open_store_ref(tmp_path / "foreign.zarr")
    assert not is_complete(tmp_path / "foreign.zarr")


@pytest.mark.parametrize(("dtype", "codec"), [("float32", "blosc"), ("float64", "blosc"), ("uint16", "zstd"),
                                           ("bool", "zstd"), ("uint32", "zstd")])
def test_float_stores_are_blosc_lz4_shuffled_the_others_zstd(tmp_path, dtype, codec):
    ref = _small_store(tmp_path / "s.zarr", dtype=dtype)
    (compressor,) = zarr.open_array(ref.store, path="0", mode="r").compressors
    assert type(compressor).__name__.lower().startswith(codec)
    if codec == "blosc":
        assert (compressor.cname.value, compressor.shuffle.value) == ("lz4", "shuffle")
        assert compressor.typesize == np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype", ["float32", "uint16", "bool"])
def test_write_blocks_leaves_all_zero_chunks_out_of_the_store(tmp_path, dtype):
    data = np.zeros((4, 6), dtype=dtype)
    data[0, 3] = 1  # block (0, 1) holds a nonzero value, block (0, 0) and row 2-3 blocks do not
    if dtype == "float32":
        data[2, 4] = np.nan  # and a non-finite one: written, read back as NaN
    ref = _small_store(tmp_path / "s.zarr", shape=data.shape, dtype=dtype, chunks=(2, 3))
    dask.compute(*write_blocks(da.from_array(data, chunks=(2, 3)), ref).values())
    chunk_files = {tuple(int(i) for i in p.relative_to(tmp_path / "s.zarr" / "0" / "c").parts)
                   for p in (tmp_path / "s.zarr" / "0" / "c").rglob("*") if p.is_file()}
    assert chunk_files == ({(0, 1), (1, 1)} if dtype == "float32" else {(0, 1)})
    np.testing.assert_array_equal(read_ref(ref).compute(), data)


def test_write_blocks_checks_shape_and_dtype(tmp_path):
    ref = _small_store(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="dtype"):
        write_blocks(da.zeros((4, 4), dtype="float64"), ref)
    with pytest.raises(ValueError, match="shape"):
        write_blocks(da.zeros((4, 5), dtype="uint8"), ref)


# ---------------------------------------------------------------- input errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(InputError, match="nope.tif") as info:
        resolve_input(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, InputNotFoundError)


def test_glob_without_match(tmp_path):
    with pytest.raises(InputError, match=r"nothing\*\.tif"):
        resolve_input(str(tmp_path / "nothing*.tif"))


def test_corrupt_tiff(tmp_path):
    bad = tmp_path / "x.tif"
    bad.write_bytes(b"this is not a tiff at all" * 20)
    with pytest.raises(InputError, match=r"x\.tif: TiffFileError") as info:
        resolve_input(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"x\.tif"):
        read_image(bad)


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    _write_tiff(path, _volume((4, 32, 32)))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"cut\.tif"):
        resolve_input(path)


def test_chunks_of_wrong_rank(tmp_path):
    path = _write_tiff(tmp_path / "v.tif", _volume((3, 8, 8)))
    with pytest.raises(InputError, match="chunks has 2 entries but the image has 3 axes"):
        imread(path, chunks=(4, 4))


def test_bad_input_types_and_dicts(tmp_path):
    with pytest.raises(TypeError):
        resolve_input(42)
    with pytest.raises(InputError, match="'zarr'"):
        resolve_input({"zar": "x"})
    not_a_store = tmp_path / "folder"
    not_a_store.mkdir()
    with pytest.raises(InputError, match="folder"):
        resolve_input(not_a_store)


# ---------------------------------------------------------------- batch helpers


def test_list_batch_images_and_read_image(tmp_path):
    images = {name: _volume((6, 5), seed=i) for i, name in enumerate(["b.tif", "a.TIFF", "c.tif"])}
    for name, image in images.items():
        _write_tiff(tmp_path / name, image)
    (tmp_path / "notes.txt").write_text("x")
    listed = list_batch_images(tmp_path)
    assert [os.path.basename(p) for p in listed] == ["a.TIFF", "b.tif", "c.tif"]
    assert [os.path.basename(p) for p in list_batch_images(str(tmp_path / "*.tif"))] == ["b.tif", "c.tif"]
    np.testing.assert_array_equal(read_image(listed[0]), images["a.TIFF"])
    with pytest.raises(InputError, match=r"none\*"):
        list_batch_images(str(tmp_path / "none*"))
    with pytest.raises(InputError, match="empty"):
        (tmp_path / "empty").mkdir()
        list_batch_images(tmp_path / "empty")


def test_listed_batch_images_have_their_folders_and_symlinks_resolved(tmp_path):
    real = tmp_path / "real"
    elsewhere = tmp_path / "elsewhere"
    real.mkdir()
    elsewhere.mkdir()
    _write_tiff(real / "a.tif", _volume((4, 4), seed=1))
    _write_tiff(elsewhere / "target.tif", _volume((4, 4), seed=2))
    (real / "b.tif").symlink_to(elsewhere / "target.tif")
    (tmp_path / "through").symlink_to(real)
    (tmp_path / "through" / "sub").mkdir()
    _write_tiff(real / "sub" / "c.tif", _volume((4, 4), seed=3))

    listed = list_batch_images(str(tmp_path / "through" / "*.tif"))
    assert listed == sorted([str(real / "a.tif"), str(elsewhere / "target.tif")])
    nested = list_batch_images(str(tmp_path / "through" / "**" / "*.tif"))
    assert nested == sorted([str(real / "a.tif"), str(elsewhere / "target.tif"), str(real / "sub" / "c.tif")])


# ---------------------------------------------------------------- tables


def test_table_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    columns = {
        "label": np.arange(1, 6, dtype=np.int32),
        "area": np.array([3, 0, 7, 2**40, -1], dtype=np.int64),
        "mean": rng.normal(size=5),
        "small": rng.random(5).astype(np.float32),
        "odd": np.array([np.nan, np.inf, -0.0, 1e-300, 2.0]),
        "name": np.array(["a", "b,c", 'quote"d', "x y", "1.5e"]),
    }
    path = tmp_path / "stats.csv"
    write_table(columns, path)
    assert sorted(os.listdir(tmp_path)) == ["stats.csv"]
    back = read_table(path)
    assert list(back) == list(columns)
    assert back["label"].dtype == np.int64 and back["area"].dtype == np.int64
    assert back["mean"].dtype == np.float64 and back["odd"].dtype == np.float64
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values.astype(back[name].dtype))
    assert np.array_equal(back["mean"], columns["mean"])  # bit-exact floats


def test_write_table_validates_columns(tmp_path):
    with pytest.raises(ValueError, match="'b'"):
        write_table({"a": [1, 2], "b": [[1, 2]]}, tmp_path / "t.csv")
    with pytest.raises(ValueError, match="length"):
        write_table({"a": [1, 2], "b": [1]}, tmp_path / "t.csv")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_follows_file_mtime(tmp_path):
    path = _write_tiff(tmp_path / "v.tif", _volume((2, 8, 8)))
    spec = resolve_input(path)
    first = spec.fingerprint()
    assert resolve_input(path).fingerprint() == first
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert spec.fingerprint() != first
    assert spec.to_dict()["paths"] == [str(tmp_path / "v.tif")]


def test_zarr_fingerprint_follows_chunk_changes(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(8, 8), dtype="uint8", chunks=(4, 4))
    array[...] = 1
    spec = resolve_input(tmp_path / "a.zarr")
    first = spec.fingerprint()
    assert spec.fingerprint() == first
    array[:4, :4] = 2
    files = (tmp_path / "a.zarr").rglob("*")
    chunk = next(p for p in files if p.is_file() and p.name != "zarr.json")
    os.utime(chunk, ns=(0, os.stat(chunk).st_mtime_ns + 10**9))
    assert spec.fingerprint() != first


def _tasks_made_for_all_writes(tmp_path, grid: int, monkeypatch) -> int:
    """How many Dask tasks are constructed while the graph of every block's write is built and materialised."""
    from dask._task_spec import Task
    from dask.base import collections_to_expr

    blocks, shape = (4, 4), (grid * 4, grid * 4)
    mask = create_store(tmp_path / f"m{grid}.ome.zarr", shape=shape, dtype="bool", chunks=blocks, kind="mask",
                        fingerprint="fp", name="m")
    dask.compute(*write_blocks(da.ones(shape, dtype=bool, chunks=blocks), mask).values())
    offsets = dask.delayed(np.arange(grid * grid))  # as the label lifting's second pass: a map_blocks with block_info
    labels = read_ref(mask).map_blocks(lambda b, offsets, block_info=None: b.astype("int32") + offsets[0],
                                       offsets=offsets, dtype="int32")
    ref = create_store(tmp_path / f"w{grid}.ome.zarr", shape=shape, dtype="int32", chunks=blocks, kind="labels",
                       fingerprint="fp", name="w")
    made = [0]
    original = Task.__init__

    def counting(self, *args, **kwargs):
        made[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(Task, "__init__", counting)
    collections_to_expr(list(write_blocks(labels, ref).values())).__dask_graph__()
    monkeypatch.setattr(Task, "__init__", original)
    return made[0]


def test_building_every_blocks_write_grows_with_the_block_count_not_its_square(tmp_path, monkeypatch):
    # Each block's write cut from the whole array (``array.blocks[index]``) made the scheduler build the
    # array's graph again for every block: 16 times the blocks, 160 times the tasks built (19.6 s for
    # 512 label blocks of the benchmark's volume); now about 14 times.
    small, large = (_tasks_made_for_all_writes(tmp_path, grid, monkeypatch) for grid in (2, 8))
    assert large < 2 * 16 * small


def test_write_blocks_skips_done_blocks_and_resumes(tmp_path):
    data = np.arange(36, dtype=np.uint16).reshape(6, 6)
    store = tmp_path / "r.ome.zarr"
    ref = create_store(store, shape=data.shape, dtype="uint16", chunks=(3, 2), kind="image", fingerprint="fp", name="r")
    first = write_blocks(da.from_array(data, chunks=3), ref)
    dask.compute(first[0, 0], first[1, 2])
    assert done_blocks(ref) == {(0, 0), (1, 2)}
    assert resumable(store, "fp") == ref and resumable(store, "other") is None
    rest = write_blocks(da.from_array(data, chunks=3), ref, skip=done_blocks(ref))
    assert len(rest) == 6 - 2 and (0, 0) not in rest
    dask.compute(*rest.values())
    mark_complete(ref)
    assert resumable(store, "fp") is None
    np.testing.assert_array_equal(read_ref(ref).compute(), data)


@pytest.mark.parametrize("kind", ["tiff", "imagej stack", "glob", "zarr"])
def test_read_whole_gives_what_imread_gives_in_one_block(tmp_path, kind):
    rng = np.random.default_rng(4)
    image = rng.integers(0, 4000, (3, 20, 17), dtype=np.uint16)
    if kind == "tiff":
        tifffile.imwrite(tmp_path / "a.tif", image[0])
        source = str(tmp_path / "a.tif")
    elif kind == "imagej stack":
        tifffile.imwrite(tmp_path / "a.tif", image, imagej=True, metadata={"axes": "CYX"})
        source = str(tmp_path / "a.tif")
    elif kind == "glob":
        for i, plane in enumerate(image):
            tifffile.imwrite(tmp_path / f"p{i}.tif", plane)
        source = str(tmp_path / "p*.tif")
    else:
        zarr.create_array(str(tmp_path / "a.zarr"), data=image, chunks=(1, 8, 8))
        source = str(tmp_path / "a.zarr")
    whole = io_module.read_whole(source)
    expected = imread(source).compute()
    assert whole.dtype == expected.dtype
    np.testing.assert_array_equal(whole, expected)


@pytest.mark.parametrize("layout", [
    {"shape": (37, 29)},
    {"shape": (5, 37, 29)},  # one page per slice
    {"shape": (37, 29), "rowsperstrip": 8},
    {"shape": (64, 48), "tile": (16, 16)},
    {"shape": (37, 29, 3), "photometric": "rgb"},
    {"shape": (3, 37, 29), "photometric": "minisblack", "planarconfig": "separate"},
    {"shape": (37, 29), "compression": "zlib"},
])
def test_resolving_a_tiff_gives_the_chunks_zarr_sees_in_it_without_asking_zarr(tmp_path, layout):
    layout = dict(layout)
    shape = layout.pop("shape")
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(path, (np.arange(math.prod(shape)) % 251).astype(np.uint8).reshape(shape), **layout)
    with tifffile.TiffFile(path) as tif:
        store = tif.aszarr(series=0, level=0)
        expected = tuple(zarr.open_array(store, mode="r").chunks)
        declared = io_module._declared_chunks(store)
        store.close()
    assert declared == expected  # tifffile's own metadata, read without zarr, says what zarr reads
    spec = resolve_input(path)
    assert spec.native_chunks == expected and spec.shape == shape


def test_a_tiff_whose_zarr_view_hides_its_metadata_is_probed_through_zarr(tmp_path, monkeypatch):
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(path, np.ones((3, 20, 30), np.uint16), rowsperstrip=5)  # pages: no single page's own chunks
    monkeypatch.setattr(io_module, "_declared_chunks", lambda store: None)
    assert resolve_input(path).native_chunks == (1, 5, 30)


@pytest.mark.parametrize("layout", [
    {"shape": (37, 29)},
    {"shape": (37, 29), "rowsperstrip": 1},
    {"shape": (37, 29), "rowsperstrip": 8},
    {"shape": (37, 29, 3), "photometric": "rgb"},
])
def test_a_single_uncompressed_page_gives_its_own_chunks_without_a_zarr_view(tmp_path, layout, monkeypatch):
    layout = dict(layout)
    shape = layout.pop("shape")
    path = str(tmp_path / "t.tif")
    tifffile.imwrite(path, np.zeros(shape, np.uint8), **layout)
    with tifffile.TiffFile(path) as tif:
        store = tif.aszarr(series=0, level=0)
        expected = tuple(zarr.open_array(store, mode="r").chunks)
        store.close()

    def no_view(*args, **kwargs):
        raise AssertionError("the zarr view was built")

    monkeypatch.setattr(tifffile.TiffFile, "aszarr", no_view)
    assert resolve_input(path).native_chunks == expected
