"""Demo pipeline, end to end: ``haloflow run`` against plain scikit-image / SciPy.

Both sides run the demo pipeline (gaussian sigma 2 -> Otsu -> label -> measure)
on the same deterministic volume, each in a fresh process, and both write their
outputs.  For each run this measures the wall time and the peak memory of the
WHOLE process tree (the process and all its descendants: for haloflow, the
Prefect server and the Dask scheduler / nannies / workers too), sampled with
psutil every ``--interval-ms`` (RSS on every sample; each process's PSS, which
costs more to read, again whenever its RSS has moved by more than
``PSS_RSS_STEP`` or ``PSS_MAX_AGE`` after its last read, and in between
estimated as its RSS now minus the RSS - PSS difference of that last read).
Memory is reported as the peak of the summed PSS (proportional set size:
shared pages split between the processes sharing them, so the sum does not
count shared libraries once per process) and, for reference, the peak of the
summed RSS (which does over-count them).  Also recorded: CPU seconds per
process role, the sampler's own CPU, and the CPU used meanwhile by anything
else on the machine (other sessions may share it; before each run the script
waits, up to ``--quiet-wait`` seconds, for the machine to be idle).

Runs made (in this order):

* ``haloflow cold``: ``haloflow run SPEC.yaml`` with haloflow's caches
  (``HALOFLOW_CACHE_DIR``: the seed database the CLI copies into each run's
  Prefect home; ``HALOFLOW_PREFECT_HOME``: the Prefect home kept between runs
  by older versions of the CLI) pointed at new empty folders, i.e. what a
  user's first ever command sees: the Prefect server migrates a new database.
  ``--no-cold`` skips it.
* ``haloflow warm-up``: one run with the user's default caches
  (``~/.cache/haloflow``), not reported in the table.
* ``scikit-image warm-up``: one run of the plain script, not reported.
* then ``--repeat`` times: ``haloflow warm`` and ``scikit-image``.

No ``PREFECT_API_URL`` is passed to haloflow, so it starts its own local
Prefect server, as a user's first command would.

Usage::

    python benchmarks/demo_compare.py                       # 128 512 512
    python benchmarks/demo_compare.py --shape 64 256 256 --repeat 3
    python benchmarks/demo_compare.py --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
import yaml

SECTION = "## Demo pipeline: haloflow vs scikit-image on the whole volume"
GIB = 1024**3
SLOW_EVERY = 4  # ticks between rescans of the process tree (and PSS / CPU-time reads)
PSS_RSS_STEP = 2 * 2**20  # re-read a process's PSS when its RSS moved by more than this since the last read
PSS_MAX_AGE = 1.0  # ... or when the last read is older than this (seconds)

# The plain pipeline, on the whole volume in one process.
SKIMAGE_SCRIPT = '''\
import json, sys, time
from pathlib import Path

t0 = time.perf_counter()
import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage import filters, measure

src, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
times = {"import": time.perf_counter() - t0}

t = time.perf_counter(); img = tifffile.imread(src); times["read"] = time.perf_counter() - t
t = time.perf_counter(); smooth = ndi.gaussian_filter(img.astype(np.float32), 2.0, mode="nearest"); times["gaussian"] = time.perf_counter() - t
t = time.perf_counter(); thr = filters.threshold_otsu(smooth); mask = smooth > thr; times["threshold"] = time.perf_counter() - t
t = time.perf_counter(); labels = measure.label(mask); times["label"] = time.perf_counter() - t
t = time.perf_counter()
table = measure.regionprops_table(labels, img, properties=["label", "area", "centroid", "intensity_mean"])
times["measure"] = time.perf_counter() - t
t = time.perf_counter()
tifffile.imwrite(out / "labels.tif", labels)
names = list(table)
with open(out / "measure.csv", "w") as f:
    f.write(",".join(names) + "\\n")
    for row in zip(*(table[n] for n in names)):
        f.write(",".join(repr(v.item()) for v in row) + "\\n")
times["write"] = time.perf_counter() - t
objects = int(labels.max())
print(json.dumps({"objects": objects, "threshold": float(thr), "labels_dtype": str(labels.dtype),
                  "seconds": {k: round(v, 3) for k, v in times.items()}}))
print(f"objects: {objects}")
'''


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
    return "other"


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))


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
                 log_dir: Path, watch_prefect: bool = False, quiet_wait: float = 0.0) -> RunResult:
    """Run ``argv``; sample the memory of its process tree until it exits."""
    res = RunResult(label, argv)
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


# --------------------------------------------------------------------------- the two sides
def haloflow_run(label: str, tiff: Path, work: Path, args, cold_cache: Path | None) -> RunResult:
    from flows.demo import demo_spec

    out = work / f"out_{label.replace(' ', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    spec_path = work / f"spec_{label.replace(' ', '_')}.yaml"
    spec_path.write_text(yaml.safe_dump(demo_spec(str(tiff), str(out)), sort_keys=False))
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    for name in ("HALOFLOW_CACHE_DIR", "HALOFLOW_PREFECT_HOME"):
        env.pop(name, None)
    if cold_cache is not None:
        shutil.rmtree(cold_cache, ignore_errors=True)
        env["HALOFLOW_CACHE_DIR"] = str(cold_cache / "cache")
        env["HALOFLOW_PREFECT_HOME"] = str(cold_cache / "prefect-home")
    if args.haloflow_src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.haloflow_src), env.get("PYTHONPATH")]))
    exe = shutil.which("haloflow") or "haloflow"
    res = run_measured(label, [exe, "run", str(spec_path)], env=env, cwd=work, interval=args.interval_ms / 1e3,
                       log_dir=work, watch_prefect=True, quiet_wait=args.quiet_wait)
    res.extra["spec"] = str(spec_path)
    res.extra["out"] = str(out)
    run_json = out / "run.json"
    if run_json.is_file():
        record = json.loads(run_json.read_text())
        res.extra["stages"] = {s["name"]: s["seconds"] for s in record["stages"]}
        res.extra["statuses"] = {s["name"]: s["status"] for s in record["stages"]}
        for s in record["stages"]:
            if s["name"] == "03_label":
                res.objects = (s.get("info") or {}).get("objects")
    table = out / "04_measure.csv"
    if table.is_file():
        with open(table) as f:
            res.extra["csv_rows"] = sum(1 for _ in f) - 1
        res.extra["csv"] = str(table)
    m = re.search(r"haloflow: done in ([0-9.]+) s", res.text("out"))
    if m:
        res.extra["done_in"] = float(m.group(1))
    # Timeline from the run's own (timestamped on arrival) output.
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
    return res


def skimage_run(label: str, tiff: Path, work: Path, args) -> RunResult:
    script = work / "skimage_pipeline.py"
    script.write_text(SKIMAGE_SCRIPT)
    out = work / f"out_{label.replace(' ', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    res = run_measured(label, [sys.executable, str(script), str(tiff), str(out)], env=env, cwd=work,
                       interval=args.interval_ms / 1e3, log_dir=work, quiet_wait=args.quiet_wait)
    res.extra["out"] = str(out)
    res.extra["csv"] = str(out / "measure.csv")
    for line in res.text("out").splitlines():
        if line.startswith("{"):
            info = json.loads(line)
            res.objects = info["objects"]
            res.extra["steps"] = info["seconds"]
            res.extra["labels_dtype"] = info["labels_dtype"]
            res.extra["threshold"] = info["threshold"]
    return res


def compare_tables(a: str, b: str) -> str:
    """Compare two regionprops tables up to a permutation of the labels."""
    import numpy as np

    def load(path):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        cols = ["area", "centroid-0", "centroid-1", "centroid-2", "intensity_mean"]
        arr = np.array([[float(r[c]) for c in cols] for r in rows]).reshape(-1, len(cols))
        return arr[np.lexsort(arr[:, ::-1].T)] if len(arr) else arr

    try:
        x, y = load(a), load(b)
    except (OSError, KeyError, ValueError) as exc:
        return f"could not compare ({exc})"
    if x.shape != y.shape:
        return f"different row counts ({len(x)} vs {len(y)})"
    if not len(x):
        return "both empty"
    diff = np.abs(x - y)
    rel = diff / np.maximum(np.abs(y), 1e-12)
    ok = np.allclose(x, y, rtol=1e-6, atol=1e-6)
    return (("equal" if ok else "DIFFERENT") + f" (sorted rows; max abs diff {diff.max():.3g}, max rel diff {rel.max():.3g})")


# --------------------------------------------------------------------------- reporting
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-image", "dask", "distributed", "prefect", "prefect-dask",
                 "tifffile", "zarr", "psutil", "haloflow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def _describe_source(source: Path) -> str:
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


def _machine() -> str:
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


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_spread(values: list[float], fmt: str) -> str:
    text = format(_med(values), fmt)
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    return text


def build_report(args, shape, command: str, setup: dict, groups: dict[str, list[RunResult]],
                 checks: list[str]) -> str:
    base = groups["scikit-image / SciPy (one process)"]
    base_wall = _med([r.wall for r in base])
    base_pss = _med([r.peak_pss for r in base])
    lines = []
    lines.append(f"Run on {setup['date']} with:\n\n```bash\n{command}\n```\n")
    lines.append(f"Volume {'x'.join(map(str, shape))} uint16 ({setup['volume_mib']:.0f} MiB), generated with "
                 f"`flows.demo.write_demo_tiff` in {setup['gen_s']:.1f} s; spec from `flows.demo.demo_spec` "
                 f"(chunks {setup['chunks']}). Repeats: {args.repeat} (median, with min–max when more than one). "
                 f"Memory of the whole process tree (the process and all its descendants, found again every "
                 f"{SLOW_EVERY} samples) sampled every {args.interval_ms:g} ms (achieved: "
                 f"{_med([r.mean_interval_ms for rs in groups.values() for r in rs]):.0f} ms median): RSS on every "
                 f"sample; each process's PSS is read again when its RSS moved by more than "
                 f"{PSS_RSS_STEP / 2**20:g} MiB or {PSS_MAX_AGE:g} s after its last read, and in between taken as its "
                 f"RSS minus the shared-page discount (RSS − PSS) of that last read. "
                 f"Runs alternate; "
                 f"before each, the script waits (up to {args.quiet_wait:g} s) for the machine to be idle, since other "
                 f"work may share it: the last column is the CPU used meanwhile by everything outside the measured "
                 f"tree and the sampler, in cores (this machine has {os.cpu_count()}).\n")
    lines.append("| what | wall s | peak tree memory GiB (sum of PSS) | peak sum of RSS GiB | objects | ratio to scikit-image (wall / memory) | other load on the machine, cores |")
    lines.append("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for what, runs in groups.items():
        walls = [r.wall for r in runs]
        pss = [r.peak_pss / GIB for r in runs]
        rss = [r.peak_rss / GIB for r in runs]
        objs = sorted({r.objects for r in runs}, key=str)
        ratio = f"{_med(walls) / base_wall:.1f}× / {_med([r.peak_pss for r in runs]) / base_pss:.2f}×"
        lines.append(f"| {what} | {_fmt_spread(walls, '.1f')} | {_fmt_spread(pss, '.2f')} | "
                     f"{_fmt_spread(rss, '.2f')} | {', '.join(map(str, objs))} | {ratio} | "
                     f"{_fmt_spread([r.extra.get('background_cores', 0.0) for r in runs], '.2f')} |")
    lines.append("")

    # Where haloflow's time goes.
    lines.append("Where the haloflow wall time goes (seconds per phase, medians; the phases add up to the wall time). "
                 "Phase ends come from the process tree (the `prefect server start` child appearing), from polling "
                 "that server's `/api/health`, and from the run's own log lines, timestamped as they arrive:\n")
    lines.append("| haloflow run | CLI start → server spawned | Prefect server start-up (spawn → /api/health 200) | "
                 "health → flow run begins | flow begins → Dask cluster ready | stages (sum of run.json seconds) | "
                 "rest of the flow (task overhead, record, cluster close) | flow finished → process exit | wall | "
                 "CLI's own `done in` |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for what, runs in groups.items():
        if not what.startswith("haloflow"):
            continue

        def span(a, b):
            vals = [r.events[b] - r.events[a] for r in runs if a in r.events and b in r.events]
            return f"{_med(vals):.1f}" if vals else "?"

        def start_to(b):
            vals = [r.events[b] for r in runs if b in r.events]
            return f"{_med(vals):.1f}" if vals else "?"

        stages = [sum(r.extra.get("stages", {}).values()) for r in runs]
        rest = [r.events["flow_finished"] - r.events["cluster_ready"] - sum(r.extra.get("stages", {}).values())
                for r in runs if "flow_finished" in r.events and "cluster_ready" in r.events]
        done = [r.extra["done_in"] for r in runs if "done_in" in r.extra]
        lines.append(f"| {what} | {start_to('server_spawned')} | {span('server_spawned', 'server_healthy')} | "
                     f"{span('server_healthy', 'flow_begins')} | {span('flow_begins', 'cluster_ready')} | "
                     f"{_med(stages):.1f} | {(f'{_med(rest):.1f}' if rest else '?')} | "
                     f"{span('flow_finished', 'exit')} | {_med([r.wall for r in runs]):.1f} | "
                     f"{(f'{_med(done):.1f}' if done else '?')} |")
    lines.append("")
    lines.append("Peak tree memory (PSS, GiB, medians) split by process, at the sample where the sum peaked:\n")
    lines.append("| run | main process | Prefect server | Dask worker processes | other | total |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for what, runs in groups.items():
        def mem(name):
            return _med([r.extra.get("pss_at_peak_by_role", {}).get(name, 0) for r in runs]) / GIB
        lines.append(f"| {what} | {mem('main'):.2f} | {mem('prefect server'):.2f} | {mem('dask workers'):.2f} | "
                     f"{mem('other'):.2f} | {_med([r.peak_pss for r in runs]) / GIB:.2f} |")
    lines.append("")
    lines.append("CPU seconds (user + system, medians) by process, read from the same samples (a process's last "
                 "sample before it exits; this machine has 2 cores), and the CPU the sampler itself used:\n")
    lines.append("| run | main process | Prefect server | Dask worker processes | other | total | CPU / wall | sampler CPU |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for what, runs in groups.items():
        def role(name):
            return _med([r.extra.get("cpu_s", {}).get(name, 0.0) for r in runs])
        total = _med([sum(r.extra.get("cpu_s", {}).values()) for r in runs])
        lines.append(f"| {what} | {role('main'):.1f} | {role('prefect server'):.1f} | {role('dask workers'):.1f} | "
                     f"{role('other'):.1f} | {total:.1f} | {total / _med([r.wall for r in runs]):.2f} | "
                     f"{_med([r.extra.get('monitor_cpu_s', 0.0) for r in runs]):.1f} |")
    lines.append("")
    per_stage = {}
    for what, runs in groups.items():
        if what.startswith("haloflow"):
            for r in runs:
                for k, v in r.extra.get("stages", {}).items():
                    per_stage.setdefault(what, {}).setdefault(k, []).append(v)
    sk_steps: dict[str, list[float]] = {}
    for r in base:
        for k, v in r.extra.get("steps", {}).items():
            sk_steps.setdefault(k, []).append(v)
    if per_stage or sk_steps:
        lines.append("Per step (seconds, median): ")
        for what, stages in per_stage.items():
            lines.append(f"- {what}: " + ", ".join(f"{k} {_med(v):.1f}" for k, v in stages.items()))
        if sk_steps:
            lines.append("- scikit-image / SciPy: " + ", ".join(f"{k} {_med(v):.2f}" for k, v in sk_steps.items()))
        lines.append("")
    lines.append("Checks:\n")
    lines.extend(f"- {c}" for c in checks)
    lines.append("")
    v = setup["versions"]
    lines.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".  ")
    lines.append(f"Machine: {setup['machine']}.  ")
    lines.append(f"haloflow source: {setup['source']}.\n")
    return "\n".join(lines)


def write_markdown(path: Path, body: str) -> None:
    section = f"{SECTION}\n\n{body.rstrip()}\n"
    if path.exists():
        text = path.read_text()
        start = text.find(SECTION)
        if start >= 0:
            nxt = re.search(r"^## ", text[start + len(SECTION):], flags=re.M)
            end = start + len(SECTION) + nxt.start() if nxt else len(text)
            text = text[:start] + section + ("\n" + text[end:] if nxt else "")
        else:
            text = text.rstrip() + "\n\n" + section
    else:
        text = "# Benchmarks\n\n" + section
    path.write_text(text)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder (deleted unless --keep)")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs of each (default 1)")
    parser.add_argument("--markdown", type=Path, default=None, help="append / replace the section in this file")
    parser.add_argument("--interval-ms", type=float, default=25.0, help="memory sampling period (default 25)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold haloflow run (empty haloflow cache)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for the machine to be idle (default 120; 0: don't)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="a measured run during which other work used more CPU than this (cores) is made again")
    parser.add_argument("--retries", type=int, default=2, help="at most this many re-runs of a disturbed run (default 2)")
    parser.add_argument("--haloflow-src", type=Path, default=None,
                        help="run haloflow from this source tree (put first on PYTHONPATH), e.g. an export of a commit; "
                             "default: the installed package")
    parser.add_argument("--haloflow-commit", default=None, metavar="REV",
                        help="run haloflow as of this commit of the repository holding this script (exported with "
                             "`git archive` into the workdir, then as --haloflow-src): measures a fixed version while "
                             "the working tree changes")
    parser.add_argument("--keep", action="store_true", help="keep a temporary workdir")
    args = parser.parse_args(argv)

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv))
    shape = tuple(args.shape)
    temp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="haloflow-bench-")) if temp else args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {work}")
    commit_note = None
    if args.haloflow_commit:
        repo = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", args.haloflow_commit + "^{commit}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        export = work / f"haloflow-src-{rev[:10]}"
        shutil.rmtree(export, ignore_errors=True)
        export.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
        args.haloflow_src = export
        subject = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%s", rev],
                                 capture_output=True, text=True).stdout.strip()
        commit_note = f"commit {rev[:10]} ({subject!r}), exported with `git archive`"
        print(f"haloflow from {commit_note}")
    if args.haloflow_src:
        args.haloflow_src = args.haloflow_src.absolute()
        sys.path.insert(0, str(args.haloflow_src))
    try:
        from flows.demo import demo_spec, write_demo_tiff
        import flows

        source = Path(flows.__file__).resolve().parent.parent

        tiff = work / "demo_volume.tif"
        t = time.perf_counter()
        write_demo_tiff(tiff, shape)
        gen_s = time.perf_counter() - t
        setup = {
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "gen_s": gen_s,
            "volume_mib": tiff.stat().st_size / 2**20,
            "chunks": demo_spec(str(tiff), "x")["chunks"],
            "versions": _versions(),
            "machine": _machine(),
            "source": commit_note or _describe_source(source),
        }
        print(f"volume {shape} written in {gen_s:.1f} s ({setup['volume_mib']:.0f} MiB)")

        def show(r: RunResult):
            print(f"  {r.label:<20} rc {r.returncode}  wall {r.wall:6.1f} s  peak PSS {r.peak_pss / GIB:5.2f} GiB"
                  f"  RSS-sum {r.peak_rss / GIB:5.2f} GiB  procs {r.max_procs:2d}  objects {r.objects}"
                  f"  ({r.n_samples} samples, {r.mean_interval_ms:.0f} ms)  other load {r.extra['background_cores']:.2f} cores"
                  f" (waited {r.extra.get('quiet_wait_s', 0):.0f} s)", flush=True)

        groups: dict[str, list[RunResult]] = {}
        all_runs: list[RunResult] = []
        discarded: list[RunResult] = []

        def quiet(make, label: str) -> RunResult:
            """Run; if other work on the machine used more than --max-other-load cores meanwhile, run again
            (at most --retries times) and keep the least disturbed run."""
            tried = []
            for attempt in range(args.retries + 1):
                r = make(label if attempt == 0 else f"{label} retry {attempt}")
                show(r)
                tried.append(r)
                if r.extra["background_cores"] <= args.max_other_load:
                    break
            best = min(tried, key=lambda x: x.extra["background_cores"])
            discarded.extend(x for x in tried if x is not best)
            return best

        if not args.no_cold:
            r = quiet(lambda lb: haloflow_run(lb, tiff, work, args, cold_cache=work / "cold-cache"), "haloflow cold")
            groups["haloflow run, cold (first ever run: empty haloflow cache)"] = [r]
            all_runs.append(r)
        r = haloflow_run("haloflow warm-up", tiff, work, args, cold_cache=None)
        show(r)
        all_runs.append(r)
        r = skimage_run("skimage warm-up", tiff, work, args)
        show(r)
        all_runs.append(r)
        warm, plain = [], []
        for i in range(args.repeat):
            warm.append(quiet(lambda lb: haloflow_run(lb, tiff, work, args, cold_cache=None), f"haloflow warm {i + 1}"))
            plain.append(quiet(lambda lb: skimage_run(lb, tiff, work, args), f"skimage {i + 1}"))
        all_runs += warm + plain
        groups["haloflow run, warm (default cache, after a warm-up run)"] = warm
        groups["scikit-image / SciPy (one process)"] = plain
        for runs in groups.values():
            for r in runs:
                r.events["exit"] = r.wall

        checks = []
        if discarded:
            checks.append(f"runs made again because other work used more than {args.max_other_load:g} cores meanwhile "
                          f"(not in the tables): " + ", ".join(
                              f"{r.label} ({r.wall:.1f} s, other load {r.extra['background_cores']:.2f})" for r in discarded))
        noisy = [r for rs in groups.values() for r in rs if r.extra["background_cores"] > args.max_other_load]
        if noisy:
            checks.append("still disturbed after the retries (kept the least disturbed run): "
                          + ", ".join(f"{r.label} (other load {r.extra['background_cores']:.2f})" for r in noisy))
        failed = [r.label for r in all_runs + discarded if r.returncode != 0]
        checks.append("all runs exited 0" if not failed else f"FAILED runs: {', '.join(failed)}")
        counts = {r.label: r.objects for r in all_runs}
        same = len(set(counts.values())) == 1
        checks.append(("same object count in every run: " if same else "OBJECT COUNTS DIFFER: ")
                      + (str(next(iter(counts.values()))) if same else str(counts)))
        for r in all_runs:
            if r.label.startswith("haloflow") and r.extra.get("csv_rows") != r.objects:
                checks.append(f"{r.label}: 04_measure.csv has {r.extra.get('csv_rows')} rows, 03_label says {r.objects}")
        checks.append("haloflow stage statuses: " + ", ".join(
            sorted({f"{k} {v}" for r in all_runs for k, v in r.extra.get('statuses', {}).items()})))
        checks.append(f"tables (haloflow `04_measure.csv` vs scikit-image's, rows sorted, labels ignored): "
                      f"{compare_tables(warm[0].extra['csv'], plain[0].extra['csv'])}")
        if plain[0].extra.get("labels_dtype"):
            checks.append(f"scikit-image labels dtype {plain[0].extra['labels_dtype']} (written as a TIFF; haloflow writes "
                          f"uint32 OME-Zarr stores for every step)")
        warn = []
        for r in all_runs:
            n = sum(1 for _, _, line in r.lines if re.search(r"warn|error|exception|traceback", line, re.I))
            if n:
                warn.append(f"{r.label} {n}")
        checks.append("output lines mentioning warning/error/exception: " + (", ".join(warn) if warn else "none"))
        checks.append(f"largest process tree seen: haloflow {max(r.max_procs for r in all_runs if r.label.startswith('haloflow'))} "
                      f"processes, scikit-image {max(r.max_procs for r in all_runs if r.label.startswith('skimage'))}")

        report = build_report(args, shape, command, setup, groups, checks)
        print()
        print(report)
        (work / "report.md").write_text(report)
        (work / "runs.json").write_text(json.dumps([
            {"label": r.label, "argv": r.argv, "rc": r.returncode, "wall": r.wall, "peak_pss": r.peak_pss,
             "peak_rss": r.peak_rss, "peak_uss": r.peak_uss, "max_procs": r.max_procs, "objects": r.objects,
             "events": r.events, "extra": r.extra} for r in all_runs], indent=1))
        if args.markdown:
            write_markdown(args.markdown, report)
            print(f"section written to {args.markdown}")
        return 0 if not failed and same else 1
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
