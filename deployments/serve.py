"""Serve the flows as deployments a Prefect server's UI (and schedules) can run.

``haloflow serve`` serves ``large-image/large-image`` and ``batch/batch``, with
their parameters as forms; ``--spec SPEC.yaml --cron "0 2 * * *"`` (or
``--interval SECONDS``) adds a scheduled deployment running that spec, named
after the file. ``--data-root DIR`` (repeatable) confines every path of the
runs it serves to those folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flows.spec import DATA_ROOTS_ENV, PipelineSpec, load_spec

DESCRIPTIONS = {
    "large-image": "One image too large for memory, processed chunk by chunk; results equal scikit-image on the whole image.",
    "batch": "Many images, each processed on its own; one table with an image column.",
}


def scheduled_parameters(spec: PipelineSpec) -> dict[str, Any]:
    """A spec as flow parameters (its ``flow`` field chooses the deployment's flow)."""
    return spec.model_dump(mode="json", exclude={"flow"}, exclude_none=True)


def build_deployments(spec_path: str | None = None, *, cron: str | None = None, interval: float | None = None):
    """The deployments to serve: both flows, and a scheduled one for ``spec_path`` if given."""
    from prefect.deployments.runner import EntrypointType

    from flows import batch_flow, large_image_flow

    # By module path: runs import ``flows.pipeline``, so Dask workers can unpickle what they get.
    common = {"tags": ["haloflow"], "entrypoint_type": EntrypointType.MODULE_PATH}
    deployments = [
        large_image_flow.to_deployment(name="large-image", description=DESCRIPTIONS["large-image"], **common),
        batch_flow.to_deployment(name="batch", description=DESCRIPTIONS["batch"], **common),
    ]
    if spec_path is not None:
        spec = load_spec(spec_path)
        flow = batch_flow if spec.flow == "batch" else large_image_flow
        deployments.append(
            flow.to_deployment(
                name=Path(spec_path).stem,
                parameters=scheduled_parameters(spec),
                cron=cron,
                interval=interval,
                description=f"{spec.flow} pipeline from {Path(spec_path).name}",
                **{**common, "tags": ["haloflow", "scheduled"]},
            )
        )
    elif cron or interval:
        raise ValueError("--cron and --interval need --spec: the pipeline the schedule runs")
    return deployments


def set_data_roots(roots: list[str]) -> list[Path]:
    """Confine the runs this process serves (they inherit its environment) to ``roots``."""
    resolved = []
    for root in roots:
        path = Path(os.path.realpath(os.path.expanduser(root)))
        if not path.is_dir():
            raise ValueError(f"--data-root {root}: not a folder")
        resolved.append(path)
    if resolved:
        os.environ[DATA_ROOTS_ENV] = os.pathsep.join(str(p) for p in resolved)
    return resolved


def serve(spec_path: str | None = None, *, cron: str | None = None, interval: float | None = None,
          data_roots: list[str] = (), limit: int | None = None) -> None:
    """Serve the deployments until interrupted."""
    from prefect import serve as prefect_serve

    set_data_roots(list(data_roots))
    prefect_serve(*build_deployments(spec_path, cron=cron, interval=interval), limit=limit)
