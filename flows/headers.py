"""Batch images' headers read ahead, while the run's own Prefect server starts.

``haloflow run`` waits 4-5 s for the Prefect server it starts before the flow
can begin, and the batch flow's first work is reading every image's header
(about 0.4 ms an image: 0.8 s for 2000 images, read on the cluster). The
command lists the images during that wait anyway; :func:`read_ahead` reads
their headers there too, in a thread of the command's process. The flow then
takes (:func:`recall`) each header read ahead for a file that is unchanged
since (same size and modification time, checked again: what the input's
fingerprint compares) and reads the others itself.

What is read ahead is taken once: :func:`recall` stops the reader, hands
over what it read and forgets it, so a later run in the same process reads
its headers again. A header that could not be read is not kept: the flow
reads it again and reports the error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from tasks import io, storage

_lock = threading.Lock()
_read: dict[str, tuple[tuple[str, int, str], io.InputSpec]] = {}
_reader: threading.Thread | None = None
_stop = threading.Event()


def file_signature(path: str) -> tuple[str, int, str] | None:
    """What an input's fingerprint knows of the file (:func:`tasks.storage.stat`); None when it cannot be stat-ed."""
    try:
        return storage.stat(path)
    except OSError:
        return None


def read_ahead(paths: Sequence[str]) -> threading.Thread:
    """Start reading the headers of ``paths`` (local files) in a daemon thread; return it.

    Anything read ahead before is forgotten first.
    """
    global _reader
    _stop_reader()
    with _lock:
        _read.clear()
    _stop.clear()
    _reader = threading.Thread(target=_read_all, args=(list(paths),), name="haloflow-headers", daemon=True)
    _reader.start()
    return _reader


def _read_all(paths: list[str]) -> None:
    for path in paths:
        if _stop.is_set():
            return
        signature = file_signature(path)  # before the read: a file changed while it is read no longer matches
        found = io.resolve_or_error(path)
        if signature is not None and isinstance(found, io.InputSpec):
            with _lock:
                _read[path] = (signature, found)


def _stop_reader() -> None:
    global _reader
    if _reader is not None:
        _stop.set()
        _reader.join()
        _reader = None


def recall(paths: Mapping[str, Any]) -> tuple[dict[str, io.InputSpec], dict[str, Any]]:
    """The headers read ahead for ``paths`` (name -> path) and still valid; the names and paths left to read.

    Stops the reader (what it has not read yet is left to the caller) and
    forgets everything it read.
    """
    _stop_reader()
    with _lock:
        read = dict(_read)
        _read.clear()
    known: dict[str, io.InputSpec] = {}
    rest: dict[str, Any] = {}
    for name, path in paths.items():
        entry = read.get(path) if isinstance(path, str) else None
        if entry is not None and entry[0] == file_signature(path):
            known[name] = entry[1]
        else:
            rest[name] = path
    return known, rest
