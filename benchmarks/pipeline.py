"""Large-image pipeline: ``haloflow run`` against SciPy / scikit-image and dask-image, each in a fresh process.

The pipeline: gaussian (sigma 2) -> Otsu threshold -> label (connectivity 1)
-> measure (label, area, centroid; no intensity image), on a deterministic
uint16 volume of any ``--shape`` (default 256 1024 1024), written to a TIFF
slab by slab (``volume.py``; kept in the workdir and reused).  Runs:

* ``haloflow``: ``haloflow run --verbose SPEC.yaml`` end to end (Prefect
  server start-up, Dask cluster, every stage written to OME-Zarr);
* ``scikit-image``: SciPy / scikit-image on the whole volume in one process
  (``reference.py skimage``);
* ``dask-image``: dask-image on the same chunks, Dask's threaded scheduler,
  stages stored to zarr (``reference.py dask-image``), when dask-image is
  installed (``pip install dask-image``; not a haloflow dependency);
* ``block-once``: plain Dask in memory, each block labelled once, then the
  labels on block faces merged (``reference.py block-once``), on haloflow's
  default block shape: the issue's fastest chunked variant.

Each run is measured with ``measure.run_measured`` (wall time; peak memory of
the whole process tree as the sum of PSS; CPU by process; the machine's other
load meanwhile).  First one unreported warm-up run of each on a tiny volume
(imports in the page cache, haloflow's seed database made).  Reported:
wall, Mvoxel/s, peak memory, ratios to scikit-image, object counts (all must
agree) and each table against scikit-image's up to row order.

Usage::

    python benchmarks/pipeline.py                                   # 256 1024 1024
    python benchmarks/pipeline.py --shape 64 512 512 --repeat 3
    python benchmarks/pipeline.py --markdown benchmarks/RESULTS.md  # add / replace its section
    python benchmarks/pipeline.py --from-runs WORKDIR/runs.json     # the report again, nothing run

The workdir keeps the volumes, every run's output and log, ``runs.json`` and
``meta.json`` (command, date, versions), from which ``--from-runs`` writes the
report again (e.g. after changing the report's layout).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from measure import (GIB, RunResult, compare_tables, cpu_by_role_table, disturbance_checks, fmt_spread,
                     haloflow_source, least_disturbed, load_runs, load_warning, machine, med, memory_by_role_table,
                     per_step_lines, phase_table, read_json_line, run_haloflow, run_measured, sampling_note,
                     save_runs, summary_line, versions, warning_lines, write_section)
from reference import CONNECTIVITY, MODE, PROPERTIES, SIGMA
from volume import cached_volume

HERE = Path(__file__).resolve().parent
HALOFLOW = "haloflow run (Prefect + Dask, end to end)"
SKIMAGE = "scikit-image / SciPy (whole volume, one process)"
DASK_IMAGE = "dask-image (threaded scheduler, stages stored to zarr)"
BLOCK_ONCE = "plain Dask, each block labelled once, then a face merge (threaded scheduler, in memory)"
WARM_UP_SHAPE = (16, 128, 128)
DASK_IMAGE_CHUNKS = (64, 256, 256)
#: The block-once variant's blocks when haloflow chooses its own: the 128x256x256 it chooses for 1024x1024 planes.
BLOCK_ONCE_CHUNKS = (128, 256, 256)
#: Each tool's name in run labels.
SHORT_NAMES = {HALOFLOW: "haloflow", SKIMAGE: "skimage", DASK_IMAGE: "dask-image", BLOCK_ONCE: "block-once"}
VERSIONED = ("numpy", "scipy", "scikit-image", "dask", "distributed", "dask-image", "prefect", "prefect-dask",
             "zarr", "tifffile", "psutil", "haloflow")


def section_heading(shape: tuple[int, ...]) -> str:
    return f"## Large-image pipeline {'x'.join(map(str, shape))}: haloflow vs scikit-image vs dask-image"


def pipeline_spec(tiff: Path, out: Path, chunks: list[int] | None) -> dict:
    """The benchmark pipeline as a haloflow spec."""
    return {
        "flow": "large_image",
        "input": str(tiff),
        **({"chunks": list(chunks)} if chunks else {}),
        "steps": [
            {"op": "gaussian", "sigma": SIGMA, "mode": MODE},
            {"op": "threshold", "method": "otsu"},
            {"op": "label", "connectivity": CONNECTIVITY},
            {"op": "measure", "properties": PROPERTIES, "intensity": None},
        ],
        "output": str(out),
    }


def dask_image_installed() -> bool:
    return importlib.util.find_spec("dask_image") is not None


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace("/", "_")


# --------------------------------------------------------------------------- the runs
def haloflow_pipeline(label: str, tiff: Path, work: Path, args) -> RunResult:
    """``haloflow run`` on the pipeline spec, measured; its table is ``04_measure.csv``."""
    out = work / f"out_{_slug(label)}"
    spec_path = work / f"spec_{_slug(label)}.yaml"
    spec_path.write_text(yaml.safe_dump(pipeline_spec(tiff, out, args.chunks), sort_keys=False))
    res = run_haloflow(label, spec_path, out, cwd=work, interval=args.interval_ms / 1e3,
                       quiet_wait=args.quiet_wait, workers=args.workers, worker_memory=args.worker_memory)
    table = out / "04_measure.csv"
    if table.is_file():
        res.extra["csv"] = str(table)
        with open(table) as f:
            res.extra["csv_rows"] = sum(1 for _ in f) - 1
    return res


def reference_pipeline(label: str, how: str, tiff: Path, work: Path, args, timeout: float | None = None) -> RunResult:
    """``reference.py HOW`` (skimage, dask-image or block-once) in a fresh process, measured."""
    out = work / f"out_{_slug(label)}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, str(HERE / "reference.py"), how, str(tiff), str(out)]
    if how in ("dask-image", "block-once"):
        chunks = dask_image_chunks(args) if how == "dask-image" else block_once_chunks(args)
        argv += ["--chunks", *map(str, chunks)] + (["--workers", str(args.workers)] if args.workers else [])
    res = run_measured(label, argv, env=dict(os.environ), cwd=work, interval=args.interval_ms / 1e3, log_dir=work,
                       quiet_wait=args.quiet_wait, timeout=timeout)
    info = read_json_line(res)
    res.objects = info.get("objects")
    res.extra["steps"] = info.get("seconds", {})
    res.extra["threshold"] = info.get("threshold")
    if (out / "measure.csv").is_file() and info:
        res.extra["csv"] = str(out / "measure.csv")
    return res


def warm_up(work: Path, args) -> list[RunResult]:
    """One unreported run of each on a tiny volume: imports in the page cache, haloflow's seed database made."""
    tiny, _ = cached_volume(work, WARM_UP_SHAPE)
    small = argparse.Namespace(**{**vars(args), "chunks": [8, 64, 64], "quiet_wait": 0})
    runs = [haloflow_pipeline("haloflow warm-up", tiny, work, small),
            reference_pipeline("skimage warm-up", "skimage", tiny, work, small)]
    if args.dask_image:
        runs.append(reference_pipeline("dask-image warm-up", "dask-image", tiny, work, small))
    if getattr(args, "block_once", False):
        runs.append(reference_pipeline("block-once warm-up", "block-once", tiny, work, small))
    for r in runs:
        print(summary_line(r), flush=True)
    return runs


@dataclass
class Measured:
    """The runs of one shape, by group, with the runs made again and the warm-ups."""

    shape: tuple[int, ...]
    groups: dict[str, list[RunResult]] = field(default_factory=dict)
    discarded: list[RunResult] = field(default_factory=list)
    warm_ups: list[RunResult] = field(default_factory=list)
    gen_s: float | None = None
    volume_mib: float = 0.0

    @property
    def voxels(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def runs(self) -> list[RunResult]:
        return [r for rs in self.groups.values() for r in rs]


def measure_shape(shape: tuple[int, ...], work: Path, args, *, with_dask_image: bool,
                  with_block_once: bool = False) -> Measured:
    """Run haloflow, scikit-image (and dask-image, the block-once variant) ``args.repeat`` times each on ``shape``."""
    tiff, gen_s = cached_volume(work, shape)
    m = Measured(shape, gen_s=gen_s, volume_mib=tiff.stat().st_size / 2**20)
    print(f"volume {shape}: {tiff} ({m.volume_mib:.0f} MiB" + (f", written in {gen_s:.1f} s)" if gen_s else ", reused)"),
          flush=True)
    makers = {HALOFLOW: lambda lb: haloflow_pipeline(lb, tiff, work, args),
              SKIMAGE: lambda lb: reference_pipeline(lb, "skimage", tiff, work, args)}
    if with_dask_image:
        makers[DASK_IMAGE] = lambda lb: reference_pipeline(lb, "dask-image", tiff, work, args,
                                                           timeout=args.dask_image_timeout)
    if with_block_once:
        makers[BLOCK_ONCE] = lambda lb: reference_pipeline(lb, "block-once", tiff, work, args)
    short = SHORT_NAMES
    for i in range(args.repeat):
        for what, make in makers.items():
            run = least_disturbed(make, f"{short[what]} {'x'.join(map(str, shape))} #{i + 1}",
                                  max_other_load=args.max_other_load, retries=args.retries, discarded=m.discarded)
            m.groups.setdefault(what, []).append(run)
    return m


def load_measured(path: Path) -> list[Measured]:
    """The sizes measured by ``pipeline.py``, from the ``runs.json`` in its workdir (warm-ups left out)."""
    tools = {name: what for what, name in SHORT_NAMES.items()}
    by_shape: dict[tuple[int, ...], Measured] = {}
    for group, run in load_runs(path):
        m = re.fullmatch(r"(haloflow|skimage|dask-image|block-once) (\d+(?:x\d+)+) #\d+(?: retry \d+)?", run.label)
        if m is None or (group is None and "retry" in run.label):
            continue
        what = group if group in tools.values() else tools[m.group(1)]
        shape = tuple(int(s) for s in m.group(2).split("x"))
        by_shape.setdefault(shape, Measured(shape, **volume_info(path.parent, shape))).groups.setdefault(what, []).append(run)
    return list(by_shape.values())


def volume_info(folder: Path, shape: tuple[int, ...]) -> dict:
    """Size and writing time of the volume of ``shape`` that ``volume.cached_volume`` left in ``folder`` (if any)."""
    name = "volume_" + "x".join(map(str, shape)) + "_seed0"
    done = folder / f"{name}.done"
    if not done.is_file():
        return {}
    record = json.loads(done.read_text())
    return {"gen_s": record.get("seconds"), "volume_mib": record.get("bytes", 0) / 2**20}


# --------------------------------------------------------------------------- checks and report
def check_lines(m: Measured, args) -> list[str]:
    """Exit codes, object counts, tables against scikit-image's, warnings."""
    runs = m.runs()
    checks = disturbance_checks(m.groups, m.discarded, args.max_other_load)
    failed = [r.label for r in runs + m.discarded if r.returncode != 0 and not r.extra.get("timed_out")]
    timed_out = [r.label for r in runs if r.extra.get("timed_out")]
    checks.append(("all runs exited 0" if not timed_out else "all runs that finished exited 0") if not failed
                  else f"FAILED runs: {', '.join(failed)}")
    if timed_out:
        checks.append(f"stopped at the time limit (--dask-image-timeout), so not in the object and table checks: "
                      f"{', '.join(timed_out)}")
    counts = {r.label: r.objects for r in runs if not r.extra.get("timed_out")}
    same = len(set(counts.values())) == 1
    checks.append(("same object count in every run: " if same else "OBJECT COUNTS DIFFER: ")
                  + (str(next(iter(counts.values()))) if same else str(counts)))
    for r in m.groups.get(HALOFLOW, []):
        if r.extra.get("csv_rows") != r.objects:
            checks.append(f"{r.label}: 04_measure.csv has {r.extra.get('csv_rows')} rows, the label stage says {r.objects}")
    base = m.groups[SKIMAGE][0].extra.get("csv")
    for what, rs in m.groups.items():
        if what != SKIMAGE and base and rs[0].extra.get("csv") and not rs[0].extra.get("timed_out"):
            checks.append(f"table of {what} vs scikit-image's (rows sorted, label numbers ignored): "
                          f"{compare_tables(rs[0].extra['csv'], base)}")
    thresholds = {what: rs[0].extra.get("threshold") for what, rs in m.groups.items() if rs[0].extra.get("threshold")}
    if thresholds:
        checks.append("Otsu thresholds: " + ", ".join(f"{what.split(' ')[0]} {t:.6g}" for what, t in thresholds.items()))
    statuses = sorted({f"{k} {v}" for r in m.groups.get(HALOFLOW, []) for k, v in r.extra.get("statuses", {}).items()})
    if statuses:
        checks.append("haloflow stage statuses: " + ", ".join(statuses))
    checks.append(warning_lines(runs))
    return checks


def cpu_seconds(r: RunResult) -> float:
    """CPU seconds of the whole process tree (user + system)."""
    return sum(r.extra.get("cpu_s", {}).values())


def main_table(m: Measured) -> list[str]:
    """Wall, throughput, memory, CPU, objects and ratios to scikit-image, one row per group.

    CPU seconds are the least disturbed by other work on the machine: they say what the run cost, where the wall
    time also says how much of the machine it got.
    """
    base = m.groups[SKIMAGE]
    base_wall, base_pss = med([r.wall for r in base]), med([r.peak_pss for r in base])
    base_cpu = med([cpu_seconds(r) for r in base])
    lines = ["| what | wall s | Mvoxel/s | peak tree memory GiB (sum of PSS) | peak sum of RSS GiB | CPU s (whole tree) | "
             "objects | ratio to scikit-image (wall / memory / CPU) | other load on the machine, cores |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for what, runs in m.groups.items():
        walls = [r.wall for r in runs]
        cpu = [cpu_seconds(r) for r in runs]
        pss = fmt_spread([r.peak_pss / GIB for r in runs], '.2f')
        rss = fmt_spread([r.peak_rss / GIB for r in runs], '.2f')
        load = fmt_spread([r.extra['background_cores'] for r in runs], '.2f')
        if any(r.extra.get("timed_out") for r in runs):
            lines.append(f"| {what} | > {min(walls):.0f} (stopped at the time limit) | < {m.voxels / min(walls) / 1e6:.3g} | "
                         f"{pss} (until stopped) | {rss} | > {min(cpu):.0f} | – | "
                         f"> {min(walls) / base_wall:.1f}× / – / > {min(cpu) / base_cpu:.1f}× | {load} |")
            continue
        objs = ", ".join(map(str, sorted({r.objects for r in runs}, key=str)))
        lines.append(f"| {what} | {fmt_spread(walls, '.1f')} | {m.voxels / med(walls) / 1e6:.3g} | {pss} | {rss} | "
                     f"{fmt_spread(cpu, '.1f')} | {objs} | {med(walls) / base_wall:.1f}× / "
                     f"{med([r.peak_pss for r in runs]) / base_pss:.2f}× / {med(cpu) / base_cpu:.1f}× | {load} |")
    lines.append("")
    return lines


def setup_lines(m: Measured, args, command: str, date: str) -> list[str]:
    gen = f"written slab by slab in {m.gen_s:.1f} s" if m.gen_s else "reused from an earlier run of the script"
    return [f"Run on {date} with:\n\n```bash\n{command}\n```\n",
            f"Volume {'x'.join(map(str, m.shape))} uint16 ({m.volume_mib:.0f} MiB, {m.voxels / 1e6:.0f} Mvoxel; "
            f"`benchmarks/volume.py`, {gen}). Pipeline: gaussian sigma {SIGMA:g} (mode {MODE}, on float32) -> Otsu "
            f"-> label (connectivity {CONNECTIVITY}) -> measure ({', '.join(PROPERTIES)}; no intensity image). "
            f"{chunks_note(args)}; haloflow workers: {args.workers or 'its default (one per core)'}"
            f"{f', each limited to {args.worker_memory}' if args.worker_memory else ''}. Each run is a fresh process; one unreported warm-up "
            f"of each on a {'x'.join(map(str, WARM_UP_SHAPE))} volume first. Repeats: {args.repeat} (median, with "
            f"min–max when more than one). " + sampling_note(args.interval_ms, args.quiet_wait, m.groups) + "\n"]


def build_report(m: Measured, args, command: str, date: str, env: dict | None = None) -> str:
    lines = setup_lines(m, args, command, date)
    lines += load_warning(m.groups, args.max_other_load)
    lines += main_table(m)
    lines += phase_table({what: rs for what, rs in m.groups.items() if what == HALOFLOW})
    lines += memory_by_role_table(m.groups)
    lines += cpu_by_role_table(m.groups)
    lines += per_step_lines(m.groups)
    lines += ["Checks:\n", *(f"- {c}" for c in check_lines(m, args)), ""]
    lines += footer_lines(env)
    return "\n".join(lines)


def environment() -> dict:
    """Versions, machine and haloflow source, as a report's footer states them."""
    return {"versions": versions(VERSIONED), "machine": machine(), "source": haloflow_source()}


def footer_lines(env: dict | None = None) -> list[str]:
    """Versions, machine and haloflow source: ``env`` as recorded when the runs were made, or now."""
    env = env or environment()
    return ["Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".  ",
            f"Machine: {env['machine']}.  ", f"haloflow source: {env['source']}.\n"]


# --------------------------------------------------------------------------- command line
def dask_image_chunks(args) -> list[int]:
    """dask-image's block shape: ``--chunks``, or the issue's 64x256x256 when haloflow chooses its own."""
    return list(args.chunks or DASK_IMAGE_CHUNKS)


def block_once_chunks(args) -> list[int]:
    """The block-once variant's block shape: ``--chunks``, or :data:`BLOCK_ONCE_CHUNKS`."""
    return list(args.chunks or BLOCK_ONCE_CHUNKS)


def chunks_note(args) -> str:
    """Which chunks each ran on, for the report."""
    if args.chunks:
        return f"haloflow, dask-image and the block-once variant on chunks {args.chunks}"
    return (f"haloflow on chunks of its own choice (none in the spec: near-cubes of 32 MiB of float32, "
            f"128x256x256 here), dask-image on {dask_image_chunks(args)}"
            + (f", the block-once variant on {block_once_chunks(args)}" if getattr(args, "block_once", False) else ""))


def add_common_options(parser: argparse.ArgumentParser, *, chunks: bool = True) -> None:
    """Options shared with ``scaling.py`` and (without ``--chunks``) ``batch.py``."""
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps the volumes and outputs (default: a new temporary folder, deleted unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep a temporary workdir")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs of each (default 1)")
    parser.add_argument("--workers", type=int, default=None,
                        help="haloflow's --workers, and dask-image's threads (default: theirs, one per core)")
    parser.add_argument("--worker-memory", default=None, metavar="SIZE",
                        help="haloflow's --worker-memory: each worker's memory limit (default: Dask's)")
    if chunks:
        parser.add_argument("--chunks", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                            help="block shape for haloflow and dask-image (default: haloflow's own choice, no chunks "
                                 "in its spec; dask-image 64 256 256)")
    parser.add_argument("--markdown", type=Path, default=None, help="add / replace this benchmark's section in this file")
    parser.add_argument("--interval-ms", type=float, default=25.0, help="memory sampling period (default 25)")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for the machine to be idle (default 60)")
    parser.add_argument("--max-other-load", type=float, default=0.25,
                        help="a run during which other work used more CPU than this (cores) is made again")
    parser.add_argument("--retries", type=int, default=1, help="at most this many re-runs of a disturbed run (default 1)")


def command_line(argv: list[str] | None) -> str:
    words = [os.path.relpath(sys.argv[0] if argv is None else __file__)] + list(sys.argv[1:] if argv is None else argv)
    return "python " + " ".join(shlex.quote(a) for a in words)


def workdir(args) -> tuple[Path, bool]:
    """The workdir, and whether it is a temporary one."""
    if args.workdir is None:
        return Path(tempfile.mkdtemp(prefix="haloflow-bench-")), True
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args.workdir.absolute(), False


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def save_meta(work: Path, command: str, date: str, args) -> None:
    """The command, date and options of a run, beside its runs.json (for --from-runs)."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (work / "meta.json").write_text(json.dumps({"command": command, "date": date, "args": options,
                                                "environment": environment()}, indent=1))


def report_from_runs(args) -> int:
    """Write the report of an earlier run from its runs.json (nothing is run)."""
    folder = args.from_runs.parent
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    command = meta.get("command") or args.command or "(not recorded)"
    date = meta.get("date") or args.date or "(not recorded)"
    measured = [m for m in load_measured(args.from_runs) if m.shape == tuple(args.shape)]
    if not measured:
        print(f"no runs of shape {tuple(args.shape)} in {args.from_runs}", file=sys.stderr)
        return 2
    report = build_report(measured[0], args, command, date, meta.get("environment"))
    print(report)
    if args.markdown:
        write_section(args.markdown, section_heading(measured[0].shape), report)
        print(f"section written to {args.markdown}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 1024, 1024], metavar=("Z", "Y", "X"))
    parser.add_argument("--no-dask-image", dest="dask_image", action="store_false",
                        help="skip dask-image (skipped anyway when it is not installed)")
    parser.add_argument("--dask-image-timeout", type=float, default=900.0,
                        help="stop a dask-image run after this many seconds (default 900)")
    parser.add_argument("--no-block-once", dest="block_once", action="store_false",
                        help="skip the plain-Dask variant that labels each block once (reference.py block-once)")
    parser.add_argument("--from-runs", type=Path, default=None, metavar="RUNS_JSON",
                        help="run nothing: write the report of an earlier run of --shape from the runs.json in its "
                             "workdir (give the options it ran with, for the report's text)")
    parser.add_argument("--command", default=None, help="with --from-runs and no meta.json: the command that ran")
    parser.add_argument("--date", default=None, help="with --from-runs and no meta.json: when it ran")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if args.from_runs:
        return report_from_runs(args)
    args.dask_image = args.dask_image and dask_image_installed()
    work, temp = workdir(args)
    print(f"workdir: {work}")
    try:
        date = now()
        save_meta(work, command_line(argv), date, args)
        warm = warm_up(work, args)
        m = measure_shape(tuple(args.shape), work, args, with_dask_image=args.dask_image, with_block_once=args.block_once)
        m.warm_ups = warm
        report = build_report(m, args, command_line(argv), date)
        print("\n" + report)
        (work / "report.md").write_text(report)
        save_runs(work / "runs.json", warm + m.runs() + m.discarded, m.groups)
        if args.markdown:
            write_section(args.markdown, section_heading(m.shape), report)
            print(f"section written to {args.markdown}")
        finished = [r for r in m.runs() if not r.extra.get("timed_out")]
        ok = all(r.returncode == 0 for r in finished) and len({r.objects for r in finished}) == 1
        return 0 if ok else 1
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
