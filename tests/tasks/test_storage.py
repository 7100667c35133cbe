"""Local files written whole, in pieces (``tasks.storage.write_bytes``)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tasks import storage


@pytest.mark.parametrize("size", [0, 1, storage.WRITE_PIECE - 1, storage.WRITE_PIECE, 3 * storage.WRITE_PIECE + 17])
def test_write_bytes_round_trips_every_size(tmp_path, size):
    data = os.urandom(size)
    target = tmp_path / "chunk"
    storage.write_bytes(str(target), data)
    assert target.read_bytes() == data
    assert os.listdir(tmp_path) == ["chunk"]  # no temporary file left


def test_write_bytes_takes_any_contiguous_buffer(tmp_path):
    values = np.arange(100_000, dtype=np.float32)
    target = tmp_path / "values"
    storage.write_bytes(str(target), memoryview(values))
    assert np.array_equal(np.frombuffer(target.read_bytes(), dtype=np.float32), values)


class _ShortWrites:
    """A file that takes at most ``most`` bytes a call, recording each call's size."""

    def __init__(self, most: int) -> None:
        self.most, self.calls, self.data = most, [], bytearray()

    def write(self, piece) -> int:
        taken = bytes(piece[:self.most])
        self.calls.append(len(piece))
        self.data += taken
        return len(taken)


def test_pieces_are_bounded_and_short_writes_are_resumed(monkeypatch):
    monkeypatch.setattr(storage, "WRITE_PIECE", 10)
    handle = _ShortWrites(most=4)
    data = bytes(range(25))
    storage._write_in_pieces(handle, data)
    assert bytes(handle.data) == data
    assert max(handle.calls) == 10  # never more than a piece handed over at once
    assert handle.calls[:3] == [10, 6, 2]  # the rest of a piece after a short write, before the next piece


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "chunk"
    target.write_bytes(b"old")

    def failing(handle, data):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(storage, "_write_in_pieces", failing)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new data")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["chunk"]
