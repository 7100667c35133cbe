"""Measuring helpers shared by the benchmark scripts (``demo_compare.py``, ``pipeline.py``, ...).

* :func:`run_measured` runs a command in a fresh process and samples the memory
  of its WHOLE process tree (the process and all its descendants: for haloflow,
  the Prefect server and the Dask scheduler / nannies / workers too) with
  psutil: RSS on every sample, each process's PSS (proportional set size:
  shared pages split between the processes sharing them) again whenever its
  RSS has moved by more than ``PSS_RSS_STEP`` or ``PSS_MAX_AGE`` after its last
  read, and in between estimated as its RSS now minus the RSS - PSS difference
  of that last read.  It also records CPU seconds per process role, the
  sampler's own CPU, and the CPU used meanwhile by anything else on the
  machine (``background_cores``), since other sessions may share it.
* :func:`run_haloflow` runs ``haloflow run --verbose SPEC`` that way and reads
  what the run says about itself: ``run.json`` (per-stage seconds, statuses,
  objects) and a timeline from Prefect's own log lines.
* Reporting: versions, machine, medians, table comparison up to row order,
  the shared report tables, and :func:`write_section` for ``RESULTS.md``;
  :func:`save_runs` / :func:`load_runs` keep the figures of the runs, so a
  report can be written again without running anything.

Import it from a script in this folder (``python benchmarks/X.py`` puts the
folder first on ``sys.path``): ``from measure import run_measured``.
"""

from __future__ import annotations

import csv
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

GIB = 1024**3
SLOW_EVERY = 4  # ticks between rescans of the process tree (and PSS / CPU-time reads)
PSS_RSS_STEP = 2 * 2**20  # re-read a process's PSS when its RSS moved by more than this since the last read
PSS_MAX_AGE = 1.0  # ... or when the last read is older than this (seconds)


# --------------------------------------------------------------------------- measurement
@dataclass
class Sample:
    t: float
    rss: int
    pss: int | None
    uss: int | None
    n: int


@dataclass
class RunResult:
    label: str
    argv: list[str]
    returncode: int = 0
    wall: float = 0.0
    peak_pss: int = 0
    peak_rss: int = 0
    peak_uss: int = 0
    max_procs: int = 0
    n_samples: int = 0
    mean_interval_ms: float = 0.0
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (t since launch, stream, text)
    events: dict[str, float] = field(default_factory=dict)
    objects: int | None = None
    extra: dict = field(default_factory=dict)

    def text(self, stream: str | None = None) -> str:
        return "\n".join(line for _, s, line in self.lines if stream is None or s == stream)


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _role(p: psutil.Process, root: psutil.Process, server: psutil.Process | None) -> str:
    if p.pid == root.pid:
        return "main"
    if server is not None and p.pid == server.pid:
        return "prefect server"
    cmd = _cmdline(p)
    if "server start" in cmd:
        return "prefect server"
    if "resource_tracker" in cmd:
        return "other"
    if "spawn" in cmd or "distributed" in cmd:
        return "dask workers"
    if cmd and cmd == _cmdline(root):  # forked from the command itself (flows.runner.forked_from_here)
        return "dask workers"
    return "other"


def kill_tree(procs: list[psutil.Process]) -> None:
    """Kill these processes (a measured run's tree, which this module started), children first."""
    for p in reversed(procs):
        try:
            p.kill()
        except psutil.Error:
            pass


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def flush_writes() -> float:
    """Write out the file data earlier runs left in the page cache (``sync``); the seconds it took.

    A run that writes gigabytes (a batch's float32 stores, dask-image's zarr
    stores) leaves them to the kernel to write back; the next run's own
    writes are then throttled behind them. Each measured run starts without
    that backlog.
    """
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


def wait_quiet(max_wait: float, threshold: float = 0.1) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle over one second.

    Returns (seconds waited, busy fraction of all cores in the last second).
    Other sessions share this machine; their test runs would distort ours.
    """
    started = time.monotonic()
    ncpu = psutil.cpu_count() or 1
    while True:
        b0 = system_busy()
        time.sleep(1.0)
        frac = (system_busy() - b0) / ncpu
        waited = time.monotonic() - started
        if frac < threshold or waited >= max_wait:
            return waited, frac


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for 127.0.0.1


def _healthy(port: str) -> bool:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/api/health", timeout=0.5) as resp:
            return resp.status == 200
    except Exception:
        return False


def run_measured(label: str, argv: list[str], *, env: dict[str, str], cwd: Path, interval: float,
                 log_dir: Path, watch_prefect: bool = False, quiet_wait: float = 0.0,
                 timeout: float | None = None) -> RunResult:
    """Run ``argv``; sample the memory of its process tree until it exits.

    With ``timeout`` (seconds), a run still going then is stopped (its process tree killed) and
    marked ``extra["timed_out"]``.
    """
    res = RunResult(label, argv)
    res.extra["sync_s"] = flush_writes()
    if quiet_wait > 0:
        waited, frac = wait_quiet(quiet_wait)
        res.extra["quiet_wait_s"] = waited
        res.extra["busy_before"] = frac
    busy0 = system_busy()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, bufsize=1)
    root = psutil.Process(proc.pid)

    def reader(stream, name):
        for line in stream:
            res.lines.append((time.perf_counter() - start, name, line.rstrip("\n")))
        stream.close()

    readers = [threading.Thread(target=reader, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=reader, args=(proc.stderr, "err"), daemon=True)]
    for th in readers:
        th.start()

    samples: list[Sample] = []
    seen: set[int] = set()
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, user+system seconds so far)
    own_cpu = time.process_time()
    server: psutil.Process | None = None
    server_port: str | None = None
    procs: list[psutil.Process] = [root]
    pss_state: dict[int, tuple[int, int, int, float]] = {}  # pid -> (rss, pss, uss, t) at its last PSS read
    pss_reads = 0
    peak_pss, roles_at_peak = 0, {}
    tick = 0
    next_at = time.perf_counter()
    while True:
        now = time.perf_counter() - start
        slow = tick % SLOW_EVERY == 0  # tree rescan and CPU times: every SLOW_EVERY ticks
        if slow:
            procs = _tree(root)
        alive, rss_of = [], []
        for p in procs:
            try:
                rss_of.append(p.memory_info().rss)
                alive.append(p)
            except psutil.Error:
                continue
        rss = sum(rss_of)
        # PSS (smaps_rollup) costs 0.5-2 ms per large process, RSS almost nothing.  A process's PSS is
        # re-read when its RSS moved by more than PSS_RSS_STEP since the last read, or PSS_MAX_AGE s
        # ago; in between, PSS = RSS now - (RSS - PSS at the last read): the shared-page discount
        # changes only when shared mappings do.
        pss = uss = 0
        by_role_now: dict[str, int] = {}
        for p, r in zip(alive, rss_of):
            last = pss_state.get(p.pid)
            if last is None or abs(r - last[0]) > PSS_RSS_STEP or now - last[3] > PSS_MAX_AGE:
                try:
                    m = p.memory_full_info()
                except psutil.Error:
                    continue
                last = pss_state[p.pid] = (m.rss, m.pss, m.uss, now)
                pss_reads += 1
            pss += r - (last[0] - last[1])
            uss += r - (last[0] - last[2])
            role = cpu[p.pid][0] if p.pid in cpu else ("main" if p.pid == root.pid else "other")
            by_role_now[role] = by_role_now.get(role, 0) + r - (last[0] - last[1])
        if pss > peak_pss:
            peak_pss, roles_at_peak = pss, by_role_now
        if slow:
            for p in alive:
                try:
                    ct = p.cpu_times()
                    role = cpu[p.pid][0] if p.pid in cpu else _role(p, root, server)
                    cpu[p.pid] = (role, ct.user + ct.system)
                except psutil.Error:
                    pass
                if watch_prefect and p.pid not in seen:
                    seen.add(p.pid)
                    cmd = _cmdline(p)
                    if server is None and "server start" in cmd:
                        server = p
                        res.events["server_spawned"] = now
                    elif ("distributed" in cmd or "multiprocessing" in cmd) and "dask_first_process" not in res.events:
                        res.events["dask_first_process"] = now
        samples.append(Sample(now, rss, pss, uss, len(alive)))
        if watch_prefect and server is not None and "server_healthy" not in res.events and tick % 2 == 0:  # 50 ms resolution
            if server_port is None:
                try:
                    server_port = server.environ().get("PREFECT_SERVER_API_PORT")
                except psutil.Error:
                    pass
            if server_port and _healthy(server_port):
                res.events["server_healthy"] = time.perf_counter() - start
        if watch_prefect and server is not None and "server_gone" not in res.events and slow and not server.is_running():
            res.events["server_gone"] = time.perf_counter() - start
        if proc.poll() is not None:
            break
        if timeout is not None and now > timeout and not res.extra.get("timed_out"):
            res.extra["timed_out"] = True
            kill_tree(procs)
        tick += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    res.wall = time.perf_counter() - start
    res.returncode = proc.wait()
    res.extra["monitor_cpu_s"] = time.process_time() - own_cpu
    res.extra["machine_busy_s"] = system_busy() - busy0
    by_role: dict[str, float] = {}
    for role, seconds in cpu.values():
        by_role[role] = by_role.get(role, 0.0) + seconds
    res.extra["cpu_s"] = by_role
    # CPU used by everything else on the machine meanwhile (other users' work), in cores.
    background = res.extra["machine_busy_s"] - sum(by_role.values()) - res.extra["monitor_cpu_s"]
    res.extra["background_cores"] = max(0.0, background) / res.wall
    for th in readers:
        th.join(timeout=10)
    res.peak_rss = max(s.rss for s in samples)
    res.peak_pss = max(s.pss for s in samples if s.pss is not None)
    res.peak_uss = max(s.uss for s in samples if s.uss is not None)
    res.extra["pss_reads"] = pss_reads
    res.extra["pss_at_peak_by_role"] = roles_at_peak
    res.max_procs = max(s.n for s in samples)
    res.n_samples = len(samples)
    if len(samples) > 1:
        res.mean_interval_ms = 1e3 * (samples[-1].t - samples[0].t) / (len(samples) - 1)
    log = log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.log"
    log.write_text("\n".join(f"{t:8.3f} {s} | {line}" for t, s, line in sorted(res.lines)) + "\n")
    res.extra["log"] = str(log)
    if res.returncode != 0:
        print(f"!! {label} exited with {res.returncode}; log in {log}\n{res.text('err')[-3000:]}", file=sys.stderr)
    return res



def summary_line(r: RunResult) -> str:
    """One line per finished run, printed as the benchmark goes."""
    return (f"  {r.label:<24} rc {r.returncode}  wall {r.wall:6.1f} s  peak PSS {r.peak_pss / GIB:5.2f} GiB"
            f"  RSS-sum {r.peak_rss / GIB:5.2f} GiB  procs {r.max_procs:2d}  objects {r.objects}"
            f"  ({r.n_samples} samples, {r.mean_interval_ms:.0f} ms)  other load {r.extra['background_cores']:.2f} cores"
            f" (waited {r.extra.get('quiet_wait_s', 0):.0f} s)")


def least_disturbed(make: Callable[[str], RunResult], label: str, *, max_other_load: float, retries: int,
                    discarded: list[RunResult]) -> RunResult:
    """Run ``make(label)``; while other work used more than ``max_other_load`` cores meanwhile, run again
    (at most ``retries`` times).  Returns the least disturbed run; the others go to ``discarded``."""
    tried = []
    for attempt in range(retries + 1):
        r = make(label if attempt == 0 else f"{label} retry {attempt}")
        print(summary_line(r), flush=True)
        tried.append(r)
        if r.extra["background_cores"] <= max_other_load:
            break
    best = min(tried, key=lambda x: x.extra["background_cores"])
    discarded.extend(x for x in tried if x is not best)
    return best


# --------------------------------------------------------------------------- haloflow runs
@functools.cache
def _run_help(exe: str, pythonpath: str | None) -> str:
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    return subprocess.run([exe, "run", "--help"], env=env, capture_output=True, text=True, timeout=120).stdout


def verbose_flag(exe: str, env: dict[str, str]) -> list[str]:
    """``["--verbose"]`` when this ``haloflow run`` has the flag (it hides Prefect's logs without it).

    Versions older than the flag (``--haloflow-commit``) always print Prefect's logs: no flag for them.
    """
    return ["--verbose"] if "--verbose" in _run_help(exe, env.get("PYTHONPATH")) else []


def haloflow_env(cold_cache: Path | None = None, src: Path | None = None) -> dict[str, str]:
    """The environment of a ``haloflow run``: no ``PREFECT_API_URL`` (it starts its own local server, as a
    user's first command would); with ``cold_cache``, haloflow's caches in new empty folders there; with
    ``src``, that source tree first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    for name in ("HALOFLOW_CACHE_DIR", "HALOFLOW_PREFECT_HOME"):
        env.pop(name, None)
    if cold_cache is not None:
        shutil.rmtree(cold_cache, ignore_errors=True)
        env["HALOFLOW_CACHE_DIR"] = str(cold_cache / "cache")
        env["HALOFLOW_PREFECT_HOME"] = str(cold_cache / "prefect-home")
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def run_haloflow(label: str, spec_path: Path, out: Path, *, cwd: Path, interval: float, quiet_wait: float,
                 env: dict[str, str] | None = None, workers: int | None = None,
                 worker_memory: str | None = None) -> RunResult:
    """``haloflow run --verbose [--workers N] [--worker-memory SIZE] SPEC`` in a fresh process, measured; then what
    it says about itself.

    ``out`` is the spec's output folder (removed first, so every stage computes).
    """
    shutil.rmtree(out, ignore_errors=True)
    env = haloflow_env() if env is None else env
    exe = shutil.which("haloflow") or "haloflow"
    # --verbose: the timeline is read from Prefect's own INFO lines, which a normal run hides.
    argv = [exe, "run", *verbose_flag(exe, env), *([] if workers is None else ["--workers", str(workers)]),
            *([] if worker_memory is None else ["--worker-memory", worker_memory]), str(spec_path)]
    res = run_measured(label, argv, env=env, cwd=cwd, interval=interval, log_dir=cwd, watch_prefect=True,
                       quiet_wait=quiet_wait)
    res.extra["spec"] = str(spec_path)
    res.extra["out"] = str(out)
    read_run_record(res, out / "run.json")
    read_timeline(res)
    return res


def read_run_record(res: RunResult, run_json: Path) -> None:
    """Per-stage seconds and statuses from ``run.json``; objects from the last stage that found some."""
    import json

    if not run_json.is_file():
        return
    record = json.loads(run_json.read_text())
    res.extra["stages"] = {s["name"]: s["seconds"] for s in record["stages"]}
    res.extra["statuses"] = {s["name"]: s["status"] for s in record["stages"]}
    for s in record["stages"]:
        objects = (s.get("info") or {}).get("objects")
        if objects is not None:
            res.objects = objects


def read_timeline(res: RunResult) -> None:
    """Phase ends of a haloflow run from its own output lines, timestamped as they arrived."""
    m = re.search(r"haloflow: done in ([0-9.]+) s", res.text("out"))
    if m:
        res.extra["done_in"] = float(m.group(1))
    for t, _, line in res.lines:
        if "Beginning flow run" in line:
            res.events.setdefault("flow_begins", t)
        elif "Creating a new Dask cluster" in line:
            res.events.setdefault("cluster_create", t)
        elif "Task run '01_" in line or "The Dask dashboard is available" in line:
            res.events.setdefault("cluster_ready", t)
        if re.search(r"Flow run '.*' - Finished in state", line):
            res.events.setdefault("flow_finished", t)
        if line.startswith("haloflow: done in"):
            res.events.setdefault("summary_printed", t)


def read_json_line(res: RunResult) -> dict:
    """The first stdout line of a plain script that starts with ``{`` (its JSON summary), or ``{}``."""
    import json

    for line in res.text("out").splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return {}


# --------------------------------------------------------------------------- checks
def _read_rows(path: str | Path, ignore: tuple[str, ...]) -> tuple[list[str], list[tuple]]:
    with open(path) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        names = [c for c in (reader.fieldnames or []) if c not in ignore]
    return names, rows


def compare_tables(a: str | Path, b: str | Path, ignore: tuple[str, ...] = ("label",)) -> str:
    """Compare two regionprops tables up to row order (and so up to a permutation of the labels).

    The columns both tables have, less ``ignore``, are compared; numbers within 1e-6 (relative or absolute),
    anything else (an ``image`` column) exactly.
    """
    import numpy as np

    try:
        names_a, rows_a = _read_rows(a, ignore)
        names_b, rows_b = _read_rows(b, ignore)
    except OSError as exc:
        return f"could not compare ({exc})"
    if set(names_a) != set(names_b):
        return f"DIFFERENT columns ({sorted(names_a)} vs {sorted(names_b)})"
    if len(rows_a) != len(rows_b):
        return f"different row counts ({len(rows_a)} vs {len(rows_b)})"
    if not rows_a:
        return "both empty"

    def numeric(name):
        try:
            float(rows_a[0][name])
            return True
        except ValueError:
            return False

    text_cols = [n for n in names_a if not numeric(n)]
    num_cols = [n for n in names_a if n not in text_cols]

    def key(r):
        return tuple(r[c] for c in text_cols) + tuple(float(r[c]) for c in num_cols)

    try:
        x, y = sorted(map(key, rows_a)), sorted(map(key, rows_b))
    except (KeyError, ValueError) as exc:
        return f"could not compare ({exc})"
    k = len(text_cols)
    if [r[:k] for r in x] != [r[:k] for r in y]:
        return f"DIFFERENT ({', '.join(text_cols)} columns differ)"
    xa, ya = np.array([r[k:] for r in x], dtype=float), np.array([r[k:] for r in y], dtype=float)
    diff = np.abs(xa - ya)
    rel = diff / np.maximum(np.abs(ya), 1e-12)
    ok = np.allclose(xa, ya, rtol=1e-6, atol=1e-6)
    return (("equal" if ok else "DIFFERENT") + f" (sorted rows; max abs diff {diff.max():.3g}, max rel diff {rel.max():.3g})")


# --------------------------------------------------------------------------- reporting
VERSIONED = ("numpy", "scipy", "scikit-image", "dask", "distributed", "prefect", "prefect-dask",
             "tifffile", "zarr", "psutil", "haloflow")


def versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str]:
    """Python's version and each named package's (``-`` when not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def describe_source(source: Path) -> str:
    """Where the haloflow that ran came from, with its git commit when it is a checkout."""
    text = f"`{source}`"
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            text += f" (git {head.stdout.strip()}{', with uncommitted changes' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return text


def haloflow_source() -> str:
    """:func:`describe_source` of the haloflow importable here."""
    import flows

    return describe_source(Path(flows.__file__).resolve().parent.parent)


def machine() -> str:
    mem = psutil.virtual_memory().total / GIB
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"nproc {os.cpu_count()}, memory {mem:.1f} GiB, {platform.system()} {platform.release()}"
            + (f", {cpu}" if cpu else ""))


def med(values: list[float]) -> float:
    return statistics.median(values)


def fmt_spread(values: list[float], fmt: str) -> str:
    """Median, with (min–max) when there is more than one value."""
    text = format(med(values), fmt)
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    return text


def sampling_note(interval_ms: float, quiet_wait: float, groups: dict[str, list[RunResult]]) -> str:
    """How memory was sampled and how the machine's other load was handled, for a report."""
    achieved = med([r.mean_interval_ms for rs in groups.values() for r in rs])
    achieved_text = f" (achieved: {achieved:.0f} ms median)" if achieved else ""
    return (f"Memory of the whole process tree (the process and all its descendants, found again every "
            f"{SLOW_EVERY} samples) sampled every {interval_ms:g} ms{achieved_text}: RSS on "
            f"every sample; each process's PSS is read again when its RSS moved by more than "
            f"{PSS_RSS_STEP / 2**20:g} MiB or {PSS_MAX_AGE:g} s after its last read, and in between taken as its "
            f"RSS minus the shared-page discount (RSS − PSS) of that last read. Runs alternate; before each, the "
            f"script writes out the file data earlier runs left unwritten (`sync`), then waits (up to "
            f"{quiet_wait:g} s) for the machine to be idle, since other work may share it: "
            f"the `other load` column is the CPU used meanwhile by everything outside the measured tree and the "
            f"sampler, in cores (this machine has {os.cpu_count()}).")


def phase_table(groups: dict[str, list[RunResult]]) -> list[str]:
    """Where haloflow's wall time goes, per group of haloflow runs (medians; the phases add up to the wall)."""
    lines = ["Where the haloflow wall time goes (seconds per phase, medians; the phases add up to the wall time). "
             "Phase ends come from the process tree (the `prefect server start` child appearing), from polling "
             "that server's `/api/health`, and from the run's own log lines (`haloflow run --verbose`), "
             "timestamped as they arrive:\n",
             "| haloflow run | CLI start → server spawned | Prefect server start-up (spawn → /api/health 200) | "
             "health → flow run begins | flow begins → Dask cluster ready | stages (sum of run.json seconds) | "
             "rest of the flow (task overhead, record, cluster close) | flow finished → process exit | wall | "
             "CLI's own `done in` |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for what, runs in groups.items():
        for r in runs:
            r.events.setdefault("exit", r.wall)

        def span(a, b):
            vals = [r.events[b] - r.events[a] for r in runs if a in r.events and b in r.events]
            return f"{med(vals):.1f}" if vals else "?"

        def start_to(b):
            vals = [r.events[b] for r in runs if b in r.events]
            return f"{med(vals):.1f}" if vals else "?"

        stages = [sum(r.extra.get("stages", {}).values()) for r in runs]
        rest = [r.events["flow_finished"] - r.events["cluster_ready"] - sum(r.extra.get("stages", {}).values())
                for r in runs if "flow_finished" in r.events and "cluster_ready" in r.events]
        done = [r.extra["done_in"] for r in runs if "done_in" in r.extra]
        lines.append(f"| {what} | {start_to('server_spawned')} | {span('server_spawned', 'server_healthy')} | "
                     f"{span('server_healthy', 'flow_begins')} | {span('flow_begins', 'cluster_ready')} | "
                     f"{med(stages):.1f} | {(f'{med(rest):.1f}' if rest else '?')} | "
                     f"{span('flow_finished', 'exit')} | {med([r.wall for r in runs]):.1f} | "
                     f"{(f'{med(done):.1f}' if done else '?')} |")
    lines.append("")
    return lines


def memory_by_role_table(groups: dict[str, list[RunResult]]) -> list[str]:
    """Peak tree memory split by process role, at the sample where the sum peaked."""
    lines = ["Peak tree memory (PSS, GiB, medians) split by process, at the sample where the sum peaked:\n",
             "| run | main process | Prefect server | Dask worker processes | other | total |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for what, runs in groups.items():
        def mem(name):
            return med([r.extra.get("pss_at_peak_by_role", {}).get(name, 0) for r in runs]) / GIB
        lines.append(f"| {what} | {mem('main'):.2f} | {mem('prefect server'):.2f} | {mem('dask workers'):.2f} | "
                     f"{mem('other'):.2f} | {med([r.peak_pss for r in runs]) / GIB:.2f} |")
    lines.append("")
    return lines


def cpu_by_role_table(groups: dict[str, list[RunResult]]) -> list[str]:
    """CPU seconds by process role, CPU / wall, and the sampler's own CPU."""
    lines = ["CPU seconds (user + system, medians) by process, read from the same samples (a process's last "
             f"sample before it exits; this machine has {os.cpu_count()} cores), and the CPU the sampler itself used:\n",
             "| run | main process | Prefect server | Dask worker processes | other | total | CPU / wall | sampler CPU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for what, runs in groups.items():
        def role(name):
            return med([r.extra.get("cpu_s", {}).get(name, 0.0) for r in runs])
        total = med([sum(r.extra.get("cpu_s", {}).values()) for r in runs])
        lines.append(f"| {what} | {role('main'):.1f} | {role('prefect server'):.1f} | {role('dask workers'):.1f} | "
                     f"{role('other'):.1f} | {total:.1f} | {total / med([r.wall for r in runs]):.2f} | "
                     f"{med([r.extra.get('monitor_cpu_s', 0.0) for r in runs]):.1f} |")
    lines.append("")
    return lines


def disturbance_checks(groups: dict[str, list[RunResult]], discarded: list[RunResult],
                       max_other_load: float) -> list[str]:
    """Check lines naming the runs made again, and those still disturbed after the retries."""
    checks = []
    if discarded:
        checks.append(f"runs made again because other work used more than {max_other_load:g} cores meanwhile "
                      f"(not in the tables): " + ", ".join(
                          f"{r.label} ({r.wall:.1f} s, other load {r.extra['background_cores']:.2f})" for r in discarded))
    noisy = [r for rs in groups.values() for r in rs if r.extra["background_cores"] > max_other_load]
    if noisy:
        checks.append("still disturbed after the retries (kept the least disturbed run): "
                      + ", ".join(f"{r.label} (other load {r.extra['background_cores']:.2f})" for r in noisy))
    return checks


def warning_lines(runs: list[RunResult]) -> str:
    """Which runs printed lines mentioning a warning, an error, an exception or a traceback."""
    found = []
    for r in runs:
        n = sum(1 for _, _, line in r.lines if re.search(r"warn|error|exception|traceback", line, re.I))
        if n:
            found.append(f"{r.label} {n}")
    return "output lines mentioning warning/error/exception: " + (", ".join(found) if found else "none")


def write_section(path: Path, heading: str, body: str) -> None:
    """Put ``heading`` and ``body`` in the Markdown file ``path``: replace the section with that heading (up to
    the next ``## ``), or append it."""
    section = f"{heading}\n\n{body.rstrip()}\n"
    if path.exists():
        text = path.read_text()
        start = text.find(heading + "\n")
        if start >= 0:
            nxt = re.search(r"^## ", text[start + len(heading):], flags=re.M)
            end = start + len(heading) + nxt.start() if nxt else len(text)
            text = text[:start] + section + ("\n" + text[end:] if nxt else "")
        else:
            text = text.rstrip() + "\n\n" + section
    else:
        text = "# Benchmarks\n\n" + section
    path.write_text(text)


def per_step_lines(groups: dict[str, list[RunResult]]) -> list[str]:
    """Per step seconds (medians): haloflow's stages from run.json, a plain script's steps from its summary."""
    lines = []
    for what, runs in groups.items():
        for key, fmt in (("stages", ".1f"), ("steps", ".2f")):
            steps: dict[str, list[float]] = {}
            for r in runs:
                for k, v in r.extra.get(key, {}).items():
                    steps.setdefault(k, []).append(v)
            if steps:
                lines.append(f"- {what}: " + ", ".join(f"{k} {format(med(v), fmt)}" for k, v in steps.items()))
    return ["Per step (seconds, median): ", *lines, ""] if lines else []


def save_runs(path: Path, runs: list[RunResult], groups: dict[str, list[RunResult]] | None = None) -> None:
    """Every run's figures (not its output lines) as JSON, with the group it is reported in (if any)."""
    import json

    group_of = {id(r): what for what, rs in (groups or {}).items() for r in rs}
    path.write_text(json.dumps([
        {"label": r.label, "group": group_of.get(id(r)), "argv": r.argv, "rc": r.returncode, "wall": r.wall,
         "peak_pss": r.peak_pss, "peak_rss": r.peak_rss, "peak_uss": r.peak_uss, "max_procs": r.max_procs,
         "n_samples": r.n_samples, "mean_interval_ms": r.mean_interval_ms, "objects": r.objects, "events": r.events,
         "extra": r.extra} for r in runs], indent=1, default=str))


def load_runs(path: Path) -> list[tuple[str | None, RunResult]]:
    """The runs :func:`save_runs` wrote, each with its group (None: a warm-up or a discarded run)."""
    import json

    out = []
    for d in json.loads(Path(path).read_text()):
        r = RunResult(d["label"], d["argv"], returncode=d["rc"], wall=d["wall"], peak_pss=d["peak_pss"],
                      peak_rss=d["peak_rss"], peak_uss=d.get("peak_uss", 0), max_procs=d["max_procs"],
                      n_samples=d.get("n_samples", 0), mean_interval_ms=d.get("mean_interval_ms", 0.0),
                      objects=d["objects"], events=d.get("events", {}), extra=d.get("extra", {}))
        log = Path(r.extra.get("log", ""))
        if log.is_file():  # the output lines, for warning_lines
            for line in log.read_text().split("\n"):
                m = re.match(r" *([0-9.]+) (out|err) \| (.*)", line)
                if m:
                    r.lines.append((float(m.group(1)), m.group(2), m.group(3)))
        out.append((d.get("group"), r))
    return out


def load_warning(groups: dict[str, list[RunResult]], max_other_load: float) -> list[str]:
    """A caution for the top of a report when other work on the machine disturbed its runs (else nothing)."""
    loads = [r.extra.get("background_cores", 0.0) for rs in groups.values() for r in rs]
    if not loads or max(loads) <= max_other_load:
        return []
    cores = os.cpu_count() or 1
    return [f"**Caution: other work on this machine (other sessions' tests) used {med(loads):.2f} of its {cores} "
            f"cores on average (median over the runs; up to {max(loads):.2f}) while these runs were measured. The wall "
            f"times are inflated, by different amounts for different runs, and less reliable than on an idle "
            f"machine; the memory figures and the checks are not affected.**\n"]
