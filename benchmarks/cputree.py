"""Run a command and report the CPU seconds of its whole process tree, per process role.

Lighter than ``measure.run_measured`` (no memory sampling): the tree is
walked every ``--interval`` seconds and each process's last ``cpu_times``
kept, so processes that exit (Dask workers, the Prefect server) still count.
Optionally attaches ``py-spy record`` to every Dask worker process as it
appears (``--py-spy DIR``: one speedscope/raw profile per worker).

    python benchmarks/cputree.py [--py-spy DIR] -- haloflow run --verbose spec.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def role(process: psutil.Process, root_pid: int) -> str:
    """main, prefect server, dask worker, dask nanny or other, from the command line."""
    if process.pid == root_pid:
        return "main"
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "server start" in cmd or "uvicorn" in cmd:
        return "prefect server"
    if "resource_tracker" in cmd:
        return "other"
    if "spawn_main" in cmd or "distributed" in cmd:
        return "dask worker"
    return "other"


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def attach_py_spy(pid: int, folder: Path, rate: int) -> subprocess.Popen:
    """``py-spy record`` on one process until it exits (raw folded stacks, subprocesses not followed)."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
            "--output", str(folder / f"worker-{pid}.txt"), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(argv: list[str], interval: float, spy: Path | None, rate: int) -> dict:
    """Run ``argv``; CPU seconds by role and by process, wall time, and the rest of the machine's load."""
    started, busy0 = time.perf_counter(), machine_busy()
    child = psutil.Popen(argv)
    seen: dict[int, tuple[str, float]] = {}
    spies: dict[int, subprocess.Popen] = {}
    while child.poll() is None:
        try:
            tree = [child, *child.children(recursive=True)]
        except psutil.Error:
            tree = [child]
        for p in tree:
            try:
                t = p.cpu_times()
                r = seen[p.pid][0] if p.pid in seen else role(p, child.pid)
            except psutil.Error:
                continue
            seen[p.pid] = (r, t.user + t.system)
            if spy is not None and r == "dask worker" and p.pid not in spies and "spawn_main" in " ".join(p.cmdline()):
                spies[p.pid] = attach_py_spy(p.pid, spy, rate)
        time.sleep(interval)
    wall = time.perf_counter() - started
    for s in spies.values():
        try:
            s.wait(timeout=30)
        except subprocess.TimeoutExpired:
            s.terminate()
    by_role: dict[str, float] = {}
    for r, seconds in seen.values():
        by_role[r] = by_role.get(r, 0.0) + seconds
    total = sum(by_role.values())
    other = machine_busy() - busy0 - total
    return {"argv": argv, "returncode": child.returncode, "wall_s": round(wall, 2), "cpu_s": round(total, 2),
            "cpu_by_role": {k: round(v, 2) for k, v in sorted(by_role.items())},
            "cpu_by_pid": {pid: [r, round(s, 2)] for pid, (r, s) in seen.items() if s > 0.5},
            "other_load_cores": round(max(other, 0.0) / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between walks of the tree")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="profile each Dask worker into DIR")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.py_spy is not None and shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed (pip install py-spy)")
    report = run(argv, args.interval, args.py_spy, args.rate)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
