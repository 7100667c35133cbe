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


def served_flows(spec_path: str | None = None, *, cron: str | None = None, interval: float | None = None):
    """The flows to serve, each with its deployment's settings: both flows, and a scheduled one for ``spec_path`` if given."""
    from prefect.deployments.runner import EntrypointType

    from flows import batch_flow, large_image_flow

    # By module path: runs import ``flows.pipeline``, so Dask workers can unpickle what they get.
    common = {"tags": ["haloflow"], "entrypoint_type": EntrypointType.MODULE_PATH}
    served = [
        (large_image_flow, {"name": "large-image", "description": DESCRIPTIONS["large-image"], **common}),
        (batch_flow, {"name": "batch", "description": DESCRIPTIONS["batch"], **common}),
    ]
    if spec_path is not None:
        spec = load_spec(spec_path)
        served.append((batch_flow if spec.flow == "batch" else large_image_flow, {
            "name": Path(spec_path).stem,
            "parameters": scheduled_parameters(spec),
            "cron": cron,
            "interval": interval,
            "description": f"{spec.flow} pipeline from {Path(spec_path).name}",
            **{**common, "tags": ["haloflow", "scheduled"]},
        }))
    elif cron or interval:
        raise ValueError("--cron and --interval need --spec: the pipeline the schedule runs")
    return served


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
    """Serve the deployments until interrupted.

    The flows are given to Prefect's runner as objects (``Runner.add_flow``),
    so that each run starts from the flow itself, forked from a process that
    has imported it (:mod:`deployments.forked_runs`), instead of a new
    ``python -m prefect.engine`` that imports Prefect and the flow by its
    entrypoint (about 4 s before a run's first step).
    """
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from deployments.forked_runs import forked_flow_runs
    from deployments.run_events import start_runs_on_events
    from flows.prefect_settings import reuse_prefect_settings

    set_data_roots(list(data_roots))
    reuse_prefect_settings()  # each run's start serializes this process's settings once, not once per run
    served = served_flows(spec_path, cron=cron, interval=interval)
    runner = Runner(pause_on_shutdown=True, limit=limit)  # queries at Prefect's interval, and on each new run
    for flow, settings in served:
        runner.add_flow(flow, **settings)
    print("haloflow: deployments served: " + ", ".join(f"{flow.name}/{settings['name']}" for flow, settings in served),
          flush=True)
    with forked_flow_runs(), start_runs_on_events():
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal):
            pass
