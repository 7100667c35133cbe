"""Paths and object-storage URLs behind one small set of functions.

A location is a local path (``~`` expanded) or an fsspec URL
(``s3://bucket/prefix``, ``gs://...``; ``file://`` is a local path).
Credentials and endpoints come from the usual places: the environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) and fsspec's own
configuration (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec``). Listings are
never cached: another process (a Dask worker) may have written meanwhile.

Writing a small file is atomic everywhere: a local file is written under a
temporary name and renamed; an object is one PUT, which a reader sees whole
or not at all.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
import shutil
from functools import lru_cache
from typing import Any

import fsspec

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: Never trust a listing cached by an earlier call: workers write concurrently.
_OPTIONS = {"use_listings_cache": False}


def is_url(location: Any) -> bool:
    """Whether `location` is a URL of a remote file system (``file://`` is not)."""
    match = _SCHEME.match(str(location))
    return bool(match) and match.group(1).lower() not in ("file", "local")


def normalize(location: Any) -> str:
    """A URL without a trailing slash, or an absolute local path (``~`` and ``file://`` undone)."""
    text = os.fspath(location)
    if is_url(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://"):]
    return os.path.abspath(os.path.expanduser(text))


def join(base: Any, *parts: str) -> str:
    """`base` with `parts` appended: ``/`` inside a URL, the OS's separator locally."""
    text = os.fspath(base)
    return posixpath.join(text, *parts) if is_url(text) else os.path.join(text, *parts)


def basename(location: Any) -> str:
    text = os.fspath(location).rstrip("/")
    return posixpath.basename(text) if is_url(text) else os.path.basename(text)


def parent(location: Any) -> str:
    text = os.fspath(location).rstrip("/")
    return posixpath.dirname(text) if is_url(text) else os.path.dirname(text)


@lru_cache(maxsize=16)
def _filesystem(protocol: str):
    try:
        return fsspec.filesystem(protocol, **_OPTIONS)
    except ImportError as error:
        raise StorageError(f"{protocol}:// needs a package that is not installed: {error}") from error
    except ValueError as error:  # fsspec: unknown protocol
        raise StorageError(f"{protocol}:// is not a storage fsspec knows: {error}") from error


def filesystem(location: str):
    """The fsspec file system of a URL and the path inside it."""
    protocol = _SCHEME.match(location).group(1).lower()
    fs = _filesystem(protocol)
    return fs, fs._strip_protocol(location)


class StorageError(OSError):
    """A URL whose storage cannot be used here: the message names the URL and why."""


def exists(location: str) -> bool:
    if not is_url(location):
        return os.path.exists(location)
    fs, path = filesystem(location)
    return fs.exists(path)


def isfile(location: str) -> bool:
    if not is_url(location):
        return os.path.isfile(location)
    fs, path = filesystem(location)
    return fs.isfile(path)


def isdir(location: str) -> bool:
    """A local directory, or a URL prefix holding at least one object."""
    if not is_url(location):
        return os.path.isdir(location)
    fs, path = filesystem(location)
    return fs.isdir(path)


def makedirs(location: str) -> None:
    """Create a local folder (and its parents); object stores have no folders to create."""
    if not is_url(location):
        os.makedirs(location, exist_ok=True)


def list_names(location: str) -> list[str]:
    """The names of the files directly inside a folder (empty if there is none)."""
    if not is_url(location):
        if not os.path.isdir(location):
            return []
        return [n for n in os.listdir(location) if os.path.isfile(os.path.join(location, n))]
    fs, path = filesystem(location)
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file"]


def glob_files(pattern: str) -> list[str]:
    """The files matching a glob pattern, as URLs when the pattern is one."""
    if not is_url(pattern):
        return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    fs, path = filesystem(pattern)
    found = fs.glob(path, detail=True)
    protocol = _SCHEME.match(pattern).group(1)
    return [f"{protocol}://{name}" for name, entry in found.items() if entry.get("type") == "file"]


def read_bytes(location: str, start: int | None = None, end: int | None = None) -> bytes:
    if not is_url(location):
        with open(location, "rb") as handle:
            handle.seek(start or 0)
            return handle.read() if end is None else handle.read(end - (start or 0))
    fs, path = filesystem(location)
    return fs.cat_file(path, start=start, end=end)


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def read_texts(locations: list[str]) -> dict[str, str]:
    """Several small files at once (concurrently for an object store)."""
    remote = [loc for loc in locations if is_url(loc)]
    texts = {loc: read_text(loc) for loc in locations if not is_url(loc)}
    if remote:
        fs, _ = filesystem(remote[0])
        found = fs.cat([filesystem(loc)[1] for loc in remote])
        texts.update({loc: found[filesystem(loc)[1]].decode("utf-8") for loc in remote})
    return texts


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file atomically: a reader never sees part of it."""
    if is_url(location):
        fs, path = filesystem(location)
        fs.pipe_file(path, data)
        return
    temporary = f"{location}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb", buffering=0) as handle:
            _write_in_pieces(handle, data)
        os.replace(temporary, location)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


#: The most bytes one ``write`` call hands the kernel. Linux (6.x, ext4 and others) caches a file written
#: in large calls in large pages ("folios") of up to 2 MiB, each taken whole from free memory. On a virtual
#: machine whose host takes back free memory (virtio-balloon free page reporting, which works on 2 MiB
#: pieces) every such page must be supplied again by the host: 1 GiB of 32 MiB writes took 4.2-5.0 s
#: here after a few idle seconds, in 1 MiB writes 0.3-0.7 s, in 256 KiB writes 0.35-0.46 s (and the
#: same on a machine without it). A float32 stage store of 256x1024x1024 is about 1 GB.
WRITE_PIECE = 256 * 2**10


def _write_in_pieces(handle, data) -> None:
    """Write all of ``data`` (bytes or any buffer) to an unbuffered binary file, :data:`WRITE_PIECE` bytes a call."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), WRITE_PIECE):
        piece = view[start:start + WRITE_PIECE]
        while piece:  # an unbuffered write may take less than it was given
            piece = piece[handle.write(piece):]


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def remove(location: str) -> None:
    """Delete one file if it exists."""
    if not is_url(location):
        if os.path.lexists(location):
            os.remove(location)
        return
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm_file(path)


def remove_tree(location: str) -> None:
    """Delete a folder (a URL prefix) and everything in it."""
    if not is_url(location):
        shutil.rmtree(location)
        return
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def stat(location: str) -> tuple[str, int, str]:
    """``(location, size, version)`` of a file: its modification time locally, its ETag or date in an object store."""
    if not is_url(location):
        info = os.stat(location)
        return (location, info.st_size, str(info.st_mtime_ns))
    fs, path = filesystem(location)
    info = fs.info(path)
    if info.get("type") != "file":
        raise FileNotFoundError(f"{location} is not a file")
    return (location, int(info.get("size") or 0), _version(info))


def tree_stats(location: str) -> tuple[int, int, str]:
    """Number of files, their bytes and the newest version under a folder."""
    if not is_url(location):
        count = size = newest = 0
        for folder, _, names in os.walk(location):
            for name in names:
                info = os.stat(os.path.join(folder, name))
                count, size, newest = count + 1, size + info.st_size, max(newest, info.st_mtime_ns)
        return (count, size, str(newest))
    fs, path = filesystem(location)
    entries = fs.find(path, detail=True)
    versions = sorted(_version(e) for e in entries.values())
    return (len(entries), sum(int(e.get("size") or 0) for e in entries.values()), "|".join(versions[-1:]))


def _version(info: dict[str, Any]) -> str:
    for field in ("ETag", "LastModified", "mtime", "updated", "last_modified"):
        if info.get(field) is not None:
            value = info[field]
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return ""


def zarr_store(location: str):
    """What zarr opens: the local path itself, or an fsspec store on the URL with listings never cached."""
    if not is_url(location):
        return location
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(location, storage_options=dict(_OPTIONS))
