"""tasks.stages: how a batch stage spreads its images over worker tasks."""

from __future__ import annotations

from functools import partial

import pytest

from tasks import stages


def _square(x):
    return x * x


@pytest.mark.parametrize("calls, threads, most, sizes", [
    (37, 2, None, [4] * 9 + [1]),  # 37 // (4 tasks per thread * 2 threads) = 4 per group
    (500, 2, None, [8] * 62 + [4]),  # at most MAX_GROUP per group
    (5, 2, None, [1] * 5),  # fewer images than threads want: one per task
    (40, 16, None, [1] * 40),
    (2000, 2, stages.MAX_LIGHT_GROUP, [64] * 31 + [16]),  # light calls (headers, table rows): larger groups
    (200, 2, stages.MAX_LIGHT_GROUP, [25] * 8),  # still 4 tasks per thread
])
def test_a_batch_stage_runs_its_images_in_groups_and_gives_the_results_in_order(monkeypatch, calls, threads, most,
                                                                                 sizes):
    monkeypatch.setattr(stages, "cluster_threads", lambda: threads)
    seen = []
    call_all = stages._call_all
    monkeypatch.setattr(stages, "_call_all", lambda group: seen.append(len(group)) or call_all(group))
    results = stages.run_in_groups([partial(_square, i) for i in range(calls)], most=most)
    assert results == [i * i for i in range(calls)]
    assert sorted(seen, reverse=True) == sizes


def test_no_calls_no_tasks():
    assert stages.run_in_groups([]) == []
