"""Imported ahead of a flow run: what Prefect, Dask and Pillow import only once a run is under way.

A flow run's process has imported Prefect's engine and the flows, yet on
its way to the first stage, and while it publishes a stage's artifacts, it
still imports about 50 ms of modules on first use (``PYTHONPROFILEIMPORTTIME``
in served runs): Prefect's flow visualisation (graphviz) and log observers,
FastAPI's encoders (as a flow called in the process creates its run),
anyio's streams, rich's emoji table, the Tornado and metadata modules a Dask
client needs to connect, and Pillow's plugins for the common formats (a
thumbnail's first save loads them).

Importing this module imports those, and reads the packages' versions a
run records (:func:`flows.record.package_versions`): ``haloflow serve``'s fork server
preloads it (:mod:`deployments.forked_runs`), so each served run starts
with them; ``haloflow run`` imports it in the background while the Prefect
server starts. A module missing from another version of a library is
skipped: this only saves time.
"""

from __future__ import annotations

import importlib

from flows.prefect_settings import reuse_prefect_settings
from flows.record import package_versions

#: Modules a run imports lazily, first used on its way to its first stage or by its artifacts.
LAZY_IMPORTS = (
    "prefect.utilities.visualization",  # the flow engine, at a run's start
    "prefect._internal.observers",
    "fastapi.encoders",  # a flow called here, as it creates its run (Flow.serialize_parameters): 0.12-0.2 s
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "rich._emoji_codes",  # the first log line on the console
    "tornado.platform.asyncio",  # the Dask client, connecting
    "importlib_metadata._adapters",
    "email.policy",
    "tifffile.zarr",
    "PIL.Image",
)


def _import_lazy_modules() -> list[str]:
    """Import :data:`LAZY_IMPORTS` and Pillow's common plugins; the names of the modules that could be imported."""
    imported = []
    for name in LAZY_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        imported.append(name)
    if "PIL.Image" in imported:
        from PIL import Image

        Image.preinit()  # the common formats' plugins, as a thumbnail's first save loads them
    return imported


IMPORTED = _import_lazy_modules()
package_versions()  # read once here for every run forked from this process (flows.record)
reuse_prefect_settings()  # a stage's submission serializes the run's settings once, not once per stage
