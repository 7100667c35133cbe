"""Pure image operations on NumPy blocks, and the op registry."""

from .filters import gaussian, median
from .halo import gaussian_halo, no_halo, size_halo
from .label import face_pairs, label_block, merge_equivalences, structure
from .measure import block_partials, merge_partials, regionprops_columns
from .registry import OPS, AnyOpParams, OpInfo, OpParams, get_op
from .threshold import apply_threshold, bin_centers, block_histogram, threshold_from_histogram

__all__ = [
    "OPS", "AnyOpParams", "OpInfo", "OpParams", "apply_threshold", "bin_centers", "block_histogram",
    "block_partials", "face_pairs", "gaussian", "gaussian_halo", "get_op", "label_block",
    "median", "merge_equivalences", "merge_partials", "no_halo", "regionprops_columns",
    "size_halo", "structure", "threshold_from_histogram",
]
