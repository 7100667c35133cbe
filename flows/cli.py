"""The ``haloflow`` command line: ``run`` a spec, run the ``demo``, ``inspect`` a run's output.

Bad input is answered with a short message and exit code 2 before any work
starts (the run's local Prefect server, spawned first because it takes
seconds to start, is stopped); Prefect is imported only once the API for the
run is chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from pathlib import Path

EXIT_BAD_INPUT = 2


def console(argv: list[str] | None = None) -> int:
    """The ``haloflow`` command: :func:`main`, then an exit that skips the garbage collector's last passes.

    A run leaves about 220,000 objects alive (Prefect, pydantic, Dask, SciPy);
    the interpreter's exit searches them for cycles again and again, 0.6-0.7 s
    after the run has ended.  One collection here runs the finalizers of
    whatever is already unreachable (0.1-0.15 s); the survivors are then
    frozen (:func:`gc.freeze`), and the exit frees them by their reference
    counts alone.  Not for a caller that goes on after :func:`main`.
    """
    code = main(argv)
    gc.collect()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("haloflow: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not _lost_the_api(error):
            raise
        return _report_lost_api(error)


def _lost_the_api(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a failed connection to the Prefect API, after Prefect's own retries."""
    httpx = sys.modules.get("httpx")
    seen = 0
    while error is not None and seen < 10:
        if httpx is not None and isinstance(error, httpx.TransportError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _report_lost_api(error: BaseException) -> int:
    """The last lines of a run whose Prefect API stopped answering: what happened, that nothing written is lost."""
    import logging

    logging.raiseExceptions = False  # Prefect's log shipper would print its own failures after this message
    url = os.environ.get("PREFECT_API_URL", "the Prefect API")
    print(f"haloflow: lost the Prefect API at {url} ({_one_line(error)}).\n"
          "  Every block written so far is kept: run the same command again to resume.", file=sys.stderr)
    return 1


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haloflow", description="Image pipelines on chunks, as Prefect flows on Dask.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline spec (YAML)")
    run.add_argument("spec", help="the spec file")
    run.add_argument("--output", help="output folder (overrides the spec's)")
    _cluster_options(run)
    _output_options(run)
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="make a synthetic volume and run gaussian -> otsu -> label -> measure on it")
    demo.add_argument("--output", default="haloflow-demo", help="output folder (default: ./haloflow-demo)")
    demo.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"), help="volume shape (default 128 512 512)")
    _cluster_options(demo)
    _output_options(demo)
    demo.set_defaults(handler=cmd_demo)

    inspect = sub.add_parser("inspect", help="summarise a run's output folder and write PNG previews to OUT/previews/")
    inspect.add_argument("output", metavar="OUT", help="the output folder of a run (holding run.json)")
    inspect.add_argument("--slice", type=int, default=None, metavar="INDEX",
                         help="preview this plane of the first axis instead of the maximum projection")
    inspect.set_defaults(handler=cmd_inspect)

    serve = sub.add_parser("serve", help="serve the flows as deployments for the Prefect UI and schedules")
    serve.add_argument("--spec", help="also serve this spec as a scheduled deployment, named after the file")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", help='schedule for --spec, e.g. "0 2 * * *"')
    when.add_argument("--interval", type=float, help="schedule for --spec: every SECONDS")
    serve.add_argument("--data-root", action="append", default=[], metavar="DIR",
                       help="only paths inside DIR may be read or written by the runs (repeatable)")
    serve.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    _cluster_options(serve)
    serve.set_defaults(handler=cmd_serve)

    ops = sub.add_parser("ops", help="list every op with its parameters (type, bounds, default) and description")
    ops.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's op reference)")
    ops.set_defaults(handler=cmd_ops)
    return parser


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, help="address of an existing Dask scheduler (tcp://host:port)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster (default: one per core)")
    parser.add_argument("--worker-memory", type=memory_size, default=None, metavar="SIZE",
                        help="memory limit of each local worker, e.g. 2GiB (default: Dask's, the machine's memory "
                             "shared between the workers); a worker going over it is restarted and its blocks redone")


def memory_size(text: str) -> int:
    """``--worker-memory``: a size such as ``2GiB`` or ``500MB``, in bytes.

    >>> memory_size("2GiB")
    2147483648
    >>> memory_size("two")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'two' is not a size: give a number and a unit, like 2GiB or 500MB
    """
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(text)
    except (ValueError, TypeError):
        size = None
    if size is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give a number and a unit, like 2GiB or 500MB")
    if size < 2**26:
        raise argparse.ArgumentTypeError(f"{text!r} is too small for a worker: give at least 64MiB")
    return size


def _local_options(args) -> bool:
    """Whether a local-cluster option was given (it then wins over HALOFLOW_CLUSTER, and --cluster refuses it)."""
    return args.workers is not None or args.worker_memory is not None


def _output_options(parser: argparse.ArgumentParser) -> None:
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")
    level.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's and Dask's logs")


def _console(args):
    from flows.console import Console

    return Console("quiet" if getattr(args, "quiet", False) else "verbose" if getattr(args, "verbose", False) else "normal")


def cmd_run(args) -> int:
    with _server_launched() as launch:  # it starts (seconds) while the spec and its input are checked
        from flows.cluster import ClusterError
        from flows.record import OutputError, check_chunks, check_output
        from flows.spec import SpecError, check_data_roots, input_with_axes, load_spec
        from tasks import storage
        from tasks.io import InputError, list_batch_images, resolve_input

        ahead = None
        try:
            spec = load_spec(args.spec)
            if args.output:
                spec = spec.model_copy(update={"output": args.output})
            check_data_roots(spec)
            if spec.flow == "batch":
                images = list_batch_images(spec.input)
                if launch is not None and not any(map(storage.is_url, images)):  # read while the server starts
                    ahead = images
            else:
                source = input_with_axes(spec, resolve_input(spec.to_input()))
                check_chunks(spec.chunks, source.shape)
            check_output(spec.output, spec.input)
            cluster = choose_and_check_cluster(args, spec.cluster)
        except (SpecError, InputError, OutputError, ClusterError) as error:
            return _bad_input(error)
        return _run(spec, args, cluster, launch, read_ahead=ahead)


@contextlib.contextmanager
def _server_launched():
    """The run's local Prefect server, spawned now, waited for by the run; None when ``PREFECT_API_URL`` names one.

    It takes seconds to start, so it starts while the command checks its
    input (and the demo writes its volume). Not taken by a run (bad input, an
    error), it is stopped on the way out: nothing is left running. Prefect is
    not imported. On a fixed port, so the cluster's workers can be told it.
    """
    from flows.runner import LocalServer, configured_api_url, find_free_port

    launch = None if configured_api_url() else LocalServer.launch(port=find_free_port(), seed_database=True)
    try:
        yield launch
    finally:
        if launch is not None:
            launch.cancel()


def choose_and_check_cluster(args, spec_cluster=None):
    """The run's cluster (``--cluster`` > spec > ``HALOFLOW_CLUSTER`` > local); an address must answer.

    ClusterError names the option and the problem: a malformed address, or no
    scheduler answering there within a few seconds.
    """
    from flows.cluster import check_scheduler_answers, choose_cluster

    choice = choose_cluster(args.cluster, spec_cluster, os.environ, local_options=_local_options(args))
    if choice.address:
        check_scheduler_answers(choice.address)
    return choice


def cmd_demo(args) -> int:
    from flows.demo import DEMO_SHAPE, demo_spec, write_demo_tiff
    from flows.spec import load_spec

    from flows.cluster import ClusterError
    from flows.record import OutputError, check_output

    output = Path(args.output).absolute()
    with _server_launched() as launch:
        try:
            check_output(str(output))
            cluster = choose_and_check_cluster(args)
        except (OutputError, ClusterError) as error:
            return _bad_input(error)
        shape = tuple(args.shape or DEMO_SHAPE)
        started = time.perf_counter()
        source = write_demo_tiff(output / "demo_volume.tif", shape)
        _console(args).info(f"haloflow demo: wrote a synthetic {'x'.join(map(str, shape))} uint16 volume to {source} "
                            f"({time.perf_counter() - started:.1f} s)")
        spec = load_spec(demo_spec(str(source), str(output)))
        if shape != DEMO_SHAPE:
            spec = spec.model_copy(update={"chunks": [max(1, s // 2) for s in shape]})
        return _run(spec, args, cluster, launch)


def cmd_ops(args) -> int:
    """Print the op reference, made from the registry."""
    from flows.opsdoc import ops_reference

    print(ops_reference(markdown=args.markdown), end="")
    return 0


def cmd_inspect(args) -> int:
    """Print a run's summary table and write its previews."""
    from flows.inspection import InspectError, inspect_run

    try:
        table, written = inspect_run(args.output, plane=args.slice)
    except InspectError as error:
        return _bad_input(error)
    print(table)
    for path in written:
        print(f"  wrote {path}")
    return 0


#: Settings ``haloflow serve`` gives itself (and a local server it starts) unless the environment sets them.
SERVE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",  # for a local server: schedules run
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true",  # and automations made in its UI
}


def cmd_serve(args) -> int:
    """Serve deployments against the configured Prefect API (PREFECT_API_URL), or a local server."""
    from flows.spec import SpecError, load_spec

    if args.spec:
        try:
            if load_spec(args.spec).cluster is not None:
                raise SpecError(f"{args.spec}: cluster: a served run goes to the cluster of `haloflow serve` "
                                "(set HALOFLOW_CLUSTER for it), not to a spec's cluster field; remove the field")
        except SpecError as error:
            return _bad_input(error)
    if (args.cron or args.interval) and not args.spec:
        return _bad_input(ValueError("--cron and --interval need --spec: the pipeline the schedule runs"))
    for root in args.data_root:
        if not Path(root).expanduser().is_dir():
            return _bad_input(ValueError(f"--data-root {root}: not a folder"))
    from flows.cluster import ClusterError
    from flows.runner import ensure_api

    try:
        cluster = choose_and_check_cluster(args)
    except ClusterError as error:
        return _bad_input(error)
    for key, value in SERVE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    with _quick_client_tls(cluster), ensure_api(seed_database=True) as api_url, _served_cluster(cluster, args) as where:
        print(f"haloflow: serving on the Prefect API at {api_url} (UI: {api_url.removesuffix('/api')}); "
              f"runs go to {where}", flush=True)
        # The deployments layer builds and serves the deployments (imported here, at the top of the stack).
        from deployments.serve import serve

        serve(args.spec, cron=args.cron, interval=args.interval, data_roots=args.data_root, limit=args.limit)
    return 0


@contextlib.contextmanager
def _served_cluster(cluster, args):
    """The cluster every served run computes on, named in ``HALOFLOW_CLUSTER`` (which the runs inherit); yield its description.

    A local one is started here once, while serving, and closed on the way
    out: a run then starts on workers that are up and have imported what
    stages need, instead of starting a cluster of its own (3-4 s a run). A
    run cancelled from the UI stops its chunk tasks on it
    (:class:`tasks.cluster.StageCancelled`).
    """
    from flows.runner import CLUSTER_ENV_VAR, BackgroundCluster

    # Spawned workers: this process's one fork server is the one the served flow runs fork from, with the
    # flows imported (deployments.forked_runs); the workers start once, before any run.
    started = (BackgroundCluster.start(start_method="spawn", n_workers=args.workers, memory_limit=args.worker_memory)
               if cluster.is_local else None)
    saved = os.environ.get(CLUSTER_ENV_VAR)
    try:
        address = started.address() if started is not None else cluster.address
        if address:
            os.environ[CLUSTER_ENV_VAR] = address
        yield f"a local Dask cluster at {address}, shared by the runs" if started is not None else cluster.describe()
    finally:
        if started is not None:
            started.close()
        if saved is None:
            os.environ.pop(CLUSTER_ENV_VAR, None)
        else:
            os.environ[CLUSTER_ENV_VAR] = saved


def _run(spec, args, cluster, launch=None, read_ahead=None) -> int:
    """Run the spec's flow here, on ``cluster``, against ``launch`` (the server started for it) or the configured API.

    ``read_ahead``: a batch's images, whose headers are read once the flows
    are imported, while the server is still starting (:mod:`flows.headers`).
    """
    from flows.console import tame_logs
    from flows.progress import RunWatcher
    from flows.runner import configured_api_url
    from tasks import storage

    console = _console(args)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    source = spec.input if isinstance(spec.input, str) else getattr(spec.input, "zarr", "a grid of tiles")
    console.info(f"haloflow: {len(spec.steps)} steps on {source} into {storage.normalize(spec.output)}"
                 + ("" if cluster.is_local else f", on {cluster.describe()}"))
    if not cluster.is_local and not os.environ.get("PREFECT_API_URL"):
        console.info("haloflow: note: no PREFECT_API_URL is set, so this run's Prefect server listens on 127.0.0.1 "
                     "only: the cluster's workers start servers of their own (slow; their task runs stay out of the "
                     "UI). Set PREFECT_API_URL to a server every machine reaches, here and for the workers.")
    # The flow runs here; its stage tasks on Dask workers. The watcher follows the run
    # from its output folder (block markers, run.json) and draws progress and stage lines.
    watcher = RunWatcher(spec, console.progress, console.stage)
    private_server = configured_api_url() is None  # started for this run, stopped with it
    with _quick_client_tls(cluster), tame_logs(console) as logs:  # settings first: Prefect reads them as it is imported
        # The flows (1.3-1.4 s), while the server starts; then what the run would import on its way
        # and the batch's headers. A local cluster's start imports the flows and forks its workers
        # from this process; the rest follows once they are forked.
        headers = partial(_read_headers_ahead, read_ahead) if read_ahead else None
        then = partial(_import_all, ("flows.run_preload",), headers)
        if cluster.is_local:
            importing, after_cluster = None, then
        else:
            importing, after_cluster = _import_in_background("flows.pipeline", then=then), None
        with _api_and_cluster(cluster, args, launch, then=after_cluster) as where, _closing(console), watcher:
            if importing is not None:
                importing.join()
            from flows.pipeline import batch_flow, large_image_flow
            from flows.runner import make_task_runner, without_flow_heartbeats

            flow = batch_flow if spec.flow == "batch" else large_image_flow
            runner = make_task_runner(cluster=where)
            logs.attach()
            with without_flow_heartbeats() if private_server else contextlib.nullcontext():
                state = flow.with_options(task_runner=runner)(
                    input=spec.input, steps=spec.steps, output=spec.output, chunks=spec.chunks,
                    channel_axis=spec.channel_axis, time_axis=spec.time_axis, return_state=True,
                    **({"keep": spec.keep} if spec.keep is not None else {}),
                )
            result = state.result(raise_on_failure=False) if state.is_completed() or state.is_failed() else None
    seconds = time.perf_counter() - started
    if not state.is_completed():
        return report_failure(state, result, console)
    console.final(final_line(result, seconds))
    return 0


def _quick_client_tls(cluster):
    """Prefect clients that load one CA certificate for an http API (:func:`flows.runner.plain_http_client_tls`).

    Only with a local cluster: its workers, on this machine, find the file; the
    API is the configured one, or the local server (http) the command starts.
    """
    from flows.runner import configured_api_url, local_api_url, quick_client_tls

    return quick_client_tls((configured_api_url() or local_api_url(0)) if cluster.is_local else None)


def _read_headers_ahead(images) -> None:
    from flows import headers

    headers.read_ahead(images)


def _import_in_background(*modules: str, then: Callable[[], Any] | None = None) -> threading.Thread:
    """Import ``modules``, in order, in a daemon thread (:func:`_import_all`); the thread.

    Importing the flows (Prefect's engine, Dask, zarr) takes over a second;
    started here, it overlaps the wait for the Prefect server and the cluster.
    The caller joins the thread, then imports the module itself: Python's
    import lock makes that import wait for, or reuse, this one.
    """
    thread = threading.Thread(target=_import_all, args=(modules, then), name=f"haloflow-import-{modules[0]}",
                              daemon=True)
    thread.start()
    return thread


def _import_all(modules: tuple[str, ...], then: Callable[[], Any] | None = None) -> None:
    """Import ``modules`` in order (one that fails is raised again by the caller's own import); then call ``then``."""
    for module in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    if then is not None:
        then()


@contextlib.contextmanager
def _api_and_cluster(cluster, args, launch=None, then=None):
    """The run's Prefect API for the block; yield where its work goes (a scheduler address or a cluster class).

    A local cluster is started while the Prefect server starts, not after it;
    ``launch``: that server, already spawned (:func:`_server_launched`). Its
    workers are forked from this process once the cluster's start has
    imported the flows (:func:`flows.runner.forked_from_here`), which the
    run imports anyway: a fork server would import them a second time, at
    the same time, on the cores the server needs (6.5-8.6 s before the flow
    began, against 4.6-6.6 s). ``then``: called by the cluster's start once
    its workers are forked (the rest of what the run reads ahead).
    """
    from flows.runner import api_and_local_cluster, ensure_api

    if cluster.is_local:
        with api_and_local_cluster(seed_database=True, launch=launch, n_workers=args.workers,
                                   memory_limit=args.worker_memory, start_method="fork", then=then) as address:
            yield address
    else:
        with ensure_api(seed_database=True, launch=launch):
            yield cluster.address or cluster.cluster_class


@contextlib.contextmanager
def _closing(console):
    """Clear the progress line however the block ends (an error, Ctrl-C)."""
    try:
        yield console
    finally:
        console.close()


def report_failure(state, result, console=None) -> int:
    """The run's last lines: what failed and why; exit code 1."""
    error = console.error if console is not None else lambda text: print(text, file=sys.stderr)
    failures = result.get("failed", {}) if isinstance(result, dict) else {}
    if failures:
        error(f"haloflow: {len(failures)} image(s) failed; the others are complete:")
        for image, failure in failures.items():
            error(f"  {image}: {failure['step']}: {failure['error']}")
    else:
        message = state.message or state.name
        error(f"haloflow: the run failed: {message}")
    return 1


def final_line(result: dict, seconds: float) -> str:
    """The last line of a run that completed: time, objects found, where the results are.

    >>> final_line({"stages": [{"info": {"objects": 3}}], "output": "out", "run_json": "out/run.json"}, 2.5)
    'haloflow: done in 2.5 s; found 3 objects; results in out (run record: out/run.json)'
    """
    objects = [s["info"]["objects"] for s in result["stages"] if "objects" in (s.get("info") or {})]
    found = f"; found {objects[-1]} objects" if objects else ""
    return f"haloflow: done in {seconds:.1f} s{found}; results in {result['output']} (run record: {result['run_json']})"


def _bad_input(error: Exception) -> int:
    print(f"haloflow: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
