"""Pure image operations on NumPy blocks, and the op registry.

Importing the package registers every op family (``catalog*`` modules).
"""

from . import catalog, catalog_filters, catalog_masks  # noqa: F401  (register the op families)
from .channels import select_channel
from .filters import gaussian, median
from .halo import gaussian_halo, no_halo, size_halo
from .label import face_pairs, label_block, merge_equivalences, structure
from .measure import block_partials, merge_partials, regionprops_columns
from .registry import OPS, OpInfo, OpParams, all_params, get_op, register
from .threshold import apply_threshold, bin_centers, block_histogram, threshold_from_histogram

__all__ = [
    "OPS", "OpInfo", "OpParams", "all_params", "apply_threshold", "bin_centers", "block_histogram",
    "block_partials", "face_pairs", "gaussian", "gaussian_halo", "get_op", "label_block",
    "median", "merge_equivalences", "merge_partials", "no_halo", "regionprops_columns",
    "register", "select_channel", "size_halo", "structure", "threshold_from_histogram",
]
