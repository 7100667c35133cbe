"""The demo's synthetic volume: written once, left untouched when it is already there (so a rerun is cached)."""

from __future__ import annotations

import numpy as np
import tifffile

from flows.demo import demo_volume, write_demo_tiff


def test_demo_volume_is_written_once_and_rewritten_only_when_it_differs(tmp_path):
    path = write_demo_tiff(tmp_path / "demo_volume.tif", (6, 40, 32))
    np.testing.assert_array_equal(tifffile.imread(path), demo_volume((6, 40, 32)))
    first = path.stat().st_mtime_ns

    write_demo_tiff(path, (6, 40, 32))
    assert path.stat().st_mtime_ns == first  # same volume: the input's fingerprint stays, stages stay cached

    write_demo_tiff(path, (6, 40, 32), seed=1)
    np.testing.assert_array_equal(tifffile.imread(path), demo_volume((6, 40, 32), seed=1))
    write_demo_tiff(path, (4, 40, 32))
    assert tifffile.imread(path).shape == (4, 40, 32)


def test_a_damaged_demo_file_is_replaced(tmp_path):
    path = tmp_path / "demo_volume.tif"
    path.write_bytes(b"not a tiff")
    write_demo_tiff(path, (4, 24, 24))
    np.testing.assert_array_equal(tifffile.imread(path), demo_volume((4, 24, 24)))
