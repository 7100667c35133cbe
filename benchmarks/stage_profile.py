"""The stages of a large-image spec without Prefect: CPU and wall per stage, on a local cluster or in one thread.

Each stage runs as one task on a worker of a ``LocalCluster`` made like the
flow's (worker processes, one thread each, the same preload), computing its
chunk graph on the same cluster, as ``tasks.stages`` does under Prefect; or,
with ``--in-process``, in this process with Dask's synchronous scheduler
(the cost of the stage code itself). Per stage it reports the wall time and
the CPU seconds of the workers, the scheduler and this process, so the
distributed overhead is the difference between the two modes.

    python benchmarks/stage_profile.py SPEC.yaml [--in-process] [--report DIR] [--py-spy DIR]

``--report DIR`` writes Dask's performance report of each stage (HTML);
``--py-spy DIR`` records each worker with py-spy (raw folded stacks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import dask


def process_cpu() -> float:
    """User + system CPU seconds of the calling process (all its threads)."""
    return time.process_time()


def run_steps(spec, out: Path, submit, compute) -> list[dict]:
    """Run every step of ``spec`` through ``submit(function, *args, **kwargs) -> result``; one row per stage."""
    from flows.record import stage_key
    from flows.spec import step_name
    from tasks import io, steps

    source = io.resolve_input(spec.to_input())
    upstream, images, rows = source, {"input": source}, []
    for number, step in enumerate(spec.steps, start=1):
        key = stage_key(number, step)
        started, cpu = time.perf_counter(), compute()
        if step.op == "measure":
            intensity = images[step.intensity] if step.intensity else None
            result = submit(steps.run_table_step, step, upstream, str(out / f"{key}.csv"), intensity=intensity)
        else:
            chunks = spec.chunks if upstream is source else None
            result = submit(steps.run_image_step, step, upstream, str(out / f"{key}.ome.zarr"), name=key, chunks=chunks)
            upstream = result.ref
            images.setdefault(step_name(step), result.ref)
        used = {k: round(v - cpu[k], 2) for k, v in compute().items()}
        rows.append({"stage": key, "wall_s": round(time.perf_counter() - started, 2), "cpu_s": used,
                     "seconds_reported": round(result.seconds, 2), "status": result.status})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def on_cluster(spec, out: Path, workers: int, report: Path | None, spy: Path | None) -> list[dict]:
    """Stages as tasks on worker processes of a local cluster, like the flow's."""
    from distributed import Client, LocalCluster, get_task_stream, performance_report

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, preload=["flows.worker_preload"])
    client = Client(cluster)
    spies = [attach(pid, spy) for pid in client.run(os.getpid).values()] if spy else []

    def cpu() -> dict[str, float]:
        per_worker = client.run(process_cpu)
        return {"workers": sum(per_worker.values()), "scheduler": client.run_on_scheduler(process_cpu),
                "main": process_cpu()}

    def submit(function, *args, **kwargs):
        name = getattr(args[0], "op", "stage")
        context = performance_report(str(report / f"{name}.html")) if report else nullcontext()
        before = worker_metrics(client)
        with context, get_task_stream(client) as stream:
            result = client.submit(function, *args, **kwargs, pure=False).result()
        print(json.dumps({"stage": name, "tasks": task_stream_summary(stream.data)}), flush=True)
        print(json.dumps({"stage": name, "metrics": metrics_summary(before, worker_metrics(client, settle=True))}),
              flush=True)
        return result

    try:
        return run_steps(spec, out, submit, cpu)
    finally:
        client.close()
        cluster.close()
        for s in spies:
            s.wait(timeout=30)


def task_stream_summary(records: list[dict]) -> dict:
    """Seconds computing per task prefix, and seconds and MiB moved between workers, from Dask's task stream."""
    compute: dict[str, float] = {}
    counts: dict[str, int] = {}
    moved_s, moved_mib, transfers = 0.0, 0.0, 0
    for record in records:
        prefix = str(record["key"][0] if isinstance(record["key"], tuple) else record["key"]).rsplit("-", 1)[0]
        for part in record["startstops"]:
            seconds = part["stop"] - part["start"]
            if part["action"] == "compute":
                compute[prefix] = compute.get(prefix, 0.0) + seconds
                counts[prefix] = counts.get(prefix, 0) + 1
            elif part["action"] == "transfer":
                moved_s += seconds
                transfers += 1
                moved_mib += part.get("nbytes", 0) / 2**20 if isinstance(part.get("nbytes"), (int, float)) else 0.0
    top = sorted(compute.items(), key=lambda kv: -kv[1])[:12]
    return {"compute_s": {k: [round(v, 2), counts[k]] for k, v in top}, "transfer_s": round(moved_s, 2),
            "transfers": transfers, "transfer_inputs_mib": round(moved_mib, 1), "idle": idle_gaps(records)}


def idle_gaps(records: list[dict], at_least: float = 0.05) -> dict:
    """Each worker's gaps of at least ``at_least`` s between computations, from the first task's start to the last's end.

    Times are seconds from the first start; a gap names the task prefixes
    either side of it, to show which phase of a stage left the worker waiting.
    """
    spans: dict[str, list[tuple[float, float, str]]] = {}
    for record in records:
        prefix = str(record["key"][0] if isinstance(record["key"], tuple) else record["key"]).rsplit("-", 1)[0]
        for part in record["startstops"]:
            if part["action"] == "compute":
                spans.setdefault(record["worker"], []).append((part["start"], part["stop"], prefix))
    if not spans:
        return {}
    first = min(s for runs in spans.values() for s, _, _ in runs)
    last = max(e for runs in spans.values() for _, e, _ in runs)
    found = {"window_s": round(last - first, 2)}
    for worker, runs in sorted(spans.items()):
        runs.sort()
        gaps, end, before = [], runs[0][0], "(start)"
        busy = 0.0
        for start, stop, prefix in runs:
            if start - end >= at_least:
                gaps.append([round(end - first, 2), round(start - end, 2), before, prefix])
            busy += stop - start
            end, before = max(end, stop), prefix
        if last - end >= at_least:
            gaps.append([round(end - first, 2), round(last - end, 2), before, "(end)"])
        found[worker.rsplit(":", 1)[-1]] = {"busy_s": round(busy, 2), "gaps": gaps}
    return found


def worker_metrics(client, settle: bool = False) -> dict:
    """The scheduler's cumulative fine performance metrics of all workers (after their next heartbeats)."""
    if settle:
        time.sleep(2.5)  # workers send their metrics with their heartbeats
    return client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.cumulative_worker_metrics))


def metrics_summary(before: dict, after: dict, top: int = 14) -> dict:
    """Seconds by (context, task prefix, activity) spent during one stage, largest first."""
    spent = {}
    for key, value in after.items():
        if isinstance(key, tuple) and key[-1] == "seconds":
            delta = value - before.get(key, 0.0)
            if delta > 0.01:
                spent[" ".join(str(k) for k in key[:-1])] = round(delta, 2)
    return dict(sorted(spent.items(), key=lambda kv: -kv[1])[:top])


def in_process(spec, out: Path) -> list[dict]:
    """Stages in this thread, Dask's synchronous scheduler: the stage code's own cost."""
    from tasks import steps

    compute = partial(dask.compute, scheduler="synchronous")

    def submit(function, *args, **kwargs):
        if function is steps.run_image_step:
            kwargs["compute_blocks"] = steps.sync_compute_blocks
        return function(*args, **kwargs, compute=compute)

    return run_steps(spec, out, submit, lambda: {"main": process_cpu()})


def attach(pid: int, folder: Path) -> subprocess.Popen:
    """py-spy on one worker process until it exits."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--nonblocking",
            "--output", str(folder / f"worker-{pid}.txt")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--in-process", action="store_true", help="one thread, synchronous Dask, no cluster")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, default=None, help="Dask performance report per stage into DIR")
    parser.add_argument("--py-spy", type=Path, default=None, help="py-spy record each worker into DIR")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    from flows.spec import load_spec

    spec = load_spec(args.spec)
    out = Path(spec.output)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.in_process:
        rows = in_process(spec, out)
    else:
        rows = on_cluster(spec, out, args.workers, args.report, args.py_spy)
    total = {"wall_s": round(time.perf_counter() - started, 2), "main_cpu_s": round(process_cpu(), 2)}
    print(json.dumps(total))
    if args.json:
        args.json.write_text(json.dumps({"stages": rows, "total": total}, indent=1))


if __name__ == "__main__":
    main()
