"""Entrypoints for ``prefect.yaml``: the flows, imported from their package.

Prefect loads a file entrypoint as a loose module named after the file; a flow
*defined* there would be pickled by reference to that loose module, which Dask
workers cannot import. Re-exporting the flows keeps them in ``flows.pipeline``.
"""

from flows.pipeline import batch_flow, large_image_flow

__all__ = ["batch_flow", "large_image_flow"]
