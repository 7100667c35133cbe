"""Scaling out: a run goes to the cluster it is given, survives a lost worker, and refuses a cluster it cannot use.

The "remote" cluster is a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1, started as the README tells a user to; ``haloflow run`` is a
subprocess, as a user types it.  A worker on another machine without shared
storage is played by a worker in its own mount namespace, where the data
folder is an empty tmpfs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from flows.cli import main as cli_main
from flows.cluster import ClusterError, check_scheduler_answers, check_workers_reach, path_view
from flows.demo import demo_volume
from flows.runner import CLUSTER_ENV_VAR, find_free_port, make_task_runner

pytestmark = pytest.mark.slow

STEPS = [{"op": "gaussian", "sigma": 1.0}, {"op": "median", "size": 5}, {"op": "threshold"}]
REFUSED = "tcp://127.0.0.1:1"  # a well-formed address where nothing listens


def reference(image: np.ndarray) -> dict[str, np.ndarray]:
    """SciPy and scikit-image on the whole image."""
    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.0, mode="nearest")
    median = ndi.median_filter(smooth, size=5, mode="nearest")
    return {"01_gaussian": smooth, "02_median": median, "03_threshold": median > threshold_otsu(median)}


def assert_equals_reference(out: Path, image: np.ndarray) -> None:
    for name, expected in reference(image).items():
        got = zarr.open_array(str(out / f"{name}.ome.zarr"), path="0", mode="r")[...]
        np.testing.assert_allclose(got, expected, atol=1e-5 * float(np.ptp(expected)) if expected.dtype != bool else 0)


def write_spec(folder: Path, image: np.ndarray, chunks: list[int], **fields) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "volume.tif", image)
    out = folder / "out"
    spec = {"input": str(folder / "volume.tif"), "chunks": chunks, "steps": STEPS, "output": str(out), **fields}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, out


def haloflow(*args: str, env_cluster: str | None = REFUSED) -> subprocess.Popen:
    """``python -m flows.cli ...`` with the session's Prefect API; ``HALOFLOW_CLUSTER`` set to ``env_cluster``."""
    env = {k: v for k, v in os.environ.items() if k != CLUSTER_ENV_VAR}
    if env_cluster:
        env[CLUSTER_ENV_VAR] = env_cluster  # the lowest precedence: a run given any other choice ignores it
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


# -- a cluster of processes, as a user starts one ------------------------------------------

def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: whatever it started too
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


def dask_worker(address: str, folder: Path, name: str, *, hide: Path | None = None) -> list[str]:
    """``dask worker`` argv; with ``hide``, in a mount namespace where that folder is an empty tmpfs."""
    # No nanny: a killed worker stays dead (a restarted one would cost a cold start, seconds on 2 cores).
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
            "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", name, "--local-directory", str(folder / name)]
    if hide is None:
        return argv
    script = f'mount -t tmpfs none "{hide}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@contextmanager
def dask_cluster_processes(folder: Path, n_workers: int = 2, *, hide: Path | None = None):
    """A scheduler and ``n_workers`` worker processes on 127.0.0.1; yields the address."""
    import distributed

    folder.mkdir(parents=True, exist_ok=True)
    port = find_free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                         "--port", str(port), "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
                        folder / "scheduler.log")]
    try:
        processes += [_start(dask_worker(address, folder, f"w{i}", hide=hide), folder / f"w{i}.log")
                      for i in range(n_workers)]
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    with dask_cluster_processes(tmp_path_factory.mktemp("dask")) as address:
        yield address


def memory_counts(client) -> dict[str, int]:
    """Tasks the scheduler has seen finish, by key prefix (cumulative)."""
    return client.run_on_scheduler(
        lambda dask_scheduler: {name: p.state_counts["memory"] for name, p in dask_scheduler.task_prefixes.items()})


def finished_since(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(count - before.get(name, 0) for name, count in after.items())


def done_blocks(markers: Path) -> int:
    """Blocks a stage has marked done (a marker being written ends in .tmp)."""
    return len([n for n in os.listdir(markers) if not n.endswith(".tmp")]) if markers.is_dir() else 0


def wait_for_markers(markers: Path, at_least: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if done_blocks(markers) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError(f"{markers}: fewer than {at_least} blocks done before the run ended or time ran out")


# -- runs on a cluster ------------------------------------------------------------------------

def test_run_goes_to_the_cluster_given_and_equals_the_whole_image_reference(tmp_path, scheduler):
    """--cluster beats the spec's cluster and HALOFLOW_CLUSTER (both name a dead address); the scheduler ran the chunks."""
    import distributed

    image = demo_volume((24, 96, 96), n_objects=30, seed=4)
    spec, out = write_spec(tmp_path, image, [12, 48, 48], cluster=REFUSED)
    with distributed.Client(scheduler, set_as_default=False) as client:
        before = memory_counts(client)
        code, text = finish(haloflow("run", str(spec), "--cluster", scheduler))
        after = memory_counts(client)
    assert code == 0, text
    assert f"on the Dask cluster at {scheduler} (--cluster)" in text
    blocks = 2 * 2 * 2
    # The Prefect stage tasks and their chunk tasks ran on this scheduler's workers.
    assert after.get("image_stage", 0) - before.get("image_stage", 0) == len(STEPS)
    assert finished_since(before, after) >= len(STEPS) * (blocks + 1)
    assert_equals_reference(out, image)


def test_worker_killed_mid_stage_on_the_cluster_gives_the_right_result(tmp_path, scheduler):
    """The stage completes on the worker left (run last on this cluster: the killed worker is not restarted)."""
    import distributed

    image = demo_volume((32, 128, 128), n_objects=60, seed=5)
    spec, out = write_spec(tmp_path, image, [8, 32, 32])
    markers = out / "02_median.ome.zarr" / ".haloflow-done"
    with distributed.Client(scheduler, set_as_default=False) as client:
        run = haloflow("run", str(spec), "--cluster", scheduler)
        try:
            wait_for_markers(markers, 6, run)
            pids = client.run(os.getpid)
            victim = sorted(pids)[-1]
            done_at_kill = done_blocks(markers)
            os.kill(pids[victim], signal.SIGKILL)
            code, text = finish(run)
        finally:
            if run.poll() is None:
                run.kill()
        left = client.run(os.getpid)
    assert victim not in left and len(left) == 1
    assert done_at_kill < 4 * 4 * 4 == done_blocks(markers)
    assert code == 0, text
    assert_equals_reference(out, image)


def test_spec_cluster_class_makes_the_cluster_for_the_run(tmp_path, capsys, monkeypatch):
    """``cluster: {class, kwargs, adapt}`` goes to DaskTaskRunner; it beats HALOFLOW_CLUSTER (a dead address).

    In process, with a thread worker: a spawned worker process would add a cold start and prove nothing more.
    """
    cluster = {"class": "distributed.LocalCluster",
               "kwargs": {"n_workers": 1, "threads_per_worker": 2, "processes": False,  # in-process transport: no host
                          "dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}},
               "adapt": {"minimum": 1, "maximum": 1}}
    image = demo_volume((16, 64, 64), n_objects=12, seed=6)
    spec, out = write_spec(tmp_path, image, [8, 32, 32], cluster=cluster)
    monkeypatch.setenv(CLUSTER_ENV_VAR, REFUSED)
    code = cli_main(["run", str(spec)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "on a distributed.LocalCluster cluster (spec cluster)" in captured.out + captured.err
    assert_equals_reference(out, image)


def test_make_task_runner_passes_a_cluster_class_through():
    runner = make_task_runner(cluster={"class": "distributed.LocalCluster", "kwargs": {"n_workers": 1},
                                       "adapt": {"minimum": 0, "maximum": 50}})
    assert runner.address is None
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {"n_workers": 1}
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": 50}


# -- refusals ---------------------------------------------------------------------------------

def run_in_process(tmp_path, capsys, *args: str, **fields) -> tuple[int, str]:
    spec, out = write_spec(tmp_path, demo_volume((8, 32, 32), n_objects=3, seed=1), [8, 32, 32], **fields)
    code = cli_main(["run", str(spec), *args])
    captured = capsys.readouterr()
    assert not out.exists(), "the run started"
    return code, captured.out + captured.err


REFUSALS = {
    "--cluster without a protocol": ((["--cluster", "127.0.0.1:8786"], {}), ["--cluster", "'127.0.0.1:8786'", "tcp://HOST:PORT"]),
    "spec cluster of another protocol": (([], {"cluster": "http://127.0.0.1:8786"}), ["cluster", "'http'", "tcp://HOST:PORT"]),
    "spec cluster without a port": (([], {"cluster": "tcp://scheduler"}), ["cluster", "tcp://scheduler"]),
    "no scheduler at --cluster": ((["--cluster", REFUSED], {}), ["no Dask scheduler answers at tcp://127.0.0.1:1"]),
    "no scheduler at the spec's address": (([], {"cluster": REFUSED}), ["no Dask scheduler answers at tcp://127.0.0.1:1"]),
    "unimportable class": (([], {"cluster": {"class": "dask_jobqueue.SLURMCluster"}}),
                           ["cluster.class", "cannot import dask_jobqueue.SLURMCluster", "pip install dask-jobqueue"]),
    "no such class": (([], {"cluster": {"class": "distributed.NoSuchCluster"}}), ["cluster.class", "no class 'NoSuchCluster'"]),
    "adapt bounds reversed": (([], {"cluster": {"class": "distributed.LocalCluster", "adapt": {"minimum": 5, "maximum": 2}}}),
                              ["cluster.adapt", "minimum 5 is above maximum 2"]),
    "--workers with a cluster": ((["--cluster", REFUSED, "--workers", "2"], {}), ["--workers", "local cluster"]),
    "--worker-memory with a spec's cluster": ((["--worker-memory", "1GiB"], {"cluster": REFUSED}),
                                              ["--worker-memory", "local cluster", "the spec's cluster field"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_cluster_that_cannot_be_used_is_refused_before_work(case, tmp_path, capsys, monkeypatch):
    (args, fields), words = REFUSALS[case]
    monkeypatch.delenv(CLUSTER_ENV_VAR, raising=False)
    code, message = run_in_process(tmp_path, capsys, *args, **fields)
    assert code == 2, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) <= 2


def test_serve_refuses_a_spec_with_a_cluster(tmp_path, capsys):
    """A served run goes to the serving process's cluster (HALOFLOW_CLUSTER): a spec's cluster field would be ignored."""
    spec, _ = write_spec(tmp_path, demo_volume((8, 32, 32), n_objects=3, seed=1), [8, 32, 32], cluster=REFUSED)
    assert cli_main(["serve", "--spec", str(spec)]) == 2
    assert "cluster: a served run goes to the cluster of `haloflow serve`" in capsys.readouterr().err


def test_bad_haloflow_cluster_variable_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(CLUSTER_ENV_VAR, "scheduler:8786")
    code, message = run_in_process(tmp_path, capsys)
    assert code == 2 and "HALOFLOW_CLUSTER: 'scheduler:8786' is not a Dask scheduler address" in message


def test_a_port_that_is_not_a_scheduler_is_refused_within_the_timeout():
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ClusterError, match=f"no Dask scheduler answers at {address} within 1 s"):
            check_scheduler_answers(address, timeout=1)
    assert time.monotonic() - started < 5


# -- workers that cannot see the files ----------------------------------------------------------

class FakeClient:
    """Answers ``run``/``submit`` as workers whose file system lacks ``hidden`` would."""

    def __init__(self, hidden: Path, n_workers: int = 2):
        self.hidden, self.n_workers = str(hidden), n_workers

    def scheduler_info(self, n_workers=-1):
        return {"workers": {f"tcp://10.0.0.{i}:1": {} for i in range(self.n_workers)}}

    def _view(self, paths):
        return {p: None if p.startswith(self.hidden) else v for p, v in path_view(paths).items()}

    def run(self, function, paths, on_error="raise"):
        return {worker: self._view(paths) for worker in self.scheduler_info()["workers"]}

    def submit(self, function, paths, pure=True):
        result = self._view(paths)
        return type("Done", (), {"result": lambda self: result})()


@pytest.mark.parametrize("n_workers", [2, 0])
def test_check_workers_reach_names_the_output_folder_they_cannot_see(tmp_path, n_workers):
    source, out = tmp_path / "in.tif", tmp_path / "out"
    source.write_bytes(b"pixels")
    out.mkdir()
    check_workers_reach(FakeClient(tmp_path / "elsewhere", n_workers), {str(source): "input"}, out)  # all visible
    with pytest.raises(ClusterError, match=f"output: the Dask workers cannot reach {out} .*shared file system"):
        check_workers_reach(FakeClient(out, n_workers), {str(source): "input"}, out)
    assert list(out.iterdir()) == []  # the probe file is gone


def test_check_workers_reach_sees_a_different_file(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"pixels")
    client = FakeClient(tmp_path / "elsewhere")
    client.run = lambda function, paths, on_error="raise": {"tcp://w:1": {**path_view(paths), str(source): ["file", 1]}}
    with pytest.raises(ClusterError, match=f"input: the Dask workers cannot reach {source} .*a different file"):
        check_workers_reach(client, {str(source): "input"}, tmp_path)


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --mount (root or user namespaces) to hide a folder from a worker")
def test_input_the_workers_cannot_see_is_refused_before_work(tmp_path):
    data = tmp_path / "data"  # on this machine only: the worker sees an empty folder there
    image = demo_volume((8, 32, 32), n_objects=3, seed=2)
    spec, out = write_spec(data, image, [8, 32, 32], output=str(tmp_path / "out"))
    out = tmp_path / "out"
    with dask_cluster_processes(tmp_path / "dask", n_workers=1, hide=data) as address:
        code, text = finish(haloflow("run", str(spec), "--cluster", address))
    assert code != 0, text
    assert f"input: the Dask workers cannot reach {data / 'volume.tif'}" in text
    assert "shared file system" in text
    assert not any(out.glob("*.ome.zarr"))


def test_serve_with_a_cluster_address_that_does_not_answer_is_refused(capsys):
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, never answers
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        assert cli_main(["serve", "--cluster", address]) == 2
    assert f"no Dask scheduler answers at {address}" in capsys.readouterr().err


@pytest.mark.slow
def test_served_runs_share_one_local_cluster_started_by_serve(monkeypatch):
    """``haloflow serve`` starts one local cluster and names it in HALOFLOW_CLUSTER for the runs it starts."""
    import argparse

    import distributed

    from flows.cli import _served_cluster
    from flows.cluster import ClusterChoice

    monkeypatch.delenv(CLUSTER_ENV_VAR, raising=False)
    args = argparse.Namespace(workers=1, worker_memory=2**30)
    with _served_cluster(ClusterChoice("local"), args) as where:
        address = os.environ[CLUSTER_ENV_VAR]
        assert address in where and "shared by the runs" in where
        with distributed.Client(address) as client:
            (limit,) = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
            assert limit == 2**30
            # Spawned by this process: its fork server is left to the served flow runs (deployments.forked_runs).
            assert set(client.run(os.getppid).values()) == {os.getpid()}
            # The task runner of a flow run started now goes to it, not to a cluster of its own.
            assert make_task_runner().address == address
    assert CLUSTER_ENV_VAR not in os.environ
    with pytest.raises(ClusterError):
        check_scheduler_answers(address, timeout=1)  # closed with the serve process

    monkeypatch.setenv(CLUSTER_ENV_VAR, "tcp://127.0.0.1:1")  # a cluster of the user's: passed on untouched
    with _served_cluster(ClusterChoice(CLUSTER_ENV_VAR, address="tcp://127.0.0.1:1"), args) as where:
        assert os.environ[CLUSTER_ENV_VAR] == "tcp://127.0.0.1:1" and "tcp://127.0.0.1:1" in where


def test_serve_sets_its_defaults_unless_the_environment_has_them(monkeypatch, dask_cluster, capsys):
    """The server's services that schedules and automations need are on; a value the user set is kept."""
    import contextlib

    import deployments.serve
    from flows import cli, runner

    seen = {}

    @contextlib.contextmanager
    def api(**kwargs):
        yield "http://127.0.0.1:9/api"

    monkeypatch.setattr(runner, "ensure_api", api)
    monkeypatch.setattr(deployments.serve, "serve", lambda *a, **k: seen.update(os.environ))
    monkeypatch.setenv(CLUSTER_ENV_VAR, dask_cluster)
    for key in cli.SERVE_DEFAULTS:  # whatever serve sets in os.environ is undone after the test
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")  # the user's choice
    assert cli_main(["serve"]) == 0
    assert seen["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] == cli.SERVE_DEFAULTS["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"]
    assert "PREFECT_RUNNER_POLL_FREQUENCY" not in seen  # the user's, or Prefect's default
    assert seen["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert seen[CLUSTER_ENV_VAR] == dask_cluster
    assert f"runs go to the Dask cluster at {dask_cluster}" in capsys.readouterr().out
