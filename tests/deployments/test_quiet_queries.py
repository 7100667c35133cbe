"""``deployments.quiet_queries``: the runner's queries for new runs, fewer while a run is in flight."""

from __future__ import annotations

import asyncio
from unittest import mock

from prefect.runner._scheduled_run_poller import ScheduledRunPoller

from deployments.quiet_queries import quiet_queries_while_running


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _poller() -> tuple[ScheduledRunPoller, list[str]]:
    """Prefect's poller, its API query and submission replaced by a record of the queries made."""
    arguments = {name: mock.Mock() for name in (
        "client", "limit_manager", "deployment_registry", "resolve_starter", "runs_task_group", "process_manager",
        "state_proposer", "hook_runner", "cancellation_manager", "get_attempt_conclusion")}
    poller = ScheduledRunPoller(query_seconds=0.25, prefetch_seconds=10, storage_objs=[], **arguments)
    queries = []

    async def query():
        queries.append("query")
        return []

    async def submit(flow_run_response, task_group):
        pass

    poller._get_scheduled_flow_runs = query
    poller._submit_scheduled_flow_runs = submit
    return poller, queries


def _ticks(poller: ScheduledRunPoller, clock: Clock, seconds: list[float], task_group=None) -> None:
    async def run():
        for at in seconds:
            clock.now = 100.0 + at
            await poller._get_and_submit_flow_runs(task_group)

    asyncio.run(run())


def test_with_no_run_in_flight_every_query_is_made():
    clock = Clock()
    poller, queries = _poller()
    with quiet_queries_while_running(2.0, clock) as changed:
        assert changed
        _ticks(poller, clock, [0, 0.25, 0.5, 0.75])
    assert len(queries) == 4


def test_with_a_run_in_flight_one_query_every_busy_interval_then_every_one_again():
    clock = Clock()
    poller, queries = _poller()
    with quiet_queries_while_running(2.0, clock):
        _ticks(poller, clock, [0])
        poller._submitting_flow_run_ids.add("a run")
        _ticks(poller, clock, [0.25, 0.5, 1.75])  # within 2 s of the last query: skipped
        assert len(queries) == 1
        _ticks(poller, clock, [2.0, 2.25, 3.9, 4.0])  # 2 s after it, then 2 s after that
        assert len(queries) == 3
        poller._submitting_flow_run_ids.clear()  # the run ended: every query again
        _ticks(poller, clock, [4.25, 4.5])
        assert len(queries) == 5
        _ticks(poller, clock, [4.75], task_group=mock.Mock())  # run_once's query is always made
        poller._submitting_flow_run_ids.add("another run")
        _ticks(poller, clock, [4.8], task_group=mock.Mock())
        assert len(queries) == 7


def test_leaving_the_block_gives_prefect_its_own_method_back():
    own = ScheduledRunPoller._get_and_submit_flow_runs
    with quiet_queries_while_running():
        assert ScheduledRunPoller._get_and_submit_flow_runs is not own
    assert ScheduledRunPoller._get_and_submit_flow_runs is own


def test_a_prefect_without_the_poller_method_is_left_alone(monkeypatch):
    monkeypatch.delattr(ScheduledRunPoller, "_get_and_submit_flow_runs")
    with quiet_queries_while_running() as changed:
        assert not changed
        assert not hasattr(ScheduledRunPoller, "_get_and_submit_flow_runs")
