"""tasks.cluster on a real cluster: a stage whose flow run goes away stops its chunk tasks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import dask
import distributed
import pytest

from tasks.cluster import StageCancelled, compute_each, compute_on_cluster

# The stage and chunk functions below travel to the workers by value (this module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CHUNKS = 40


def _chunk(i: int, log: str) -> int:
    with open(log, "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.25)
    return i


def _stage(log: str, how: str) -> str:
    """What a stage task does: compute many chunk tasks from inside a worker."""
    chunks = [dask.delayed(_chunk)(i, log, dask_key_name=f"chunk-{i}") for i in range(CHUNKS)]
    try:
        if how == "each":
            compute_each(chunks)
        else:
            compute_on_cluster(*chunks)
    except StageCancelled as error:
        Path(log).with_suffix(".cancelled").write_text(str(error))
        raise
    return "finished"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def shared_cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster:
        yield cluster.scheduler_address


@pytest.mark.slow
@pytest.mark.parametrize("how", ["each", "on_cluster"])
def test_a_stage_whose_client_goes_away_cancels_its_chunk_tasks(shared_cluster, tmp_path, how):
    log = tmp_path / "chunks.log"
    flow_run = distributed.Client(shared_cluster)  # the flow run's client; closing it is the run going away
    stage = flow_run.submit(_stage, str(log), how, pure=False)  # held, as a flow run holds its stage task
    assert _wait_for(lambda: _lines(log) >= 4, 30), "the stage's chunk tasks did not start"
    flow_run.close()
    del stage

    with distributed.Client(shared_cluster) as other:
        assert _wait_for(lambda: not any(other.processing().values()), 10), "chunk tasks still run on the cluster"
        ran = _lines(log)
        time.sleep(1)
        assert _lines(log) == ran < CHUNKS  # nothing more started, and not all of them ran
    message = log.with_suffix(".cancelled").read_text()
    assert "released by the Dask scheduler" in message and "unfinished chunk task(s) were cancelled" in message


@pytest.mark.slow
def test_a_stage_whose_client_stays_computes_every_chunk(shared_cluster, tmp_path):
    log = tmp_path / "chunks.log"
    with distributed.Client(shared_cluster) as flow_run:
        assert flow_run.submit(_stage, str(log), "each", pure=False).result(timeout=60) == "finished"
    assert sorted(map(int, log.read_text().split())) == list(range(CHUNKS))
    assert not log.with_suffix(".cancelled").exists()
