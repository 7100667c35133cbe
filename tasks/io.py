"""Reading inputs lazily and writing stage results to OME-Zarr stores and CSV tables.

Inputs (TIFF files, globs of TIFFs, tile grids of TIFFs, zarr and OME-Zarr stores)
are validated once by :func:`resolve_input` and read lazily by :func:`imread`.
Every dask graph built here is picklable: each block task opens its file or store
by path and reads (or writes) only the region it covers, so graphs run unchanged on
worker processes.

Stage results are OME-Zarr (NGFF 0.5, zarr format 3) stores made by
:func:`create_store` (with the input's physical pixel sizes, read from its
metadata by :func:`resolve_input`), filled by :func:`write_blocks`, given
lower-resolution levels by :func:`write_pyramid`, and sealed (a label store
with its colours) by :func:`mark_complete`;
:func:`is_complete` tells whether a store can be reused.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
import re
import weakref
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from io import StringIO
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import orjson
import tifffile
import zarr
from dask.base import tokenize
from dask.delayed import Delayed
from zarr.codecs import BloscCodec, ZstdCodec

from imageops import pyramid
from tasks import ome, storage, zarrchunks
from tasks.axes import ImageAxes
from tasks.ome import Calibration
from tasks.reference import ArrayRef, fingerprint as _digest

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "VOLUME_BLOCK_BYTES",
    "InputError",
    "InputNotFoundError",
    "InputSpec",
    "create_store",
    "default_chunks",
    "imread",
    "is_complete",
    "list_batch_images",
    "mark_complete",
    "open_store_ref",
    "read_image",
    "read_ref",
    "read_ref_whole",
    "read_table",
    "read_whole",
    "resolve_input",
    "save_whole",
    "store_axes",
    "stored_image_label",
    "store_calibration",
    "volume_chunks",
    "write_pyramid",
    "write_blocks",
    "write_table",
    "write_whole",
]

#: Target size of one dask block when the caller does not choose chunks.
DEFAULT_BLOCK_BYTES = 64 * 2**20
#: Default block size of a 3D volume, counted in float32 (:func:`volume_chunks`). On 256x1024x1024 uint16
#: (`benchmarks/RESULTS.md`), blocks of 32 MiB (128x256x256) peaked at 1.26-1.28 GiB for the run's process
#: tree, in about the time of the slabs of whole planes used before; blocks of 64 MiB (256x256x256) at 1.61 GiB.
VOLUME_BLOCK_BYTES = 32 * 2**20
_WORKING_ITEMSIZE = 4  # float32: filters compute on it, labels are uint32

#: Folder inside a store where finished blocks leave their markers.
_DONE_FOLDER = ".haloflow-done"

TIFF_SUFFIXES = (".tif", ".tiff")
INPUT_KINDS = ("tiff", "glob", "tiles", "zarr")
STORE_KINDS = ("image", "mask", "labels")
OME_VERSION = "0.5"

_GLOB_CHARS = re.compile(r"[*?\[]")
_ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_INT_TEXT = re.compile(r"[+-]?\d+\Z")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_AXES = {
    2: ("y", "x"),
    3: ("z", "y", "x"),
    4: ("t", "z", "y", "x"),
    5: ("t", "c", "z", "y", "x"),
}
# zstd level 1: in a quick check on noisy uint16 images it wrote about twice as
# fast as zarr's default zstd level and about as fast as blosc-lz4, at ~60 % size.
# Float stores use blosc-lz4 with byte shuffle instead (_store_codec).
_STORE_CODEC = ZstdCodec(level=1)


def _store_codec(dtype: np.dtype):
    """The compressor of a store's arrays: zstd level 1, but blosc-lz4 with byte shuffle for floats.

    On a gaussian-filtered uint16 volume's float32 blocks (64x512x512, one
    thread) zstd level 1 wrote in 0.28 CPU s, read in 0.22 s, to 81 % of the
    raw size; blosc-lz4 with byte shuffle wrote in 0.14 s, read in 0.08 s, to
    71 %. On masks, labels and noisy uint16 zstd level 1 stays smaller
    (0.8 %, 0.3 %, 92 % against 2.7 %, 0.9 %, 100 %). zarr runs codecs off the
    main thread, where numcodecs' blosc uses no threads of its own.
    """
    if np.dtype(dtype).kind == "f":
        return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)
    return _STORE_CODEC


class InputError(ValueError):
    """Bad input: the message names the culprit (path, field) and the problem."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A named input path does not exist (an :class:`InputError` and a :class:`FileNotFoundError`)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSpec:
    """A validated input, as resolved by :func:`resolve_input`.

    Parameters
    ----------
    kind : str
        ``"tiff"``, ``"glob"``, ``"tiles"`` or ``"zarr"``.
    paths : tuple of str
        Absolute paths: the TIFF file, the sorted glob matches, the tiles in
        C order of the grid, or the zarr store.
    shape : tuple of int
        Shape of the whole (assembled) image.
    dtype : str
        NumPy dtype name of the image.
    grid : tuple of int or None
        Shape of the tile grid (tiles only).
    component : str or None
        Array path inside the zarr store (``""``: the store is an array).
    tile_shapes : tuple of tuple of int
        Shape of each tile, in the order of `paths` (tiles only).
    native_chunks : tuple of int
        Chunk shape as stored on disk (TIFF strips/tiles/pages, zarr chunks or
        shards), the alignment unit of the default dask chunks. For tiles: of
        the first tile.
    channel_axis, time_axis : int or None
        The image's channel and time axes, from its metadata (OME-TIFF or
        ImageJ axes ``C`` and ``T``, OME-Zarr axis types ``channel`` and
        ``time``), or as a pipeline spec set them; every other axis is spatial.
    physical_sizes : tuple of float
        The physical size of one pixel along each axis, from the input's
        metadata: OME-TIFF ``PhysicalSizeX/Y/Z`` (and ``TimeIncrement``),
        ImageJ ``spacing`` and X/Y resolution, OME-Zarr ``scale``
        transformations. Empty when the metadata gives none (scale 1).
    units : tuple of str or None
        The unit of each axis' size, as an OME-NGFF unit name
        (``"micrometer"``, ``"second"``...), ``None`` where unknown; empty with
        `physical_sizes`.
    """

    kind: str
    paths: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    grid: tuple[int, ...] | None = None
    component: str | None = None
    tile_shapes: tuple[tuple[int, ...], ...] = ()
    native_chunks: tuple[int, ...] = ()
    channel_axis: int | None = None
    time_axis: int | None = None
    physical_sizes: tuple[float, ...] = ()
    units: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"InputSpec.kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "shape", _int_tuple(self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        object.__setattr__(self, "native_chunks", _int_tuple(self.native_chunks))
        object.__setattr__(self, "tile_shapes", tuple(_int_tuple(s) for s in self.tile_shapes))
        if self.grid is not None:
            object.__setattr__(self, "grid", _int_tuple(self.grid))
        if self.channel_axis is not None or self.time_axis is not None:
            axes = self.axes  # checks them against the shape
            object.__setattr__(self, "channel_axis", axes.channel)
            object.__setattr__(self, "time_axis", axes.time)
        if self.physical_sizes or self.units:
            if len(self.physical_sizes) != self.ndim:
                raise ValueError(
                    f"InputSpec.physical_sizes must have one entry per axis ({self.ndim}), got {list(self.physical_sizes)}"
                )
            units = self.units or (None,) * self.ndim
            calibration = Calibration(tuple(self.physical_sizes), tuple(units))  # checks sizes and unit names
            if not calibration.known:
                calibration = Calibration((), ())
            object.__setattr__(self, "physical_sizes", calibration.scale)
            object.__setattr__(self, "units", calibration.units)
        else:
            object.__setattr__(self, "physical_sizes", ())
            object.__setattr__(self, "units", ())

    @property
    def ndim(self) -> int:
        """Number of axes of the image."""
        return len(self.shape)

    @property
    def axes(self) -> ImageAxes:
        """Which axes hold channels and time points (the others are spatial)."""
        return ImageAxes(self.ndim, self.channel_axis, self.time_axis)

    @property
    def calibration(self) -> Calibration:
        """Physical pixel sizes and units per axis (scale 1 and no unit where the metadata gives none)."""
        if not self.physical_sizes:
            return Calibration.none(self.ndim)
        return Calibration(self.physical_sizes, self.units)

    def fingerprint(self) -> str:
        """Content fingerprint from the inputs' paths, sizes and modification times.

        Cheap: files are stat-ed, never read. For a zarr store the metadata
        files are stat-ed and the array directory's files counted and summed.
        A channel or time axis, and physical pixel sizes, are part of it (the
        results differ: their stores' metadata, the measurements in physical units).
        """
        if self.kind == "zarr":
            parts: Any = _zarr_stat(self.paths[0], self.component or "")
        else:
            parts = [_file_stat(p) for p in self.paths]
        axes = {"channel": self.channel_axis, "time": self.time_axis}
        extra: list[Any] = [axes] if any(v is not None for v in axes.values()) else []
        if self.physical_sizes:
            extra.append(self.calibration.to_dict())
        return _digest("input", self.kind, self.grid, self.component, parts, *extra)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists instead of tuples)."""
        return {
            "kind": self.kind,
            "paths": list(self.paths),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "grid": None if self.grid is None else list(self.grid),
            "component": self.component,
            "tile_shapes": [list(s) for s in self.tile_shapes],
            "native_chunks": list(self.native_chunks),
            "channel_axis": self.channel_axis,
            "time_axis": self.time_axis,
            "physical_sizes": list(self.physical_sizes),
            "units": list(self.units),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def resolve_or_error(source: Any) -> InputSpec | InputError:
    """:func:`resolve_input`, its :class:`InputError` returned rather than raised (one bad image of a batch).

    >>> type(resolve_or_error("/no/such/image.tif")).__name__
    'InputNotFoundError'
    """
    try:
        return resolve_input(source)
    except InputError as error:
        return error


def resolve_input(source: Any) -> InputSpec:
    """Validate an input description and return its :class:`InputSpec`.

    Parameters
    ----------
    source : str, os.PathLike, dict or InputSpec
        One of

        - a path to a TIFF file (``.tif``/``.tiff``);
        - a glob pattern (containing ``*``, ``?`` or ``[``) of 2D or nD TIFF
          files of equal shape and dtype, stacked along a new first axis;
        - a path to a zarr store (a directory ending in ``.zarr`` or holding
          ``zarr.json``/``.zarray``/``.zgroup``): an array, or an OME-Zarr image
          whose first multiscales dataset is read (NGFF 0.4 and 0.5);
        - ``{"zarr": path, "component": "0"}`` to pick the array explicitly;
        - ``{"tiles": [[a, b], [c, d]]}``: nested lists of TIFF paths assembled
          like :func:`numpy.block` (the innermost lists run along the last axis).

    Returns
    -------
    InputSpec

    Raises
    ------
    InputNotFoundError
        A named file or store does not exist.
    InputError
        The input is malformed: a glob matches nothing, a TIFF is unreadable,
        tiles do not fit their grid, glob files differ in shape or dtype...
    TypeError
        `source` is of an unsupported type.
    """
    if isinstance(source, InputSpec):
        return source
    if isinstance(source, Mapping):
        return _resolve_mapping(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"input must be a path, a glob pattern or a dict with 'zarr' or 'tiles', "
            f"got {type(source).__name__}"
        )
    text = storage.normalize(source)
    with _reaching(text):
        if _GLOB_CHARS.search(text) and not storage.exists(text):
            return _resolve_glob(text)
        path = _existing(text, "input")
        if storage.isdir(path):
            return _resolve_zarr(path, None)
        return _resolve_tiff(path)


def imread(source: Any, chunks: Sequence[int] | None = None) -> da.Array:
    """Read an input lazily as a dask array.

    Parameters
    ----------
    source : str, os.PathLike, dict or InputSpec
        Anything :func:`resolve_input` accepts (or its result).
    chunks : sequence of int, optional
        Block shape, one entry per axis. Default: for a 3D volume (one TIFF
        or zarr array, no channel or time axis) blocks of 32 MiB once in
        float32 (:data:`VOLUME_BLOCK_BYTES`), as near a cube as its on-disk
        chunks allow (:func:`volume_chunks`); otherwise blocks of about 64 MiB of
        whole on-disk chunks (TIFF pages/strips/tiles, zarr chunks) filling
        whole planes first (:func:`default_chunks`).

    Returns
    -------
    dask.array.Array
        Each block task opens the file(s) itself and reads only its region, so
        the graph pickles and runs on worker processes.

    Raises
    ------
    InputError
        As :func:`resolve_input`, or if `chunks` does not match the image.
    """
    spec = resolve_input(source)
    if chunks is not None:
        chunks = _check_chunks(chunks, spec.shape)
    readers = {
        "tiff": _imread_tiff,
        "glob": _imread_glob,
        "tiles": _imread_tiles,
        "zarr": _imread_zarr,
    }
    return readers[spec.kind](spec, chunks)


def default_chunks(
    shape: Sequence[int],
    itemsize: int,
    native: Sequence[int] | None = None,
    limit: int = DEFAULT_BLOCK_BYTES,
) -> tuple[int, ...]:
    """Block shape of at most about `limit` bytes built from whole native chunks.

    Trailing axes are filled first, so blocks are whole planes (or whole rows)
    where they fit; along the first axis that cannot be taken whole the block
    is the largest multiple of the native chunk that fits, and axes before it
    keep their native extent. A native chunk bigger than `limit` is cut down,
    leading axes first.

    Parameters
    ----------
    shape : sequence of int
        Array shape.
    itemsize : int
        Bytes per element.
    native : sequence of int, optional
        On-disk chunk shape to align to (default: single elements).
    limit : int
        Target block size in bytes.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> default_chunks((100, 512, 512), 2, native=(1, 512, 512))
    (100, 512, 512)
    >>> default_chunks((1000, 2048, 2048), 2, native=(1, 2048, 2048))
    (8, 2048, 2048)
    >>> default_chunks((1, 40000, 40000), 2, native=(1, 40000, 40000))
    (1, 838, 40000)
    """
    shape = _int_tuple(shape)
    native = (1,) * len(shape) if native is None else _int_tuple(native)
    block = [max(1, min(n, s)) for n, s in zip(native, shape)]
    unit = list(block)
    for axis in range(len(block)):
        if _nbytes(block, itemsize) <= limit:
            break
        block[axis] = max(1, min(block[axis], limit // _nbytes(block, itemsize, skip=axis)))
    for axis in reversed(range(len(block))):
        fit = limit // _nbytes(block, itemsize, skip=axis)
        block[axis] = min(max(shape[axis], 1), max(block[axis], fit // unit[axis] * unit[axis]))
        if block[axis] < shape[axis]:
            break
    return tuple(block)


def volume_chunks(
    shape: Sequence[int],
    itemsize: int,
    native: Sequence[int] | None = None,
    limit: int = DEFAULT_BLOCK_BYTES,
) -> tuple[int, ...]:
    """Block shape of at most about `limit` bytes for a volume filtered with halos: as near a cube as it can be.

    A block's halo is read and computed again by its neighbours, so for a
    3D filter the cost grows with the block's surface against its volume:
    slabs of whole planes (:func:`default_chunks`) of a 256x1024x1024 volume,
    32 planes deep, recompute 50 % more planes for a sigma-2 gaussian; blocks
    of 256x256x512, 13 %.  Starting from one native chunk (or 64 along an
    axis the native chunk spans whole, such as a TIFF page's rows), the
    shortest axis is doubled while the block stays within `limit` (the last
    axes first on ties); an axis that cannot be doubled takes as many whole
    units as fit.

    Examples
    --------
    >>> volume_chunks((256, 1024, 1024), 2, native=(1, 1024, 1024))
    (256, 256, 512)
    >>> volume_chunks((100, 512, 512), 2, native=(1, 512, 512))
    (100, 512, 512)
    >>> volume_chunks((1000, 2048, 2048), 2, native=(64, 256, 256))
    (256, 256, 512)
    """
    shape = _int_tuple(shape)
    if _nbytes(shape, itemsize) <= limit:
        return shape
    native = shape if native is None else _int_tuple(native)
    unit = [min(s, n if n < s else 64) for n, s in zip(native, shape)]
    block = list(default_chunks(unit, itemsize, None, limit))  # a native chunk over `limit` is cut down
    growing = [axis for axis in range(len(shape)) if block[axis] < shape[axis]]
    while growing:
        axis = min(reversed(growing), key=lambda a: block[a])
        fit = limit // _nbytes(block, itemsize, skip=axis)
        bigger = min(shape[axis], 2 * block[axis])
        if bigger > fit:  # the last growth of this axis: as many whole units as fit
            block[axis] = max(block[axis], fit // unit[axis] * unit[axis])
            growing.remove(axis)
            continue
        block[axis] = bigger
        if bigger == shape[axis]:
            growing.remove(axis)
    return tuple(block)


def list_batch_images(pattern: str | os.PathLike) -> list[str]:
    """The TIFF files of a batch, sorted.

    Parameters
    ----------
    pattern : str or os.PathLike
        A glob pattern, or a directory (its ``*.tif``/``*.tiff`` files, not
        recursive).

    Returns
    -------
    list of str
        Absolute paths (or URLs, for a pattern on object storage), sorted.

    Raises
    ------
    InputError
        Nothing matches (`InputNotFoundError` if a plain path does not exist).
    """
    text = storage.normalize(pattern)
    with _reaching(text):
        return _list_batch_images(text)


def _list_batch_images(text: str) -> list[str]:
    if storage.isdir(text):
        names = [n for n in storage.list_names(text) if _is_tiff_name(n)]
        if not names:
            raise InputError(f"directory {_real(text)} contains no .tif/.tiff files")
        return sorted(_real(storage.join(text, n)) for n in names)
    if not _GLOB_CHARS.search(text):
        return [_existing(text, "batch image")]
    found = _real_files(storage.glob_files(text))
    if not found:
        raise InputError(f"glob pattern {text!r} matches no files")
    return sorted(found)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a whole (small) TIFF image into memory.

    Raises
    ------
    InputNotFoundError
        `path` does not exist.
    InputError
        tifffile cannot read it; the message names the path and tifffile's error.
    """
    file = _existing(storage.normalize(path), "image")
    try:
        with _open_tiff(file) as tif:
            image = tif.asarray()
    except Exception as exc:  # tifffile raises many types on bad files
        raise InputError(f"cannot read TIFF {file}: {_one_line(exc)}") from exc
    return _native_endian(np.asarray(image))


# --------------------------------------------------------------------------- stores


def create_store(
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    kind: str,
    fingerprint: str,
    name: str,
    axes: Sequence[str] | None = None,
    calibration: Calibration | None = None,
) -> ArrayRef:
    """Create an empty OME-Zarr (NGFF 0.5, zarr v3) image store, replacing any old one.

    The array is at component ``"0"``, compressed with zstd level 1, and the
    group attributes hold ``haloflow = {"fingerprint", "kind", "complete": False}``.

    Parameters
    ----------
    path : str or os.PathLike
        Store directory. An existing zarr store there is deleted; any other
        existing file or directory is refused.
    shape : sequence of int
        Array shape (2 to 5 axes).
    dtype : dtype-like
        Array dtype.
    chunks : sequence of int
        Regular chunk shape, one entry per axis (clipped to `shape`).
    kind : str
        ``"image"``, ``"mask"`` or ``"labels"`` (labels also get
        ``ome["image-label"]``).
    fingerprint : str
        Fingerprint of the contents that will be written.
    name : str
        Multiscales name.
    axes : sequence of str, optional
        Axis names from ``t, c, z, y, x``. Default: ``y x``, ``z y x``,
        ``t z y x``, ``t c z y x`` by number of axes.
    calibration : Calibration, optional
        Physical pixel size and unit of each axis: the ``scale``
        transformation of level 0 and the axes' ``unit``. Default: scale 1,
        no units.

    Returns
    -------
    ArrayRef
        ``store=str(path)``, ``component="0"``.

    Raises
    ------
    ValueError
        Bad shape, chunks, kind or axes; `path` exists and is not a zarr store.
    TypeError
        Unknown dtype or non-string fingerprint/name.
    """
    ref, attributes, array = _store_documents(
        path, shape=shape, dtype=dtype, chunks=chunks, kind=kind, fingerprint=fingerprint, name=name, axes=axes,
        calibration=calibration,
    )
    _remove_old_store(ref.store)
    storage.makedirs(storage.join(ref.store, "0"))
    storage.write_text(storage.join(ref.store, "zarr.json"), _zarr_json_text(_group_document(attributes)))
    storage.write_text(storage.join(ref.store, "0", "zarr.json"), _zarr_json_text(array))
    return ref


def save_whole(
    array: np.ndarray,
    path: str | os.PathLike,
    *,
    chunks: Sequence[int],
    kind: str,
    fingerprint: str,
    name: str,
    axes: Sequence[str] | None = None,
    calibration: Calibration | None = None,
    found: Mapping[str, Any] | None = None,
    label_source: str | None = None,
) -> tuple[ArrayRef, dict[str, Any]]:
    """A store holding `array`, written and sealed at once; its ref and the data's statistics (:func:`write_whole`).

    The store is the one :func:`create_store`, :func:`write_whole` (blocks
    not recorded) and :func:`mark_complete` make, for an image held in
    memory (a batch image), in fewer writes: level 0's metadata, its chunks,
    then the group's metadata, already sealed, last. A batch image's store
    costs a few milliseconds, most of it in files and folders: the group's
    document is written once, from memory, and the chunks sit beside level
    0's metadata as ``c.0.0`` (zarr's default key with "." separators) with
    no folders of their own.

    Until that last write the folder has no group metadata: no reader takes
    it for a store, :func:`is_complete` is false, and a later run replaces it
    (:func:`create_store` and this function replace a folder whose level 0
    has zarr metadata).

    Parameters
    ----------
    array : numpy.ndarray
        The data; its shape and dtype are the store's.
    path, chunks, kind, fingerprint, name, axes, calibration
        As for :func:`create_store`.
    found : mapping, optional
        JSON-serialisable attributes sealed with the store (as
        :func:`mark_complete`'s `extra`); ``stats`` (the data's min, max and
        mean) is added.
    label_source : str, optional
        A label store's ``image-label`` source (the image it labels, relative
        to the store); its colours come from its largest label.
    """
    array = np.asarray(array)
    ref, attributes, level = _store_documents(
        path, shape=array.shape, dtype=array.dtype, chunks=chunks, kind=kind, fingerprint=fingerprint, name=name,
        axes=axes, calibration=calibration,
    )
    found = dict(found or {})
    reserved = {"fingerprint", "kind", "complete", "stats"} & found.keys()
    if reserved:
        raise ValueError(f"save_whole: {sorted(reserved)} are reserved attribute names")
    level["chunk_key_encoding"] = {"name": "default", "configuration": {"separator": "."}}  # c.0.0: no folders
    _remove_old_store(ref.store)
    storage.makedirs(storage.join(ref.store, "0"))
    storage.write_text(storage.join(ref.store, "0", "zarr.json"), _zarr_json_text(level))
    stats = write_whole(array, ref, record_blocks=False)
    found["stats"] = {k: v for k, v in stats.items() if k != "count"}
    label = stored_image_label(stats, label_source) if kind == "labels" else None
    attributes.update(_sealed_attributes(attributes, found, label))
    storage.write_text(storage.join(ref.store, "zarr.json"), _zarr_json_text(_group_document(attributes)))
    return ref, stats


def _store_documents(
    path: str | os.PathLike,
    *,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    kind: str,
    fingerprint: str,
    name: str,
    axes: Sequence[str] | None,
    calibration: Calibration | None,
) -> tuple[ArrayRef, dict[str, Any], dict[str, Any]]:
    """A new store's ref, its group's attributes (not sealed) and level 0's ``zarr.json``; the arguments checked."""
    store = os.fspath(path)
    shape = _int_tuple(shape)
    dtype = _as_dtype(dtype)
    chunks = _check_store_chunks(chunks, shape)
    axis_names = _check_axes(axes, len(shape))
    if kind not in STORE_KINDS:
        raise ValueError(f"kind must be one of {STORE_KINDS}, got {kind!r}")
    calibration = Calibration.none(len(shape)) if calibration is None else calibration
    if not isinstance(calibration, Calibration) or calibration.ndim != len(shape):
        raise ValueError(f"calibration must be a Calibration of {len(shape)} axes, got {calibration!r}")
    for label, value in (("fingerprint", fingerprint), ("name", name)):
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    attributes = {
        "ome": _ome_attributes(name, axis_names, kind, calibration),
        "haloflow": {"fingerprint": fingerprint, "kind": kind, "complete": False},
    }
    array = json.loads(_array_document(dtype.name, len(shape)))
    array.update(shape=list(shape), dimension_names=list(axis_names))
    array["chunk_grid"]["configuration"]["chunk_shape"] = list(chunks)
    return ArrayRef(store, "0", shape, dtype.name, chunks, kind, fingerprint), attributes, array


@functools.lru_cache(maxsize=64)
def _array_document(dtype_name: str, ndim: int) -> str:
    """The ``zarr.json`` zarr itself writes for a stage array of this dtype and number of axes (made once, aside).

    :func:`create_store` fills in the shape, chunk shape and axis names:
    writing the two small documents itself costs a tenth of zarr's creating
    the group and the array (about 3 ms a store, most of a batch image's
    stage). The test suite checks the result against zarr's own store.
    """
    import tempfile

    dtype = np.dtype(dtype_name)
    with tempfile.TemporaryDirectory() as folder:
        zarr.create_array(folder, shape=(1,) * ndim, dtype=dtype, chunks=(1,) * ndim, compressors=_store_codec(dtype),
                          dimension_names=[f"d{i}" for i in range(ndim)], zarr_format=3)
        return (Path(folder) / "zarr.json").read_text()


def _group_document(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A zarr v3 group's ``zarr.json``, as zarr writes it, with these attributes."""
    return {"attributes": dict(attributes), "zarr_format": 3, "node_type": "group"}


def _zarr_json_text(document: Mapping[str, Any]) -> str:
    """JSON text for zarr metadata, as zarr writes it: indented two spaces a level, ASCII, non-finite numbers as ``NaN``.

    orjson writes it in C: a batch label store's two documents in 0.01 ms,
    against 0.28 ms for ``json.dumps`` with an indent, which runs in Python.
    orjson would write a non-finite number as ``null`` and other scripts'
    letters unescaped: a document whose text has a ``null`` or is not
    ASCII, or that orjson does not take (a key that is not a string, an
    integer past 64 bits, a NumPy scalar), is written by ``json.dumps``.

    >>> print(_zarr_json_text({"colors": [{"label-value": 1, "rgba": [9, 255]}], "mean": float("nan")}))
    {
      "colors": [
        {
          "label-value": 1,
          "rgba": [
            9,
            255
          ]
        }
      ],
      "mean": NaN
    }
    """
    try:
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    except TypeError:  # orjson.JSONEncodeError is one
        text = b"null"
    if b"null" in text or not text.isascii():
        return json.dumps(document, indent=2)
    return text.decode("ascii")


def write_blocks(array: da.Array, ref: ArrayRef, *, skip: Any = (), levels: BlockLevels | None = None) -> dict[tuple[int, ...], Delayed]:
    """Lazily write `array` into the store of `ref`, block by block, skipping done blocks.

    `array` is rechunked to ``ref.chunks`` so that every block covers whole
    zarr chunks (no locks needed). After a block is written, a marker records
    it as done (:func:`done_blocks`), so an interrupted stage can resume.

    Parameters
    ----------
    array : dask.array.Array
        Data of shape ``ref.shape`` and dtype ``ref.dtype``.
    ref : ArrayRef
        Target, as returned by :func:`create_store`.
    skip : collection of tuple of int
        Block indices already written (from :func:`done_blocks`): not computed again.
    levels : BlockLevels, optional
        Lower-resolution levels each block also writes its part of (:func:`block_levels`).

    Returns
    -------
    dict
        For each block still to write, its index and a lazy write (a
        ``Delayed``) giving a one-block array of four float64 statistics
        ``[count, min, max, sum]`` of what it wrote (see
        :func:`merge_block_stats`). Nothing is written until it is computed;
        each task opens the store by path. The writes share one graph.

    Raises
    ------
    TypeError
        `array` is not a dask array or `ref` not an ArrayRef.
    ValueError
        Shape or dtype differ from `ref` or from the array in the store.
    """
    if not isinstance(array, da.Array):
        raise TypeError(f"array must be a dask array, got {type(array).__name__}")
    _check_ref(ref)
    if array.shape != ref.shape:
        raise ValueError(
            f"array shape {array.shape} does not match store {ref.store} shape {ref.shape}"
        )
    if array.dtype != np.dtype(ref.dtype):
        raise ValueError(
            f"array dtype {array.dtype} does not match store {ref.store} dtype {ref.dtype}; "
            "cast with .astype() first"
        )
    _check_stored_array(ref)
    aligned = array.rechunk(ref.chunks)
    skip = {tuple(index) for index in skip}
    # One write layer over every block, cut into one lazy write per block: the writes share one graph,
    # optimised once. A write per block cut from the array (``aligned.blocks[index]``) carried the whole
    # array's graph, optimised again for each one: the scheduler's work grew with the square of the
    # number of blocks (90 ms for the benchmark's 32 label blocks; 19.6 s for an empty mask in 512).
    stats = aligned.map_blocks(
        _write_located_block,
        ref.store,
        ref.component,
        levels,
        dtype=np.float64,
        chunks=tuple(((4,) if axis == 0 else (1,)) * n for axis, n in enumerate(aligned.numblocks)),
        meta=np.empty((0,) * aligned.ndim, np.float64),
        name=f"write-{tokenize(aligned.name, ref.store, ref.component, levels)}",
    )
    writes = stats.to_delayed()
    return {index: writes[index] for index in np.ndindex(*aligned.numblocks) if index not in skip}


def _write_located_block(block: np.ndarray, store: str, component: str, levels: BlockLevels | None,
                         block_info=None) -> np.ndarray:
    """:func:`_write_block` for the block ``block_info`` locates in the array."""
    location = block_info[0]
    region = tuple((int(start), int(stop)) for start, stop in location["array-location"])
    return _write_block(block, store, component, region, tuple(int(i) for i in location["chunk-location"]), levels)


def block_grid(ref: ArrayRef) -> tuple[int, ...]:
    """Number of blocks per axis of a store's regular chunk grid."""
    return tuple(-(-s // c) for s, c in zip(ref.shape, ref.chunks))


def done_blocks(ref: ArrayRef) -> set[tuple[int, ...]]:
    """Indices of the blocks whose write finished (their markers exist)."""
    names = storage.list_names(storage.join(ref.store, _DONE_FOLDER))
    return {tuple(int(i) for i in name.split("_")) for name in names if not name.endswith(".tmp")}


def done_block_stats(ref: ArrayRef) -> dict[tuple[int, ...], list[float]]:
    """``[count, min, max, sum]`` of every finished block, from its marker."""
    markers = {index: storage.join(ref.store, _DONE_FOLDER, "_".join(map(str, index))) for index in done_blocks(ref)}
    texts = storage.read_texts(list(markers.values()))
    return {index: json.loads(texts[marker]) for index, marker in markers.items()}


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``haloflow`` attributes of a store (fingerprint, kind, complete, and what the stage recorded)."""
    store = os.fspath(path)
    return _haloflow_meta(_group_attributes(store), store)


def store_axes(path: str | os.PathLike) -> ImageAxes:
    """The channel and time axes an OME-Zarr store's metadata gives its image (types ``channel``, ``time``).

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        `path` is not an OME-Zarr image, or its axes do not fit its array.
    """
    store, attrs, component, ndim = _image_metadata(path)
    return _store_image_axes(store, attrs, component, ndim)


def store_axes_and_calibration(path: str | os.PathLike) -> tuple[ImageAxes, Calibration]:
    """:func:`store_axes` and :func:`store_calibration` from one read of the store's metadata; raises as they do."""
    store, attrs, component, ndim = _image_metadata(path)
    return _store_image_axes(store, attrs, component, ndim), ome.from_ngff(attrs, component, ndim)


def _image_metadata(path: str | os.PathLike) -> tuple[str, dict[str, Any], str, int]:
    """An OME-Zarr store's path, group attributes, full-resolution component and its number of axes."""
    store = os.fspath(path)
    attrs = _group_attributes(store)
    component = _ome_component(attrs, store)
    return store, attrs, component, len(_array_metadata(store, component)["shape"])


def _store_image_axes(store: str, attrs: dict[str, Any], component: str, ndim: int) -> ImageAxes:
    try:
        return _ome_axes(attrs, component, ndim)
    except ValueError as exc:
        raise ValueError(f"store {store}: {exc}") from exc


def store_calibration(path: str | os.PathLike) -> Calibration:
    """The physical pixel sizes and units of an OME-Zarr store's full-resolution image.

    Scale 1 and no unit where its metadata gives none.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        `path` is not an OME-Zarr image.
    """
    _, attrs, component, ndim = _image_metadata(path)
    return ome.from_ngff(attrs, component, ndim)


def write_pyramid(ref: ArrayRef, compute: Any = None, *, min_size: int = ome.PYRAMID_MIN_SIZE) -> list[tuple[int, ...]]:
    """Add lower-resolution levels ``"1"``, ``"2"``, ... to a store whose level 0 is written, and register them.

    Each level halves the spatial axes that keep at least `min_size` pixels
    (:func:`tasks.ome.pyramid_factors`); a small image gets no level. Images
    are averaged over whole windows (floats in their own dtype, integers in
    float64 and rounded back; the level's pixel sits at its window's centre), masks and labels
    take the first pixel of each window (no value is invented). All levels are
    computed lazily from one read of level 0 and written chunk by chunk with
    level 0's chunk shape; then the store's ``multiscales`` lists them with
    their ``scale`` (and for images ``translation``) transformations.

    Call it before :func:`mark_complete`: an interrupted call leaves the store
    incomplete, and calling it again rewrites every level.

    Parameters
    ----------
    ref : ArrayRef
        The store, as returned by :func:`create_store`, level 0 written.
    compute : callable, optional
        ``dask.compute``'s signature (default: ``dask.compute``).
    min_size : int
        Smallest size a halved axis may get.

    Returns
    -------
    list of tuple of int
        The shapes of the levels added (empty: none).
    """
    _check_ref(ref)
    _check_stored_array(ref)
    group = _open_group(ref.store)  # the levels' arrays are made by zarr
    attrs = _group_attributes(ref.store)
    axes = store_axes(ref.store)
    factors = ome.pyramid_factors(ref.shape, axes.spatial, min_size)
    if not factors:
        return []
    levels, previous, targets = [], None, []
    dtype = np.dtype(ref.dtype)
    centred = ref.kind == "image"
    base = read_ref(ref)
    current = base.astype(np.float64) if centred and dtype.kind != "f" else base
    names = tuple(a["name"] for a in attrs["ome"]["multiscales"][0]["axes"])
    for number, level_factors in enumerate(factors, start=1):
        shape = ome.level_shape(ref.shape, level_factors)
        if centred:
            current = da.coarsen(pyramid.window_mean, current, pyramid.level_step(level_factors, previous), trim_excess=True)
            level = pyramid.cast_mean(current, dtype)
        else:
            level = base[tuple(slice(0, n * f, f) for n, f in zip(shape, level_factors))]
        chunks = tuple(max(1, min(c, n)) for c, n in zip(ref.chunks, shape))
        group.create_array(
            str(number), shape=shape, dtype=dtype, chunks=chunks, compressors=_store_codec(dtype),
            dimension_names=names, overwrite=True,
        )
        levels.append(level.rechunk(chunks))
        targets.append(_ZarrTarget(ref.store, str(number)))
        previous = level_factors
    (compute or dask.compute)(da.store(levels, targets, lock=False, compute=False))
    return register_levels(ref, factors)


def register_levels(ref: ArrayRef, factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """List written lower-resolution levels in the store's ``multiscales`` (with their transformations); their shapes."""
    attrs = _group_attributes(ref.store)
    multiscale = attrs["ome"]["multiscales"][0]
    names = tuple(a["name"] for a in multiscale["axes"])
    calibration = ome.from_ngff(attrs, ref.component, ref.ndim)
    factors = [tuple(f) for f in factors]
    entry = ome.multiscale(multiscale.get("name", ""), names, _AXIS_TYPES, calibration, factors, centred=ref.kind == "image")
    _update_group_attributes(ref.store, {"ome": {**attrs["ome"], "multiscales": [{**multiscale, "datasets": entry["datasets"]}]}})
    return [ome.level_shape(ref.shape, f) for f in factors]


@dataclass(frozen=True)
class BlockLevels:
    """Lower-resolution levels that every block writes its own part of, as it is written (:func:`block_levels`)."""

    factors: tuple[tuple[int, ...], ...]
    centred: bool  # window means (images); otherwise every n-th pixel (masks, labels)


def block_levels(ref: ArrayRef, *, min_size: int = ome.PYRAMID_MIN_SIZE) -> BlockLevels | None:
    """The levels :func:`write_pyramid` would add, if every block of ``ref`` holds whole windows of each.

    Then each block's part of a level is one chunk of it (level chunks are
    the block's shape divided by the level's factors), computed from the block
    in memory: no second read of the store, no task per level chunk. None for
    an image too small for levels, or blocks the factors do not divide (the
    caller then uses :func:`write_pyramid` once the blocks are written).
    """
    _check_ref(ref)
    factors = ome.pyramid_factors(ref.shape, store_axes(ref.store).spatial, min_size)
    if not factors or any(c % f for level in factors for c, f in zip(ref.chunks, level)):
        return None
    return BlockLevels(tuple(tuple(level) for level in factors), ref.kind == "image")


def create_block_levels(ref: ArrayRef, levels: BlockLevels) -> None:
    """Make the empty arrays ``"1"``, ``"2"``, ... of ``levels`` (chunks: a block's part of each)."""
    group = _open_group(ref.store)  # the levels' arrays are made by zarr
    names = tuple(a["name"] for a in _group_attributes(ref.store)["ome"]["multiscales"][0]["axes"])
    dtype = np.dtype(ref.dtype)
    for number, factors in enumerate(levels.factors, start=1):
        shape = ome.level_shape(ref.shape, factors)
        chunks = tuple(max(1, min(c // f, n)) for c, f, n in zip(ref.chunks, factors, shape))
        group.create_array(str(number), shape=shape, dtype=dtype, chunks=chunks, compressors=_store_codec(dtype),
                           dimension_names=names, overwrite=True)


def _write_block_levels(block: np.ndarray, store: str, region: tuple, levels: BlockLevels) -> None:
    """Write ``block``'s part of every level, each one whole chunk (:func:`imageops.pyramid.block_levels`).

    The block starts at a multiple of every factor; at the image's end a
    partial window is dropped, as the level's shape drops it.
    """
    pieces = pyramid.block_levels(block, levels.factors, centred=levels.centred)
    for number, (factors, piece) in enumerate(zip(levels.factors, pieces), start=1):
        starts = [a // f for (a, _), f in zip(region, factors)]
        level_region = tuple((s, s + n) for s, n in zip(starts, piece.shape))
        if piece.size:
            piece = zarrchunks.contiguous(piece, piece.dtype)  # as in _write_block: a sampled level is strided
            stats = [float(piece.size), float(piece.min()), float(piece.max()), 0.0]
            if not _write_chunk_directly(piece, store, str(number), level_region, stats):
                zarr.open_array(storage.zarr_store(store), path=str(number), mode="r+")[
                    tuple(slice(a, b) for a, b in level_region)] = piece


def resumable(path: str | os.PathLike, fingerprint: str) -> ArrayRef | None:
    """The store at `path` if it was created for `fingerprint` and is not complete yet."""
    try:
        ref = open_store_ref(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if ref.fingerprint != fingerprint or is_complete(path, fingerprint):
        return None
    return ref


def merge_block_stats(stats: Any) -> dict[str, float]:
    """Whole-array ``count, min, max, mean`` from per-block ``[count, min, max, sum]`` rows."""
    rows = np.asarray([np.ravel(s)[:4] for s in stats], dtype=np.float64).reshape(-1, 4)
    rows = rows[rows[:, 0] > 0]
    if not len(rows):
        return {"count": 0, "min": None, "max": None, "mean": None}
    count = rows[:, 0].sum()
    return {"count": int(count), "min": float(rows[:, 1].min()), "max": float(rows[:, 2].max()), "mean": float(rows[:, 3].sum() / count)}


def mark_complete(ref: ArrayRef, *, image_label: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Seal a store: set ``haloflow.complete = True`` plus `extra` attributes.

    Call it after all blocks are written; it is the store's last write.

    Parameters
    ----------
    ref : ArrayRef
        The store, as returned by :func:`create_store`.
    image_label : mapping, optional
        A label store's ``image-label`` block (:func:`tasks.ome.image_label`):
        its colours and source, set in the same write.
    **extra
        JSON-serialisable attributes (numpy scalars and arrays are converted),
        e.g. summary statistics.

    Raises
    ------
    ValueError
        The store is not a haloflow store, was created for another
        fingerprint, or `extra` uses a reserved key.
    """
    _check_ref(ref)
    reserved = {"fingerprint", "kind", "complete"} & extra.keys()
    if reserved:
        raise ValueError(f"mark_complete: {sorted(reserved)} are reserved attribute names")
    if image_label is not None and ref.kind != "labels":
        raise ValueError(f"store {ref.store} holds {ref.kind}, not labels: no image-label metadata")
    attrs = _group_attributes(ref.store)
    meta = _haloflow_meta(attrs, ref.store)
    if meta.get("fingerprint") != ref.fingerprint:
        raise ValueError(
            f"store {ref.store} was created for fingerprint {meta.get('fingerprint')!r}, "
            f"not {ref.fingerprint!r}"
        )
    _update_group_attributes(ref.store, _sealed_attributes(attrs, extra, image_label))


def _sealed_attributes(attributes: Mapping[str, Any], extra: Mapping[str, Any],
                       image_label: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A store group's top-level attributes once sealed: ``haloflow`` with `extra` and ``complete``; any image-label."""
    sealed = {"haloflow": {**attributes["haloflow"], **_jsonable(dict(extra)), "complete": True}}
    if image_label is not None:
        sealed["ome"] = {**attributes["ome"], "image-label": _jsonable(dict(image_label))}
    return sealed


def stored_image_label(stats: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """A label store's ``image-label`` metadata from its statistics (colours up to its largest label) and source."""
    return ome.image_label(None if stats["max"] is None else int(stats["max"]), source)


def is_complete(path: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """Whether `path` is a finished store made by :func:`create_store`.

    True only if the store exists, is an OME-Zarr group with a haloflow
    attribute block and its arrays (level 0 and every pyramid level it
    lists), was sealed by :func:`mark_complete`, and (if `fingerprint` is
    given) was made for that fingerprint. Never raises for missing or foreign
    stores.
    """
    store = os.fspath(path)
    try:
        attrs = _group_attributes(store)
        meta = _haloflow_meta(attrs, store)
        _array_metadata(store, _ome_component(attrs, store))
        for dataset in attrs["ome"]["multiscales"][0]["datasets"][1:]:  # pyramid levels: part of the result
            _array_metadata(store, dataset["path"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    matches = fingerprint is None or meta.get("fingerprint") == fingerprint
    return meta.get("complete") is True and matches


def open_store_ref(path: str | os.PathLike) -> ArrayRef:
    """Rebuild the :class:`ArrayRef` of a store made by :func:`create_store`.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        `path` is not a haloflow store.
    """
    store = os.fspath(path)
    attrs = _group_attributes(store)
    meta = _haloflow_meta(attrs, store)
    component = _ome_component(attrs, store)
    try:
        array = zarr.open_array(storage.zarr_store(store), path=component, mode="r")
    except (zarr.errors.NodeNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
        raise ValueError(f"store {store} has no array at component {component!r}") from exc
    return ArrayRef(
        store=store,
        component=component,
        shape=array.shape,
        dtype=array.dtype.name,
        chunks=array.chunks,
        kind=meta["kind"],
        fingerprint=meta["fingerprint"],
    )


def resolution_levels(ref: ArrayRef) -> list[ArrayRef]:
    """The store's resolution levels as references, ``ref`` (level 0) first, in its ``multiscales`` order.

    Just ``[ref]`` for a store with no lower-resolution levels, or whose
    metadata does not list them.
    """
    _check_ref(ref)
    try:
        datasets = _group_attributes(ref.store)["ome"]["multiscales"][0]["datasets"]
        paths = [d["path"] for d in datasets if d["path"] != ref.component]
        documents = [_array_metadata(ref.store, path) for path in paths]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [ref]
    return [ref] + [
        replace(ref, component=path, shape=tuple(doc["shape"]), dtype=np.dtype(doc["data_type"]).name,
                chunks=tuple(doc["chunk_grid"]["configuration"]["chunk_shape"]))
        for path, doc in zip(paths, documents)
    ]


def read_ref(ref: ArrayRef) -> da.Array:
    """Read a stored array lazily, in blocks of ``ref.chunks``.

    Raises
    ------
    FileNotFoundError
        The store does not exist.
    ValueError
        The stored array's shape or dtype differ from `ref`.
    """
    _check_ref(ref)
    _check_stored_array(ref)
    source = _ZarrSource(ref.store, ref.component, ref.shape, ref.dtype, ref.fingerprint)
    return _from_source(source, ref.chunks, f"read-ref-{tokenize(ref.to_dict())}")


# --------------------------------------------------------------------------- tables


def read_whole(source: Any) -> np.ndarray:
    """An input read whole into memory (a batch image): as :func:`imread` in one block gives it.

    A single TIFF is read directly, with no graph; other inputs through :func:`imread`.
    """
    spec = resolve_input(source)
    if spec.kind == "tiff":
        whole = tuple(slice(0, n) for n in spec.shape)
        return _read_tiff_region(spec.paths[0], whole).astype(np.dtype(spec.dtype), copy=False)
    return np.asarray(imread(spec, chunks=spec.shape).compute(scheduler="synchronous"))


def read_ref_whole(ref: ArrayRef) -> np.ndarray:
    """A stored array read whole into memory (a batch image's stage): its chunks decoded directly when they can be.

    Raises as :func:`read_ref`.
    """
    _check_ref(ref)
    whole = _read_region_directly(ref.store, ref.component, ref.shape, ref.dtype, tuple(slice(0, n) for n in ref.shape))
    return whole if whole is not None else np.asarray(_check_stored_array(ref)[...])


def _read_region_directly(store: str, component: str, shape: tuple, dtype, region: tuple[slice, ...]) -> np.ndarray | None:
    """``region`` (slices with step 1) of a stored array, its chunks decoded directly (:mod:`tasks.zarrchunks`).

    ``None`` when zarr must read it: codecs or a layout not handled there, or
    metadata that no longer says ``shape`` and ``dtype``.
    """
    try:
        metadata = _array_metadata(store, component)
    except (FileNotFoundError, ValueError):
        return None
    codec = zarrchunks.chunk_codec(metadata)
    if codec is None or tuple(metadata["shape"]) != tuple(shape) or codec.dtype != np.dtype(dtype):
        return None
    return _decode_region(store, component, codec, shape, region)


def _plain_slices(key: Any, ndim: int) -> bool:
    """Whether ``key`` is one step-1 slice per axis (what dask asks a source for)."""
    return (isinstance(key, tuple) and len(key) == ndim
            and all(isinstance(k, slice) and k.step in (None, 1) for k in key))


def _decode_region(store: str, component: str, codec: zarrchunks.ChunkCodec, shape: tuple, region: tuple[slice, ...]) -> np.ndarray:
    """The stored values in ``region`` (step-1 slices within ``shape``): every chunk it touches decoded once."""
    out = np.empty(tuple(max(r.stop - r.start, 0) for r in region), dtype=codec.dtype)
    if not out.size:
        return out
    if out.shape == codec.chunks and all(r.start % c == 0 for r, c in zip(region, codec.chunks)):
        # One whole chunk (a block of the store's own grid): decoded straight into ``out``.
        index = tuple(r.start // c for r, c in zip(region, codec.chunks))
        return codec.decode(_stored_chunk(store, component, codec, index), out=out)
    touched = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, codec.chunks)]
    for index in itertools.product(*touched):
        data = _stored_chunk(store, component, codec, index)
        chunk_region = _chunk_region(index, codec.chunks, shape)
        lows = [max(r.start, a) for r, (a, _) in zip(region, chunk_region)]
        highs = [min(r.stop, b) for r, (_, b) in zip(region, chunk_region)]
        into = tuple(slice(lo - r.start, hi - r.start) for lo, hi, r in zip(lows, highs, region))
        taken = tuple(slice(lo - a, hi - a) for lo, hi, (a, _) in zip(lows, highs, chunk_region))
        out[into] = codec.decode(data)[taken]
    return out


def _stored_chunk(store: str, component: str, codec: zarrchunks.ChunkCodec, index: tuple[int, ...]) -> bytes | None:
    """One chunk's stored bytes; ``None`` if it was never written (it holds the fill value)."""
    location = storage.join(store, component, *codec.key(index).split("/"))
    try:
        return storage.read_bytes(location)
    except FileNotFoundError:
        return None


def table_record_path(path: str | os.PathLike) -> str:
    """The record beside a table that says which fingerprint it holds: ``.NAME.haloflow.json``."""
    return storage.join(storage.parent(path), f".{storage.basename(path)}.haloflow.json")


def table_is_complete(path: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """Whether the table at `path` was fully written (for `fingerprint`, if given)."""
    record = table_record_path(path)
    try:
        if not (storage.isfile(os.fspath(path)) and storage.isfile(record)):
            return False
        meta = json.loads(storage.read_text(record))
    except (OSError, ValueError):
        return False
    return meta.get("complete") is True and (fingerprint is None or meta.get("fingerprint") == fingerprint)


def write_table(columns: Mapping[str, Any], path: str | os.PathLike, *, fingerprint: str | None = None) -> None:
    """Write named 1-D columns as a CSV table, atomically.

    The table is written to a temporary name and renamed onto `path` (in an
    object store: one PUT), so a half-written table never appears under its
    final name. Floats are written
    with ``repr`` (shortest exact round-trip text), booleans as 0/1.

    Parameters
    ----------
    columns : mapping of str to 1-D array-like
        Columns of equal length.
    path : str or os.PathLike
        CSV file to write; its directory must exist.

    Raises
    ------
    TypeError
        `columns` is not a mapping or a column name is not a str.
    ValueError
        No columns, a column is not 1-D, or the lengths differ.
    FileNotFoundError
        The directory of `path` does not exist.
    """
    table = _check_columns(columns)
    target = os.fspath(path) if storage.is_url(path) else os.path.abspath(path)
    folder = storage.parent(target)
    if not storage.is_url(target) and not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write table {target}: directory {folder} does not exist")
    texts = [_format_column(values) for values in table.values()]
    record = table_record_path(target)
    storage.remove(record)  # the old record must not vouch for the new table
    text = StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(table))
    writer.writerows(zip(*texts))
    storage.write_text(target, text.getvalue())
    if fingerprint is not None:
        rows = len(texts[0]) if texts else 0
        storage.write_text(record, json.dumps({"fingerprint": fingerprint, "rows": rows, "columns": list(table), "complete": True}))


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV table written by :func:`write_table`.

    Columns whose values are all integers come back as int64, other numeric
    columns as float64, anything else as str.

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    ValueError
        The file is empty or a row has the wrong number of fields.
    """
    source = os.fspath(path)
    if not storage.isfile(source):
        raise FileNotFoundError(f"table {source} does not exist")
    rows = list(csv.reader(StringIO(storage.read_text(source), newline="")))
    if not rows:
        raise ValueError(f"table {source} is empty (no header row)")
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"table {source} line {number} has {len(row)} fields, header has {len(header)}"
            )
    return {name: _parse_column([row[i] for row in body]) for i, name in enumerate(header)}


# --------------------------------------------------------------------------- resolving


def _resolve_mapping(source: Mapping[str, Any]) -> InputSpec:
    """Resolve a ``{"zarr": ...}`` or ``{"tiles": ...}`` input."""
    keys = set(source)
    if keys in ({"zarr"}, {"zarr", "component"}):
        component = source.get("component")
        if component is not None and not isinstance(component, str):
            raise InputError(f"input 'component' must be a str, got {type(component).__name__}")
        with _reaching(source["zarr"]):
            path = _existing(storage.normalize(source["zarr"]), "zarr store")
            return _resolve_zarr(path, component)
    if keys == {"tiles"}:
        with _reaching("a tile"):
            return _resolve_tiles(source["tiles"])
    raise InputError(
        f"input dict must have keys {{'zarr'[, 'component']}} or {{'tiles'}}, got {sorted(keys)}"
    )


def _resolve_tiff(path: str) -> InputSpec:
    """Resolve a single TIFF file."""
    if not _is_tiff_name(path):
        raise InputError(f"input {path} is not a .tif/.tiff file or a zarr store directory")
    (shape, dtype, native), (axes, calibration) = _read_tiff_header(path, probe=True, metadata=True)
    return InputSpec(
        "tiff", (path,), shape, dtype, native_chunks=native, channel_axis=axes.channel, time_axis=axes.time,
        **_calibration_fields(calibration),
    )


def _resolve_glob(pattern: str) -> InputSpec:
    """Resolve a glob of equally shaped TIFF files."""
    paths = sorted(_real(p) for p in storage.glob_files(pattern))
    if not paths:
        raise InputError(f"glob pattern {pattern!r} matches no files")
    shape, dtype, native = _tiff_info(paths[0], probe=True)
    for path in paths[1:]:
        other_shape, other_dtype, _ = _tiff_info(path, probe=False)
        if (other_shape, other_dtype) != (shape, dtype):
            raise InputError(
                f"glob pattern {pattern!r}: {path} has shape {other_shape} and dtype {other_dtype}, "
                f"but {paths[0]} has shape {shape} and dtype {dtype}"
            )
    file_axes, file_calibration = _tiff_metadata(paths[0])
    after_new_axis = {name: None if axis is None else axis + 1 for name, axis in
                      (("channel_axis", file_axes.channel), ("time_axis", file_axes.time))}
    stacked = Calibration((1.0, *file_calibration.scale), (None, *file_calibration.units))  # the new axis: unknown
    return InputSpec(
        "glob", tuple(paths), (len(paths), *shape), dtype, native_chunks=(1, *native), **after_new_axis,
        **_calibration_fields(stacked),
    )


def _resolve_tiles(tiles: Any) -> InputSpec:
    """Resolve a nested-list grid of TIFF tiles."""
    grid, leaves = _tile_grid(tiles)
    paths = [_existing(storage.normalize(leaf), "tile") for leaf in leaves]
    infos = [_tiff_info(path, probe=index == 0) for index, path in enumerate(paths)]
    first_shape, dtype, native = infos[0]
    if len(grid) > len(first_shape):
        raise InputError(
            f"tiles are nested {len(grid)} deep but tile {paths[0]} has only {len(first_shape)} axes"
        )
    for path, (tile_shape, _, _) in zip(paths, infos):
        if len(tile_shape) != len(first_shape):
            raise InputError(
                f"tile {path} has {len(tile_shape)} axes but tile {paths[0]} has {len(first_shape)}"
            )
    shapes = [info[0] for info in infos]
    extents = _grid_extents(grid, shapes)
    for index, path, (tile_shape, tile_dtype, _) in zip(np.ndindex(*grid), paths, infos):
        expected = _expected_tile_shape(first_shape, extents, index)
        position = "".join(f"[{i}]" for i in index)
        if tile_shape != expected:
            raise InputError(
                f"tile {path} (tiles{position}) has shape {tile_shape} but its place in the grid "
                f"needs shape {expected}"
            )
        if tile_dtype != dtype:
            raise InputError(
                f"tile {path} (tiles{position}) has dtype {tile_dtype} but the first tile has {dtype}"
            )
    offset = len(first_shape) - len(grid)
    shape = first_shape[:offset] + tuple(sum(e) for e in extents)
    axes, calibration = _tiff_metadata(paths[0])
    return InputSpec(
        "tiles",
        tuple(paths),
        shape,
        dtype,
        grid=grid,
        tile_shapes=tuple(shapes),
        native_chunks=native,
        channel_axis=axes.channel,
        time_axis=axes.time,
        **_calibration_fields(calibration),
    )


def _tile_grid(tiles: Any) -> tuple[tuple[int, ...], list[Any]]:
    """Grid shape and C-ordered leaves of a rectangular nested list of paths."""
    if not isinstance(tiles, (list, tuple)) or not tiles:
        raise InputError("input 'tiles' must be a non-empty nested list of TIFF paths")
    grid: list[int] = []
    level: list[tuple[str, Any]] = [("tiles", tiles)]
    while all(isinstance(node, (list, tuple)) for _, node in level):
        lengths = {len(node) for _, node in level}
        if len(lengths) != 1 or 0 in lengths:
            where, node = next((w, n) for w, n in level if len(n) != len(level[0][1]) or not n)
            raise InputError(
                f"{where} has {len(node)} entries but {level[0][0]} has {len(level[0][1])}; "
                "tiles must form a rectangular grid"
            )
        grid.append(lengths.pop())
        level = [(f"{where}[{i}]", child) for where, node in level for i, child in enumerate(node)]
    for where, node in level:
        if not isinstance(node, (str, os.PathLike)):
            raise InputError(
                f"{where} must be a TIFF path (all tiles nested equally deep), got {type(node).__name__}"
            )
    return tuple(grid), [node for _, node in level]


def _grid_extents(grid: tuple[int, ...], shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """Extent of each grid row/column, taken from the tiles along the grid's first edges."""
    offset = len(shapes[0]) - len(grid)
    flat = np.arange(len(shapes)).reshape(grid)
    extents = []
    for k, count in enumerate(grid):
        edge = [tuple(i if j == k else 0 for j in range(len(grid))) for i in range(count)]
        extents.append([shapes[int(flat[e])][offset + k] for e in edge])
    return extents


def _expected_tile_shape(
    first: tuple[int, ...], extents: list[list[int]], index: tuple[int, ...]
) -> tuple[int, ...]:
    """Shape the tile at grid `index` must have."""
    offset = len(first) - len(index)
    return first[:offset] + tuple(extents[k][i] for k, i in enumerate(index))


def _resolve_zarr(path: str, component: str | None) -> InputSpec:
    """Resolve a zarr array or OME-Zarr image store."""
    if not storage.isdir(path) or not _has_zarr_metadata(path):
        raise InputError(f"{path} is not a zarr store (no zarr.json, .zarray or .zgroup inside)")
    try:
        node = zarr.open(storage.zarr_store(path), mode="r")
    except Exception as exc:  # zarr raises many types on broken metadata
        raise InputError(f"cannot open zarr store {path}: {_one_line(exc)}") from exc
    if component is None:
        if isinstance(node, zarr.Array):
            component = ""
        else:
            try:
                component = _ome_component(node.attrs.asdict(), path)
            except ValueError as exc:
                hint = "pass {'zarr': path, 'component': ...} to choose an array"
                raise InputError(f"{exc}; {hint}") from exc
    try:
        array = zarr.open_array(storage.zarr_store(path), path=component, mode="r")
    except Exception as exc:
        raise InputError(
            f"zarr store {path} has no readable array at component {component!r}: {_one_line(exc)}"
        ) from exc
    native = array.shards or array.chunks
    attrs = node.attrs.asdict() if isinstance(node, zarr.Group) else {}
    try:
        axes = _ome_axes(attrs, component, array.ndim)
    except ValueError as exc:
        raise InputError(f"zarr store {path}: {exc}") from exc
    return InputSpec(
        "zarr", (path,), array.shape, array.dtype.name, component=component, native_chunks=native,
        channel_axis=axes.channel, time_axis=axes.time,
        **_calibration_fields(ome.from_ngff(attrs, component, array.ndim)),
    )


def _ome_component(attrs: Mapping[str, Any], where: str) -> str:
    """Path of the first dataset of the first OME multiscales (NGFF 0.4 or 0.5)."""
    ome = attrs.get("ome", attrs)
    try:
        path = ome["multiscales"][0]["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"zarr group {where} has no OME multiscales datasets metadata") from exc
    if not isinstance(path, str):
        raise ValueError(f"zarr group {where}: multiscales dataset path must be a str, got {path!r}")
    return path


def _ome_axes(attrs: Mapping[str, Any], component: str, ndim: int) -> ImageAxes:
    """The channel and time axes the first OME multiscales gives its datasets (NGFF 0.3 to 0.5).

    Axes of type ``channel`` and ``time`` (or, without a type, named ``c`` and
    ``t``); none if ``component`` is not one of its datasets or it names no axes.

    >>> attrs = {"ome": {"multiscales": [{"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
    ...     {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]}}
    >>> _ome_axes(attrs, "0", 3)
    ImageAxes(ndim=3, channel=0, time=None)
    """
    ome = attrs.get("ome", attrs)
    try:
        multiscale = ome["multiscales"][0]
        paths = [dataset["path"] for dataset in multiscale["datasets"]]
        axes = multiscale["axes"]
    except (KeyError, IndexError, TypeError):
        return ImageAxes(ndim)
    if component not in paths or not isinstance(axes, list):
        return ImageAxes(ndim)
    if len(axes) != ndim:
        raise ValueError(f"its OME metadata names {len(axes)} axes but the array at {component!r} has {ndim}")
    return ImageAxes.from_types([_ome_axis_type(axis) for axis in axes])


def _ome_axis_type(axis: Any) -> str:
    """An OME-NGFF axis' type: its ``type``, else (NGFF 0.3 names, untyped axes) ``c``/``t`` by name."""
    if isinstance(axis, Mapping) and axis.get("type"):
        return str(axis["type"])
    name = axis.get("name") if isinstance(axis, Mapping) else axis
    return {"c": "channel", "t": "time"}.get(str(name).lower(), "space")


def _tiff_metadata(path: str) -> tuple[ImageAxes, Calibration]:
    """The channel and time axes, and the physical pixel sizes, a TIFF's metadata gives its first series.

    Axes: ``C`` and ``T``. An OME-TIFF's channels stored as samples
    (tifffile's ``S``) are its channel axis too; in other TIFFs ``S`` may be
    tifffile's guess, and stays spatial. Sizes: an OME-TIFF's OME-XML
    (``PhysicalSizeX/Y/Z``, ``TimeIncrement``), or an ImageJ TIFF's ``unit``,
    ``spacing``, ``finterval`` and X/Y resolution tags; a plain TIFF's
    resolution tags (often a printer's dots per inch) are not used.
    """
    try:
        with _open_tiff(path) as tif:
            return _tiff_axes_calibration(tif)
    except Exception as exc:  # tifffile raises many types on bad files
        raise InputError(f"cannot read TIFF {path}: {_one_line(exc)}") from exc


def _tiff_axes_calibration(tif: tifffile.TiffFile) -> tuple[ImageAxes, Calibration]:
    """:func:`_tiff_metadata` of an open TIFF (tifffile's errors are the caller's to name)."""
    letters, is_ome = tif.series[0].levels[0].axes, tif.is_ome
    calibration = _tiff_calibration(tif, letters)
    channel = "S" if is_ome and "C" not in letters else "C"
    types = ["channel" if a == channel else "time" if a == "T" else "space" for a in letters]
    return ImageAxes.from_types(types), calibration


def _tiff_calibration(tif: tifffile.TiffFile, letters: str) -> Calibration:
    """Physical pixel sizes from an OME-TIFF's or ImageJ TIFF's metadata; none if there are none, or they make no sense."""
    try:
        if tif.is_ome:
            return ome.from_ome_xml(tif.ome_metadata or "", letters)
        if tif.is_imagej:
            tags = tif.pages.first.tags
            resolution = [tags[name].value if name in tags else None for name in ("XResolution", "YResolution")]
            return ome.from_imagej(tif.imagej_metadata, letters, resolution)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError):
        pass  # metadata that cannot be understood must not stop the pixels from being processed
    return Calibration.none(len(letters))


def _calibration_fields(calibration: Calibration) -> dict[str, Any]:
    """InputSpec's ``physical_sizes`` and ``units``: empty for an uncalibrated image."""
    if not calibration.known:
        return {}
    return {"physical_sizes": calibration.scale, "units": calibration.units}


def _tiff_info(path: str, probe: bool) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
    """Shape, dtype name and native chunk shape of a TIFF's first series; InputError if unreadable.

    With `probe`, also open tifffile's zarr view for the native chunk shape and
    decode one chunk (codec available?); without it the chunk shape is ``()``.
    """
    return _read_tiff_header(path, probe)[0]


def _read_tiff_header(path: str, probe: bool, metadata: bool = False):
    """``(_tiff_info, _tiff_metadata or None)`` from one opening of the file; InputError if unreadable."""
    try:
        with _open_tiff(path) as tif:
            if not tif.series:
                raise InputError(f"TIFF {path} contains no image series")
            series = tif.series[0].levels[0]
            if series.dtype is None:
                raise InputError(f"TIFF {path} has an unsupported sample format")
            shape, dtype = tuple(series.shape), np.dtype(series.dtype).name
            if series.dataoffset is not None:
                end = series.dataoffset + math.prod(shape) * series.dtype.itemsize
                if end > storage.stat(path)[1]:
                    raise InputError(f"TIFF {path} is truncated: image data end at byte {end}")
            native = _probe_tiff(tif, decode=series.dataoffset is None) if probe else ()
            found = _tiff_axes_calibration(tif) if metadata else None
    except InputError:
        raise
    except Exception as exc:  # tifffile/zarr/codecs raise many types on bad files
        raise InputError(f"cannot read TIFF {path}: {_one_line(exc)}") from exc
    return (shape, dtype, native), found


def _probe_tiff(tif: tifffile.TiffFile, decode: bool) -> tuple[int, ...]:
    """Chunk shape of tifffile's zarr view of series 0; with `decode`, read its first chunk."""
    if not decode:
        single = _single_page_chunks(tif)
        if single is not None:
            return single
    store = tif.aszarr(series=0, level=0)
    try:
        native = None if decode else _declared_chunks(store)
        if native is None:
            array = zarr.open_array(store, mode="r")
            native = tuple(array.chunks)
            if decode and array.size and _nbytes(native, array.dtype.itemsize) <= DEFAULT_BLOCK_BYTES:
                array[tuple(slice(0, c) for c in native)]
    finally:
        store.close()
    return native


def _single_page_chunks(tif: tifffile.TiffFile) -> tuple[int, ...] | None:
    """The chunk shape of series 0 when it is one page whose strips span every axis: that page's; else None.

    What tifffile's zarr view declares for such a page (a batch's usual
    image), without building the view: about 0.3 ms of a 0.7 ms header read.
    """
    series = tif.series[0].levels[0]
    pages = getattr(series, "pages", None)
    if pages is None or len(pages) != 1 or pages[0] is None:
        return None
    chunks = tuple(int(c) for c in getattr(pages[0], "chunks", ()) or ())
    if tuple(pages[0].shape) != tuple(series.shape) or len(chunks) != len(series.shape):
        return None
    return chunks


def _declared_chunks(store: Any) -> tuple[int, ...] | None:
    """The chunk shape tifffile's zarr view declares, read from its own metadata (no zarr round trip); None if hidden.

    ``zarr.open_array`` on the view costs about a millisecond (zarr's event
    loop), most of resolving a small TIFF: thousands of them in a batch.
    """
    try:
        return tuple(int(c) for c in json.loads(store._store[".zarray"])["chunks"])
    except Exception:  # another tifffile's layout: ask zarr
        return None


# --------------------------------------------------------------------------- lazy reading


@dataclass(frozen=True)
class _TiffSource:
    """Picklable array-like over one TIFF file; every read opens the file."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    token: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return _read_tiff_region(self.path, key).astype(self.dtype, copy=False)

    def __dask_tokenize__(self) -> Any:
        return ("tiff-source", self.path, self.token)


@dataclass(frozen=True)
class _TiffStackSource:
    """Picklable array-like over equally shaped TIFF files stacked on a new first axis."""

    paths: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    token: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        first, region = key[0], tuple(key[1:])
        files = self.paths[first]
        out = np.empty((len(files), *_region_shape(region, self.shape[1:])), self.dtype)
        for i, path in enumerate(files):
            out[i] = _read_tiff_region(path, region)
        return out

    def __dask_tokenize__(self) -> Any:
        return ("tiff-stack-source", self.paths, self.token)


@dataclass(frozen=True)
class _ZarrSource:
    """Picklable array-like over one zarr array; every read opens the store."""

    store: str
    component: str
    shape: tuple[int, ...]
    dtype: np.dtype
    token: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if _plain_slices(key, self.ndim):
            region = tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape))
            found = _read_region_directly(self.store, self.component, self.shape, self.dtype, region)
            if found is not None:
                return found
        array = zarr.open_array(storage.zarr_store(self.store), path=self.component, mode="r")
        return np.asarray(array[key]).astype(self.dtype, copy=False)

    def __dask_tokenize__(self) -> Any:
        return ("zarr-source", self.store, self.component, self.token)


@dataclass(frozen=True)
class _ZarrTarget:
    """Picklable write target for :func:`dask.array.store`: every write opens the array by path."""

    store: str
    component: str

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        value = np.asarray(value)
        if _plain_slices(key, value.ndim) and value.size:
            region = tuple((k.start or 0, (k.start or 0) + n) for k, n in zip(key, value.shape))
            stats = [float(value.size), float(value.min()), float(value.max()), 0.0]
            if _write_chunk_directly(value, self.store, self.component, region, stats):
                return
        zarr.open_array(storage.zarr_store(self.store), path=self.component, mode="r+")[key] = value


def _read_tiff_region(path: str, region: tuple[slice, ...]) -> np.ndarray:
    """Read one region of a TIFF's first series, opening the file for this read only.

    Contiguous uncompressed data is read directly: whole rows along the first
    axis (a whole small image, whole planes) in one read into the result; a
    box of slices (a block with its halo) with one read per plane of the
    rows it spans (:func:`_read_local_planes`); anything else (an integer
    index, a step) through a memory map (tifffile's zarr view would read a
    whole single-strip page to return a few rows). A memory map costs a page
    fault per 4 KiB touched: 1.4 ms to copy out a 512 x 512 uint16 image in a
    busy worker, against about 0.3 ms for one read. Everything else goes
    through tifffile's zarr store, which decodes only the strips/tiles touched.
    """
    with _open_tiff(path) as tif:
        series = tif.series[0].levels[0]
        if series.dataoffset is not None and storage.is_url(path):
            return _read_contiguous_rows(path, tif, series, region)
        if series.dataoffset is not None and _whole_rows(region, tuple(series.shape)):
            return _read_local_rows(path, tif, series, region[0] if region else slice(None))
        if series.dataoffset is not None and _plane_reads(region, tuple(series.shape)) <= MAX_PLANE_READS:
            return _read_local_planes(path, tif, series, region)
        if series.dataoffset is not None:
            mapped = np.memmap(
                path,
                dtype=np.dtype(tif.byteorder + series.dtype.char),
                mode="r",
                offset=series.dataoffset,
                shape=tuple(series.shape),
                order="C",
            )
            try:
                return np.array(mapped[region], dtype=series.dtype.newbyteorder("="))
            finally:
                del mapped
        store = tif.aszarr(series=0, level=0)
        try:
            return _native_endian(np.asarray(zarr.open_array(store, mode="r")[region]))
        finally:
            store.close()


def _whole_rows(region: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether `region` is a run of whole rows along the first axis: slices only, every later axis whole, no step.

    >>> _whole_rows((slice(2, 5), slice(0, 8)), (10, 8)), _whole_rows((slice(2, 5), slice(0, 4)), (10, 8))
    (True, False)
    >>> _whole_rows((0, slice(0, 8)), (10, 8))  # an integer index: not rows
    False
    """
    if not all(isinstance(r, slice) for r in region) or len(region) != len(shape):
        return False
    return (not region or region[0].indices(shape[0])[2] == 1) and all(
        r.indices(n) == (0, n, 1) for r, n in zip(region[1:], shape[1:]))


#: Most reads :func:`_read_local_planes` makes for one region; a region needing more is read through a memory map.
MAX_PLANE_READS = 1 << 16


def _plane_reads(region: tuple, shape: tuple[int, ...]) -> float:
    """How many reads :func:`_read_local_planes` makes for `region`; infinite where it cannot (not a box of slices).

    >>> _plane_reads((slice(2, 5), slice(1, 3), slice(0, 4)), (10, 8, 6)), _plane_reads((2, slice(0, 8)), (10, 8))
    (3, inf)
    """
    if len(shape) < 2 or len(region) != len(shape) or not all(isinstance(r, slice) for r in region):
        return math.inf
    bounds = [r.indices(n) for r, n in zip(region, shape)]
    if any(step != 1 for _, _, step in bounds):
        return math.inf
    return math.prod(max(0, stop - start) for start, stop, _ in bounds[:-2])


def _read_local_planes(path: str, tif: tifffile.TiffFile, series: Any, region: tuple[slice, ...]) -> np.ndarray:
    """A box of contiguous uncompressed data in a local file: per index of the axes before the last two, one read.

    Each read takes the whole rows the box spans on that plane (a run of the
    file) into a buffer, and the box's columns are copied out of it. A block
    of 144 x 272 x 272 (a 128 x 256 x 256 block with its halo) of a 512 x
    1024 x 1024 uint16 volume took 15 ms, against 16.5 ms through a memory map
    (65 ms the first time); and no page of the file stays mapped, where a
    map's pages count in the worker's resident memory, and so against Dask's
    memory limits, while it is open.
    """
    shape = tuple(series.shape)
    bounds = [r.indices(n)[:2] for r, n in zip(region, shape)]
    (row0, row1), (col0, col1) = bounds[-2:]
    out = np.empty([max(0, stop - start) for start, stop in bounds], dtype=series.dtype.newbyteorder("="))
    if out.size == 0:
        return out
    stored = np.dtype(tif.byteorder + series.dtype.char)
    rows = np.empty((row1 - row0, shape[-1]), dtype=stored)
    row_bytes = shape[-1] * stored.itemsize
    planes = out.reshape(-1, row1 - row0, col1 - col0)
    handle = tif.filehandle
    leading = itertools.product(*[range(start, stop) for start, stop in bounds[:-2]])
    for position, index in enumerate(leading):
        plane = int(np.ravel_multi_index(index, shape[:-2])) if index else 0
        handle.seek(series.dataoffset + (plane * shape[-2] + row0) * row_bytes)
        if handle.readinto(rows.reshape(-1).view(np.uint8)) != rows.nbytes:
            where = index[0] if len(index) == 1 else index
            raise InputError(f"TIFF {path} is truncated: plane {where} rows {row0}-{row1 - 1} are not all in the file")
        planes[position] = rows[:, col0:col1]
    return out


def _read_local_rows(path: str, tif: tifffile.TiffFile, series: Any, rows: slice) -> np.ndarray:
    """Rows ``rows`` (step 1) of contiguous uncompressed data in a local file, read straight into the result."""
    first, stop, start, stored = _row_span(tif, series, rows)
    out = np.empty((stop - first, *series.shape[1:]), dtype=stored)
    handle = tif.filehandle
    handle.seek(start)
    if handle.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
        raise InputError(f"TIFF {path} is truncated: rows {first}-{stop - 1} are not all in the file")
    return out.astype(series.dtype.newbyteorder("="), copy=False)


def _read_contiguous_rows(path: str, tif: tifffile.TiffFile, series: Any, region: tuple[slice, ...]) -> np.ndarray:
    """A region of contiguous uncompressed data in an object store: one ranged read of the rows along the first axis."""
    rows = region[0] if region else slice(None)
    first, stop, start, stored = _row_span(tif, series, rows)
    data = storage.read_bytes(path, start, start + (stop - first) * math.prod(series.shape[1:]) * stored.itemsize)
    block = np.frombuffer(data, dtype=stored).reshape((stop - first, *series.shape[1:]))
    inner = (slice(0, stop - first, rows.indices(series.shape[0])[2]), *region[1:])
    return np.array(block[inner], dtype=series.dtype.newbyteorder("="))


def _row_span(tif: tifffile.TiffFile, series: Any, rows: slice) -> tuple[int, int, int, np.dtype]:
    """The first and stop rows `rows` covers along the first axis, the byte where the first starts, the stored dtype."""
    first, stop, _ = rows.indices(series.shape[0])
    stored = np.dtype(tif.byteorder + series.dtype.char)
    return first, max(first, stop), series.dataoffset + first * math.prod(series.shape[1:]) * stored.itemsize, stored


@contextmanager
def _open_tiff(path: str):
    """A TiffFile on a local path, or on a (buffered) file object of an object store."""
    if not storage.is_url(path):
        with tifffile.TiffFile(path) as tif:
            yield tif
        return
    fs, inner = storage.filesystem(path)
    with fs.open(inner, "rb", block_size=2**20, cache_type="readahead") as handle, tifffile.TiffFile(handle) as tif:
        yield tif


def _default_blocks(spec: InputSpec, itemsize: int) -> tuple[int, ...]:
    """Blocks of a single TIFF or zarr array read with no chunks given: near-cubes for a plain 3D volume
    (:func:`volume_chunks`), whole native chunks filling planes otherwise (:func:`default_chunks`).

    A volume's blocks hold :data:`VOLUME_BLOCK_BYTES` of the float32 its
    filters work in (16 MiB of uint16): a worker holds a block, its halo, the
    filter's output and the store's buffers at once, about six times that.
    """
    if len(spec.shape) == 3 and spec.channel_axis is None and spec.time_axis is None:
        return volume_chunks(spec.shape, max(itemsize, _WORKING_ITEMSIZE), spec.native_chunks, VOLUME_BLOCK_BYTES)
    return default_chunks(spec.shape, itemsize, spec.native_chunks, DEFAULT_BLOCK_BYTES)


def _imread_tiff(spec: InputSpec, chunks: tuple[int, ...] | None) -> da.Array:
    """Lazy dask array over a single TIFF; a TIFF stored in whole rows is offered to :func:`region_source`."""
    source = _TiffSource(spec.paths[0], spec.shape, np.dtype(spec.dtype), _stat_token(spec.paths))
    blocks = chunks or _default_blocks(spec, source.dtype.itemsize)
    array = _from_source(source, blocks, f"read-tiff-{tokenize(source, blocks)}")
    if tuple(spec.native_chunks[1:]) == tuple(spec.shape[1:]):
        _REGION_SOURCES[array.name] = source
    return array


#: Sources any region of which costs about its own size to read, by the name of the dask array made over
#: them (:func:`region_source`): TIFFs stored in whole rows along their first axis (contiguous data, strips of
#: a 2D image).
_REGION_SOURCES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def region_source(image: da.Array) -> Any | None:
    """What `image` reads its blocks from, if it reads any region at about that region's size; else ``None``.

    A neighbourhood op can then read each block with its halo straight from
    the file (:func:`tasks.lift.lift_local`), instead of taking the halo
    from its neighbours' blocks: no block waits in memory for its
    neighbours. Only for the very array :func:`imread` made over a TIFF
    whose stored pieces span every axis but the first (contiguous data,
    strips of a 2D image); a tiled TIFF would decode every neighbouring
    tile for a halo a few pixels deep.

    >>> region_source(da.zeros((4, 4), chunks=2)) is None
    True
    """
    return _REGION_SOURCES.get(image.name)


def _imread_glob(spec: InputSpec, chunks: tuple[int, ...] | None) -> da.Array:
    """Lazy dask array stacking glob-matched TIFFs on a new first axis."""
    source = _TiffStackSource(spec.paths, spec.shape, np.dtype(spec.dtype), _stat_token(spec.paths))
    blocks = chunks or default_chunks(spec.shape, source.dtype.itemsize, spec.native_chunks)
    return _from_source(source, blocks, f"read-glob-{tokenize(source, blocks)}")


def _imread_tiles(spec: InputSpec, chunks: tuple[int, ...] | None) -> da.Array:
    """Lazy dask array assembling a tile grid like :func:`dask.array.block`."""
    dtype = np.dtype(spec.dtype)
    arrays = []
    for path, shape in zip(spec.paths, spec.tile_shapes):
        source = _TiffSource(path, shape, dtype, _stat_token((path,)))
        native = tuple(min(n, s) for n, s in zip(spec.native_chunks, shape)) or None
        blocks = default_chunks(shape, dtype.itemsize, native)
        arrays.append(_from_source(source, blocks, f"read-tile-{tokenize(source, blocks)}"))
    image = da.block(_nest(arrays, spec.grid))
    return image.rechunk(chunks) if chunks else image


def _imread_zarr(spec: InputSpec, chunks: tuple[int, ...] | None) -> da.Array:
    """Lazy dask array over a zarr array."""
    store, component = spec.paths[0], spec.component or ""
    token = _digest(_zarr_stat(store, component, chunk_files=False))
    source = _ZarrSource(store, component, spec.shape, np.dtype(spec.dtype), token)
    blocks = chunks or _default_blocks(spec, source.dtype.itemsize)
    return _from_source(source, blocks, f"read-zarr-{tokenize(source, blocks)}")


def _from_source(source: Any, chunks: Sequence[int], name: str) -> da.Array:
    """Dask array whose blocks are ``source[region]``."""
    meta = np.empty((0,) * len(source.shape), dtype=source.dtype)
    return da.from_array(source, chunks=tuple(chunks), name=name, meta=meta, asarray=False)


def _nest(items: list[Any], grid: tuple[int, ...]) -> list[Any]:
    """Nested lists of `items` (C order) with the given grid shape."""
    if len(grid) == 1:
        return list(items)
    step = len(items) // grid[0]
    return [_nest(items[i * step : (i + 1) * step], grid[1:]) for i in range(grid[0])]


# --------------------------------------------------------------------------- store helpers


def _write_block(
    block: np.ndarray, store: str, component: str, region: tuple, index: tuple, levels: BlockLevels | None = None,
    record: bool = True,
) -> np.ndarray:
    """Write one block into its region, and its part of every lower-resolution level, then mark it done; its statistics.

    ``record=False``: not marked done (:func:`write_whole`).
    """
    # Copied once, here, into this thread's buffer (a filter's block without its halo is a strided view):
    # the statistics then read contiguous memory (half the time), and the chunk's encoding copies nothing.
    block = zarrchunks.contiguous(block, block.dtype)
    stats = _block_stats(block)
    if not _write_chunk_directly(block, store, component, region, stats):
        array = zarr.open_array(storage.zarr_store(store), path=component, mode="r+")
        if not _may_be_fill(stats, array.fill_value):
            # zarr compares every chunk with the fill value before writing it (to skip empty
            # chunks): a full pass, three for floats; the statistics already rule it out.
            array = array.with_config({"write_empty_chunks": True})
        array[tuple(slice(a, b) for a, b in region)] = block
    if levels is not None:
        _write_block_levels(block, store, region, levels)
    if record:
        _mark_block_done(store, index, stats)
    return np.asarray(stats, dtype=np.float64).reshape((4,) + (1,) * (block.ndim - 1))


def _block_stats(block: np.ndarray) -> list[float]:
    """``[count, min, max, sum]`` of a block; for a mask, its count of True as the sum (10 times quicker than a float64 sum).

    >>> _block_stats(np.array([True, False])), _block_stats(np.array([2, 5], dtype=np.uint8))
    ([2.0, 0.0, 1.0, 1.0], [2.0, 2.0, 5.0, 7.0])
    """
    if not block.size:
        return [0.0, 0.0, 0.0, 0.0]
    if block.dtype == bool:
        count = np.count_nonzero(block)
        return [float(block.size), float(count == block.size), float(count > 0), float(count)]
    return [float(block.size), float(block.min()), float(block.max()), float(block.sum(dtype=np.float64))]


def _write_chunk_directly(block: np.ndarray, store: str, component: str, region: tuple, stats: list[float]) -> bool:
    """Write a block that is exactly one chunk of a stage store as its encoded bytes (:mod:`tasks.zarrchunks`).

    False, writing nothing, when zarr must do it: another codec chain, a block
    that is not one whole chunk (an edge chunk is padded with the fill value,
    as zarr pads it), or one that may hold only the fill value (zarr writes no
    chunk for it).
    """
    metadata = _array_metadata(store, component)
    codec = zarrchunks.chunk_codec(metadata)
    shape = tuple(metadata["shape"])
    if codec is None or block.dtype != codec.dtype or _may_be_fill(stats, codec.fill_value):
        return False
    index = []
    for (start, stop), size, extent in zip(region, codec.chunks, shape):
        if start % size or stop != min(start + size, extent):
            return False
        index.append(start // size)
    if block.shape != codec.chunks:
        padded = np.full(codec.chunks, codec.fill_value, dtype=codec.dtype)
        padded[tuple(slice(0, n) for n in block.shape)] = block
        block = padded
    location = storage.join(store, component, *codec.key(index).split("/"))
    storage.makedirs(storage.parent(location))
    storage.write_bytes(location, codec.encode(block))
    return True


def write_whole(array: np.ndarray, ref: ArrayRef, *, record_blocks: bool = True) -> dict[str, float]:
    """Write an array held in memory into its store, block by block; the merged statistics.

    The eager counterpart of :func:`write_blocks` (no graph) for an image
    processed whole (a batch image): each block of the store's chunk grid is
    written and, unless ``record_blocks`` is false, recorded as done just the
    same. Those records let an interrupted stage resume block by block; a
    caller that makes an unfinished store again from the start has no use
    for them (a folder and a file a block: 1-1.5 ms a batch image's store).
    """
    array = np.asarray(array)
    _check_ref(ref)
    if array.shape != ref.shape or array.dtype != np.dtype(ref.dtype):
        raise ValueError(
            f"store {ref.store} holds shape {ref.shape} dtype {ref.dtype}, "
            f"not the {array.dtype} array of shape {array.shape} given"
        )
    stats = []
    for index in np.ndindex(*block_grid(ref)):
        region = _chunk_region(index, ref.chunks, ref.shape)
        block = array[tuple(slice(a, b) for a, b in region)]
        stats.append(_write_block(block, ref.store, ref.component, region, index, record=record_blocks))
    return merge_block_stats(stats)


def _chunk_region(index: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` on each axis of chunk ``index`` in a regular grid (an edge chunk stops at the array's edge)."""
    return tuple((i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape))


def _may_be_fill(stats: list[float], fill_value: Any) -> bool:
    """Whether a block with these ``[count, min, max, sum]`` statistics may hold nothing but the fill value.

    >>> _may_be_fill([4.0, 0.0, 0.0, 0.0], 0), _may_be_fill([4.0, 0.0, 1.0, 1.0], 0), _may_be_fill([4.0, 0.0, 0.0, 0.0], 1)
    (True, False, False)
    """
    count, low, high, _ = stats
    fill = float(fill_value)
    return count == 0 or (low == fill and high == fill) or not (np.isfinite(low) and np.isfinite(high))


def _mark_block_done(store: str, index: tuple, stats: list[float]) -> None:
    """Record a finished block and its statistics: a small file, renamed into place."""
    folder = storage.join(store, _DONE_FOLDER)
    storage.makedirs(folder)
    storage.write_text(storage.join(folder, "_".join(str(int(i)) for i in index)), json.dumps([float(v) for v in stats]))


def _remove_old_store(store: str) -> None:
    """Delete an existing zarr store at `store`; refuse to delete anything else."""
    if storage.is_url(store):
        if _is_zarr_store(store):
            storage.remove_tree(store)
        elif storage.exists(store):
            raise ValueError(f"{store} exists and is not a zarr store; refusing to overwrite it")
        return
    if not os.path.lexists(store):
        return
    if os.path.isdir(store) and not os.path.islink(store) and _is_zarr_store(store):
        storage.remove_tree(store)
        return
    raise ValueError(f"{store} exists and is not a zarr store; refusing to overwrite it")


def _is_zarr_store(path: str) -> bool:
    """Whether `path` holds zarr metadata, or level 0 of a store whose group :func:`save_whole` had not written yet."""
    return _has_zarr_metadata(path) or storage.isfile(storage.join(path, "0", "zarr.json"))


def _ome_attributes(name: str, axes: tuple[str, ...], kind: str, calibration: Calibration) -> dict[str, Any]:
    """OME-NGFF 0.5 attributes for a single-scale image (:func:`write_pyramid` adds levels)."""
    attributes: dict[str, Any] = {
        "version": OME_VERSION,
        "multiscales": [ome.multiscale(name, axes, _AXIS_TYPES, calibration)],
    }
    if kind == "labels":
        attributes["image-label"] = ome.image_label(None)
    return attributes


def _check_axes(axes: Sequence[str] | None, ndim: int) -> tuple[str, ...]:
    """Validated axis names, or the defaults for `ndim` axes."""
    if axes is None:
        if ndim not in _DEFAULT_AXES:
            raise ValueError(f"shape must have 2 to 5 axes for OME-Zarr, got {ndim}")
        return _DEFAULT_AXES[ndim]
    names = tuple(axes)
    if len(names) != ndim:
        raise ValueError(f"axes {names} has {len(names)} entries but shape has {ndim} axes")
    if any(a not in _AXIS_TYPES for a in names) or len(set(names)) != len(names):
        raise ValueError(f"axes {names} must be distinct names from {tuple(_AXIS_TYPES)}")
    return names


def _check_store_chunks(chunks: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape validated against `shape` and clipped to it."""
    chunks = _int_tuple(chunks)
    if len(chunks) != len(shape):
        raise ValueError(
            f"chunks {chunks} has {len(chunks)} entries but shape {shape} has {len(shape)}"
        )
    if any(c < 1 for c in chunks):
        raise ValueError(f"chunks {chunks} must be positive")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {shape} must not be negative")
    return tuple(max(1, min(c, s)) for c, s in zip(chunks, shape))


def _check_ref(ref: Any) -> None:
    """TypeError unless `ref` is an ArrayRef."""
    if not isinstance(ref, ArrayRef):
        raise TypeError(f"ref must be an ArrayRef, got {type(ref).__name__}")


def _check_stored_array(ref: ArrayRef) -> zarr.Array:
    """The stored array of `ref`, opened to read; ValueError unless it matches `ref`."""
    if not storage.exists(ref.store):
        raise FileNotFoundError(f"store {ref.store} does not exist")
    try:
        array = zarr.open_array(storage.zarr_store(ref.store), path=ref.component, mode="r")
    except (zarr.errors.NodeNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
        raise ValueError(f"store {ref.store} has no array at component {ref.component!r}") from exc
    if array.shape != ref.shape or array.dtype != np.dtype(ref.dtype):
        raise ValueError(
            f"store {ref.store} holds shape {array.shape} dtype {array.dtype}, "
            f"the reference says shape {ref.shape} dtype {ref.dtype}"
        )
    return array


def _open_group(store: str) -> zarr.Group:
    """Open a zarr group for update; FileNotFoundError/ValueError naming `store`."""
    if not storage.exists(store):
        raise FileNotFoundError(f"store {store} does not exist")
    try:
        return zarr.open_group(storage.zarr_store(store), mode="r+")
    except zarr.errors.NodeNotFoundError as exc:
        raise ValueError(f"{store} is not a zarr group") from exc


def _group_attributes(store: str) -> dict[str, Any]:
    """The attributes of the zarr v3 group at `store`, from one read of its ``zarr.json`` (no zarr machinery).

    The stage stores are read this way many times per image; zarr's own
    opening costs a few milliseconds each time.
    """
    document = _zarr_json(store, "", f"store {store} does not exist")
    if document.get("zarr_format") != 3 or document.get("node_type") != "group":
        raise ValueError(f"{store} is not a zarr v3 group")
    attributes = document.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ValueError(f"{store}: the group's attributes are not a mapping")
    return attributes


def _update_group_attributes(store: str, update: Mapping[str, Any]) -> None:
    """Replace top-level attributes of the zarr v3 group at `store`: its ``zarr.json`` rewritten in one atomic write.

    The document keeps every other field, and is written as zarr writes it
    (indented JSON, non-finite numbers as ``NaN`` / ``Infinity``).
    """
    location = storage.join(store, "zarr.json")
    document = _zarr_json(store, "", f"store {store} does not exist")
    document["attributes"] = {**document.get("attributes", {}), **update}
    storage.write_text(location, _zarr_json_text(document))


def _array_metadata(store: str, component: str) -> dict[str, Any]:
    """The ``zarr.json`` of the zarr v3 array at `component` of `store` (ValueError if there is none)."""
    document = _zarr_json(store, component, f"store {store} has no array at component {component!r}")
    if document.get("node_type") != "array" or not isinstance(document.get("shape"), list):
        raise ValueError(f"store {store} has no array at component {component!r}")
    return document


def _json_document(data: bytes) -> Any:
    """A JSON document read by orjson (in C: 4-5 times quicker), or by :func:`json.loads` where orjson refuses it.

    orjson takes standard JSON only; ``json.loads`` also reads the bare
    ``NaN`` and ``Infinity`` that :func:`_zarr_json_text` and other writers
    leave in a document with non-finite numbers, and integers over 64 bits.
    A document neither reads raises ``json.JSONDecodeError`` (a ValueError)
    or ``UnicodeDecodeError``.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8"))


def _zarr_json(store: str, component: str, missing: str) -> dict[str, Any]:
    location = storage.join(store, component, "zarr.json") if component else storage.join(store, "zarr.json")
    try:
        document = _json_document(storage.read_bytes(location))
    except FileNotFoundError as exc:
        raise FileNotFoundError(missing) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{location} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{location} is not zarr metadata")
    return document


def _haloflow_meta(attrs: Mapping[str, Any], store: str) -> dict[str, Any]:
    """The ``haloflow`` attributes of an OME group made by create_store (ValueError otherwise)."""
    meta = attrs.get("haloflow")
    if not isinstance(meta, dict) or "ome" not in attrs or meta.get("kind") not in STORE_KINDS:
        raise ValueError(f"{store} is not a haloflow store (no 'ome' and 'haloflow' attributes)")
    return dict(meta)


def _jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays converted to plain JSON types (TypeError if impossible)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    """json.dumps hook for numpy values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"attribute value of type {type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- table helpers


def _check_columns(columns: Any) -> dict[str, np.ndarray]:
    """Columns as 1-D arrays of equal length (TypeError/ValueError otherwise)."""
    if not isinstance(columns, Mapping):
        raise TypeError(
            f"columns must be a mapping of name to 1-D array, got {type(columns).__name__}"
        )
    if not columns:
        raise ValueError("columns is empty: a table needs at least one column")
    table: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if not isinstance(name, str):
            raise TypeError(f"column names must be str, got {name!r}")
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {array.shape}")
        table[name] = array
    lengths = {name: len(a) for name, a in table.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns differ in length: {lengths}")
    return table


def _format_column(values: np.ndarray) -> list[str]:
    """CSV texts of a column: exact repr for floats, 0/1 for booleans."""
    if values.dtype.kind == "f":
        return [repr(float(v)) for v in values]
    if values.dtype.kind in "biu":
        return [str(int(v)) for v in values]
    return [str(v) for v in values]


def _parse_column(texts: list[str]) -> np.ndarray:
    """int64 if every text is an integer, else float64 if all parse, else str."""
    if not texts:
        return np.empty(0, dtype=np.float64)
    if all(_INT_TEXT.match(t) for t in texts):
        return np.array([int(t) for t in texts])
    try:
        return np.array([float(t) for t in texts], dtype=np.float64)
    except ValueError:
        return np.array(texts, dtype=str)


# --------------------------------------------------------------------------- small helpers


def _existing(text: str, what: str) -> str:
    """Absolute resolved path (or URL); InputNotFoundError naming it if it does not exist."""
    path = _real(text)
    if not storage.exists(path):
        raise InputNotFoundError(f"{what} not found: {path}")
    return path


@contextmanager
def _reaching(location: Any):
    """Storage that cannot be reached (no credentials, no such bucket, a package missing) as an InputError naming it."""
    try:
        yield
    except InputError:
        raise
    except OSError as exc:
        raise InputError(f"cannot reach {location}: {_one_line(exc)}") from exc


def _real(location: str) -> str:
    """A URL as it is; a local path absolute, with symlinks resolved."""
    return location if storage.is_url(location) else str(Path(location).resolve())


def _real_files(locations: list[str]) -> list[str]:
    """:func:`_real` of many files: each folder resolved once, a file resolved on its own only if it is a symlink.

    Resolving every one of 2000 paths took 0.04-0.15 s, one ``lstat`` per
    folder of each path.
    """
    folders: dict[str, str] = {}
    found = []
    for location in locations:
        if storage.is_url(location) or os.path.islink(location):
            found.append(_real(location))
            continue
        folder, name = os.path.split(os.path.abspath(location))
        if folder not in folders:
            folders[folder] = _real(folder)
        found.append(os.path.join(folders[folder], name))
    return found


def _check_chunks(chunks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Validated user chunks for an image of `shape`."""
    if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Sequence):
        raise TypeError(f"chunks must be a tuple of int, got {type(chunks).__name__}")
    if len(chunks) != len(shape):
        raise InputError(f"chunks has {len(chunks)} entries but the image has {len(shape)} axes")
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in chunks):
        raise TypeError(f"chunks must be a tuple of int, got {tuple(chunks)!r}")
    if any(c < 1 for c in chunks):
        raise InputError(f"chunks {tuple(chunks)} must be positive")
    return tuple(int(c) for c in chunks)


def _is_tiff_name(path: str | os.PathLike) -> bool:
    """Whether `path` has a TIFF suffix."""
    return os.path.splitext(os.fspath(path))[1].lower() in TIFF_SUFFIXES


def _has_zarr_metadata(path: str) -> bool:
    """Whether directory `path` holds zarr v2 or v3 metadata."""
    return any(storage.isfile(storage.join(path, name)) for name in ("zarr.json", ".zarray", ".zgroup"))


def _file_stat(path: str) -> tuple[str, int, str]:
    """(path, size, version) of an input file: its modification time, or its object's ETag."""
    try:
        return storage.stat(path)
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"input not found: {path}") from exc


def _stat_token(paths: Sequence[str]) -> str:
    """Cheap token of files' sizes and mtimes."""
    return _digest([_file_stat(p) for p in paths])


def _zarr_stat(store: str, component: str, chunk_files: bool = True) -> list[Any]:
    """Stats of a store's metadata files along `component` (+ array files' count, bytes, newest mtime)."""
    if not storage.isdir(store):
        raise InputNotFoundError(f"zarr store not found: {store}")
    folders, relative = [store], [""]
    for part in [p for p in component.split("/") if p]:
        folders.append(storage.join(folders[-1], part))
        relative.append(f"{relative[-1]}{part}/")
    parts: list[Any] = [store, component]
    for folder, where in zip(folders, relative):
        for name in _ZARR_METADATA:
            meta = storage.join(folder, name)
            if storage.isfile(meta):
                parts.append((where + name, *storage.stat(meta)[1:]))
    if chunk_files:
        parts.append(storage.tree_stats(folders[-1]))
    return parts


def _region_shape(region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``array[region]`` for an array of `shape`."""
    full = tuple(region) + (slice(None),) * (len(shape) - len(region))
    return tuple(len(range(*s.indices(n))) for s, n in zip(full, shape))


def _nbytes(block: Sequence[int], itemsize: int, skip: int | None = None) -> int:
    """Bytes of a block, with axis `skip` counted as 1."""
    return itemsize * math.prod(1 if i == skip else b for i, b in enumerate(block))


def _int_tuple(values: Sequence[Any]) -> tuple[int, ...]:
    """Tuple of Python ints."""
    return tuple(int(v) for v in values)


def _as_dtype(dtype: Any) -> np.dtype:
    """np.dtype of `dtype`, TypeError naming it if unknown."""
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype {dtype!r} is not a NumPy dtype") from exc


def _native_endian(array: np.ndarray) -> np.ndarray:
    """`array` in native byte order."""
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
