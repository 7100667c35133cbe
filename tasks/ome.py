"""OME metadata: physical pixel sizes and units, multiscales pyramids, label colours.

Pure functions and one value object, no I/O: :mod:`tasks.io` reads the
metadata (OME-XML of an OME-TIFF, ImageJ metadata, OME-Zarr attributes) and
hands the text or dict to the parsers here, and writes what the builders here
return into the stores' ``ome`` attributes (OME-NGFF 0.5).

- :class:`Calibration`: each axis' physical size of one pixel and its unit
  (an OME-NGFF unit name such as ``"micrometer"``, or ``None`` when unknown).
  An input with no calibration has scale 1 and no unit on every axis.
- :func:`from_ome_xml`, :func:`from_imagej`, :func:`from_ngff`: the
  calibration an OME-TIFF, an ImageJ TIFF or an OME-Zarr image declares.
- :func:`pyramid_factors` and :func:`multiscale`: the lower-resolution levels
  a stage store gets, and their ``multiscales`` entry.
- :func:`image_label`: the ``image-label`` block of a label store.
- :func:`common_unit`: spatial pixel sizes in one unit, for measurements in
  physical units.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = [
    "PYRAMID_MIN_SIZE",
    "SPACE_UNITS",
    "TIME_UNITS",
    "Calibration",
    "common_unit",
    "from_imagej",
    "from_ngff",
    "from_ome_xml",
    "image_label",
    "label_colors",
    "multiscale",
    "normalise_unit",
    "pyramid_factors",
]

#: A spatial axis is halved for the next pyramid level only while the result keeps at least this many pixels.
PYRAMID_MIN_SIZE = 256
#: Label stores list a colour per label value up to this many labels (more: readers choose their own colours).
MAX_LABEL_COLORS = 4096

#: OME-NGFF unit names of space axes, with their length in metres.
SPACE_UNITS: dict[str, float] = {
    "angstrom": 1e-10, "attometer": 1e-18, "centimeter": 1e-2, "decimeter": 1e-1, "exameter": 1e18,
    "femtometer": 1e-15, "foot": 0.3048, "gigameter": 1e9, "hectometer": 1e2, "inch": 0.0254,
    "kilometer": 1e3, "megameter": 1e6, "meter": 1.0, "micrometer": 1e-6, "mile": 1609.344,
    "millimeter": 1e-3, "nanometer": 1e-9, "parsec": 3.0856775814913673e16, "petameter": 1e15,
    "picometer": 1e-12, "terameter": 1e12, "yard": 0.9144, "yoctometer": 1e-24, "yottameter": 1e24,
    "zeptometer": 1e-21, "zettameter": 1e21,
}
#: OME-NGFF unit names of time axes.
TIME_UNITS = frozenset({
    "attosecond", "centisecond", "day", "decisecond", "exasecond", "femtosecond", "gigasecond",
    "hectosecond", "hour", "kilosecond", "megasecond", "microsecond", "millisecond", "minute",
    "nanosecond", "petasecond", "picosecond", "second", "terasecond", "yoctosecond", "yottasecond",
    "zeptosecond", "zettasecond",
})

# Symbols and spellings found in OME-XML (UnitsLength / UnitsTime) and ImageJ metadata.
_UNIT_ALIASES = {
    "Å": "angstrom", "am": "attometer", "cm": "centimeter", "dm": "decimeter", "Em": "exameter",
    "fm": "femtometer", "ft": "foot", "Gm": "gigameter", "hm": "hectometer", "in": "inch", "km": "kilometer",
    "Mm": "megameter", "m": "meter", "µm": "micrometer", "μm": "micrometer", "um": "micrometer",
    "\\u00B5m": "micrometer", "\\u00b5m": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "mi": "mile", "mm": "millimeter", "nm": "nanometer", "pc": "parsec", "Pm": "petameter", "pm": "picometer",
    "Tm": "terameter", "yd": "yard", "ym": "yoctometer", "Ym": "yottameter", "zm": "zeptometer", "Zm": "zettameter",
    "as": "attosecond", "cs": "centisecond", "d": "day", "ds": "decisecond", "Es": "exasecond",
    "fs": "femtosecond", "Gs": "gigasecond", "hs": "hectosecond", "h": "hour", "ks": "kilosecond",
    "Ms": "megasecond", "µs": "microsecond", "μs": "microsecond", "us": "microsecond", "ms": "millisecond",
    "min": "minute", "ns": "nanosecond", "Ps": "petasecond", "ps": "picosecond", "s": "second", "sec": "second",
    "Ts": "terasecond", "ys": "yoctosecond", "Ys": "yottasecond", "zs": "zeptosecond", "Zs": "zettasecond",
}
_OME_NAMESPACE = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


def normalise_unit(text: Any, kind: str = "space") -> str | None:
    """The OME-NGFF name of a unit of ``kind`` (``"space"`` or ``"time"``), or ``None`` if it is not one.

    Accepts the NGFF names themselves (any case, singular or plural), the
    OME-XML symbols (``"µm"``, ``"nm"``, ``"s"``...) and ImageJ's spellings
    (``"micron"``, ``"um"``). Pixels, reference frames and unknown words give ``None``.

    >>> normalise_unit("µm"), normalise_unit("micron"), normalise_unit("Nanometers"), normalise_unit("pixel")
    ('micrometer', 'micrometer', 'nanometer', None)
    >>> normalise_unit("ms", "time"), normalise_unit("ms", "space")
    ('millisecond', None)
    """
    if not isinstance(text, str):
        return None
    word = text.strip()
    name = _UNIT_ALIASES.get(word)
    if name is None:
        lower = word.lower()
        name = lower if lower in SPACE_UNITS or lower in TIME_UNITS else lower.removesuffix("s")
    valid = SPACE_UNITS if kind == "space" else TIME_UNITS if kind == "time" else ()
    return name if name in valid else None


@dataclass(frozen=True)
class Calibration:
    """Physical size of one pixel along each axis, and its unit (``None``: unknown).

    ``scale`` holds positive finite numbers; a unit is an OME-NGFF unit name.
    An uncalibrated image has scale 1 and no unit on every axis.

    >>> c = Calibration((2.0, 0.5, 0.5), (None, "micrometer", "micrometer"))
    >>> c.known, Calibration.none(3).known
    (True, False)
    >>> Calibration.from_dict(c.to_dict()) == c
    True
    """

    scale: tuple[float, ...]
    units: tuple[str | None, ...]

    def __post_init__(self) -> None:
        scale = tuple(float(s) for s in self.scale)
        units = tuple(None if u is None else str(u) for u in self.units)
        if len(units) != len(scale):
            raise ValueError(f"calibration has {len(scale)} scales but {len(units)} units")
        if not all(math.isfinite(s) and s > 0 for s in scale):
            raise ValueError(f"calibration scales must be positive and finite, got {list(scale)}")
        unknown = [u for u in units if u is not None and u not in SPACE_UNITS and u not in TIME_UNITS]
        if unknown:
            raise ValueError(f"calibration units {unknown} are not OME-NGFF unit names (e.g. 'micrometer', 'second')")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "units", units)

    @classmethod
    def none(cls, ndim: int) -> "Calibration":
        """Scale 1 and no unit on ``ndim`` axes."""
        return cls((1.0,) * ndim, (None,) * ndim)

    @property
    def ndim(self) -> int:
        return len(self.scale)

    @property
    def known(self) -> bool:
        """Whether any axis has a unit or a scale other than 1."""
        return any(u is not None for u in self.units) or any(s != 1.0 for s in self.scale)

    def to_dict(self) -> dict[str, list]:
        return {"scale": list(self.scale), "units": list(self.units)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        return cls(tuple(data["scale"]), tuple(data["units"]))


def from_ome_xml(xml: str, letters: str) -> Calibration:
    """The calibration an OME-XML document gives the first image, for a series with axes ``letters``.

    ``letters`` are tifffile's axis letters (``"TCZYX"``, ``"ZYX"``, ``"YXS"``...):
    ``X``, ``Y``, ``Z`` take ``PhysicalSizeX/Y/Z`` (unit ``PhysicalSize?Unit``,
    OME's default µm), ``T`` takes ``TimeIncrement`` (unit ``TimeIncrementUnit``,
    default s); other axes, and sizes that are missing or not positive, get
    scale 1 and no unit.

    >>> xml = '<OME><Image><Pixels PhysicalSizeX="0.5" PhysicalSizeY="0.5" PhysicalSizeZ="2" PhysicalSizeZUnit="nm"/></Image></OME>'
    >>> from_ome_xml(xml, "ZYX")
    Calibration(scale=(2.0, 0.5, 0.5), units=('nanometer', 'micrometer', 'micrometer'))
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return Calibration.none(len(letters))
    pixels = root.find(f"{_OME_NAMESPACE}Image/{_OME_NAMESPACE}Pixels")
    if pixels is None:
        pixels = root.find("Image/Pixels")
    if pixels is None:
        return Calibration.none(len(letters))
    fields = {"X": ("PhysicalSizeX", "µm", "space"), "Y": ("PhysicalSizeY", "µm", "space"),
              "Z": ("PhysicalSizeZ", "µm", "space"), "T": ("TimeIncrement", "s", "time")}
    scale, units = [], []
    for letter in letters:
        size, unit = 1.0, None
        if letter in fields:
            name, default_unit, kind = fields[letter]
            value = _positive(pixels.get(name))
            if value is not None:
                size, unit = value, normalise_unit(pixels.get(name + "Unit", default_unit), kind)
        scale.append(size)
        units.append(unit)
    return Calibration(tuple(scale), tuple(units))


def from_imagej(metadata: Mapping[str, Any] | None, letters: str, resolution: Sequence[Any] = ()) -> Calibration:
    """The calibration of an ImageJ TIFF: ``unit``, ``spacing`` (Z), ``finterval`` (T) and the X/Y resolution.

    ``resolution`` is the first page's ``(XResolution, YResolution)`` tag
    values, in pixels per unit (fractions as ``(numerator, denominator)``).
    ``yunit`` and ``zunit`` override ``unit`` on their axis; ``tunit`` names the
    time unit (default seconds). An axis whose unit is a pixel or unknown keeps
    its size with no unit.

    >>> from_imagej({"unit": "micron", "spacing": 2.0}, "ZYX", [(2, 1), (4, 1)])
    Calibration(scale=(2.0, 0.25, 0.5), units=('micrometer', 'micrometer', 'micrometer'))
    """
    metadata = metadata or {}
    x_unit = normalise_unit(metadata.get("unit"))
    units_of = {"X": x_unit, "Y": normalise_unit(metadata.get("yunit")) or x_unit,
                "Z": normalise_unit(metadata.get("zunit")) or x_unit,
                "T": normalise_unit(metadata.get("tunit", "s"), "time")}
    sizes = {"X": _per_pixel(resolution[0]) if len(resolution) > 0 else None,
             "Y": _per_pixel(resolution[1]) if len(resolution) > 1 else None,
             "Z": _positive(metadata.get("spacing")), "T": _positive(metadata.get("finterval"))}
    scale, units = [], []
    for letter in letters:
        size = sizes.get(letter)
        scale.append(1.0 if size is None else size)
        units.append(None if size is None else units_of.get(letter))
    return Calibration(tuple(scale), tuple(units))


def from_ngff(attrs: Mapping[str, Any], component: str, ndim: int) -> Calibration:
    """The calibration OME-Zarr metadata (NGFF 0.4 or 0.5) gives the dataset at ``component``.

    Its scale is the dataset's ``scale`` transformation times the multiscale's
    own (if any); units come from the axes. Anything missing or malformed: scale
    1, no unit.

    >>> attrs = {"ome": {"multiscales": [{"axes": [{"name": "y", "type": "space", "unit": "micrometer"},
    ...     {"name": "x", "type": "space", "unit": "micrometer"}],
    ...     "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]}]}}
    >>> from_ngff(attrs, "0", 2)
    Calibration(scale=(0.5, 0.5), units=('micrometer', 'micrometer'))
    """
    ome = attrs.get("ome", attrs)
    try:
        multiscale = ome["multiscales"][0]
        dataset = next(d for d in multiscale["datasets"] if d.get("path") == component)
    except (KeyError, IndexError, TypeError, StopIteration, AttributeError):
        return Calibration.none(ndim)
    scale = [1.0] * ndim
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        vector = _scale_vector(transforms, ndim)
        scale = [a * b for a, b in zip(scale, vector)]
    units: list[str | None] = [None] * ndim
    axes = multiscale.get("axes")
    if isinstance(axes, list) and len(axes) == ndim:
        for position, axis in enumerate(axes):
            if isinstance(axis, Mapping):
                kind = axis.get("type") or ("time" if axis.get("name") == "t" else "space")
                units[position] = normalise_unit(axis.get("unit"), kind)
    if not all(math.isfinite(s) and s > 0 for s in scale):
        scale = [1.0] * ndim
    return Calibration(tuple(scale), tuple(units))


def pyramid_factors(shape: Sequence[int], spatial: Sequence[int], min_size: int = PYRAMID_MIN_SIZE) -> list[tuple[int, ...]]:
    """The downsampling factor of every lower-resolution level, per axis, relative to level 0.

    Each level halves every axis of ``spatial`` whose halved size (rounded
    down) still holds at least ``min_size`` pixels; the other axes (channel,
    time, short spatial axes) keep their size. Levels are added while some
    axis halves, so a small image gets none.

    >>> pyramid_factors((128, 512, 512), spatial=(0, 1, 2))
    [(1, 2, 2)]
    >>> pyramid_factors((3, 2100, 1000), spatial=(1, 2))
    [(1, 2, 2), (1, 4, 2), (1, 8, 2)]
    >>> pyramid_factors((64, 256, 256), spatial=(0, 1, 2))
    []
    """
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    current = [int(n) for n in shape]
    factors = [1] * len(current)
    levels = []
    while True:
        halve = [axis for axis in spatial if current[axis] // 2 >= min_size]
        if not halve:
            return levels
        for axis in halve:
            current[axis] //= 2
            factors[axis] *= 2
        levels.append(tuple(factors))


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Shape of a pyramid level: each axis divided by its factor, rounded down (whole windows only).

    >>> level_shape((5, 530, 521), (1, 2, 4))
    (5, 265, 130)
    """
    return tuple(int(n) // int(f) for n, f in zip(shape, factors))


def multiscale(
    name: str,
    axes: Sequence[str],
    axis_types: Mapping[str, str],
    calibration: Calibration,
    levels: Sequence[tuple[int, ...]] = (),
    *,
    centred: bool = False,
) -> dict[str, Any]:
    """One OME-NGFF 0.5 ``multiscales`` entry: the axes with their units, level 0 and the given levels.

    Level ``k`` (path ``"k"``) has scale ``calibration.scale * levels[k-1]``.
    With ``centred`` (levels made by averaging windows), a level's pixel sits at
    the centre of its window: a translation of ``(factor - 1) / 2`` level-0
    pixels; without (levels made by taking every n-th pixel), none.

    >>> entry = multiscale("m", "yx", {"y": "space", "x": "space"}, Calibration((0.5, 0.5), ("micrometer",) * 2), [(2, 2)],
    ...                    centred=True)
    >>> entry["axes"][0], entry["datasets"][1]["coordinateTransformations"]
    ({'name': 'y', 'type': 'space', 'unit': 'micrometer'}, [{'type': 'scale', 'scale': [1.0, 1.0]}, {'type': 'translation', 'translation': [0.25, 0.25]}])
    """
    if calibration.ndim != len(axes):
        raise ValueError(f"calibration has {calibration.ndim} axes but the image has {len(axes)}")
    described = []
    for name_, unit in zip(axes, calibration.units):
        axis = {"name": name_, "type": axis_types[name_]}
        if unit is not None and unit in (SPACE_UNITS if axis["type"] == "space" else TIME_UNITS):
            axis["unit"] = unit
        described.append(axis)
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(calibration.scale)}]}]
    for number, factors in enumerate(levels, start=1):
        if len(factors) != len(axes):
            raise ValueError(f"pyramid level {number} has {len(factors)} factors for {len(axes)} axes")
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [s * f for s, f in zip(calibration.scale, factors)]}
        ]
        if centred and any(f > 1 for f in factors):
            shift = [(f - 1) / 2 * s for s, f in zip(calibration.scale, factors)]
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(number), "coordinateTransformations": transforms})
    return {"name": name, "axes": described, "datasets": datasets}


def label_colors(count: int) -> list[dict[str, Any]]:
    """``image-label`` colours for label values 0..count: 0 transparent, the others as the previews colour them.

    >>> colors = label_colors(2)
    >>> colors[0], [c["label-value"] for c in colors]
    ({'label-value': 0, 'rgba': [0, 0, 0, 0]}, [0, 1, 2])
    """
    import numpy as np

    from tasks.preview import label_colours  # the colours of the UI pictures and `haloflow inspect`

    values = np.arange(count + 1, dtype=np.uint64)
    rgb = label_colours(values)
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colors += [{"label-value": int(v), "rgba": [*map(int, rgb[v]), 255]} for v in values[1:]]
    return colors


def image_label(max_label: int | None, source: str | None = None) -> dict[str, Any]:
    """The ``image-label`` block of a label store (OME-NGFF 0.5).

    ``colors`` lists a colour per label value 0..max_label (0 transparent)
    when there are at most :data:`MAX_LABEL_COLORS` labels; beyond that it is
    left out and viewers pick their own. ``source`` is the relative path of
    the image the labels were made from, if it is an OME-Zarr image.

    >>> image_label(1, "../02_threshold.ome.zarr")["source"]
    {'image': '../02_threshold.ome.zarr'}
    >>> "colors" in image_label(10**6)
    False
    """
    block: dict[str, Any] = {"version": "0.5"}
    if max_label is not None and 0 <= max_label <= MAX_LABEL_COLORS:
        block["colors"] = label_colors(int(max_label))
    if source is not None:
        block["source"] = {"image": source}
    return block


def common_unit(calibration: Calibration, spatial: Sequence[int]) -> tuple[tuple[float, ...], str] | None:
    """The spatial pixel sizes in one unit (the last spatial axis'), or ``None`` unless every spatial axis has one.

    >>> common_unit(Calibration((500.0, 0.5, 0.5), ("nanometer", "micrometer", "micrometer")), (0, 1, 2))
    ((0.5, 0.5, 0.5), 'micrometer')
    >>> common_unit(Calibration((2.0, 0.5), (None, "micrometer")), (0, 1)) is None
    True
    """
    units = [calibration.units[axis] for axis in spatial]
    if not units or any(u not in SPACE_UNITS for u in units):
        return None
    target = units[-1]
    sizes = tuple(
        float(Fraction(calibration.scale[axis]) * _metres(u) / _metres(target)) for axis, u in zip(spatial, units)
    )
    return sizes, target


def _metres(unit: str) -> Fraction:
    """A space unit's length in metres, exactly as written (so 500 nm is exactly 0.5 µm)."""
    return Fraction(repr(SPACE_UNITS[unit]))


def _positive(value: Any) -> float | None:
    """A positive finite float from a number or text, else ``None``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _per_pixel(resolution: Any) -> float | None:
    """Pixel size from a resolution in pixels per unit (a number or a ``(numerator, denominator)`` pair)."""
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        numerator, denominator = (_positive(v) for v in resolution)
        pixels = None if numerator is None or denominator is None else numerator / denominator
    else:
        pixels = _positive(resolution)
    return None if pixels is None else 1.0 / pixels


def _scale_vector(transforms: Any, ndim: int) -> list[float]:
    """The ``scale`` vector of a list of coordinate transformations (ones if none or malformed)."""
    if isinstance(transforms, list):
        for transform in transforms:
            if isinstance(transform, Mapping) and transform.get("type") == "scale":
                vector = transform.get("scale")
                if isinstance(vector, list) and len(vector) == ndim and all(_positive(v) for v in vector):
                    return [float(v) for v in vector]
    return [1.0] * ndim
