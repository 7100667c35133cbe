"""The filter family: box, order and derivative filters, band-pass, top-hat, clipping, rescaling, local threshold.

Names and defaults follow SciPy / scikit-image. Every local op's halo is a
function of its parameters (:mod:`imageops.halo`); ``rescale_intensity`` is
global (its percentiles are exact over the whole image, see
``tasks.lift_filters``).

Edge modes are :data:`imageops.registry.Mode` (no ``'wrap'``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from . import filters, halo, threshold
from .registry import Mode, OpInfo, OpParams, register


_MODE_DESCRIPTION = "How the image is extended beyond its edges."


class UniformParams(OpParams):
    """Mean over a box (scipy.ndimage.uniform_filter on float32)."""

    op: Literal["uniform"] = "uniform"
    size: int = Field(gt=0, le=255, title="Size", description="Width of the box, in voxels, on every axis.")
    mode: Mode = Field("nearest", title="Edge mode", description=_MODE_DESCRIPTION)


class MinimumParams(OpParams):
    """Smallest value over a box (scipy.ndimage.minimum_filter)."""

    op: Literal["minimum"] = "minimum"
    size: int = Field(gt=0, le=255, title="Size", description="Width of the box, in voxels, on every axis.")
    mode: Mode = Field("nearest", title="Edge mode", description=_MODE_DESCRIPTION)


class MaximumParams(OpParams):
    """Largest value over a box (scipy.ndimage.maximum_filter)."""

    op: Literal["maximum"] = "maximum"
    size: int = Field(gt=0, le=255, title="Size", description="Width of the box, in voxels, on every axis.")
    mode: Mode = Field("nearest", title="Edge mode", description=_MODE_DESCRIPTION)


class SobelParams(OpParams):
    """Sobel gradient magnitude (skimage.filters.sobel)."""

    op: Literal["sobel"] = "sobel"
    mode: Mode = Field("reflect", title="Edge mode", description=_MODE_DESCRIPTION)


class LaplaceParams(OpParams):
    """Discrete Laplacian (scipy.ndimage.laplace on float32)."""

    op: Literal["laplace"] = "laplace"
    mode: Mode = Field("reflect", title="Edge mode", description=_MODE_DESCRIPTION)


class GaussianLaplaceParams(OpParams):
    """Laplacian of Gaussian (scipy.ndimage.gaussian_laplace on float32)."""

    op: Literal["gaussian_laplace"] = "gaussian_laplace"
    sigma: float = Field(gt=0, le=1000, title="Sigma", description="Standard deviation of the Gaussian, in voxels.")
    truncate: float = Field(4.0, gt=0, le=100, title="Truncate", description="Kernel radius in standard deviations.")
    mode: Mode = Field("reflect", title="Edge mode", description=_MODE_DESCRIPTION)


class DifferenceOfGaussiansParams(OpParams):
    """Band-pass filter (skimage.filters.difference_of_gaussians)."""

    op: Literal["difference_of_gaussians"] = "difference_of_gaussians"
    low_sigma: float = Field(gt=0, le=1000, title="Low sigma", description="Sigma of the narrower Gaussian, in voxels.")
    high_sigma: float | None = Field(
        None, gt=0, le=1000, title="High sigma",
        description="Sigma of the wider Gaussian, in voxels; default 1.6 times the low sigma.",
    )
    truncate: float = Field(4.0, gt=0, le=100, title="Truncate", description="Kernel radius in standard deviations.")
    mode: Mode = Field("nearest", title="Edge mode", description=_MODE_DESCRIPTION)

    @model_validator(mode="after")
    def _high_not_below_low(self):
        if self.high_sigma is not None and self.high_sigma < self.low_sigma:
            raise ValueError(f"high_sigma ({self.high_sigma}) must be >= low_sigma ({self.low_sigma})")
        return self


class WhiteTophatParams(OpParams):
    """Bright details smaller than a disk / ball (skimage.morphology.white_tophat)."""

    op: Literal["white_tophat"] = "white_tophat"
    radius: int = Field(gt=0, le=100, title="Radius", description="Radius of the disk (2D) or ball (3D), in voxels.")
    mode: Mode = Field("reflect", title="Edge mode", description=_MODE_DESCRIPTION)


class ClipParams(OpParams):
    """Values limited to [low, high] (np.clip), keeping the dtype."""

    op: Literal["clip"] = "clip"
    low: float = Field(allow_inf_nan=False, title="Low", description="Smallest value kept.")
    high: float = Field(allow_inf_nan=False, title="High", description="Largest value kept.")

    @model_validator(mode="after")
    def _low_not_above_high(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class RescaleIntensityParams(OpParams):
    """Linear stretch of the image's [low, high] percentiles onto out_range (skimage.exposure.rescale_intensity)."""

    op: Literal["rescale_intensity"] = "rescale_intensity"
    low_percentile: float = Field(
        0.0, ge=0, le=100, title="Low percentile", description="Percentile of the whole image mapped to out_range[0]."
    )
    high_percentile: float = Field(
        100.0, ge=0, le=100, title="High percentile", description="Percentile of the whole image mapped to out_range[1]."
    )
    out_range: tuple[float, float] = Field(
        (0.0, 1.0), title="Output range", description="The values the two percentiles are mapped to."
    )

    @model_validator(mode="after")
    def _ordered_and_finite(self):
        if self.low_percentile > self.high_percentile:
            raise ValueError(
                f"low_percentile ({self.low_percentile}) must be <= high_percentile ({self.high_percentile})"
            )
        if not all(np.isfinite(self.out_range)):
            raise ValueError(f"out_range must hold finite numbers, got {self.out_range}")
        return self


class ThresholdLocalParams(OpParams):
    """Mask image > local threshold (skimage.filters.threshold_local)."""

    op: Literal["threshold_local"] = "threshold_local"
    block_size: int = Field(
        gt=0, le=1001, title="Block size", description="Odd width of the neighbourhood, in voxels, on every axis."
    )
    offset: float = Field(
        0.0, allow_inf_nan=False, title="Offset", description="Subtracted from the local statistic."
    )
    method: Literal[threshold.LOCAL_METHODS] = Field(  # type: ignore[valid-type]
        "gaussian", title="Method",
        description="Local statistic: 'gaussian' (sigma (block_size - 1) / 6) or 'median'.",
    )
    mode: Mode = Field("reflect", title="Edge mode", description=_MODE_DESCRIPTION)

    @model_validator(mode="after")
    def _odd_block_size(self):
        if self.block_size % 2 == 0:
            raise ValueError(f"block_size must be odd, got {self.block_size}")
        return self


def _working_float(params, dtype) -> np.dtype:
    return filters.working_float(dtype)


def _skimage_float(params, dtype) -> np.dtype:
    return filters.skimage_float(dtype)


def _same_dtype(params, dtype) -> np.dtype:
    return np.dtype(dtype)


for _info in (
    OpInfo(
        "uniform", "1", UniformParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.size_halo(p.size, ndim),
        out_dtype=_working_float,
        block_fn=lambda block, p: filters.uniform(block, p.size, mode=p.mode),
        summary="Mean over a box of `size` voxels; float32 out (float64 stays).",
    ),
    OpInfo(
        "minimum", "1", MinimumParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.size_halo(p.size, ndim),
        out_dtype=_same_dtype,
        block_fn=lambda block, p: filters.minimum(block, p.size, mode=p.mode),
        summary="Minimum over a box of `size` voxels; keeps the dtype.",
    ),
    OpInfo(
        "maximum", "1", MaximumParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.size_halo(p.size, ndim),
        out_dtype=_same_dtype,
        block_fn=lambda block, p: filters.maximum(block, p.size, mode=p.mode),
        summary="Maximum over a box of `size` voxels; keeps the dtype.",
    ),
    OpInfo(
        "sobel", "1", SobelParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.radius_halo(1, ndim),
        out_dtype=_skimage_float,
        block_fn=lambda block, p: filters.sobel(block, mode=p.mode),
        summary="Sobel gradient magnitude as scikit-image; float64 out (float32 for float32).",
    ),
    OpInfo(
        "laplace", "1", LaplaceParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.radius_halo(1, ndim),
        out_dtype=_working_float,
        block_fn=lambda block, p: filters.laplace(block, mode=p.mode),
        summary="Discrete Laplacian; float32 out (float64 stays).",
    ),
    OpInfo(
        "gaussian_laplace", "1", GaussianLaplaceParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.gaussian_halo(p.sigma, p.truncate, ndim),
        out_dtype=_working_float,
        block_fn=lambda block, p: filters.gaussian_laplace(block, p.sigma, truncate=p.truncate, mode=p.mode),
        summary="Laplacian of Gaussian; float32 out (float64 stays).",
    ),
    OpInfo(
        "difference_of_gaussians", "1", DifferenceOfGaussiansParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.dog_halo(p.low_sigma, p.high_sigma, p.truncate, ndim),
        out_dtype=_skimage_float,
        block_fn=lambda block, p: filters.difference_of_gaussians(
            block, p.low_sigma, p.high_sigma, truncate=p.truncate, mode=p.mode
        ),
        summary="Band-pass difference of Gaussians as scikit-image; float64 out (float32 for float32).",
    ),
    OpInfo(
        "white_tophat", "1", WhiteTophatParams, "neighbourhood", ("image",), "image",
        halo=lambda p, ndim: halo.opening_halo(p.radius, ndim),
        out_dtype=_same_dtype,
        block_fn=lambda block, p: filters.white_tophat(block, p.radius, mode=p.mode),
        summary="Image minus its opening by a disk (2D) or ball (3D); keeps the dtype.",
    ),
    OpInfo(
        "clip", "1", ClipParams, "pointwise", ("image",), "image",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=_same_dtype,
        block_fn=lambda block, p: filters.clip(block, p.low, p.high),
        summary="Values limited to [low, high]; keeps the dtype.",
    ),
    OpInfo(
        "rescale_intensity", "1", RescaleIntensityParams, "global", ("image",), "image",
        halo=lambda p, ndim: halo.no_halo(ndim),
        out_dtype=_skimage_float,
        block_fn=lambda block, in_range, out_range: filters.rescale_intensity(block, in_range, out_range),
        summary="Whole-image percentiles stretched onto out_range; float64 out (float32 for float32).",
    ),
    OpInfo(
        "threshold_local", "1", ThresholdLocalParams, "neighbourhood", ("image",), "mask",
        halo=lambda p, ndim: halo.threshold_local_halo(p.block_size, p.method, ndim),
        out_dtype=lambda p, dtype: np.dtype(bool),
        block_fn=lambda block, p: threshold.threshold_local_mask(
            block, p.block_size, method=p.method, offset=p.offset, mode=p.mode
        ),
        summary="Mask image > local (Gaussian or median) threshold minus offset.",
    ),
):
    register(_info)
