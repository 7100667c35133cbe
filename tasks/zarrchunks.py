"""Whole chunks of haloflow's own zarr v3 arrays, encoded and decoded here rather than through zarr's async pipeline.

A stage store's arrays use one of two codec chains (:func:`tasks.io.create_store`):
``bytes`` (little-endian) then ``blosc`` (floats) or ``zstd`` (everything
else), with regular chunks and the default ``c/...`` chunk keys. For such an
array, a chunk is the block's little-endian bytes compressed by numcodecs with
the codec's configuration: exactly what zarr writes, as the tests check
against zarr itself. Going through zarr costs 2-3 ms more per chunk (its event
loop and codec threads), which is most of the time of a small batch image's
stage; large chunks gain little.

:func:`chunk_codec` returns ``None`` for any array whose metadata says
anything else (other codecs, sharding, another chunk key encoding, a big-endian
layout, a fill value that is not a plain number): the caller then uses zarr.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np

_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


@dataclass(frozen=True)
class ChunkCodec:
    """How one array's chunks are stored: dtype, chunk shape, fill value, compressor and chunk key separator."""

    dtype: np.dtype
    chunks: tuple[int, ...]
    fill_value: Any
    compressor: Any
    separator: str

    def key(self, index: Sequence[int]) -> str:
        """The chunk's key inside the array, e.g. ``c/0/1`` (folders), or ``c.0.1`` (one file name)."""
        return self.separator.join(["c", *(str(int(i)) for i in index)])

    def encode(self, block: np.ndarray) -> bytes:
        """A whole chunk's stored bytes (``block`` has the chunk's shape)."""
        if block.shape != self.chunks:
            raise ValueError(f"a chunk of shape {self.chunks} cannot hold a block of shape {block.shape}")
        return bytes(self.compressor.encode(contiguous(block, self.dtype.newbyteorder("<"))))

    def decode(self, data: bytes | None, out: np.ndarray | None = None) -> np.ndarray:
        """A chunk from its stored bytes; ``None`` (no chunk written) gives the fill value.

        ``out``: a C-contiguous array of the chunk's shape and dtype to fill
        and return. The bytes are decompressed straight into it, with no copy,
        when the stored chunk says its size beforehand and it is ``out``'s;
        otherwise they are decoded as without ``out`` (a size that does not
        fit raises the same error) and copied in.
        """
        if out is not None:
            return self._decode_into(data, out)
        if data is None:
            return np.full(self.chunks, self.fill_value, dtype=self.dtype)
        raw = np.frombuffer(self.compressor.decode(data), dtype=self.dtype.newbyteorder("<"))
        if raw.size != int(np.prod(self.chunks)):
            raise ValueError(f"a stored chunk holds {raw.size} values, not the {int(np.prod(self.chunks))} of its shape")
        return raw.reshape(self.chunks).astype(self.dtype, copy=False)

    def _decode_into(self, data: bytes | None, out: np.ndarray) -> np.ndarray:
        if out.shape != self.chunks or out.dtype != self.dtype or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"cannot decode a chunk of shape {self.chunks} and dtype {self.dtype} into "
                             f"an array of shape {out.shape} and dtype {out.dtype} (C-contiguous, writeable)")
        if data is None:
            out.fill(self.fill_value)
            return out
        if self.dtype.newbyteorder("<") == self.dtype and decoded_size(self.compressor, data) == out.nbytes:
            try:
                self.compressor.decode(data, out=out.reshape(-1).view(np.uint8))
                return out
            except (ValueError, RuntimeError):  # e.g. several zstd frames: decoded the plain way below
                pass
        out[...] = self.decode(data)
        return out


#: How many reusable buffers :func:`contiguous` keeps per thread (a block's shape, and its levels' shapes).
SCRATCH_BUFFERS = 4
_scratch = threading.local()


def contiguous(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``block`` as a C-contiguous array of ``dtype``: itself if it is one, else copied into a buffer this thread reuses.

    A filter's result without its halo, or a label level (every other pixel),
    is a strided view, copied before it is compressed. Copied into a new
    array each time, a 128x256x256 float32 block in a worker took 23 ms, most
    of it the kernel's zero-filling of 32 MiB of fresh pages. The buffer is
    overwritten by this thread's next call with the same shape and dtype: use
    the result before then.

    >>> view = np.arange(12).reshape(3, 4)[:, 1:3]
    >>> contiguous(view, np.dtype(int)).flags.c_contiguous
    True
    """
    dtype = np.dtype(dtype)
    if block.flags.c_contiguous and block.dtype == dtype:
        return block
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    key = (block.shape, dtype.str)
    buffer = buffers.pop(key, None)
    if buffer is None:
        buffer = np.empty(block.shape, dtype)
    buffers[key] = buffer  # the most recently used last
    while len(buffers) > SCRATCH_BUFFERS:
        buffers.pop(next(iter(buffers)))
    np.copyto(buffer, block, casting="unsafe")
    return buffer


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decoded_size(compressor: Any, data: bytes) -> int | None:
    """The byte count that ``data`` decompresses to, read from its header; ``None`` when it does not say.

    blosc (version 1 format) stores it in every buffer's header; a zstd frame
    in its ``Frame_Content_Size`` field when present (numcodecs writes it).

    >>> codec = numcodecs.Zstd(level=1)
    >>> decoded_size(codec, codec.encode(np.zeros(1000, np.uint16)))
    2000
    """
    view = memoryview(data).cast("B")
    if isinstance(compressor, numcodecs.Blosc):
        return int.from_bytes(view[4:8], "little") if len(view) >= 16 else None
    if isinstance(compressor, numcodecs.Zstd):
        return _zstd_content_size(view)
    return None


def _zstd_content_size(view: memoryview) -> int | None:
    """``Frame_Content_Size`` of the zstd frame starting ``view`` (RFC 8878, 3.1.1.1), if the frame has one."""
    if len(view) < 6 or bytes(view[:4]) != _ZSTD_MAGIC:
        return None
    descriptor = view[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if not width:
        return None
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    field = bytes(view[start:start + width])
    if len(field) != width:
        return None
    value = int.from_bytes(field, "little")
    return value + 256 if width == 2 else value


def chunk_codec(metadata: Mapping[str, Any]) -> ChunkCodec | None:
    """The codec of a zarr v3 array from its ``zarr.json`` document, or ``None`` if it is not one handled here."""
    try:
        if metadata.get("zarr_format") != 3 or metadata.get("storage_transformers") not in (None, []):
            return None
        grid, keys = metadata["chunk_grid"], metadata["chunk_key_encoding"]
        if grid.get("name") != "regular" or keys.get("name") != "default":
            return None
        separator = (keys.get("configuration") or {}).get("separator", "/")
        dtype = np.dtype(metadata["data_type"])
        fill = metadata["fill_value"]
        if dtype.kind not in "biuf" or isinstance(fill, str) or not isinstance(fill, (bool, int, float)):
            return None
        chunks = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
        compressor = _compressor(metadata["codecs"], dtype)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if compressor is None or separator not in ("/", "."):
        return None
    return ChunkCodec(dtype, chunks, fill, compressor, separator)


def _compressor(codecs: Any, dtype: np.dtype):
    """numcodecs' compressor for a ``bytes`` (little-endian) + ``blosc`` / ``zstd`` chain, else ``None``."""
    if not isinstance(codecs, list) or len(codecs) != 2:
        return None
    serializer, compressor = codecs
    endian = (serializer.get("configuration") or {}).get("endian", "little")
    if serializer.get("name") != "bytes" or (endian != "little" and dtype.itemsize > 1):
        return None
    config = compressor.get("configuration") or {}
    if compressor.get("name") == "zstd":
        if config.get("checksum", False):
            return None
        return numcodecs.Zstd(level=int(config.get("level", 0)))
    if compressor.get("name") == "blosc":
        return numcodecs.Blosc(
            cname=config["cname"], clevel=int(config["clevel"]), shuffle=_SHUFFLE[config["shuffle"]],
            blocksize=int(config.get("blocksize", 0)), typesize=int(config.get("typesize", dtype.itemsize)),
        )
    return None
