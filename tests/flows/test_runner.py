"""Tests of flows.runner (Prefect server, task runner) and tasks.cluster."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import urllib.request

import distributed
import numpy as np
import psutil
import pytest
import tifffile

from flows import runner
from flows.runner import api_and_local_cluster, ensure_api, make_task_runner, start_local_server
from tasks.cluster import compute_on_cluster, current_worker_address


def _get(url: str, timeout: float = 5) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback (no packet is sent)."""
    candidates = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks a route
            candidates.add(s.getsockname()[0])
        except OSError:
            pass
    try:
        candidates.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    for ip in sorted(candidates):
        if not ip.startswith("127.") and ip != "0.0.0.0":
            return ip
    return None


# -- the local Prefect server -------------------------------------------------

def test_session_api_answers_health(prefect_api_url):
    assert prefect_api_url == os.environ["PREFECT_API_URL"]
    assert _get(f"{prefect_api_url}/health") == 200


def test_session_server_listens_on_loopback_only(prefect_server):
    if prefect_server is None:
        pytest.skip("PREFECT_API_URL came from the environment: no server started here")
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process(prefect_server.pid)
    listening = [
        c.laddr
        for p in [proc, *proc.children(recursive=True)]
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the server process listens on no socket"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert prefect_server.port in {addr.port for addr in listening}
    assert prefect_server.api_url == f"http://127.0.0.1:{prefect_server.port}/api"

    ip = _non_loopback_ipv4()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, prefect_server.port), timeout=2).close()


def test_start_failure_is_a_clear_error_with_log_tail(tmp_path):
    running_before = set(runner._RUNNING)
    with pytest.raises(RuntimeError, match="did not answer /api/health") as info:
        start_local_server(home=tmp_path, timeout=0.2, ui=False)
    assert "tail of server log" in str(info.value)
    # The half-started server was stopped and forgotten.
    assert runner._RUNNING == running_before


def test_an_http_api_s_clients_load_one_ca_certificate_and_still_reach_it(prefect_api_url, monkeypatch):
    import ssl
    import subprocess
    import sys
    import time

    for setting in ("PREFECT_API_SSL_CERT_FILE", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"):
        monkeypatch.delenv(setting, raising=False)
    values = runner.plain_http_client_tls(prefect_api_url, os.environ)
    path = values["PREFECT_API_SSL_CERT_FILE"]
    assert prefect_api_url.startswith("http://") and list(values) == ["PREFECT_API_SSL_CERT_FILE"]
    assert open(path).read().count("BEGIN CERTIFICATE") == 1
    started = time.perf_counter()
    ssl.create_default_context(cafile=path)  # what each Prefect client does with it
    assert time.perf_counter() - started < 0.5
    assert runner.plain_http_client_tls(prefect_api_url, os.environ) == values  # the same file, made once
    for api, environ in (("https://api.example.org/api", {}), (None, {}),
                         (prefect_api_url, {"PREFECT_API_SSL_CERT_FILE": "/etc/mine.pem"}),
                         (prefect_api_url, {"PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"})):
        assert runner.plain_http_client_tls(api, environ) == {}  # TLS in use, or the user's own choice
    check = ("from prefect.client.orchestration import get_client; from prefect.settings import get_current_settings; "
             "print(get_current_settings().api.ssl_cert_file, get_client(sync_client=True).api_healthcheck())")
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, **values}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [path, "None"]  # a client under the setting reached the API (no error)
    before = dict(os.environ)
    with runner.quick_client_tls(prefect_api_url) as set_here:
        assert set_here == values and os.environ["PREFECT_API_SSL_CERT_FILE"] == path
    assert dict(os.environ) == before
    with runner.quick_client_tls("https://api.example.org/api") as set_here:
        assert set_here == {} and dict(os.environ) == before


def test_ensure_api_leaves_existing_url_alone(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    before = dict(os.environ)

    def fail(*args, **kwargs):  # pragma: no cover - must not be called
        raise AssertionError("ensure_api started a server although PREFECT_API_URL is set")

    monkeypatch.setattr(runner, "start_local_server", fail)
    with ensure_api() as url:
        assert url == "http://127.0.0.1:9/api"
        assert dict(os.environ) == before
    assert dict(os.environ) == before


@pytest.mark.slow
def test_ensure_api_starts_and_stops_a_server(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL")
    with ensure_api(ui=False, seed_database=True) as url:
        assert os.environ["PREFECT_API_URL"] == url
        assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert _get(f"{url}/health") == 200
        (server,) = [s for s in runner._RUNNING if s.api_url == url]
    assert "PREFECT_API_URL" not in os.environ
    assert server.process.poll() is not None
    assert server.process.returncode == -signal.SIGKILL  # its database was deleted next: no shutdown to wait for
    assert not server.home.exists()  # temporary PREFECT_HOME removed
    with pytest.raises(OSError):
        _get(f"{url}/health", timeout=2)


@pytest.mark.slow
def test_a_server_on_a_given_home_is_asked_to_shut_down_and_keeps_its_database(tmp_path):
    server = start_local_server(home=tmp_path, ui=False, seed_database=True)
    server.stop()
    assert server.process.returncode != -signal.SIGKILL
    assert (tmp_path / "prefect.db").is_file()


def _heartbeat_threads() -> int:
    """Prefect's flow-run heartbeat threads now running (each runs ``heartbeat_loop`` in a copied context)."""
    import threading

    return sum(getattr(a, "__name__", "") == "heartbeat_loop"
               for t in threading.enumerate() for a in getattr(t, "_args", ()))


def test_flow_runs_started_without_heartbeats_start_no_heartbeat_thread(prefect_api_url):
    from prefect import flow

    @flow
    def count_heartbeat_threads() -> int:
        return _heartbeat_threads()

    assert count_heartbeat_threads() == 1  # Prefect's default: one per flow run, joined at its end
    with runner.without_flow_heartbeats():
        assert count_heartbeat_threads() == 0
    assert count_heartbeat_threads() == 1


def test_server_environment_turns_off_what_a_run_server_does_not_use(tmp_path):
    env = runner.server_environment(tmp_path, 4321, base={"PATH": "/bin"})
    assert env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] == "false"
    assert env["PREFECT_SERVER_API_PORT"] == "4321" and env["PREFECT_HOME"] == str(tmp_path)
    assert "PREFECT_API_BLOCKS_REGISTER_ON_START" not in env  # a fresh database registers its block types
    # The caller's choice wins (``haloflow serve`` keeps automations and schedules).
    kept = runner.server_environment(tmp_path, 4321, base={"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true"})
    assert kept["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "true"
    seeded = runner.server_environment(tmp_path, 4321, base={}, seeded=True)
    assert seeded["PREFECT_API_BLOCKS_REGISTER_ON_START"] == "false"
    assert seeded["PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION"] == "false"
    assert seeded["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"  # the seed was migrated when it was made
    assert "PREFECT_SERVER_DATABASE_MIGRATE_ON_START" not in env


def test_warm_up_sends_one_request_in_the_background_and_ignores_failures():
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        thread = runner._warm_up(f"http://127.0.0.1:{httpd.server_address[1]}/api/admin/version")
        thread.join(10)
        httpd.shutdown()
    assert not thread.is_alive() and thread.daemon
    assert seen == ["/api/admin/version"]
    closed = runner._warm_up(f"http://127.0.0.1:{runner.find_free_port()}/api/admin/version")  # nothing listens
    closed.join(10)
    assert not closed.is_alive()


def _block_type_slugs(api_url: str) -> set[str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{api_url}/block_types/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=10) as resp:
        return {block["slug"] for block in json.loads(resp.read())}


@pytest.mark.slow
def test_a_server_on_a_seeded_database_still_offers_the_block_types(monkeypatch):
    """It skips the registration at start-up: the types come with the seed, made by a server that registered them."""
    monkeypatch.delenv("PREFECT_API_URL")
    first = runner.LocalServer.launch(ui=False, seed_database=True)  # makes the seed if there is none yet
    with first.wait() as server:
        registered = _block_type_slugs(server.api_url)
    second = runner.LocalServer.launch(ui=False, seed_database=True)
    assert second._seeded
    with second.wait() as server:
        assert _block_type_slugs(server.api_url) == registered
    assert {"secret", "local-file-system"} <= registered


def test_a_launched_server_is_waited_for_later_or_cancelled(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL")
    port = runner.find_free_port()
    cancelled = runner.LocalServer.launch(port=port, ui=False, seed_database=True)
    spawned = cancelled.server
    assert spawned.process.poll() is None  # running, not waited for
    cancelled.cancel()
    cancelled.cancel()  # idempotent
    assert spawned.process.poll() is not None and spawned not in runner._RUNNING and not cancelled.home.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        cancelled.wait()

    launch = runner.LocalServer.launch(port=port, ui=False, seed_database=True)
    assert launch.port == port
    with ensure_api(launch=launch) as url:  # the block waits for it and owns it
        assert url == runner.local_api_url(port) == os.environ["PREFECT_API_URL"]
        assert _get(f"{url}/health") == 200
        server = [s for s in runner._RUNNING if s.port == port][0]
    assert server.process.poll() is not None and not server.home.exists()
    launch.cancel()  # nothing left to cancel


def test_run_with_bad_input_stops_the_server_it_launched(monkeypatch, tmp_path, capsys):
    from flows.cli import main as cli_main

    monkeypatch.delenv("PREFECT_API_URL")
    launched = []
    launch = runner.LocalServer.launch

    def recording(**kwargs):
        launched.append(launch(**kwargs))
        launched.append(launched[-1].server)  # its process, while it is spawned
        return launched[-2]

    monkeypatch.setattr(runner.LocalServer, "launch", recording)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"flow: large_image\ninput: {tmp_path / 'missing.tif'}\nsteps: [{{op: gaussian, sigma: 1}}]\n"
                    f"output: {tmp_path / 'out'}\n")
    assert cli_main(["run", str(spec)]) == 2
    assert "missing.tif" in capsys.readouterr().err
    spawned, server = launched
    assert spawned.server is None and server.process.poll() is not None and server not in runner._RUNNING
    assert not spawned.home.exists()
    assert "PREFECT_API_URL" not in os.environ


@pytest.mark.slow
def test_haloflow_run_sends_flow_heartbeats_only_to_a_server_it_did_not_start(monkeypatch, tmp_path, dask_cluster):
    from prefect import flow

    import flows.pipeline
    from flows.cli import main as cli_main

    seen = []

    @flow(name="large-image")
    def large_image(input, steps, output, chunks=None, channel_axis=None, time_axis=None, keep=None):
        seen.append(_heartbeat_threads())
        return {"stages": [], "output": output, "run_json": f"{output}/run.json"}

    monkeypatch.setattr(flows.pipeline, "large_image_flow", large_image)
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((8, 8), np.uint16))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"flow: large_image\ninput: {tmp_path / 'in.tif'}\nsteps: [{{op: gaussian, sigma: 1}}]\n"
                    f"output: {tmp_path / 'out'}\n")
    assert cli_main(["run", str(spec), "--cluster", dask_cluster]) == 0  # the session's server: heartbeats
    monkeypatch.delenv("PREFECT_API_URL")
    assert cli_main(["run", str(spec), "--cluster", dask_cluster]) == 0  # a server of its own: none
    assert seen == [1, 0]


# -- the command line's cluster, started while the server starts ------------------

def _worker_setting(name: str):
    return os.environ.get(name)


def _prefect_api_url():
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _worker_origin():
    import sys

    import dask

    parent = psutil.Process().parent()
    return (parent.pid, " ".join(parent.cmdline()), "tasks.stages" in sys.modules,
            dask.config.get("distributed.worker.profile.enabled"), _prefect_api_url())


def test_local_cluster_workers_are_forked_from_a_process_that_imported_their_modules():
    api = "http://127.0.0.1:9/api"  # no server: only read back
    cluster = runner.BackgroundCluster.start(env={"PREFECT_API_URL": api}, n_workers=2)
    try:
        with distributed.Client(cluster.address()) as client:
            origins = list(client.run(_worker_origin).values())
    finally:
        cluster.close()
    (parent, command), = {origin[:2] for origin in origins}  # both forked from one process ...
    assert parent != os.getpid() and "multiprocessing.forkserver" in command  # ... the forkserver, not this one
    assert psutil.Process(parent).parent().pid == os.getpid()
    for _, _, imported, profiling, api_url in origins:
        assert imported and profiling is False
        assert api_url == api  # the worker's own environment, not the forkserver's at its import of Prefect
    # The forkserver imported the stages' libraries (SciPy's ndimage among them) once, for every worker.
    assert any("_nd_image" in m.path for m in psutil.Process(parent).memory_maps())
    import dask
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"  # only while the cluster starts


def test_local_cluster_workers_forked_from_this_process_after_it_imported_their_modules(monkeypatch):
    import prefect.context

    importlib.import_module("flows.worker_preload")  # imported before the fork: a worker does not run its code again
    api = "http://127.0.0.1:9/api"  # no server: only read back
    # This process's settings name another API; a forked worker starts with them and must read its own.
    monkeypatch.setattr(prefect.context, "GLOBAL_SETTINGS_CONTEXT", prefect.context.GLOBAL_SETTINGS_CONTEXT)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:8/api")
    prefect.context.refresh_global_settings_context()
    assert _prefect_api_url() == "http://127.0.0.1:8/api"
    called = []
    cluster = runner.BackgroundCluster.start(env={"PREFECT_API_URL": api}, n_workers=2, start_method="fork",
                                             then=lambda: called.append(sorted(runner.WORKER_IMPORTS)))
    try:
        with distributed.Client(cluster.address()) as client:
            assert called == [sorted(runner.WORKER_IMPORTS)]  # ``then`` ran before the address came back
            origins = list(client.run(_worker_origin).values())
    finally:
        cluster.close()
    (parent, _), = {origin[:2] for origin in origins}
    assert parent == os.getpid()  # forked from this process, not from a fork server
    for _, _, imported, profiling, api_url in origins:
        assert imported and profiling is False
        assert api_url == api  # the worker's own environment, not this process's
    import dask
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"  # only while the cluster starts


def test_a_cluster_that_fails_to_start_skips_then_and_names_the_problem():
    called = []
    cluster = runner.BackgroundCluster.start(n_workers=1, start_method="fork", then=lambda: called.append(1),
                                             scheduler_port=-5)
    with pytest.raises(RuntimeError, match="the local Dask cluster did not start"):
        cluster.address()
    assert called == []
    with pytest.raises(ValueError, match="start_method must be one of"):
        runner.BackgroundCluster({}, start_method="threads")


def test_workers_are_spawned_where_no_fork_server_is_usable(monkeypatch):
    import dask

    with runner.forked_workers():
        assert dask.config.get("distributed.worker.multiprocessing-method") == "forkserver"
    monkeypatch.setattr(runner, "forkserver_usable", lambda: False)  # Windows, macOS
    with runner.forked_workers():
        assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
    with runner.forked_from_here():
        assert dask.config.get("distributed.worker.multiprocessing-method") == "fork"
    monkeypatch.setattr(runner, "fork_usable", lambda: False)
    with runner.forked_from_here():
        assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"


@pytest.mark.slow
def test_api_and_local_cluster_gives_workers_the_api_of_the_server_started_meanwhile(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL")
    with api_and_local_cluster(seed_database=True, n_workers=1, memory_limit=512 * 2**20) as address:
        url = os.environ["PREFECT_API_URL"]
        assert _get(f"{url}/health") == 200
        assert runner.started_here(address)
        with distributed.Client(address) as client:
            workers = client.scheduler_info()["workers"]
            assert [w["memory_limit"] for w in workers.values()] == [512 * 2**20]
            # The workers were spawned before the server answered, with the URL it was going to answer on.
            assert set(client.run(_worker_setting, "PREFECT_API_URL").values()) == {url}
            assert set(client.run(_worker_setting, "PREFECT_SERVER_ANALYTICS_ENABLED").values()) == {"false"}
            # ... and Prefect in the worker, imported before the fork, reads it too.
            assert set(client.run(_prefect_api_url).values()) == {url}
    assert not runner.started_here(address)
    assert "PREFECT_API_URL" not in os.environ
    with pytest.raises(OSError):
        distributed.Client(address, timeout=2)


def test_api_and_local_cluster_leaves_no_worker_behind_when_the_server_fails(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL")

    def no_server(**kwargs):
        raise RuntimeError("the Prefect server did not start (test)")

    monkeypatch.setattr(runner, "start_local_server", no_server)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(RuntimeError, match="did not start"):
        with api_and_local_cluster(n_workers=1):
            pass  # pragma: no cover - not reached
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE
            # multiprocessing's resource tracker and the forkserver the workers are forked from (started
            # by the first worker): each lives as long as this process
            and not any(helper in " ".join(p.cmdline())
                        for helper in ("multiprocessing.resource_tracker", "multiprocessing.forkserver"))]
    assert left == [], [p.cmdline() for p in left]
    assert not runner._STARTED_HERE


def test_local_cluster_that_cannot_start_is_a_clear_error():
    cluster = runner.BackgroundCluster.start(n_workers=1, memory_limit="no such size")
    with pytest.raises(RuntimeError, match="the local Dask cluster did not start: .*nosuchsize"):
        cluster.address()
    cluster.close()


# -- task runner ----------------------------------------------------------------

def test_make_task_runner_local_cluster_settings(monkeypatch):
    monkeypatch.delenv(runner.CLUSTER_ENV_VAR, raising=False)
    tr = make_task_runner(n_workers=3, memory_limit="1GiB")
    assert tr.address is None
    kw = tr.cluster_kwargs
    assert kw["n_workers"] == 3 and kw["threads_per_worker"] == 1
    assert kw["processes"] is True and kw["host"] == "127.0.0.1"
    assert kw["dashboard_address"] is None and kw["memory_limit"] == "1GiB"
    assert make_task_runner().cluster_kwargs["n_workers"] == (os.cpu_count() or 1)
    # Workers import what a stage needs as they start, not when the first stage task lands.
    assert kw["preload"] == ["flows.worker_preload"]
    assert importlib.import_module("flows.worker_preload")


def test_make_task_runner_address_and_env_default(monkeypatch):
    monkeypatch.delenv(runner.CLUSTER_ENV_VAR, raising=False)
    assert make_task_runner(cluster="tcp://127.0.0.1:1234").address == "tcp://127.0.0.1:1234"
    monkeypatch.setenv(runner.CLUSTER_ENV_VAR, "tcp://127.0.0.1:4321")
    assert make_task_runner().address == "tcp://127.0.0.1:4321"
    assert make_task_runner(cluster="tcp://127.0.0.1:1").address == "tcp://127.0.0.1:1"
    # Explicit local-cluster options win over the environment's default address.
    assert make_task_runner(n_workers=2).cluster_kwargs["n_workers"] == 2
    with pytest.raises(ValueError, match="local cluster"):
        make_task_runner(cluster="tcp://127.0.0.1:1", n_workers=2)


# -- compute_on_cluster -----------------------------------------------------------

def test_compute_on_cluster_without_cluster_uses_threads():
    da = pytest.importorskip("dask.array")
    assert current_worker_address() is None
    x = da.arange(100, chunks=10)
    assert int(compute_on_cluster(x.sum())) == 4950
    total, maximum = compute_on_cluster(x.sum(), x.max())
    assert (int(total), int(maximum)) == (4950, 99)
    with pytest.raises(TypeError):
        compute_on_cluster()


def test_compute_on_cluster_uses_default_client(dask_cluster):
    import distributed
    import dask.array as da
    import numpy as np

    def where(block):
        return np.array([[distributed.get_worker().address]], dtype=object)

    x = da.ones((40, 40), chunks=10)
    with distributed.Client(dask_cluster) as client:
        total, places = compute_on_cluster(
            x.sum(), x.map_blocks(where, dtype=object, chunks=(1, 1))
        )
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    assert int(total) == 1600
    assert set(places.ravel()) <= workers


def test_flow_task_computes_on_the_cluster_workers(dask_cluster, prefect_api_url):
    import distributed
    import dask.array as da
    import numpy as np
    from prefect import flow, task

    def where(block):
        return np.array([[distributed.get_worker().address]], dtype=object)

    @task
    def chunk_sum(n: int) -> dict:
        x = da.arange(n * n, chunks=n * n // 64).reshape(n, n)  # 64 chunks
        total, places = compute_on_cluster(
            x.sum(), x.map_blocks(where, dtype=object, chunks=(1, 1))
        )
        return {
            "total": int(total),
            "task_worker": current_worker_address(),
            "chunk_workers": sorted(set(places.ravel())),
            "pid": os.getpid(),
            "api_url": os.environ.get("PREFECT_API_URL"),
        }

    @flow(task_runner=make_task_runner())  # as a pipeline would declare it
    def sum_flow(n: int = 64) -> dict:
        return chunk_sum.submit(n).result()

    on_cluster = sum_flow.with_options(task_runner=make_task_runner(cluster=dask_cluster))
    out = on_cluster(n=64)

    with distributed.Client(dask_cluster, set_as_default=False) as client:
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
    assert out["total"] == sum(range(64 * 64))
    assert out["task_worker"] in workers
    assert set(out["chunk_workers"]) <= workers
    assert out["pid"] != os.getpid()
    assert out["api_url"] == prefect_api_url  # workers inherited the session API


def test_leftover_servers_are_stopped_only_by_the_process_that_started_them(monkeypatch):
    stopped = []

    class Recorded(runner.LocalServer):
        def stop(self, *args, **kwargs):
            stopped.append(self)

    ours, forked_copy = Recorded.__new__(Recorded), Recorded.__new__(Recorded)
    ours._started_by, forked_copy._started_by = os.getpid(), os.getpid() + 1  # as a forked worker sees its parent's
    monkeypatch.setattr(runner, "_RUNNING", {ours, forked_copy})
    runner._stop_leftover_servers()
    assert stopped == [ours]
