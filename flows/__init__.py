"""Prefect flows of haloflow, the pipeline spec and the command line.

``from flows import large_image_flow, batch_flow`` imports Prefect; the
command line imports it only after it has chosen the Prefect API (a module
attribute looked up lazily), because Prefect reads its settings at import.
"""

__all__ = ["batch_flow", "large_image_flow"]


def __getattr__(name):
    if name in __all__:
        from flows import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
