"""Stage stores written and read without zarr's async pipeline are what zarr itself writes and reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from tasks import io, zarrchunks
from tasks.io import _store_codec


def _documents(store: Path) -> tuple[dict, dict]:
    return json.loads((store / "zarr.json").read_text()), json.loads((store / "0" / "zarr.json").read_text())


def _zarr_made(path: Path, shape, dtype, chunks, axes, attributes):
    """The store create_store made before: zarr's own group and array."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=attributes)
    group.create_array("0", shape=shape, dtype=dtype, chunks=chunks, compressors=_store_codec(np.dtype(dtype)),
                       dimension_names=axes)
    return group["0"]


@pytest.mark.parametrize("shape, chunks, dtype", [
    ((40, 30), (40, 30), "float32"),
    ((5, 40, 30), (2, 16, 30), "uint16"),
    ((2, 3, 9, 8), (1, 1, 9, 8), "float64"),
    ((9, 8), (4, 4), "bool"),
    ((3, 4, 5, 6, 7), (1, 2, 5, 6, 7), "uint32"),
])
def test_a_new_store_has_the_metadata_zarr_gives_it(tmp_path, shape, chunks, dtype):
    ref = io.create_store(tmp_path / "ours.zarr", shape=shape, dtype=dtype, chunks=chunks, kind="image",
                          fingerprint="f", name="n")
    group, array = _documents(tmp_path / "ours.zarr")
    axes = array["dimension_names"]
    _zarr_made(tmp_path / "zarrs.zarr", shape, dtype, chunks, axes, group["attributes"])
    assert (group, array) == _documents(tmp_path / "zarrs.zarr")
    opened = zarr.open_array(ref.store, path="0", mode="r")
    assert opened.shape == shape and opened.chunks == chunks and opened.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16", "bool", "uint32", "int8"])
def test_chunks_written_directly_are_the_bytes_zarr_writes_and_read_back_the_same(tmp_path, dtype):
    shape, chunks = (3, 37, 29), (2, 16, 16)  # edge chunks on every axis
    rng = np.random.default_rng(1)
    data = (rng.random(shape) * 200).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    data[:2, :16, :16] = 0  # a chunk of only the fill value: zarr writes no file for it
    ref = io.create_store(tmp_path / "ours.zarr", shape=shape, dtype=dtype, chunks=chunks, kind="image",
                          fingerprint="f", name="n")
    io._check_stored_array(ref)
    for index in np.ndindex(*io.block_grid(ref)):
        region = tuple((i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))
        io._write_block(data[tuple(slice(a, b) for a, b in region)], ref.store, "0", region, index)
    theirs = _zarr_made(tmp_path / "zarrs.zarr", shape, dtype, chunks, ["z", "y", "x"], {})
    theirs[...] = data
    ours_files = sorted(p.relative_to(tmp_path / "ours.zarr" / "0") for p in (tmp_path / "ours.zarr" / "0" / "c").rglob("*") if p.is_file())
    zarr_files = sorted(p.relative_to(tmp_path / "zarrs.zarr" / "0") for p in (tmp_path / "zarrs.zarr" / "0" / "c").rglob("*") if p.is_file())
    assert ours_files == zarr_files and Path("c/0/0/0") not in ours_files
    for name in ours_files:
        assert (tmp_path / "ours.zarr" / "0" / name).read_bytes() == (tmp_path / "zarrs.zarr" / "0" / name).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(ref.store, path="0", mode="r")[...], data)
    whole = io.read_ref_whole(ref)
    assert whole.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(whole, data)


@pytest.mark.parametrize("region", [
    (slice(0, 2), slice(0, 16), slice(0, 16)),  # one whole chunk, all fill value (no file)
    (slice(0, 2), slice(16, 32), slice(0, 16)),  # one whole chunk: decoded into the block itself
    (slice(2, 3), slice(32, 37), slice(16, 29)),  # the corner edge chunk
    (slice(1, 3), slice(5, 30), slice(3, 20)),  # across chunk borders on every axis
    (slice(0, 3), slice(0, 37), slice(0, 29)),  # everything
    (slice(1, 1), slice(0, 37), slice(0, 29)),  # empty
])
@pytest.mark.parametrize("dtype", ["float32", "uint16"])  # blosc, zstd
def test_a_large_image_read_decodes_chunks_directly_and_equals_zarr(tmp_path, monkeypatch, region, dtype):
    shape, chunks = (3, 37, 29), (2, 16, 16)
    data = (np.random.default_rng(2).random(shape) * 9).astype(dtype)
    data[:2, :16, :16] = 0
    ref = io.create_store(tmp_path / "s.zarr", shape=shape, dtype=dtype, chunks=chunks, kind="image",
                          fingerprint="f", name="n")
    zarr.open_array(ref.store, path="0", mode="r+")[...] = data
    expected = zarr.open_array(ref.store, path="0", mode="r")[region]
    lazy = io.read_ref(ref)[region]
    monkeypatch.setattr(zarr, "open_array", None)  # the blocks are not read through zarr
    got = lazy.compute(scheduler="synchronous")
    assert got.dtype == np.dtype(dtype) and got.flags.writeable
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16", "uint32", "bool"])
def test_a_chunk_decoded_into_a_given_array_fills_that_array_with_the_plain_decoding(dtype):
    codec = zarrchunks.chunk_codec(json.loads(json.dumps(_array_document(dtype, (3, 5, 4)))))
    data = (np.random.default_rng(3).random((3, 5, 4)) * 300).astype(dtype)
    stored = codec.encode(data)
    assert zarrchunks.decoded_size(codec.compressor, stored) == data.nbytes
    out = np.empty((3, 5, 4), dtype=dtype)
    assert codec.decode(stored, out=out) is out
    np.testing.assert_array_equal(out, codec.decode(stored))
    np.testing.assert_array_equal(codec.decode(None, out=out), np.zeros((3, 5, 4), dtype=dtype))
    short = codec.compressor.encode(np.ascontiguousarray(data.ravel()[:-1]))  # one value missing
    with pytest.raises(ValueError, match="holds 59 values, not the 60 of its shape"):
        codec.decode(short, out=np.empty((3, 5, 4), dtype=dtype))
    with pytest.raises(ValueError, match="cannot decode a chunk of shape"):
        codec.decode(stored, out=np.empty((3, 5, 5), dtype=dtype))


def _array_document(dtype, chunks) -> dict:
    """The array document create_store writes, for a store of one chunk."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        io.create_store(Path(folder) / "s.zarr", shape=chunks, dtype=dtype, chunks=chunks, kind="image",
                        fingerprint="f", name="n")
        return _documents(Path(folder) / "s.zarr")[1]


@pytest.mark.parametrize("header, size", [
    (bytes([0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x07]), 7),  # single segment, 1-byte size
    (bytes([0x28, 0xB5, 0x2F, 0xFD, 0x40, 0x00, 0x10, 0x00]), 16 + 256),  # window byte, 2-byte size (+256)
    (bytes([0x28, 0xB5, 0x2F, 0xFD, 0x81, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00]), 65536),  # window, dictionary id byte, 4 bytes
    (bytes([0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x00, 0x00]), None),  # no content size in the frame
    (bytes([0x00, 0xB5, 0x2F, 0xFD, 0x20, 0x07]), None),  # not a zstd frame
])
def test_the_decoded_size_of_a_zstd_frame_is_read_from_its_header(header, size):
    import numcodecs

    assert zarrchunks.decoded_size(numcodecs.Zstd(), header) == size


def test_a_block_that_is_not_one_whole_chunk_is_left_to_zarr(tmp_path):
    ref = io.create_store(tmp_path / "s.zarr", shape=(8, 8), dtype="uint16", chunks=(4, 4), kind="image",
                          fingerprint="f", name="n")
    block = np.arange(32, dtype=np.uint16).reshape(8, 4) + 1
    io._write_block(block, ref.store, "0", ((0, 8), (0, 4)), (0, 0))  # two chunks in one block
    np.testing.assert_array_equal(zarr.open_array(ref.store, path="0", mode="r")[:, :4], block)


def test_reads_of_a_store_zarr_wrote_with_another_codec_go_through_zarr(tmp_path):
    ref = io.create_store(tmp_path / "s.zarr", shape=(6, 5), dtype="uint16", chunks=(3, 5), kind="image",
                          fingerprint="f", name="n")
    data = np.arange(30, dtype=np.uint16).reshape(6, 5)
    zarr.create_array(str(tmp_path / "s.zarr"), name="0", shape=(6, 5), dtype="uint16", chunks=(3, 5),
                      compressors=GzipCodec(), overwrite=True)[...] = data
    assert zarrchunks.chunk_codec(io._array_metadata(ref.store, "0")) is None
    np.testing.assert_array_equal(io.read_ref_whole(ref), data)  # a batch image's read
    np.testing.assert_array_equal(io.read_ref(ref)[2:5].compute(scheduler="synchronous"), data[2:5])  # a large image's


@pytest.mark.parametrize("compressor", [ZstdCodec(level=1), BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")])
def test_an_input_whose_chunk_keys_use_dots_is_read_from_its_files(tmp_path, compressor):
    # zarr's default key encoding may separate with "." (c.0.1: one file per chunk, no folders); read as
    # c/0/1, every chunk was missing, and the image came out as the fill value, silently.
    data = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) + 1
    array = zarr.create_array(str(tmp_path / "dots.zarr"), shape=data.shape, dtype=data.dtype, chunks=(5, 4),
                              chunk_key_encoding={"name": "default", "separator": "."}, compressors=compressor)
    array[...] = data
    assert "c.1.2" in os.listdir(tmp_path / "dots.zarr")
    assert zarrchunks.chunk_codec(io._array_metadata(str(tmp_path / "dots.zarr"), "")) is not None  # the direct path
    np.testing.assert_array_equal(io.imread(str(tmp_path / "dots.zarr")).compute(scheduler="synchronous"), data)
    lazy = io.imread(str(tmp_path / "dots.zarr"), chunks=(5, 4))  # blocks of whole chunks, decoded straight
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), data)


@pytest.mark.parametrize("change", [
    {"codecs": [{"name": "bytes", "configuration": {"endian": "big"}}, {"name": "zstd", "configuration": {"level": 1}}]},
    {"codecs": [{"name": "bytes"}]},
    {"codecs": [{"name": "sharding_indexed", "configuration": {}}]},
    {"chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}}},
    {"fill_value": "NaN"},
    {"zarr_format": 2},
    {"data_type": "complex64"},
])
def test_chunk_codec_handles_only_the_chains_haloflow_writes(tmp_path, change):
    io.create_store(tmp_path / "s.zarr", shape=(4, 4), dtype="uint16", chunks=(4, 4), kind="image",
                    fingerprint="f", name="n")
    metadata = io._array_metadata(str(tmp_path / "s.zarr"), "0")
    assert zarrchunks.chunk_codec(metadata) is not None
    assert zarrchunks.chunk_codec({**metadata, **change}) is None


def test_a_strided_block_is_copied_into_a_buffer_each_thread_reuses():
    import threading

    base = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    little = np.dtype("<f4")
    assert zarrchunks.contiguous(base, little) is base  # already as stored: no copy
    first = zarrchunks.contiguous(base[:, 1:5, 2:6], little)
    assert first.flags.c_contiguous and first.base is None
    np.testing.assert_array_equal(first, base[:, 1:5, 2:6])
    again = zarrchunks.contiguous(base[:, 2:6, 1:5], little)
    assert again is first  # the same buffer, filled again
    np.testing.assert_array_equal(again, base[:, 2:6, 1:5])
    swapped = zarrchunks.contiguous(base.astype(">f4")[:, :4, :4], little)
    assert swapped is first and swapped.dtype == little
    np.testing.assert_array_equal(swapped, base[:, :4, :4])
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(zarrchunks.contiguous(base[:, 1:5, 2:6], little)))
    thread.start()
    thread.join()
    assert elsewhere[0] is not first  # another thread has buffers of its own
    for n in range(zarrchunks.SCRATCH_BUFFERS):  # as many other shapes as it keeps: the oldest is let go
        zarrchunks.contiguous(base[:, : n + 1, :3], little)
    assert zarrchunks.contiguous(base[:, 1:5, 2:6], little) is not first
