"""The large-image pipeline as a served deployment run, against a Prefect server that is already running.

``haloflow serve`` is started first, against a local Prefect server that is
up before anything is measured (the situation of a deployment started from
the UI or a schedule).  Then each measured run is one ``create_flow_run``
call on the ``large-image`` deployment, as the UI's Run button makes, with
``pipeline.py``'s pipeline on the same volume; and scikit-image on the whole
volume runs in a fresh process beside it (``reference.py skimage``), then
the plain-Dask variant that labels each block once (``reference.py
block-once``, on 128x256x256 blocks; ``--no-block-once`` skips it).

Per served run it reports:

* wall: from the ``create_flow_run`` call to the flow run's end (the
  runner's interval between queries for new runs included);
* the flow run's own time (its start to end, by the Prefect server), the
  stages' seconds (``run.json``) and the rest, which is Prefect's and the
  cluster's share: flow-run process start, task orchestration (the runs
  share the local Dask cluster ``haloflow serve`` started);
* the peak of the served process tree's memory (sum of RSS, sampled every
  ``--interval-ms``; the server and the idle serve process included) and
  the CPU the tree used during the run.

Usage::

    python benchmarks/served.py --shape 256 1024 1024 --workdir /tmp/hfserved --keep --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from measure import GIB, compare_tables, flush_writes, med, wait_quiet, write_section
from pipeline import footer_lines, now, pipeline_spec, reference_pipeline, workdir
from volume import cached_volume

HEADING = "## Served deployment run: the pipeline against an already running Prefect server"


class TreeSampler:
    """Peak RSS sum of a process tree, and the CPU its processes used while sampled, in a thread."""

    def __init__(self, root: int, interval: float) -> None:
        self.root, self.interval = psutil.Process(root), interval
        self.peak_rss = 0
        self.start_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}  # pid -> user + system seconds when last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        rss = 0
        for p in self._tree():
            try:
                rss += p.memory_info().rss
                times = p.cpu_times()
                self.last_cpu[p.pid] = times.user + times.system
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeSampler:
        self._sample()
        self.start_cpu = dict(self.last_cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_seconds(self) -> float:
        """CPU used during the sampling by the processes seen (a process's last sample before it exited)."""
        return sum(self.last_cpu.values()) - sum(self.start_cpu.values())


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def epoch(stamp: str) -> float:
    return _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def served_run(api: str, deployment: dict, parameters: dict, serve_pid: int, interval: float) -> dict:
    """One flow run of the deployment, measured from the create_flow_run call to its end."""
    with TreeSampler(serve_pid, interval) as sampler:
        submitted = time.time()
        refused = 0
        for _ in range(5):  # a 5xx (SQLite "database is locked") is tried again a second later, as a person would
            response = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                                  json={"parameters": parameters}, timeout=30)
            if response.status_code < 500:
                break
            refused += 1
            time.sleep(1)
        response.raise_for_status()
        created = time.time()
        run_id = response.json()["id"]

        def final():
            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
            return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        run = wait_for(final, 3600, f"flow run {run_id}")
        seen = time.time()
    if run["state"]["type"] != "COMPLETED":
        raise RuntimeError(f"served run {run_id} ended {run['state']['type']}: {run['state'].get('message')}")
    start, end = epoch(run["start_time"]), epoch(run["end_time"])
    record = json.loads((Path(parameters["output"]) / "run.json").read_text())
    stages = sum(s["seconds"] for s in record["stages"])
    return {"id": run_id, "wall": end - submitted, "seen_after": seen - submitted, "queued": start - submitted,
            "create": created - submitted, "refused": refused, "submitted": submitted,
            "flow_run": end - start, "stages": stages, "per_stage": {s["name"]: s["seconds"] for s in record["stages"]},
            "objects": next((s["info"]["objects"] for s in record["stages"] if "objects" in (s.get("info") or {})),
                            None),
            "peak_rss": sampler.peak_rss, "cpu": sampler.cpu_seconds()}


def start_serving(work: Path, poll: int | None) -> tuple[subprocess.Popen, str, object]:
    """A local Prefect server, then ``haloflow serve`` against it; both up before anything is measured."""
    from flows.runner import start_local_server

    server = start_local_server(home=work / "prefect-home", seed_database=True)
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_RUNNER_POLL_FREQUENCY", None)
    if poll is not None:  # otherwise haloflow serve's own interval (deployments.serve.QUERY_SECONDS)
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(poll)
    env.pop("HALOFLOW_CLUSTER", None)
    log = (work / "serve.log").open("wb")
    serve = subprocess.Popen([shutil.which("haloflow") or "haloflow", "serve"], env=env, cwd=work, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    return serve, server.api_url, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 1024, 1024], metavar=("Z", "Y", "X"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--runs", type=int, default=2, help="measured served runs (default 2); one warm-up first")
    parser.add_argument("--poll", type=int, default=None,
                        help="PREFECT_RUNNER_POLL_FREQUENCY of the serve process, whole seconds (default: Prefect's); "
                             "its runner also queries on each new run's event (deployments.run_events)")
    parser.add_argument("--no-block-once", dest="block_once", action="store_false",
                        help="skip the plain-Dask variant that labels each block once")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--quiet-wait", type=float, default=30.0)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    args.chunks, args.workers, args.worker_memory = None, None, None  # for reference_pipeline's signature
    args.interval = args.interval_ms / 1e3
    work, temporary = workdir(args)
    date = now()
    command = "python " + " ".join([os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    shape = tuple(args.shape)
    tiff, _ = cached_volume(work, shape)
    tiny, _ = cached_volume(work, (16, 128, 128))
    serve, api, server = start_serving(work, args.poll)
    runs: list[dict] = []
    try:
        deployment = wait_for(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
            httpx.get(f"{api}/deployments/name/large-image/large-image", timeout=10)), 120, "the served deployment")

        def parameters(source: Path, out: Path) -> dict:
            shutil.rmtree(out, ignore_errors=True)
            spec = pipeline_spec(source, out, None)
            return {k: v for k, v in spec.items() if k != "flow"}

        warm = served_run(api, deployment, parameters(tiny, work / "served_warm-up"), serve.pid, args.interval)
        print(f"  served warm-up: wall {warm['wall']:.1f} s", flush=True)
        for i in range(1, args.runs + 1):
            flush_writes()
            wait_quiet(args.quiet_wait)
            run = served_run(api, deployment, parameters(tiff, work / f"served_{i}"), serve.pid, args.interval)
            runs.append(run)
            print(f"  served #{i}: wall {run['wall']:.1f} s, flow run {run['flow_run']:.1f} s, stages "
                  f"{run['stages']:.1f} s, peak RSS {run['peak_rss'] / GIB:.2f} GiB", flush=True)
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=30)
        server.stop()
    wait_quiet(args.quiet_wait)
    sk = reference_pipeline("skimage", "skimage", tiff, work, args)
    print(f"  skimage: wall {sk.wall:.1f} s, peak PSS {sk.peak_pss / GIB:.2f} GiB, objects {sk.objects}", flush=True)
    table = compare_tables(work / f"served_{args.runs}" / "04_measure.csv", sk.extra["csv"]) if "csv" in sk.extra else "-"
    once = None
    if args.block_once:
        wait_quiet(args.quiet_wait)
        once = reference_pipeline("block-once", "block-once", tiff, work, args)
        print(f"  block-once: wall {once.wall:.1f} s, peak PSS {once.peak_pss / GIB:.2f} GiB, objects {once.objects}",
              flush=True)
        if "csv" in once.extra and "csv" in sk.extra:
            table += f"; the block-once variant's against scikit-image's: {compare_tables(once.extra['csv'], sk.extra['csv'])}"
    report = build_report(runs, sk, table, shape, args, command, date, once)
    print(report)
    if args.markdown:
        write_section(args.markdown, HEADING, report)
    if temporary and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def poll_seconds(poll: int | None) -> float:
    """The served runner's interval between its periodic queries for new runs: ``--poll``, or Prefect's setting."""
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY

    return float(PREFECT_RUNNER_POLL_FREQUENCY.value()) if poll is None else float(poll)


def build_report(runs: list[dict], sk, table: str, shape, args, command: str, date: str, once=None) -> str:
    wall, flow_run, stages = (med([r[k] for r in runs]) for k in ("wall", "flow_run", "stages"))
    # Each run's own time and share outside its stages, then their medians (the median wall less the median
    # stages mixes runs: 1.2 s where the runs' own were 1.5, 1.4 and 1.1 s).
    rest = med([r["wall"] - r["stages"] for r in runs])
    share = med([(r["wall"] - r["stages"]) / r["wall"] for r in runs])
    lines = [f"Run on {date} with:\n\n```bash\n{command}\n```\n",
             f"Volume {'x'.join(map(str, shape))} uint16 (`benchmarks/volume.py`), the pipeline of `pipeline.py`, "
             f"haloflow's default chunks. A local Prefect server and `haloflow serve` (both flows as deployments; its "
             f"runner queries for new runs on the server's event for each, and every {poll_seconds(args.poll):g} s) "
             f"were up before the runs; each run is one "
             f"`create_flow_run` call on the `large-image` deployment, as the UI's Run button makes, after one "
             f"unreported warm-up run on a 16x128x128 volume. The runs compute on the local Dask cluster (two workers) "
             f"that `haloflow serve` started and shares between them. Memory: the served process tree (Prefect "
             f"server not included: it runs apart; the serve process, its Dask workers and the flow-run process) as "
             f"the sum of RSS every {args.interval_ms:g} ms. "
             f"scikit-image ran on the whole volume in a fresh process after the served runs"
             + (", then the block-once variant (`reference.py block-once`: plain Dask, threaded scheduler, in memory, "
                "each 128x256x256 block labelled once, then a face merge)" if once is not None else "") + ".\n",
             "| run | wall s (create_flow_run → end) | create_flow_run s (→ its answer) | queued s (→ flow run start) | "
             "flow run s | stages s | outside the stages s (share of the wall) | peak memory GiB (RSS sum) | CPU s | "
             "objects |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(runs, 1):
        refused = f" (after {r['refused']} × 503)" if r.get("refused") else ""
        lines.append(f"| served #{i} | {r['wall']:.1f} | {r['create']:.2f}{refused} | {r['queued']:.1f} | "
                     f"{r['flow_run']:.1f} | {r['stages']:.1f} | "
                     f"{r['wall'] - r['stages']:.1f} ({(r['wall'] - r['stages']) / r['wall']:.0%}) | "
                     f"{r['peak_rss'] / GIB:.2f} | {r['cpu']:.1f} | {r['objects']} |")
    lines.append(f"| scikit-image / SciPy, whole volume | {sk.wall:.1f} | – | – | – | – | – | {sk.peak_rss / GIB:.2f} | "
                 f"{sum(sk.extra.get('cpu_s', {}).values()):.1f} | {sk.objects} |")
    if once is not None:
        lines.append(f"| plain Dask, each block labelled once, in memory | {once.wall:.1f} | – | – | – | – | – | "
                     f"{once.peak_rss / GIB:.2f} | {sum(once.extra.get('cpu_s', {}).values()):.1f} | {once.objects} |")
    lines += ["",
              f"Medians of the served runs: wall {wall:.1f} s = {wall / sk.wall:.2f}× scikit-image's {sk.wall:.1f} s"
              + (f" and {wall / once.wall:.2f}× the block-once variant's {once.wall:.1f} s" if once is not None else "")
              + "; "
              f"flow run {flow_run:.1f} s; stages {stages:.1f} s; outside the stages {rest:.1f} s "
              f"({share:.0%} of the wall, medians of each run's own: the server's answer, the runner starting the "
              f"flow-run process, Prefect's task orchestration). Per stage (last run): "
              + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1]["per_stage"].items()) + " s.",
              "",
              f"Checks: every served run completed; objects {sorted({r['objects'] for r in runs})}, scikit-image "
              f"{sk.objects}" + (f", block-once {once.objects}" if once is not None else "")
              + f"; the last served run's table against scikit-image's: {table}.",
              ""]
    lines += footer_lines()
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
