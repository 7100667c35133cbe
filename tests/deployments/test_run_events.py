"""``deployments.run_events``: the runner queries for runs on each scheduled-run event of its deployments."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from unittest import mock

from prefect.runner._scheduled_run_poller import ScheduledRunPoller

from deployments.run_events import (SCHEDULED_EVENT, query_on_scheduled_runs, scheduled_runs_filter,
                                    start_runs_on_events)

DEPLOYMENTS = {uuid.UUID(int=1), uuid.UUID(int=2)}


def _poller() -> tuple[ScheduledRunPoller, list[str]]:
    """Prefect's poller for two deployments, its API query and submission replaced by a record of the queries made."""
    arguments = {name: mock.Mock() for name in (
        "client", "limit_manager", "resolve_starter", "runs_task_group", "process_manager",
        "state_proposer", "hook_runner", "cancellation_manager", "get_attempt_conclusion")}
    registry = mock.Mock()
    registry.get_deployment_ids.return_value = set(DEPLOYMENTS)
    poller = ScheduledRunPoller(query_seconds=600, prefetch_seconds=10, storage_objs=[],
                                deployment_registry=registry, **arguments)
    queries = []

    async def query():
        queries.append("query")
        return []

    async def submit(flow_run_response, task_group):
        pass

    poller._get_scheduled_flow_runs = query
    poller._submit_scheduled_flow_runs = submit
    return poller, queries


class Stream:
    """An event subscriber that gives ``events`` events on each opening, or fails to open ``failures`` times first."""

    def __init__(self, poller: ScheduledRunPoller, events: int, failures: int = 0, openings: int = 1):
        self.poller, self.events, self.failures, self.openings = poller, events, failures, openings
        self.filters, self.opened = [], 0

    @contextlib.asynccontextmanager
    async def __call__(self, filter=None, **_):
        self.filters.append(filter)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the event stream is down")
        self.opened += 1
        yield self._events()
        if self.opened >= self.openings:
            self.poller.stopping = True

    async def _events(self):
        for _ in range(self.events):
            yield mock.Mock()
        if self.events < 0:  # an open stream with no event yet
            await asyncio.Event().wait()


def test_one_query_when_the_stream_opens_and_one_per_scheduled_run_event():
    poller, queries = _poller()
    stream = Stream(poller, events=3)
    asyncio.run(query_on_scheduled_runs(poller, stream, reopen_seconds=0))
    assert len(queries) == 1 + 3
    (chosen,) = stream.filters
    assert chosen.event.name == [SCHEDULED_EVENT]
    assert set(chosen.related.id) == {f"prefect.deployment.{d}" for d in DEPLOYMENTS}


def test_a_stream_that_fails_or_closes_is_opened_again_and_the_queries_go_on():
    poller, queries = _poller()
    stream = Stream(poller, events=2, failures=2, openings=2)
    asyncio.run(query_on_scheduled_runs(poller, stream, reopen_seconds=0))
    assert len(stream.filters) == 4 and stream.opened == 2
    assert len(queries) == 2 * (1 + 2)


def test_events_arriving_once_the_runner_stops_start_nothing():
    poller, queries = _poller()
    poller.stopping = True
    asyncio.run(query_on_scheduled_runs(poller, Stream(poller, events=3), reopen_seconds=0))
    assert queries == []


def test_without_known_deployments_every_scheduled_run_wakes_it():
    chosen = scheduled_runs_filter(set())
    assert chosen.event.name == [SCHEDULED_EVENT] and chosen.related is None


def test_the_poller_runs_with_its_listener_and_leaving_the_block_gives_prefect_its_method_back(monkeypatch):
    """The listener runs beside the poller's own loop and ends with it."""
    poller, queries = _poller()

    async def own_loop(self):  # Prefect's periodic loop, made to end once the listener has queried
        while not queries:
            await asyncio.sleep(0.01)

    monkeypatch.setattr(ScheduledRunPoller, "run", own_loop)
    never_ending = Stream(poller, events=-1)
    with start_runs_on_events(reopen_seconds=0, subscriber=never_ending) as changed:
        assert changed and ScheduledRunPoller.run is not own_loop
        asyncio.run(asyncio.wait_for(poller.run(), 30))
    assert queries and ScheduledRunPoller.run is own_loop


def test_a_prefect_without_the_poller_loop_is_left_alone(monkeypatch):
    monkeypatch.delattr(ScheduledRunPoller, "run")
    with start_runs_on_events() as changed:
        assert not changed and not hasattr(ScheduledRunPoller, "run")
