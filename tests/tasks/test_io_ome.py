"""Viewing metadata of inputs and stores: physical pixel sizes and units, pyramids, label colours.

Physical sizes come from OME-TIFF, ImageJ TIFF and OME-Zarr metadata onto
the InputSpec, into every store's ``multiscales`` (axes ``unit``, ``scale``
per dataset), and into the measurement table's physical columns. Stores that
are large enough get lower-resolution levels that equal their level 0
downsampled, written before the store is sealed, so completion and resume
hold. Every store checked here is checked against OME-NGFF 0.5 by
``tests.ngff.validate_ome_zarr``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import zarr

from imageops import pyramid
from imageops.measure import physical_columns
from tasks import io, ome, steps
from tasks.api import op_params
from tasks.ome import Calibration
from tests.ngff import validate_ome_zarr

UM = "micrometer"


def _ome_tiff(path, data, **metadata):
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


def _ome(store) -> dict:
    return zarr.open_group(str(store), mode="r").attrs["ome"]


# ---------------------------------------------------------------- reading physical sizes


def test_ome_tiff_physical_sizes_and_units(tmp_path):
    path = _ome_tiff(
        tmp_path / "v.ome.tif", np.zeros((4, 20, 30), np.uint16), axes="ZYX",
        PhysicalSizeX=0.5, PhysicalSizeXUnit="µm", PhysicalSizeY=0.25, PhysicalSizeYUnit="µm",
        PhysicalSizeZ=800, PhysicalSizeZUnit="nm",
    )
    spec = io.resolve_input(path)
    assert spec.physical_sizes == (800.0, 0.25, 0.5)
    assert spec.units == ("nanometer", UM, UM)
    assert type(spec).from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["units"] == ["nanometer", UM, UM]
    # The sizes are part of the input's fingerprint: the stores' metadata and the table depend on them.
    assert replace(spec, physical_sizes=(), units=()).fingerprint() != spec.fingerprint()


def test_ome_tiff_time_and_channel_axes(tmp_path):
    path = _ome_tiff(
        tmp_path / "tc.ome.tif", np.zeros((3, 2, 16, 18), np.uint8), axes="TCYX",
        PhysicalSizeX=0.1, PhysicalSizeY=0.1, TimeIncrement=30, TimeIncrementUnit="s",
    )
    spec = io.resolve_input(path)
    assert (spec.time_axis, spec.channel_axis) == (0, 1)
    # OME's default length unit is the micrometre; channels have no size.
    assert spec.physical_sizes == (30.0, 1.0, 0.1, 0.1)
    assert spec.units == ("second", None, UM, UM)


def test_imagej_tiff_spacing_unit_and_resolution(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((5, 12, 14), np.uint16), imagej=True, resolution=(1 / 0.2, 1 / 0.4),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "micron"})
    spec = io.resolve_input(path)
    assert spec.physical_sizes == pytest.approx((1.5, 0.4, 0.2))
    assert spec.units == (UM, UM, UM)


def test_uncalibrated_inputs_have_scale_one_and_no_unit(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((6, 8), np.uint8), resolution=(300, 300))  # a printer's dots per inch
    pixel = tmp_path / "pixel.tif"
    tifffile.imwrite(pixel, np.zeros((6, 8), np.uint8), imagej=True, metadata={"unit": "pixel"})
    for path in (plain, pixel):
        spec = io.resolve_input(path)
        assert (spec.physical_sizes, spec.units) == ((), ())
        assert spec.calibration == Calibration.none(2)


def test_glob_adds_an_uncalibrated_first_axis(tmp_path):
    for i in range(3):
        _ome_tiff(tmp_path / f"p{i}.ome.tif", np.zeros((6, 8), np.uint8), axes="YX", PhysicalSizeX=2.0, PhysicalSizeY=3.0)
    spec = io.resolve_input(str(tmp_path / "p*.ome.tif"))
    assert spec.physical_sizes == (1.0, 3.0, 2.0) and spec.units == (None, UM, UM)


def test_ome_zarr_input_sizes_from_scale_and_axes(tmp_path):
    # NGFF 0.4 (zarr v2): the dataset's scale times the multiscale's own, units on the axes.
    store = tmp_path / "v04.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.create_array("s0", shape=(4, 6, 8), dtype=np.uint8)
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "z", "type": "space", "unit": "millimeter"}, {"name": "y", "type": "space", "unit": UM},
                 {"name": "x", "type": "space", "unit": UM}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0, 2.0]}],
    }]
    spec = io.resolve_input(store)
    assert spec.physical_sizes == (2.0, 1.0, 1.0) and spec.units == ("millimeter", UM, UM)
    # A store haloflow wrote reads back as it was made.
    calibration = Calibration((3.0, 0.5, 0.25), ("nanometer", UM, UM))
    ref = io.create_store(tmp_path / "s.ome.zarr", shape=(4, 6, 8), dtype=np.uint8, chunks=(4, 6, 8),
                          kind="image", fingerprint="f", name="s", calibration=calibration)
    assert io.store_calibration(ref.store) == calibration
    assert io.resolve_input(ref.store).calibration == calibration
    assert io.store_axes_and_calibration(ref.store) == (io.store_axes(ref.store), calibration)
    with_channels = io.create_store(tmp_path / "c.ome.zarr", shape=(2, 6, 8), dtype=np.uint8, chunks=(1, 6, 8),
                                    kind="image", fingerprint="f", name="c", axes=("c", "y", "x"))
    axes, _ = io.store_axes_and_calibration(with_channels.store)
    assert axes == io.store_axes(with_channels.store) and axes.channel == 0


@pytest.mark.parametrize(
    "text, kind, name",
    [("µm", "space", UM), ("μm", "space", UM), ("um", "space", UM), ("micron", "space", UM),
     ("\\u00B5m", "space", UM), ("Å", "space", "angstrom"), ("nm", "space", "nanometer"),
     ("Millimeters", "space", "millimeter"), ("inch", "space", "inch"), ("pixel", "space", None),
     ("reference frame", "space", None), (None, "space", None), ("s", "time", "second"),
     ("ms", "time", "millisecond"), ("min", "time", "minute"), ("µm", "time", None)],
)
def test_unit_names_follow_ome_ngff(text, kind, name):
    assert ome.normalise_unit(text, kind) == name


def test_calibration_and_input_spec_refuse_bad_sizes():
    with pytest.raises(ValueError, match="positive and finite"):
        Calibration((0.0, 1.0), (None, None))
    with pytest.raises(ValueError, match="not OME-NGFF unit names"):
        Calibration((1.0, 1.0), ("µm", None))
    with pytest.raises(ValueError, match="physical_sizes must have one entry per axis"):
        io.InputSpec("tiff", ("a.tif",), (4, 5), "uint8", physical_sizes=(1.0,))


# ---------------------------------------------------------------- stores


def test_store_carries_units_and_scale_and_validates(tmp_path):
    calibration = Calibration((2.0, 0.5, 0.5), (UM, UM, UM))
    ref = io.create_store(tmp_path / "s.ome.zarr", shape=(4, 6, 8), dtype=np.float32, chunks=(2, 6, 8),
                          kind="image", fingerprint="f", name="s", calibration=calibration)
    attrs = validate_ome_zarr(ref.store)
    multiscale = attrs["multiscales"][0]
    assert [(a["name"], a["type"], a["unit"]) for a in multiscale["axes"]] == [("z", "space", UM), ("y", "space", UM), ("x", "space", UM)]
    assert multiscale["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]
    # Unknown sizes: scale 1 and no unit key at all.
    plain = io.create_store(tmp_path / "p.ome.zarr", shape=(6, 8), dtype=np.uint8, chunks=(6, 8), kind="mask",
                            fingerprint="f", name="p")
    axes = validate_ome_zarr(plain.store)["multiscales"][0]["axes"]
    assert all("unit" not in a for a in axes)
    with pytest.raises(ValueError, match="calibration must be a Calibration of 2 axes"):
        io.create_store(tmp_path / "q.ome.zarr", shape=(6, 8), dtype=np.uint8, chunks=(6, 8), kind="mask",
                        fingerprint="f", name="q", calibration=calibration)


def _windows_mean(data: np.ndarray, factors) -> np.ndarray:
    """Mean over whole windows of ``factors`` (trailing partial windows dropped), in float64."""
    shape = [n // f for n, f in zip(data.shape, factors)]
    trimmed = data[tuple(slice(0, n * f) for n, f in zip(shape, factors))].astype(np.float64)
    split = [v for n, f in zip(shape, factors) for v in (n, f)]
    return trimmed.reshape(split).mean(axis=tuple(range(1, 2 * len(shape), 2)))


@pytest.mark.parametrize(
    "kind, dtype",
    [("image", np.float32), ("image", np.uint16), ("mask", np.bool_), ("labels", np.uint32)],
)
def test_pyramid_levels_equal_level_zero_downsampled(tmp_path, kind, dtype):
    rng = np.random.default_rng(3)
    shape, chunks = (5, 41, 70), (2, 16, 24)  # odd sizes, chunks that do not divide them
    if kind == "image":
        data = (rng.random(shape) * 60000).astype(dtype)
    else:
        data = rng.integers(0, 2 if kind == "mask" else 500, size=shape).astype(dtype)
    calibration = Calibration((2.0, 0.5, 0.25), (UM, UM, UM))
    ref = io.create_store(tmp_path / "p.ome.zarr", shape=shape, dtype=dtype, chunks=chunks, kind=kind,
                          fingerprint="f", name="p", calibration=calibration)
    zarr.open_array(ref.store, path="0", mode="r+")[...] = data
    levels = io.write_pyramid(ref, min_size=8)
    # z (5) never halves; y: 41 -> 20 -> 10; x: 70 -> 35 -> 17 -> 8.
    assert levels == [(5, 20, 35), (5, 10, 17), (5, 10, 8)]
    factors = [(1, 2, 2), (1, 4, 4), (1, 4, 8)]
    datasets = validate_ome_zarr(ref.store)["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    for number, (shape_k, f) in enumerate(zip(levels, factors), start=1):
        stored = zarr.open_array(ref.store, path=str(number), mode="r")
        assert stored.shape == shape_k and stored.dtype == dtype
        assert stored.chunks == tuple(min(c, n) for c, n in zip(chunks, shape_k))
        transforms = datasets[number]["coordinateTransformations"]
        assert transforms[0] == {"type": "scale", "scale": [s * k for s, k in zip(calibration.scale, f)]}
        if kind == "image":
            expected = _windows_mean(data, f)
            if np.issubdtype(dtype, np.integer):
                expected = np.rint(expected)
            np.testing.assert_allclose(stored[...], expected.astype(dtype), rtol=1e-6)
            # Each pixel of a mean level sits at the centre of its window.
            assert transforms[1] == {"type": "translation", "translation": [(k - 1) / 2 * s for s, k in zip(calibration.scale, f)]}
        else:
            np.testing.assert_array_equal(stored[...], data[:: f[0], :: f[1], :: f[2]][tuple(slice(0, n) for n in shape_k)])
            assert len(transforms) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, step",
    [((64, 256, 256), {1: 2, 2: 2}), ((9, 33, 21), {1: 2, 2: 2}), ((16, 64, 64), {0: 2, 1: 2, 2: 2}),
     ((9, 33, 21), {0: 2, 1: 2, 2: 2}), ((5, 40), {0: 1, 1: 2}), ((6, 7), {0: 1, 1: 1}), ((3, 12, 9), {1: 4, 2: 3})],
)
def test_pyramid_window_mean_is_numpys_mean_bit_for_bit(shape, step, dtype):
    from dask.array.chunk import coarsen

    rng = np.random.default_rng(sum(shape))
    data = (rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8, size=shape)).astype(dtype)
    data.flat[::7] = 0.0
    data.flat[3::11] = -0.0
    expected = coarsen(np.mean, data, step, trim_excess=True)
    got = coarsen(pyramid.window_mean, data, step, trim_excess=True)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_small_stores_get_no_pyramid(tmp_path):
    ref = io.create_store(tmp_path / "s.ome.zarr", shape=(64, 511, 300), dtype=np.uint8, chunks=(64, 256, 300),
                          kind="image", fingerprint="f", name="s")
    before = _ome(ref.store)
    assert io.write_pyramid(ref) == []
    assert _ome(ref.store) == before and sorted(zarr.open_group(ref.store, mode="r").array_keys()) == ["0"]


def test_pyramid_is_written_before_completion_and_an_interrupted_one_is_redone(tmp_path):
    """A stage whose blocks are all written but whose pyramid was not finished resumes: it rewrites the levels, then seals."""
    pixels = (np.arange(520 * 40) % 251).astype(np.uint8).reshape(520, 40)  # y is long enough for one level
    image = io.resolve_input(_ome_tiff(tmp_path / "in.ome.tif", pixels, axes="YX", PhysicalSizeX=0.5, PhysicalSizeY=0.5))
    store = str(tmp_path / "01_gaussian.ome.zarr")
    params = op_params("gaussian", sigma=1.0)
    run = dict(name="01_gaussian", compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    first = steps.run_image_step(params, image, store, chunks=[128, 40], **run)
    assert first.status == "computed" and first.info["levels"] == [[520, 40], [260, 40]]
    assert io.is_complete(store, first.ref.fingerprint)
    level = zarr.open_array(store, path="1", mode="r")[...]
    # A missing level means an incomplete store, whatever its marker says.
    group = zarr.open_group(store, mode="r+")
    shutil.rmtree(f"{store}/1")
    assert not io.is_complete(store, first.ref.fingerprint)
    # Killed while writing the pyramid: every block done, the seal not yet written.
    group.attrs["haloflow"] = {**group.attrs["haloflow"], "complete": False}
    assert io.resumable(store, first.ref.fingerprint) is not None
    again = steps.run_image_step(params, image, store, chunks=[128, 40], **run)
    assert again.status == "resumed" and again.info["blocks"]["written"] == 0
    assert io.is_complete(store, first.ref.fingerprint)
    np.testing.assert_array_equal(zarr.open_array(store, path="1", mode="r")[...], level)
    assert steps.run_image_step(params, image, store, chunks=[128, 40], **run).status == "cached"
    validate_ome_zarr(store)


def test_label_store_has_image_label_colours_and_source(tmp_path):
    mask = np.zeros((12, 14), bool)
    mask[1:4, 1:4] = mask[6:9, 2:5] = mask[2:5, 9:12] = True
    threshold = io.create_store(tmp_path / "02_threshold.ome.zarr", shape=mask.shape, dtype=bool, chunks=(6, 7),
                                kind="mask", fingerprint="m", name="02_threshold",
                                calibration=Calibration((0.5, 0.5), (UM, UM)))
    zarr.open_array(threshold.store, path="0", mode="r+")[...] = mask
    io.mark_complete(threshold)
    store = str(tmp_path / "03_label.ome.zarr")
    result = steps.run_image_step(op_params("label"), threshold, store, name="03_label",
                                  compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    label = validate_ome_zarr(store)["image-label"]
    assert label["source"] == {"image": "../02_threshold.ome.zarr"}
    assert [c["label-value"] for c in label["colors"]] == [0, 1, 2, 3] == list(range(result.info["objects"] + 1))
    assert label["colors"][0]["rgba"] == [0, 0, 0, 0] and all(c["rgba"][3] == 255 for c in label["colors"][1:])
    assert io.store_calibration(store) == Calibration((0.5, 0.5), (UM, UM))
    assert "colors" not in ome.image_label(ome.MAX_LABEL_COLORS + 1)


# ---------------------------------------------------------------- measurements in physical units


def test_measure_columns_in_physical_units(tmp_path):
    labels = np.zeros((4, 10, 12), np.uint32)
    labels[1:3, 2:5, 3:9] = 1
    labels[0, 7:10, 0:2] = 2
    # z in nanometres, y and x in micrometres: the table is in micrometres.
    calibration = Calibration((500.0, 0.25, 0.5), ("nanometer", UM, UM))
    ref = io.create_store(tmp_path / "03_label.ome.zarr", shape=labels.shape, dtype=labels.dtype, chunks=(2, 5, 6),
                          kind="labels", fingerprint="l", name="03_label", calibration=calibration)
    zarr.open_array(ref.store, path="0", mode="r+")[...] = labels
    columns = steps.measure_columns(op_params("measure", properties=["label", "area", "centroid"], intensity=None), ref,
                                    compute=steps.local_compute)
    assert list(columns) == ["label", "area", "centroid-0", "centroid-1", "centroid-2",
                             f"area_{UM}^3", f"centroid_{UM}-0", f"centroid_{UM}-1", f"centroid_{UM}-2"]
    np.testing.assert_allclose(columns[f"area_{UM}^3"], columns["area"] * 0.5 * 0.25 * 0.5)
    for axis, size in enumerate((0.5, 0.25, 0.5)):
        np.testing.assert_allclose(columns[f"centroid_{UM}-{axis}"], columns[f"centroid-{axis}"] * size)
    # A spatial axis with no unit: no physical columns (their unit could not be named).
    partial = io.create_store(tmp_path / "p.ome.zarr", shape=labels.shape, dtype=labels.dtype, chunks=labels.shape,
                              kind="labels", fingerprint="p", name="p", calibration=Calibration((2.0, 0.5, 0.5), (None, UM, UM)))
    zarr.open_array(partial.store, path="0", mode="r+")[...] = labels
    assert list(steps.measure_columns(op_params("measure", intensity=None), partial, compute=steps.local_compute)) == [
        "label", "area", "centroid-0", "centroid-1", "centroid-2"]


def test_physical_columns_validate_their_inputs():
    with pytest.raises(ValueError, match="spacing must be positive"):
        physical_columns({"area": np.ones(1)}, (0.0, 1.0), UM)
    with pytest.raises(TypeError, match="unit must be a non-empty str"):
        physical_columns({"area": np.ones(1)}, (1.0, 1.0), "")
    assert physical_columns({"label": np.ones(1)}, (1.0, 1.0), UM) == {}


def test_a_thumbnail_reads_the_smallest_level_that_keeps_its_size(tmp_path):
    from tasks import preview

    rng = np.random.default_rng(4)
    data = (rng.random((3, 600, 520)) * 1000).astype(np.float32)
    ref = io.create_store(tmp_path / "t.ome.zarr", shape=data.shape, dtype=data.dtype, chunks=(3, 128, 128),
                          kind="image", fingerprint="f", name="t")
    zarr.open_array(ref.store, path="0", mode="r+")[...] = data
    assert preview.thumbnail_level(ref) == ref  # no levels yet: the image itself
    io.write_pyramid(ref, min_size=8)
    levels = io.resolution_levels(ref)
    assert [level.shape for level in levels][:3] == [(3, 600, 520), (3, 300, 260), (3, 150, 130)]
    chosen = preview.thumbnail_level(ref)
    assert chosen.component == "1" and chosen.shape == (3, 300, 260)
    plane = preview.projection(ref).compute(scheduler="synchronous")
    level = zarr.open_array(ref.store, path="1", mode="r")[...]
    np.testing.assert_array_equal(plane, level[:, ::2, ::2].max(axis=0))
    assert max(plane.shape) <= preview.THUMBNAIL_SIDE
    assert preview.thumbnail_level(ref, side=1000).component == "0"  # the image is smaller than that


@pytest.mark.parametrize("op, params", [
    ("gaussian", {"sigma": 1.5}),  # float32 image: window means
    ("median", {"size": 3}),  # uint16 image: means rounded back
    ("threshold", {"method": "otsu"}),  # mask: every n-th pixel
])
@pytest.mark.parametrize("chunks", [[2, 300, 40], [1, 200, 40]])
def test_levels_written_with_each_block_equal_levels_made_from_the_store(tmp_path, op, params, chunks):
    rng = np.random.default_rng(6)
    pixels = (rng.random((3, 1100, 40)) * 4000).astype(np.uint16)  # y halves twice; the last blocks are short
    tifffile.imwrite(tmp_path / "in.tif", pixels)
    image = io.resolve_input(str(tmp_path / "in.tif"))
    run = dict(compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    result = steps.run_image_step(op_params(op, **params), image, str(tmp_path / "s.ome.zarr"), name="s",
                                  chunks=chunks, **run)
    assert result.info["levels"] == [[3, 1100, 40], [3, 550, 40], [3, 275, 40]]
    z, y, _ = result.ref.chunks  # the gaussian's halo is deeper than 1 or 2 slices: it merges them
    assert y == chunks[1] and zarr.open_array(result.ref.store, path="1", mode="r").chunks == (z, y // 2, 40)
    made = [zarr.open_array(result.ref.store, path=p, mode="r")[...] for p in ("1", "2")]
    validate_ome_zarr(result.ref.store)
    assert io.is_complete(result.ref.store, result.ref.fingerprint)
    if op == "threshold":  # and the labels of that mask, level by level
        labels = steps.run_image_step(op_params("label"), result.ref, str(tmp_path / "l.ome.zarr"), name="l", **run)
        labels_made = [zarr.open_array(labels.ref.store, path=p, mode="r")[...] for p in ("1", "2")]
        io.write_pyramid(labels.ref)
        for path, level in zip(("1", "2"), labels_made):
            np.testing.assert_array_equal(zarr.open_array(labels.ref.store, path=path, mode="r")[...], level)
    io.write_pyramid(result.ref)  # again, from the store, the way a resumed stage makes them
    for path, level in zip(("1", "2"), made):
        np.testing.assert_array_equal(zarr.open_array(result.ref.store, path=path, mode="r")[...], level)


def test_blocks_the_level_factors_do_not_divide_get_their_levels_from_the_store(tmp_path):
    pixels = (np.arange(3 * 530 * 40) % 977).astype(np.uint16).reshape(3, 530, 40)
    tifffile.imwrite(tmp_path / "in.tif", pixels)
    image = io.resolve_input(str(tmp_path / "in.tif"))
    store = str(tmp_path / "s.ome.zarr")
    result = steps.run_image_step(op_params("gaussian", sigma=1.0), image, store, name="s", chunks=[3, 201, 40],
                                  compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    assert io.block_levels(result.ref) is None
    assert result.info["levels"] == [[3, 530, 40], [3, 265, 40]]
    assert zarr.open_array(store, path="1", mode="r").chunks == (3, 201, 40)
    whole = zarr.open_array(store, path="0", mode="r")[...]
    np.testing.assert_array_equal(zarr.open_array(store, path="1", mode="r")[...],
                                  whole[:, :530, :].reshape(3, 265, 2, 40).mean(axis=2, dtype=np.float32))
