"""The ``haloflow`` command line: ``run`` a spec, or run the ``demo``.

Bad input is checked before anything starts and answered with a short message
and exit code 2; Prefect is imported only once the API for the run is chosen.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("haloflow: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haloflow", description="Image pipelines on chunks, as Prefect flows on Dask.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline spec (YAML)")
    run.add_argument("spec", help="the spec file")
    run.add_argument("--output", help="output folder (overrides the spec's)")
    _cluster_options(run)
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="make a synthetic volume and run gaussian -> otsu -> label -> measure on it")
    demo.add_argument("--output", default="haloflow-demo", help="output folder (default: ./haloflow-demo)")
    demo.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"), help="volume shape (default 128 512 512)")
    _cluster_options(demo)
    demo.set_defaults(handler=cmd_demo)

    serve = sub.add_parser("serve", help="serve the flows as deployments for the Prefect UI and schedules")
    serve.add_argument("--spec", help="also serve this spec as a scheduled deployment, named after the file")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", help='schedule for --spec, e.g. "0 2 * * *"')
    when.add_argument("--interval", type=float, help="schedule for --spec: every SECONDS")
    serve.add_argument("--data-root", action="append", default=[], metavar="DIR",
                       help="only paths inside DIR may be read or written by the runs (repeatable)")
    serve.add_argument("--limit", type=int, default=None, help="at most this many runs at once")
    serve.set_defaults(handler=cmd_serve)
    return parser


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, help="address of an existing Dask scheduler (tcp://host:port)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster (default: one per core)")


def cmd_run(args) -> int:
    from flows.record import OutputError, check_chunks, check_output
    from flows.spec import SpecError, check_data_roots, load_spec
    from tasks.io import InputError, list_batch_images, resolve_input

    try:
        spec = load_spec(args.spec)
        if args.output:
            spec = spec.model_copy(update={"output": args.output})
        check_data_roots(spec)
        if spec.flow == "batch":
            list_batch_images(spec.input)
        else:
            check_chunks(spec.chunks, resolve_input(spec.to_input()).shape)
        check_output(spec.output, spec.input)
    except (SpecError, InputError, OutputError) as error:
        return _bad_input(error)
    return _run(spec, args)


def cmd_demo(args) -> int:
    from flows.demo import DEMO_SHAPE, demo_spec, write_demo_tiff
    from flows.spec import load_spec

    from flows.record import OutputError, check_output

    output = Path(args.output).absolute()
    try:
        check_output(str(output))
    except OutputError as error:
        return _bad_input(error)
    shape = tuple(args.shape or DEMO_SHAPE)
    started = time.perf_counter()
    source = write_demo_tiff(output / "demo_volume.tif", shape)
    print(f"haloflow demo: wrote a synthetic {'x'.join(map(str, shape))} uint16 volume to {source} "
          f"({time.perf_counter() - started:.1f} s)")
    spec = load_spec(demo_spec(str(source), str(output)))
    if shape != DEMO_SHAPE:
        spec = spec.model_copy(update={"chunks": [max(1, s // 2) for s in shape]})
    return _run(spec, args)


def cmd_serve(args) -> int:
    """Serve deployments against the configured Prefect API (PREFECT_API_URL), or a local server."""
    from flows.spec import SpecError, load_spec

    if args.spec:
        try:
            load_spec(args.spec)
        except SpecError as error:
            return _bad_input(error)
    if (args.cron or args.interval) and not args.spec:
        return _bad_input(ValueError("--cron and --interval need --spec: the pipeline the schedule runs"))
    for root in args.data_root:
        if not Path(root).expanduser().is_dir():
            return _bad_input(ValueError(f"--data-root {root}: not a folder"))
    from flows.runner import ensure_api

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "true")  # for a local server: schedules run
    with ensure_api(seed_database=True) as api_url:
        print(f"haloflow: serving on the Prefect API at {api_url} (UI: {api_url.removesuffix('/api')})", flush=True)
        # The deployments layer builds and serves the deployments (imported here, at the top of the stack).
        from deployments.serve import serve

        serve(args.spec, cron=args.cron, interval=args.interval, data_roots=args.data_root, limit=args.limit)
    return 0


def _run(spec, args) -> int:
    from flows.runner import ensure_api

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    with ensure_api(seed_database=True):
        from flows.pipeline import batch_flow, large_image_flow
        from flows.runner import make_task_runner

        flow = batch_flow if spec.flow == "batch" else large_image_flow
        runner = make_task_runner(cluster=args.cluster, n_workers=None if args.cluster else args.workers)
        state = flow.with_options(task_runner=runner)(
            input=spec.input, steps=spec.steps, output=spec.output, chunks=spec.chunks, return_state=True
        )
        result = state.result(raise_on_failure=False) if state.is_completed() or state.is_failed() else None
    seconds = time.perf_counter() - started
    if isinstance(result, dict) and "stages" in result:
        print_summary(result, seconds, final=state.is_completed())
    if not state.is_completed():
        return report_failure(state, result)
    return 0


def report_failure(state, result) -> int:
    """The run's last lines: what failed and why; exit code 1."""
    failures = result.get("failed", {}) if isinstance(result, dict) else {}
    if failures:
        print(f"haloflow: {len(failures)} image(s) failed; the others are complete:", file=sys.stderr)
        for image, failure in failures.items():
            print(f"  {image}: {failure['step']}: {failure['error']}", file=sys.stderr)
    else:
        message = state.message or state.name
        print(f"haloflow: the run failed: {message}", file=sys.stderr)
    return 1


def print_summary(result: dict, seconds: float, final: bool = True) -> None:
    for stage in result["stages"]:
        ref = stage.get("ref", {})
        where = ref.get("store") or ref.get("path") or f"{len(stage.get('images', {}))} images"
        found = stage.get("info") or {}
        extra = ", ".join(f"{k} {v}" for k, v in found.items())
        print(f"  {stage['name']:<20} {stage['status']:<9} {stage['seconds']:7.1f} s  {where}" + (f"  ({extra})" if extra else ""))
    if not final:
        return
    objects = [s["info"]["objects"] for s in result["stages"] if "objects" in (s.get("info") or {})]
    found = f"; found {objects[-1]} objects" if objects else ""
    print(f"haloflow: done in {seconds:.1f} s{found}; results in {result['output']} (run record: {result['run_json']})")


def _bad_input(error: Exception) -> int:
    print(f"haloflow: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
