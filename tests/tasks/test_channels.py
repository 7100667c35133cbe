"""Images with a channel or time axis: every op, on uneven chunks, equals its whole-image reference on each piece alone.

A piece is one channel at one time point. The references are SciPy /
scikit-image applied to each piece separately; the channels are made to
differ in brightness, so that a threshold over all channels together, or a
halo reaching across channels, would fail these tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage as ndi
from skimage import exposure, filters, measure, morphology as skmorph, segmentation

from imageops import threshold as threshold_ops
from imageops.catalog import ChannelParams, GaussianParams, LabelParams, MeasureParams, MedianParams, ThresholdParams
from imageops.channels import select_channel
from imageops.catalog_filters import (
    ClipParams,
    DifferenceOfGaussiansParams,
    GaussianLaplaceParams,
    LaplaceParams,
    MaximumParams,
    MinimumParams,
    RescaleIntensityParams,
    SobelParams,
    ThresholdLocalParams,
    UniformParams,
    WhiteTophatParams,
)
from imageops.catalog_masks import (
    BinaryClosingParams,
    BinaryDilationParams,
    BinaryErosionParams,
    BinaryOpeningParams,
    ExpandLabelsParams,
    FillHolesParams,
    RemoveSmallHolesParams,
    RemoveSmallObjectsParams,
)
from imageops.registry import OPS, OpParams
from tasks import io, lift, steps
from tasks.axes import ImageAxes, map_pieces, piece_index, resolve_axes
from tests.helpers import blobs, same_up_to_permutation, uneven_chunks

#: Name -> (shape, axes): 2D and 3D with a channel axis first and last, 2D with a time axis, and both.
LAYOUTS = {
    "2D+channel first": ((3, 41, 37), ImageAxes(3, channel=0)),
    "2D+channel last": ((41, 37, 3), ImageAxes(3, channel=2)),
    "3D+channel first": ((2, 13, 22, 19), ImageAxes(4, channel=0)),
    "3D+channel last": ((13, 22, 19, 2), ImageAxes(4, channel=3)),
    "2D+time": ((4, 33, 29), ImageAxes(3, time=0)),
    "2D+time+channel": ((2, 29, 3, 31), ImageAxes(4, time=0, channel=2)),
}


def _image(shape, axes: ImageAxes, dtype=np.uint16, sigma=2.0) -> np.ndarray:
    """Each piece its own blobs, scaled differently: channel (or time point) k is about (k + 1) / n as bright."""
    image = np.empty(shape, dtype)
    positions = list(np.ndindex(*[shape[a] for a in axes.split]))
    spatial = tuple(shape[a] for a in axes.spatial)
    for number, position in enumerate(positions):
        piece = blobs(spatial, seed=number, sigma=sigma, dtype=np.float64) * (number + 1) / len(positions)
        image[piece_index(axes, position)] = piece * (np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1)
    return image


def _pieces(array: np.ndarray, axes: ImageAxes):
    """(position, piece) for every piece of a NumPy array."""
    for position in np.ndindex(*[array.shape[a] for a in axes.split]):
        yield position, array[piece_index(axes, position)]


def _per_piece(reference, array: np.ndarray, axes: ImageAxes) -> np.ndarray:
    """``reference`` applied to each piece on its own, stacked back in place."""
    results = {position: reference(piece) for position, piece in _pieces(array, axes)}
    first = next(iter(results.values()))
    out = np.empty(array.shape, first.dtype)
    for position, result in results.items():
        out[piece_index(axes, position)] = result
    return out


def _nested(values, counts):
    """Flat C-ordered values as the nested lists the liftings report (one level per split axis)."""
    if len(counts) == 1:
        return list(values)
    step = len(values) // counts[0]
    return [_nested(values[i * step:(i + 1) * step], counts[1:]) for i in range(counts[0])]


def _lifted(array, params, axes, seed=0, chunks=None, scheduler=None):
    image = da.from_array(array, chunks=uneven_chunks(array.shape, seed=seed) if chunks is None else chunks)
    result, found = lift.lift(image, params, partial(dask.compute, scheduler=scheduler), axes=axes)
    assert isinstance(result, da.Array) and result.shape == array.shape
    for axis in axes.split:
        assert set(result.chunks[axis]) == {1}, "channel and time axes are chunked by 1"
    return result.compute(scheduler=scheduler), found


def _counts(shape, axes):
    return tuple(shape[a] for a in axes.split)


# --- local ops: no halo across channels or time points ----------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_gaussian_per_piece(layout, sigma):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes)
    result, found = _lifted(image, GaussianParams(sigma=sigma), axes, seed=1)
    reference = _per_piece(lambda p: ndi.gaussian_filter(p.astype(np.float32), sigma, mode="nearest"), image, axes)
    assert result.dtype == np.float32 and found == {}
    for position, piece in _pieces(result, axes):
        expected = reference[piece_index(axes, position)]
        np.testing.assert_allclose(piece, expected, rtol=0, atol=1e-5 * np.ptp(expected), err_msg=str(position))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_median_per_piece(layout):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes, dtype=np.uint8)
    result, _ = _lifted(image, MedianParams(size=3), axes, seed=2)
    np.testing.assert_array_equal(result, _per_piece(lambda p: ndi.median_filter(p, size=3, mode="nearest"), image, axes))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sobel_per_piece(layout):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes, dtype=np.float32)
    result, _ = _lifted(image, SobelParams(), axes, seed=3)
    reference = _per_piece(filters.sobel, image, axes)
    assert result.dtype == reference.dtype
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5 * np.ptp(reference))


# --- global ops: each piece its own threshold, labels, regions ----------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_otsu_threshold_per_piece(layout, dtype):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes, dtype=dtype)
    result, found = _lifted(image, ThresholdParams(), axes, seed=4)
    thresholds = [filters.threshold_otsu(piece) for _, piece in _pieces(image, axes)]
    assert len(set(thresholds)) == len(thresholds), "the pieces should need different thresholds"
    assert found == {"threshold": _nested([t.item() for t in thresholds], _counts(shape, axes))}
    np.testing.assert_array_equal(result, _per_piece(lambda p: p > filters.threshold_otsu(p), image, axes))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rescale_intensity_per_piece(layout):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes)
    params = RescaleIntensityParams(low_percentile=2, high_percentile=98)
    result, found = _lifted(image, params, axes, seed=5)
    ranges = [tuple(float(v) for v in np.percentile(piece, [2, 98])) for _, piece in _pieces(image, axes)]
    assert found == {"in_range": _nested([list(r) for r in ranges], _counts(shape, axes))}
    reference = _per_piece(
        lambda p: exposure.rescale_intensity(p, in_range=tuple(np.percentile(p, [2, 98])), out_range=(0.0, 1.0)),
        image, axes,
    )
    np.testing.assert_allclose(result, reference, rtol=0, atol=1e-5)


def _mask(shape, axes):
    """Blobs brighter than 55 % of their piece's brightest voxel."""
    return _per_piece(lambda p: p > 0.55 * p.max(), _image(shape, axes, dtype=np.float64, sigma=1.5), axes)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("connectivity", [1, None])
def test_label_per_piece(layout, connectivity):
    shape, axes = LAYOUTS[layout]
    mask = _mask(shape, axes)
    result, found = _lifted(mask, LabelParams(connectivity=connectivity), axes, seed=6)
    assert result.dtype == np.uint32
    objects = []
    for position, piece in _pieces(result, axes):
        reference = measure.label(mask[piece_index(axes, position)], connectivity=connectivity)
        assert reference.max() > 2, "each piece should hold several objects"
        assert sorted(np.unique(piece).tolist()) == list(range(reference.max() + 1)), "labels 1..N in each piece"
        assert same_up_to_permutation(piece, reference), position
        objects.append(int(reference.max()))
    assert found == {"objects": _nested(objects, _counts(shape, axes))}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fill_holes_per_piece(layout):
    shape, axes = LAYOUTS[layout]
    mask = ~_mask(shape, axes)  # the background of blobs: many holes
    result, found = _lifted(mask, FillHolesParams(), axes, seed=7)
    structure = ndi.generate_binary_structure(len(axes.spatial), 1)
    np.testing.assert_array_equal(result, _per_piece(lambda p: ndi.binary_fill_holes(p, structure), mask, axes))
    assert set(found) == {"holes_filled"}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("max_size", [3, 20])
def test_remove_small_objects_per_piece(layout, max_size):
    shape, axes = LAYOUTS[layout]
    mask = _mask(shape, axes)
    result, found = _lifted(mask, RemoveSmallObjectsParams(max_size=max_size), axes, seed=8)
    reference = _per_piece(lambda p: skmorph.remove_small_objects(p, max_size=max_size), mask, axes)
    np.testing.assert_array_equal(result, reference)
    removed = [int(measure.label(p, connectivity=1).max() - measure.label(r, connectivity=1).max())
               for (_, p), (_, r) in zip(_pieces(mask, axes), _pieces(reference, axes))]
    assert found == {"objects_removed": _nested(removed, _counts(shape, axes))}


# --- every op of the registry, with a channel axis first and last ----------------------------------------------

#: Small images for the registry-wide test: 2D and 3D, 3 channels, the channel axis first and last.
SMALL_LAYOUTS = {
    "2D+channel first": ((3, 24, 30), ImageAxes(3, channel=0)),
    "2D+channel last": ((24, 30, 3), ImageAxes(3, channel=2)),
    "3D+channel first": ((3, 10, 16, 18), ImageAxes(4, channel=0)),
    "3D+channel last": ((10, 16, 18, 3), ImageAxes(4, channel=3)),
}


def _three_uneven_chunks(shape, axes):
    """Three chunks of different sizes on every spatial axis, one of them 1 voxel wide: ``(1, n // 3, rest)``.

    Fewer blocks than :func:`tests.helpers.uneven_chunks` (whose graphs are 3-6 times slower for 3D pieces),
    enough for every halo to cross a chunk border and a 1-voxel chunk. The channel axis is cut into (1, 2).
    """
    return tuple((1, n - 1) if axis in axes.split else (1, n // 3, n - 1 - n // 3) for axis, n in enumerate(shape))


def _image_of(dtype):
    """An input maker: :func:`_image` in ``dtype``."""
    return lambda shape, axes: _image(shape, axes, dtype=dtype)


def _many_blobs(shape, axes):
    """The brightest quarter of each piece: 10 to 30 blobs per piece, large and small, inside and at the border."""
    return _per_piece(lambda p: p > np.quantile(p, 0.75), _image(shape, axes, dtype=np.float64, sigma=1.0), axes)


def _background(shape, axes):
    """The background of :func:`_many_blobs`: every blob a hole or a background region to fill."""
    return ~_many_blobs(shape, axes)


def _labels(shape, axes):
    """The blobs of :func:`_many_blobs` labelled in each piece (uint32)."""
    return _per_piece(lambda p: measure.label(p).astype(np.uint32), _many_blobs(shape, axes), axes)


def _bimodal(shape, axes):
    """uint8 blobs on a background, two clear levels plus noise ('minimum' needs two peaks), piece k 40 k brighter."""
    objects = _many_blobs(shape, axes)
    offset = np.zeros(shape)
    for number, (position, _) in enumerate(_pieces(objects, axes)):
        offset[piece_index(axes, position)] = 40 * number
    noise = np.random.default_rng(0).normal(0, 8, shape)
    return np.clip(np.where(objects, 120, 40) + offset + noise, 0, 255).astype(np.uint8)


#: The input an op gets unless its case says otherwise, by the kind it takes.
INPUTS = {"image": _image_of(np.uint16), "mask": _many_blobs, "labels": _labels}


def _float(piece):
    """SciPy's working float, as the smoothing ops compute: float64 stays, everything else float32."""
    return piece.astype(np.float64 if piece.dtype == np.float64 else np.float32)


def _footprint(radius, ndim):
    return skmorph.disk(radius) if ndim == 2 else skmorph.ball(radius)


def _threshold(method):
    return lambda p: p > getattr(filters, f"threshold_{method}")(p)


@dataclass(frozen=True)
class Case:
    """One run of an op: its parameters, the whole-image reference on one piece, and (if not the default) its input."""

    params: OpParams
    reference: Callable[[np.ndarray], np.ndarray]
    make_input: Callable[..., np.ndarray] | None = field(default=None, kw_only=True)
    note: str = field(default="", kw_only=True)

    @property
    def id(self) -> str:
        fields = self.params.model_dump(exclude_defaults=True, exclude={"op"})
        return "-".join([self.params.op, *(str(v) for v in fields.values()), *([self.note] if self.note else [])])


#: Every image-producing op of the registry -> its cases; the references are SciPy / scikit-image on one piece.
PER_PIECE: dict[str, list[Case]] = {
    "gaussian": [Case(GaussianParams(sigma=1.5), lambda p: ndi.gaussian_filter(_float(p), 1.5, mode="nearest"))],
    "median": [Case(MedianParams(size=3), lambda p: ndi.median_filter(p, size=3, mode="nearest"))],
    "threshold": [
        *(Case(ThresholdParams(method=m), _threshold(m)) for m in ("otsu", "yen", "isodata", "triangle", "mean", "li")),
        *(Case(ThresholdParams(method=m), _threshold(m), make_input=_image_of(np.float32), note="float32")
          for m in ("mean", "li")),  # by passes over a float image (otsu's float bins: test_otsu_threshold_per_piece)
        Case(ThresholdParams(method="minimum"), _threshold("minimum"), make_input=_bimodal),
        Case(ThresholdParams(method="manual", value=15000), lambda p: p > 15000),
    ],
    "label": [Case(LabelParams(), measure.label)],
    "uniform": [Case(UniformParams(size=4), lambda p: ndi.uniform_filter(_float(p), 4, mode="nearest"))],
    "minimum": [Case(MinimumParams(size=3), lambda p: ndi.minimum_filter(p, 3, mode="nearest"))],
    "maximum": [Case(MaximumParams(size=4, mode="mirror"), lambda p: ndi.maximum_filter(p, 4, mode="mirror"))],
    "sobel": [Case(SobelParams(), filters.sobel)],
    "laplace": [Case(LaplaceParams(), lambda p: ndi.laplace(_float(p)))],
    "gaussian_laplace": [Case(GaussianLaplaceParams(sigma=1.5), lambda p: ndi.gaussian_laplace(_float(p), 1.5))],
    "difference_of_gaussians": [
        Case(DifferenceOfGaussiansParams(low_sigma=1.0), lambda p: filters.difference_of_gaussians(p, 1.0)),
    ],
    "white_tophat": [Case(WhiteTophatParams(radius=2), lambda p: skmorph.white_tophat(p, _footprint(2, p.ndim)))],
    "clip": [Case(ClipParams(low=10000, high=30000), lambda p: np.clip(p, np.uint16(10000), np.uint16(30000)))],
    "rescale_intensity": [
        Case(RescaleIntensityParams(low_percentile=2, high_percentile=98),
             lambda p: exposure.rescale_intensity(p, in_range=tuple(np.percentile(p, [2, 98])), out_range=(0.0, 1.0))),
    ],
    "threshold_local": [
        Case(ThresholdLocalParams(block_size=7), lambda p: p > filters.threshold_local(p, 7)),
        Case(ThresholdLocalParams(block_size=5, method="median", offset=-100),
             lambda p: p > filters.threshold_local(p, 5, method="median", offset=-100)),
    ],
    "binary_erosion": [Case(BinaryErosionParams(radius=1), lambda p: skmorph.erosion(p, _footprint(1, p.ndim)))],
    "binary_dilation": [Case(BinaryDilationParams(radius=2), lambda p: skmorph.dilation(p, _footprint(2, p.ndim)))],
    "binary_opening": [Case(BinaryOpeningParams(radius=1), lambda p: skmorph.opening(p, _footprint(1, p.ndim)))],
    "binary_closing": [Case(BinaryClosingParams(radius=2), lambda p: skmorph.closing(p, _footprint(2, p.ndim)))],
    "fill_holes": [
        Case(FillHolesParams(), lambda p: ndi.binary_fill_holes(p, ndi.generate_binary_structure(p.ndim, 1)),
             make_input=_background),
    ],
    "remove_small_objects": [
        Case(RemoveSmallObjectsParams(max_size=10), lambda p: skmorph.remove_small_objects(p, max_size=10)),
    ],
    "remove_small_holes": [
        Case(RemoveSmallHolesParams(max_size=10), lambda p: skmorph.remove_small_holes(p, max_size=10),
             make_input=_background),
    ],
    "expand_labels": [Case(ExpandLabelsParams(distance=2), lambda p: segmentation.expand_labels(p, 2))],
}
ALL_CASES = [case for cases in PER_PIECE.values() for case in cases]
#: Image-producing ops with no per-channel case, and why.
NOT_PER_PIECE = {
    "channel": "it acts on the channel axis itself (keeps one channel, drops the axis): test_channel_op_* below",
}


def test_every_image_producing_op_of_the_registry_has_a_per_channel_case():
    """A new op cannot be missed: the cases name every op but ``measure`` (a table), and every threshold method."""
    assert set(PER_PIECE) | set(NOT_PER_PIECE) == {name for name, info in OPS.items() if info.gives != "table"}
    assert not set(PER_PIECE) & set(NOT_PER_PIECE)
    assert all(case.params.op == op for op, cases in PER_PIECE.items() for case in cases)
    assert {case.params.method for case in PER_PIECE["threshold"]} == set(threshold_ops.METHODS)
    assert {case.params.method for case in PER_PIECE["threshold_local"]} == set(threshold_ops.LOCAL_METHODS)
    assert len({case.id for case in ALL_CASES}) == len(ALL_CASES)


@pytest.mark.parametrize("layout", SMALL_LAYOUTS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: case.id)
def test_every_op_per_channel_on_uneven_chunks_equals_its_reference_on_each_channel(case, layout):
    shape, axes = SMALL_LAYOUTS[layout]
    info = OPS[case.params.op]
    image = (case.make_input or INPUTS[info.takes[0]])(shape, axes)
    result, found = _lifted(image, case.params, axes, chunks=_three_uneven_chunks(shape, axes), scheduler="synchronous")
    reference = _per_piece(case.reference, image, axes)
    assert result.dtype == info.out_dtype(case.params, image.dtype)
    assert all(isinstance(v, list) and len(v) == shape[axes.channel] for v in found.values()), found
    for position, piece in _pieces(result, axes):
        expected = reference[piece_index(axes, position)]
        assert not np.array_equal(expected, image[piece_index(axes, position)]), f"{position}: the op changes nothing"
        if info.family == "label":  # numbered 1..N in each piece, in another order than scikit-image's
            assert sorted(np.unique(piece).tolist()) == list(range(expected.max() + 1)), position
            assert same_up_to_permutation(piece, expected), position
            continue
        assert piece.dtype == expected.dtype
        if np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_allclose(piece, expected, rtol=0, atol=1e-5 * np.ptp(expected), err_msg=str(position))
        else:
            np.testing.assert_array_equal(piece, expected, err_msg=str(position))


def test_a_channel_of_one_voxel_chunks_and_a_global_op_on_a_single_channel():
    image = _image((1, 9, 8), ImageAxes(3, channel=0))
    result, found = _lifted(image, ThresholdParams(), ImageAxes(3, channel=0))
    assert found == {"threshold": [filters.threshold_otsu(image[0]).item()]}
    np.testing.assert_array_equal(result[0], image[0] > filters.threshold_otsu(image[0]))


@pytest.mark.parametrize("axes", [None, ImageAxes(3)])
def test_without_a_channel_or_time_axis_the_image_is_one_piece(axes):
    image = _image((3, 20, 21), ImageAxes(3, channel=0))
    mask, found = lift.lift(da.from_array(image, chunks=7), ThresholdParams(), axes=axes)
    assert found == {"threshold": filters.threshold_otsu(image).item()}
    np.testing.assert_array_equal(mask.compute(), image > filters.threshold_otsu(image))


# --- the channel op: one channel kept, the channel axis dropped ---------------------------------------------

CHANNEL_LAYOUTS = [name for name, (_, axes) in LAYOUTS.items() if axes.channel is not None]


@pytest.mark.parametrize("layout", CHANNEL_LAYOUTS)
def test_channel_op_keeps_one_channel_and_drops_its_axis(layout):
    shape, axes = LAYOUTS[layout]
    image = _image(shape, axes)
    chunks = uneven_chunks(shape, seed=9)
    params = ChannelParams(index=shape[axes.channel] - 1)
    result, found = lift.lift(da.from_array(image, chunks=chunks), params, axes=axes)
    expected = np.take(image, params.index, axis=axes.channel)
    assert found == {} and result.dtype == image.dtype
    assert result.chunks == tuple(c for a, c in enumerate(chunks) if a != axes.channel), "other axes keep their chunks"
    np.testing.assert_array_equal(result.compute(), expected)
    out_axes = lift.output_axes(params, axes)
    assert out_axes == ImageAxes(len(shape) - 1, time=None if axes.time is None else axes.time - (axes.time > axes.channel))
    # The steps after it run on that channel: per time point when there is a time axis.
    mask, found = lift.lift(result, ThresholdParams(), axes=out_axes)
    thresholds = [filters.threshold_otsu(piece).item() for _, piece in _pieces(expected, out_axes)]
    assert found == {"threshold": thresholds if out_axes.split else thresholds[0]}
    np.testing.assert_array_equal(mask.compute(), _per_piece(lambda p: p > filters.threshold_otsu(p), expected, out_axes))


def test_channel_op_refuses_an_index_out_of_range_and_an_image_with_no_channel_axis():
    image = da.zeros((3, 8, 9), chunks=4, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"index 3 is out of range for an image of 3 channels: use 0 to 2"):
        lift.lift(image, ChannelParams(index=3), axes=ImageAxes(3, channel=0))
    for axes in (None, ImageAxes(3), ImageAxes(3, time=0)):
        with pytest.raises(ValueError, match=r"op 'channel' needs an image with a channel axis, .*\(3, 8, 9\) has none"):
            lift.lift(image, ChannelParams(index=0), axes=axes)
    with pytest.raises(ValueError, match="not a local op"):
        lift.lift_local(image, ChannelParams(index=0))
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ChannelParams(index=-1)
    with pytest.raises(ValueError, match=r"no channel axis \(axes zyx\)"):
        ImageAxes(3).without_channel()


def test_select_channel_on_a_numpy_image_is_a_view_of_one_channel():
    image = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    for axis in (0, 1, 2, -1):
        for index in range(image.shape[axis]):
            out = select_channel(image, index, axis=axis)
            np.testing.assert_array_equal(out, np.take(image, index, axis=axis))
            assert out.dtype == image.dtype and np.shares_memory(out, image)
    with pytest.raises(ValueError, match="index 5 is out of range for an image of 5 channels: use 0 to 4"):
        select_channel(image, 5, axis=2)
    with pytest.raises(ValueError, match="index -1 is out of range"):
        select_channel(image, -1)
    with pytest.raises(ValueError, match=r"axis must be an int in \[-3, 2\], got 3"):
        select_channel(image, 0, axis=3)
    with pytest.raises(TypeError, match="index must be an int, got 1.0"):
        select_channel(image, 1.0)


RUN = dict(compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
PROPERTIES = ["label", "area", "intensity_mean", "intensity_max"]


def _ome_tiff(path, image, letters: str):
    """``image`` as an OME-TIFF with axes ``letters`` (channels last are stored as samples)."""
    tifffile.imwrite(path, image, ome=True, metadata={"axes": letters}, photometric="minisblack",
                     planarconfig="contig" if letters.endswith("C") else None)
    return io.resolve_input(path)


def _run_steps(tmp_path, upstream, params_list, first_chunks=None):
    """Every step through the stage code (no Prefect), each to its own store: the last result."""
    for number, params in enumerate(params_list):
        store = str(tmp_path / f"{number:02d}_{params.op}.ome.zarr")
        upstream = steps.run_image_step(params, upstream, store, name=params.op,
                                        chunks=first_chunks if number == 0 else None, **RUN).ref
    return upstream


@pytest.mark.parametrize(("shape", "letters"), [((3, 30, 34), "CYX"), ((9, 22, 19, 2), "ZYXC")])
def test_steps_segment_one_channel_and_measure_every_channel(tmp_path, shape, letters):
    """channel -> gaussian -> otsu -> label -> measure: stores without a channel axis, a column per input channel."""
    axes = ImageAxes(len(shape), channel=letters.index("C"))
    image = _image(shape, axes)
    source = _ome_tiff(tmp_path / "image.ome.tif", image, letters)
    assert source.axes == axes
    pipeline = [ChannelParams(index=1), GaussianParams(sigma=1.0), ThresholdParams(), LabelParams()]
    chunks = tuple(2 if a == axes.channel else n // 3 + 1 for a, n in enumerate(shape))  # several per axis
    labels_ref = _run_steps(tmp_path, source, pipeline, first_chunks=chunks)
    spatial = tuple(n for a, n in enumerate(shape) if a != axes.channel)
    for store in sorted(tmp_path.glob("*.ome.zarr")):
        assert io.store_axes(store) == ImageAxes(len(spatial)), store.name
        assert zarr.open_array(str(store), path="0", mode="r").shape == spatial
    labels = io.read_ref(labels_ref).compute()
    smooth = ndi.gaussian_filter(np.take(image, 1, axis=axes.channel).astype(np.float32), 1.0, mode="nearest")
    assert same_up_to_permutation(labels, measure.label(smooth > filters.threshold_otsu(smooth)))
    columns = steps.measure_columns(MeasureParams(properties=PROPERTIES), labels_ref, intensity=source, compute=RUN["compute"])
    reference = measure.regionprops_table(labels, np.moveaxis(image, axes.channel, -1), properties=PROPERTIES)
    assert labels.max() > 2 and list(columns) == list(reference)
    assert {f"intensity_mean-{c}" for c in range(shape[axes.channel])} <= set(columns)
    for key, expected in reference.items():
        np.testing.assert_allclose(columns[key], expected, rtol=1e-9, err_msg=key)


def test_measure_refuses_labels_with_a_channel_axis_and_a_multichannel_image_in_a_list(tmp_path):
    image = _image((2, 20, 24), ImageAxes(3, channel=0))
    source = _ome_tiff(tmp_path / "cyx.ome.tif", image, "CYX")
    per_channel = _run_steps(tmp_path / "all", source, [ThresholdParams(), LabelParams()])
    with pytest.raises(ValueError, match=r"the labels .* have a channel or time axis \(axes cyx\).*op: channel, index: N"):
        steps.measure_columns(MeasureParams(properties=["label", "area"], intensity=None), per_channel, compute=RUN["compute"])
    first = _run_steps(tmp_path / "one", source, [ChannelParams(index=0)])
    labels = _run_steps(tmp_path / "one-labels", first, [ThresholdParams(), LabelParams()])
    params = MeasureParams(properties=PROPERTIES, intensity=["channel", "input"])
    with pytest.raises(ValueError, match=r"intensity\[1\] has a channel or time axis \(axes cyx\): in a list .* ambiguous"):
        steps.measure_columns(params, labels, intensity=[first, source], compute=RUN["compute"])
    # The selected channel alone, in a list, is one image like any other.
    columns = steps.measure_columns(params.model_copy(update={"intensity": ["channel"]}), labels, intensity=[first],
                                    compute=RUN["compute"])
    assert "intensity_mean-0" in columns and "intensity_mean-1" not in columns


# --- the axes themselves ------------------------------------------------------------------------------


def test_map_pieces_refuses_a_mismatched_description_and_an_empty_channel_axis():
    with pytest.raises(ValueError, match="image has 4 axes but .* describes 3"):
        map_pieces(da.zeros((2, 4, 4, 4)), ImageAxes(3, channel=0), lambda p: (p, {}))
    with pytest.raises(ValueError, match="empty channel or time axis"):
        map_pieces(da.zeros((0, 4, 4)), ImageAxes(3, channel=0), lambda p: (p, {}))


@pytest.mark.parametrize(
    ("axes", "names"),
    [
        (ImageAxes(2), ("y", "x")),
        (ImageAxes(3), ("z", "y", "x")),
        (ImageAxes(3, channel=2), ("y", "x", "c")),
        (ImageAxes(4, channel=1, time=0), ("t", "c", "y", "x")),
        (ImageAxes(5, channel=1, time=0), ("t", "c", "z", "y", "x")),
    ],
)
def test_ome_names(axes, names):
    assert axes.names == names
    assert ImageAxes.from_types(["channel" if n == "c" else "time" if n == "t" else "space" for n in names]) == axes


def test_image_axes_refuse_bad_positions():
    with pytest.raises(ValueError, match="channel axis 3 is out of range"):
        ImageAxes(3, channel=3)
    with pytest.raises(ValueError, match="must differ"):
        ImageAxes(3, channel=0, time=0)
    with pytest.raises(TypeError, match="time axis"):
        ImageAxes(3, time=True)
    with pytest.raises(ValueError, match="two channel axes"):
        ImageAxes.from_types(["channel", "channel", "space", "space"])
    with pytest.raises(ValueError, match="at most 3"):
        ImageAxes(4).names


def test_resolve_axes_explicit_fields_win_over_metadata():
    metadata = ImageAxes(4, channel=0)
    assert resolve_axes((2, 5, 30, 30), metadata=metadata) == metadata
    assert resolve_axes((2, 5, 30, 30), channel_axis=1, metadata=metadata) == ImageAxes(4, channel=1)
    # An explicit time axis where the metadata puts its channel axis: the field wins, the metadata's channel goes.
    assert resolve_axes((2, 30, 30, 3), time_axis=0, metadata=metadata) == ImageAxes(4, time=0)
    assert resolve_axes((2, 30, 30, 3), time_axis=0, channel_axis=-1, metadata=metadata) == ImageAxes(4, channel=3, time=0)
    assert resolve_axes((30, 30)) == ImageAxes(2)


@pytest.mark.parametrize(
    ("shape", "fields", "message"),
    [
        ((3, 30, 30), {"channel_axis": 3}, "channel_axis 3 is out of range for an image of 3 axes"),
        ((3, 30, 30), {"time_axis": -4}, "time_axis -4 is out of range"),
        ((3, 4, 30, 30), {"channel_axis": 1, "time_axis": 1}, "channel_axis and time_axis are the same axis"),
        ((3, 4, 30, 30), {"channel_axis": -3, "time_axis": 1}, "channel_axis and time_axis are the same axis"),
        ((3, 30), {"channel_axis": 0}, r"with channel_axis 0, the image of shape \(3, 30\) has 1 spatial axes"),
        ((3, 4, 30), {"channel_axis": 0, "time_axis": 1}, "with channel_axis 0 and time_axis 1, .* has 1 spatial"),
        ((3, 4, 5, 30, 30), {"channel_axis": 0}, "with channel_axis 0, .* has 4 spatial axes"),
        ((4, 5, 30, 30), {}, "with no channel_axis and no time_axis, .* has 4 spatial axes"),
    ],
)
def test_resolve_axes_refusals_name_the_field(shape, fields, message):
    with pytest.raises(ValueError, match=message):
        resolve_axes(shape, **fields)


def test_resolve_axes_names_the_metadata_when_it_leaves_too_few_spatial_axes():
    with pytest.raises(ValueError, match=r"the input's channel axis 0 \(from its metadata\)"):
        resolve_axes((3, 30), metadata=ImageAxes(2, channel=0))


# --- metadata: read from OME-TIFF and OME-Zarr inputs, written to stores ---------------------------------------


def test_ome_tiff_axes_are_read(tmp_path):
    data = np.zeros((2, 3, 8, 9), np.uint16)
    tifffile.imwrite(tmp_path / "czyx.ome.tif", data, ome=True, metadata={"axes": "CZYX"})
    tifffile.imwrite(tmp_path / "tcyx.tif", data, metadata={"axes": "TCYX"})
    tifffile.imwrite(tmp_path / "yxc.ome.tif", np.zeros((8, 9, 3), np.uint16), ome=True, metadata={"axes": "YXC"})
    tifffile.imwrite(tmp_path / "zyx.tif", data[0])
    assert io.resolve_input(tmp_path / "czyx.ome.tif").axes == ImageAxes(4, channel=0)
    assert io.resolve_input(tmp_path / "tcyx.tif").axes == ImageAxes(4, channel=1, time=0)
    assert io.resolve_input(tmp_path / "yxc.ome.tif").axes == ImageAxes(3, channel=2)
    assert io.resolve_input(tmp_path / "zyx.tif").axes == ImageAxes(3)


def test_glob_and_tile_axes_follow_their_files(tmp_path):
    for k in range(2):
        tifffile.imwrite(tmp_path / f"t{k}.ome.tif", np.zeros((3, 8, 9), np.uint8), ome=True, metadata={"axes": "CYX"})
    assert io.resolve_input(str(tmp_path / "t*.ome.tif")).axes == ImageAxes(4, channel=1)
    tiles = {"tiles": [[str(tmp_path / "t0.ome.tif"), str(tmp_path / "t1.ome.tif")]]}
    assert io.resolve_input(tiles).axes == ImageAxes(3, channel=0)


@pytest.mark.parametrize(
    "axes",
    [
        [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        ["c", "y", "x"],  # NGFF 0.3: names only
    ],
)
def test_ome_zarr_input_axes_are_read(tmp_path, axes):
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=(2, 10, 12), dtype=np.uint8, chunks=(1, 10, 12))
    assert io.resolve_input(store).axes == ImageAxes(3, channel=0)
    assert io.resolve_input({"zarr": str(store), "component": "0"}).axes == ImageAxes(3, channel=0)


def test_ome_zarr_axes_that_do_not_fit_the_array_are_refused(tmp_path):
    store = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    group.create_array("0", shape=(2, 10, 12), dtype=np.uint8)
    with pytest.raises(io.InputError, match="names 2 axes but the array at '0' has 3"):
        io.resolve_input(store)


def test_axes_are_part_of_the_input_fingerprint(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 8, 9), np.uint8))
    plain = io.resolve_input(tmp_path / "a.tif")
    assert plain.axes == ImageAxes(3)
    with_channel = replace(plain, channel_axis=0)
    assert with_channel.fingerprint() != plain.fingerprint() != replace(plain, time_axis=0).fingerprint()
    assert io.InputSpec.from_dict(with_channel.to_dict()) == with_channel
    with pytest.raises(ValueError, match="out of range"):
        replace(plain, channel_axis=3)


def test_steps_write_axes_to_the_stores_and_read_them_back(tmp_path):
    """gaussian -> otsu -> label through the stage code (no Prefect): per-channel results, axes in every store."""
    shape, axes = (13, 22, 19, 2), ImageAxes(4, channel=3)
    image = _image(shape, axes)
    # Channels last are stored as samples (tifffile's axis 'S' in an OME-TIFF).
    tifffile.imwrite(tmp_path / "zyxc.ome.tif", image, ome=True, metadata={"axes": "ZYXC"}, photometric="minisblack",
                     planarconfig="contig")
    source = io.resolve_input(tmp_path / "zyxc.ome.tif")
    assert source.axes == axes
    run = dict(compute=steps.local_compute, compute_blocks=steps.sync_compute_blocks)
    upstream, found = source, []
    for number, params in enumerate([GaussianParams(sigma=1.5), ThresholdParams(), LabelParams(connectivity=1)]):
        store = str(tmp_path / f"{number}.ome.zarr")
        result = steps.run_image_step(params, upstream, store, name=params.op, chunks=(7, 9, 10, 2) if number == 0 else None, **run)
        ome = zarr.open_group(store, mode="r").attrs["ome"]
        assert [(a["name"], a["type"]) for a in ome["multiscales"][0]["axes"]] == [
            ("z", "space"), ("y", "space"), ("x", "space"), ("c", "channel"),
        ]
        assert io.store_axes(store) == axes
        assert result.ref.chunks[3] == 1
        upstream, found = result.ref, found + [result.info]
    smooth = _per_piece(lambda p: ndi.gaussian_filter(p.astype(np.float32), 1.5, mode="nearest"), image, axes)
    assert found[1]["threshold"] == [filters.threshold_otsu(smooth[..., c]).item() for c in range(2)]
    labels = zarr.open_array(str(tmp_path / "2.ome.zarr"), path="0", mode="r")[...]
    for c in range(2):
        reference = measure.label(smooth[..., c] > filters.threshold_otsu(smooth[..., c]), connectivity=1)
        assert same_up_to_permutation(labels[..., c], reference)
    assert found[2]["objects"] == [int(measure.label(labels[..., c] > 0, connectivity=1).max()) for c in range(2)]
