"""Batch images' headers read ahead while the run's server starts (``flows.headers``), and taken by the flow."""

from __future__ import annotations

import os

import numpy as np
import tifffile

from flows import headers
from flows.pipeline import read_headers
from tasks import io


def _tiff(path, shape=(6, 7), dtype=np.uint16):
    tifffile.imwrite(path, np.zeros(shape, dtype))
    return str(path)


def _read_ahead(paths):
    headers.read_ahead(paths).join(timeout=60)


def test_headers_read_ahead_are_taken_once_for_unchanged_files(tmp_path):
    a, b = _tiff(tmp_path / "a.tif"), _tiff(tmp_path / "b.tif")
    _read_ahead([a, b])
    known, rest = headers.recall({"a": a, "b": b, "c": str(tmp_path / "c.tif")})
    assert known == {"a": io.resolve_input(a), "b": io.resolve_input(b)}
    assert rest == {"c": str(tmp_path / "c.tif")}
    assert headers.recall({"a": a}) == ({}, {"a": a})  # taken once: a later run reads its own


def test_a_file_changed_after_its_header_was_read_is_read_again(tmp_path):
    a, b = _tiff(tmp_path / "a.tif"), _tiff(tmp_path / "b.tif")
    _read_ahead([a, b])
    _tiff(tmp_path / "b.tif", shape=(9, 4, 3))
    os.utime(b, ns=(0, 0))  # a modification time of its own, whatever the file system's resolution
    found = read_headers({"a": a, "b": b})
    assert found["a"].shape == (6, 7)
    assert found["b"].shape == (9, 4, 3)


def test_an_unreadable_image_is_not_kept_and_the_flow_reports_it(tmp_path):
    good = _tiff(tmp_path / "good.tif")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    _read_ahead([good, str(broken)])
    known, rest = headers.recall({"good": good, "broken": str(broken)})
    assert list(known) == ["good"] and rest == {"broken": str(broken)}
    _read_ahead([good, str(broken)])
    found = read_headers({"good": good, "broken": str(broken)})
    assert list(found) == ["good", "broken"]
    assert isinstance(found["good"], io.InputSpec)
    assert isinstance(found["broken"], io.InputError) and "broken.tif" in str(found["broken"])


def test_recalling_stops_a_reader_that_is_still_reading(tmp_path):
    paths = [_tiff(tmp_path / f"{i}.tif") for i in range(5)]
    reader = headers.read_ahead(paths * 2000)  # far more than it reads before the recall
    known, rest = headers.recall({str(i): p for i, p in enumerate(paths)})
    assert not reader.is_alive()
    assert len(known) + len(rest) == 5


def test_haloflow_run_reads_a_batch_s_headers_while_its_own_server_starts(tmp_path, monkeypatch):
    """Only when the command starts a server (a configured one answers at once: nothing to wait for)."""
    import contextlib

    from flows import cli

    paths = [_tiff(tmp_path / f"img{i}.tif") for i in range(3)]
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"flow: batch\ninput: {tmp_path}/*.tif\noutput: {tmp_path}/out\nsteps:\n- op: gaussian\n  sigma: 1\n")
    ran = []
    def run(spec, args, cluster, launch=None, read_ahead=None):
        ran.append(launch)
        if read_ahead:  # as the command's import thread does, once the flows are imported
            cli._read_headers_ahead(read_ahead)
        return 0

    monkeypatch.setattr(cli, "_run", run)
    for launch in (object(), None):
        monkeypatch.setattr(cli, "_server_launched", lambda launch=launch: contextlib.nullcontext(launch))
        assert cli.main(["run", str(spec)]) == 0
        if headers._reader is not None:
            headers._reader.join(timeout=60)  # all read (the flow would take what is read, and read the rest)
        known, rest = headers.recall({p: p for p in paths})
        assert (sorted(known), sorted(rest)) == ((sorted(paths), []) if launch is not None else ([], sorted(paths)))
    assert len(ran) == 2
