"""Served runs start when the server schedules them, not at the runner's next query.

Prefect's runner asks the server for runs to start every
``PREFECT_RUNNER_POLL_FREQUENCY`` (10 s): a run started from the UI waits
for that query. Querying 4 times a second instead, as ``haloflow serve``
used to, made runs start sooner but cost the server 6-9 % of a core with
nothing to do. It also broke runs: on SQLite each query is a write (the
deployments' ``last_polled``), and a ``create_flow_run`` (the UI's Run)
whose transaction has read the deployment before such a write commits
fails to insert its run after it, with 503 "database is locked" (the
server's log names the ``INSERT INTO flow_run``). That refused 2 of 20
served runs' calls, and 2 of 20 again, on 2026-12-02; none of 2 x 20 with
the events.

:func:`start_runs_on_events` has the runner listen to the server's event
stream for its deployments' ``prefect.flow-run.Scheduled`` events, and query
once for each, as a query at its interval would. The event arrives 0.06-0.09
s after ``create_flow_run`` answers. The periodic queries stay at Prefect's
interval: they pick up a run if the stream is down (the listener opens it
again every :data:`REOPEN_SECONDS`) and the scheduled runs a schedule makes
ahead of time. Where Prefect's runner is no longer built this way, nothing
changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: The event the server emits when a run of a deployment is scheduled (the UI's Run, a schedule, the API).
SCHEDULED_EVENT = "prefect.flow-run.Scheduled"

#: Seconds before the event stream is opened again after it failed or closed.
REOPEN_SECONDS = 10.0


@contextlib.contextmanager
def start_runs_on_events(reopen_seconds: float = REOPEN_SECONDS, subscriber: Callable[..., Any] | None = None
                         ) -> Iterator[bool]:
    """Within the block, Prefect runners query for runs as soon as one of their deployments' runs is scheduled.

    ``subscriber``: Prefect's ``get_events_subscriber`` unless given. Yields
    whether Prefect's poller could be changed.
    """
    try:
        from prefect.runner._scheduled_run_poller import ScheduledRunPoller
    except ImportError:
        yield False
        return
    run = getattr(ScheduledRunPoller, "run", None)
    if run is None or getattr(ScheduledRunPoller, "_get_and_submit_flow_runs", None) is None:
        yield False
        return
    if subscriber is None:
        from prefect.events.clients import get_events_subscriber as subscriber

    async def run_listening(self) -> None:
        import anyio

        async with anyio.create_task_group() as group:
            group.start_soon(query_on_scheduled_runs, self, subscriber, reopen_seconds)
            await run(self)
            group.cancel_scope.cancel()

    ScheduledRunPoller.run = run_listening
    try:
        yield True
    finally:
        ScheduledRunPoller.run = run


async def query_on_scheduled_runs(poller, subscriber: Callable[..., Any], reopen_seconds: float) -> None:
    """Query for runs once as the event stream opens, then once per scheduled-run event, until the poller stops."""
    import anyio
    from prefect.logging import get_logger

    logger = get_logger("haloflow.serve")
    while not poller.stopping:
        try:
            async with subscriber(filter=scheduled_runs_filter(deployment_ids(poller))) as events:
                await poller._get_and_submit_flow_runs()  # a run scheduled before the stream was open
                async for _ in events:
                    if poller.stopping:
                        return
                    await poller._get_and_submit_flow_runs()
        except Exception as error:  # the periodic queries go on meanwhile
            logger.debug("haloflow serve: the event stream failed (%s); opened again in %g s", error, reopen_seconds)
        await anyio.sleep(reopen_seconds)


def deployment_ids(poller) -> set:
    """The poller's deployments (none known: every deployment's runs wake it, which only adds queries)."""
    registry = getattr(poller, "_deployment_registry", None)
    found = getattr(registry, "get_deployment_ids", None)
    return set(found()) if callable(found) else set()


def scheduled_runs_filter(deployments: set):
    """Prefect's event filter for the scheduled-run events of these deployments (of any deployment if none)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    related = EventRelatedFilter(id=sorted(f"prefect.deployment.{d}" for d in deployments)) if deployments else None
    return EventFilter(event=EventNameFilter(name=[SCHEDULED_EVENT]), related=related)
