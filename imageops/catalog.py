"""The core ops: smoothing, median, global threshold, labels, measurements and channel selection."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from . import filters, halo, measure, threshold
from .registry import Mode, OpInfo, OpParams, register


class GaussianParams(OpParams):
    """Gaussian smoothing (scipy.ndimage.gaussian_filter on float32)."""

    op: Literal["gaussian"] = "gaussian"
    sigma: float = Field(gt=0, le=1000, title="Sigma", description="Standard deviation of the kernel, in voxels.")
    truncate: float = Field(4.0, gt=0, le=100, title="Truncate", description="Kernel radius in standard deviations.")
    mode: Mode = Field("nearest", title="Edge mode", description="How the image is extended beyond its edges.")


class MedianParams(OpParams):
    """Median filter over a box (scipy.ndimage.median_filter)."""

    op: Literal["median"] = "median"
    size: int = Field(gt=0, le=255, title="Size", description="Width of the box, in voxels, on every axis.")
    mode: Mode = Field("nearest", title="Edge mode", description="How the image is extended beyond its edges.")


class ThresholdParams(OpParams):
    """Foreground mask image > t, with t global (skimage.filters.threshold_<method>) or given."""

    op: Literal["threshold"] = "threshold"
    method: Literal[threshold.METHODS] = Field(  # type: ignore[valid-type]
        "otsu", title="Method",
        description="How the threshold is chosen: as skimage.filters.threshold_<method> on the whole image "
        "(otsu, yen, isodata, triangle, minimum, mean, li), or manual (give the value).",
    )
    value: float | None = Field(None, title="Value", description="The threshold, for method 'manual' only.")

    @model_validator(mode="after")
    def _value_matches_method(self):
        if self.method == "manual" and self.value is None:
            raise ValueError("method 'manual' needs a value")
        if self.method != "manual" and self.value is not None:
            raise ValueError(f"value is only used with method 'manual', not {self.method!r}")
        return self


class LabelParams(OpParams):
    """Connected components of a mask (skimage.measure.label), exact across chunks."""

    op: Literal["label"] = "label"
    connectivity: int | None = Field(
        None, ge=1, le=3, title="Connectivity",
        description="Neighbours joined: 1 (faces) up to the number of axes (corners); default the number of axes.",
    )


class MeasureParams(OpParams):
    """Per-object measurements (skimage.measure.regionprops_table), merged across chunks."""

    op: Literal["measure"] = "measure"
    properties: list[Literal[measure.PROPERTIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["label", "area", "centroid"],
        min_length=1, title="Properties", description="Columns of the table, named as in regionprops_table.",
    )
    intensity: str | list[str] | None = Field(
        "input", title="Intensity image",
        description="'input' for the pipeline's input, the name of an earlier step, or empty for none; "
        "a list of them measures each image, columns suffixed -0, -1, ... in list order.",
    )

    @model_validator(mode="after")
    def _intensity_for_intensity_properties(self):
        if isinstance(self.intensity, list):
            if not self.intensity:
                raise ValueError("intensity: an empty list names no image; give names, or null for none")
            for index, name in enumerate(self.intensity):
                if not name:
                    raise ValueError(f"intensity[{index}]: an empty name")
                if name in self.intensity[:index]:
                    raise ValueError(f"intensity[{index}]: {name!r} is listed twice")
        wanted = [p for p in self.properties if p in measure.INTENSITY_PROPERTIES]
        if wanted and not self.intensity:
            raise ValueError(f"properties {wanted} need an intensity image")
        return self

    def intensity_refs(self) -> list[tuple[str, str]]:
        """Each intensity image named, with the field that names it: ``[("intensity[1]", "gaussian"), ...]``.

        >>> MeasureParams(intensity=["input", "smooth"]).intensity_refs()
        [('intensity[0]', 'input'), ('intensity[1]', 'smooth')]
        >>> MeasureParams(intensity="input").intensity_refs(), MeasureParams(intensity=None).intensity_refs()
        ([('intensity', 'input')], [])
        """
        if isinstance(self.intensity, list):
            return [(f"intensity[{index}]", name) for index, name in enumerate(self.intensity)]
        return [("intensity", self.intensity)] if self.intensity else []


class ChannelParams(OpParams):
    """One channel of a multichannel image, the channel axis dropped (segment it, then measure every channel)."""

    op: Literal["channel"] = "channel"
    index: int = Field(
        ge=0, title="Channel", description="The channel kept, from 0 along the input's channel axis.",
    )


def _gaussian_dtype(params, dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


for _info in (
    OpInfo(
        "gaussian", "1", GaussianParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.gaussian_halo(p.sigma, p.truncate, ndim),
        out_dtype=_gaussian_dtype,
        block_fn=lambda block, p: filters.gaussian(block, p.sigma, truncate=p.truncate, mode=p.mode),
        inner_fn=lambda block, p, margins: filters.gaussian_inner(block, p.sigma, margins, truncate=p.truncate,
                                                                  mode=p.mode),
        summary="Gaussian smoothing; float32 out.",
    ),
    OpInfo(
        "median", "1", MedianParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.size_halo(p.size, ndim),
        out_dtype=lambda p, dtype: np.dtype(dtype),
        block_fn=lambda block, p: filters.median(block, p.size, mode=p.mode),
        summary="Median over a box of `size` voxels; keeps the dtype.",
    ),
    OpInfo(
        "threshold", "1", ThresholdParams, "global", ("image",), "mask",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=lambda p, dtype: np.dtype(bool),
        block_fn=lambda block, value: threshold.apply_threshold(block, value),
        summary="Mask image > t; t from the global histogram (Otsu) or given.",
    ),
    OpInfo(
        "label", "1", LabelParams, "label", ("mask",), "labels",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=lambda p, dtype: np.dtype(np.uint32),
        summary="Connected components numbered 1..N, merged across chunk borders.",
    ),
    OpInfo(
        "measure", "1", MeasureParams, "table", ("labels",), "table",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=lambda p, dtype: np.dtype(np.float64),
        summary="Per-object table as regionprops_table, merged across chunks.",
    ),
    # Changes the shape (the channel axis goes): lifted on the whole array (tasks.lift.select_channel), not per block.
    OpInfo(
        "channel", "1", ChannelParams, "pointwise", ("image",), "image",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=lambda p, dtype: np.dtype(dtype),
        summary="One channel of the image; the channel axis is dropped, the dtype kept.",
    ),
):
    register(_info)
