"""A hand-written check of OME-Zarr (OME-NGFF 0.5) image and label stores, for the tests.

The rules are those of the OME-NGFF 0.5 specification (https://ngff.openmicroscopy.org/0.5/)
for ``multiscales``, ``axes``, ``coordinateTransformations`` and ``image-label``.
``ome-zarr-models`` (the reference validator) pins pydantic below the version
this package runs with, so the tests do not depend on it; these checks were
compared with its verdicts on the stores the pipeline writes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr

from tasks.ome import SPACE_UNITS, TIME_UNITS

AXIS_TYPES = ("space", "time", "channel")


def validate_ome_zarr(path: str | Path) -> dict:
    """Assert that ``path`` is a valid OME-NGFF 0.5 image (or label image) store; return its ``ome`` attributes.

    Checks: zarr format 3 group; ``ome.version == "0.5"``; one or more
    ``multiscales``, each with 2 to 5 uniquely named axes of known types
    (2 or 3 ``space`` axes, last; at most one ``time`` axis, first; at most
    one ``channel`` axis), units from the NGFF lists (space units on space
    axes, time units on time axes, none on channel axes); datasets that are
    zarr v3 arrays of the axes' rank whose ``dimension_names`` are the axes'
    names, each with a ``scale`` (and at most a ``translation`` after it) of
    the axes' length, positive and finite, scales never decreasing from one
    level to the next and shapes never growing. A label store's
    ``image-label`` has unique integer ``label-value`` colours with RGBA
    bytes, a ``source.image`` string if any, and integer data.
    """
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3, f"{path}: zarr format {group.metadata.zarr_format}, OME-NGFF 0.5 needs 3"
    attrs = group.attrs.asdict()
    assert "ome" in attrs, f"{path}: no 'ome' attributes"
    ome = attrs["ome"]
    assert ome.get("version") == "0.5", f"{path}: ome.version {ome.get('version')!r}"
    multiscales = ome.get("multiscales")
    assert isinstance(multiscales, list) and multiscales, f"{path}: no multiscales"
    for multiscale in multiscales:
        _check_multiscale(group, multiscale, path)
    if "image-label" in ome:
        _check_image_label(ome["image-label"], group, multiscales[0], path)
    return ome


def _check_multiscale(group: zarr.Group, multiscale: dict, where) -> None:
    axes = multiscale.get("axes")
    assert isinstance(axes, list) and 2 <= len(axes) <= 5, f"{where}: axes must be a list of 2 to 5, got {axes!r}"
    names = [axis.get("name") for axis in axes]
    assert all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names), f"{where}: axis names {names}"
    types = [axis.get("type") for axis in axes]
    assert all(t in AXIS_TYPES for t in types), f"{where}: axis types {types}"
    assert types.count("space") in (2, 3), f"{where}: {types.count('space')} space axes"
    assert types.count("time") <= 1 and types.count("channel") <= 1, f"{where}: axis types {types}"
    spaces = types.count("space")
    assert types[-spaces:] == ["space"] * spaces, f"{where}: space axes must come last, got {types}"
    assert "time" not in types or types[0] == "time", f"{where}: the time axis must come first, got {types}"
    for axis in axes:
        unit = axis.get("unit")
        if unit is None:
            continue
        allowed = SPACE_UNITS if axis["type"] == "space" else TIME_UNITS if axis["type"] == "time" else ()
        assert unit in allowed, f"{where}: axis {axis['name']} ({axis['type']}) has unit {unit!r}, not an NGFF unit name"
    datasets = multiscale.get("datasets")
    assert isinstance(datasets, list) and datasets, f"{where}: no datasets"
    previous_scale = previous_shape = None
    for dataset in datasets:
        path = dataset.get("path")
        assert isinstance(path, str) and path, f"{where}: dataset path {path!r}"
        array = zarr.open_array(group.store_path / path, mode="r")
        assert array.metadata.zarr_format == 3, f"{where}/{path}: not a zarr v3 array"
        assert array.ndim == len(axes), f"{where}/{path}: {array.ndim} dimensions for {len(axes)} axes"
        assert list(array.metadata.dimension_names or []) == names, (
            f"{where}/{path}: dimension_names {array.metadata.dimension_names} differ from the axes {names}"
        )
        transforms = dataset.get("coordinateTransformations")
        assert isinstance(transforms, list) and 1 <= len(transforms) <= 2, f"{where}/{path}: transforms {transforms!r}"
        kinds = [t.get("type") for t in transforms]
        assert kinds in (["scale"], ["scale", "translation"]), f"{where}/{path}: transform types {kinds}"
        scale = transforms[0]["scale"]
        assert len(scale) == len(axes), f"{where}/{path}: scale {scale} for {len(axes)} axes"
        assert all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in scale), f"{where}/{path}: scale {scale}"
        if len(transforms) == 2:
            translation = transforms[1]["translation"]
            assert len(translation) == len(axes) and all(math.isfinite(t) for t in translation), (
                f"{where}/{path}: translation {translation}"
            )
        if previous_scale is not None:
            assert all(s >= p for s, p in zip(scale, previous_scale)), f"{where}/{path}: scale {scale} after {previous_scale}"
            assert all(n <= p for n, p in zip(array.shape, previous_shape)), f"{where}/{path}: shape {array.shape} grows"
        previous_scale, previous_shape = scale, array.shape


def _check_image_label(block: dict, group: zarr.Group, multiscale: dict, where) -> None:
    assert isinstance(block, dict), f"{where}: image-label must be an object"
    array = zarr.open_array(group.store_path / multiscale["datasets"][0]["path"], mode="r")
    assert np.issubdtype(array.dtype, np.integer), f"{where}: label data must be integers, got {array.dtype}"
    if "version" in block:
        assert block["version"] == "0.5", f"{where}: image-label version {block['version']!r}"
    colors = block.get("colors")
    if colors is not None:
        values = [c.get("label-value") for c in colors]
        assert all(isinstance(v, int) for v in values), f"{where}: label-value must be integers"
        assert len(set(values)) == len(values), f"{where}: label-values repeat"
        for color in colors:
            rgba = color.get("rgba")
            assert rgba is None or (len(rgba) == 4 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgba)), (
                f"{where}: rgba {rgba!r}"
            )
    if "source" in block:
        assert isinstance(block["source"].get("image"), str), f"{where}: source.image {block['source']!r}"
