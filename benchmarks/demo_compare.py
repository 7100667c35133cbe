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
waits, up to ``--quiet-wait`` seconds, for the machine to be idle).  The
measuring code is shared with the other benchmarks, in ``measure.py``.

Runs made (in this order):

* ``haloflow cold``: ``haloflow run --verbose SPEC.yaml`` (``--verbose``: the
  timeline of the report is read from Prefect's own log lines, which a normal
  run hides) with haloflow's caches
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
import datetime as _dt
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from measure import (GIB, RunResult, compare_tables, cpu_by_role_table, describe_source, disturbance_checks,
                     fmt_spread, haloflow_env, least_disturbed, machine, med, memory_by_role_table, per_step_lines,
                     phase_table, read_json_line, run_haloflow, run_measured, sampling_note, save_runs, summary_line,
                     versions, warning_lines, write_section)

SECTION = "## Demo pipeline: haloflow vs scikit-image on the whole volume"

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


# --------------------------------------------------------------------------- the two sides
def haloflow_run(label: str, tiff: Path, work: Path, args, cold_cache: Path | None) -> RunResult:
    from flows.demo import demo_spec

    out = work / f"out_{label.replace(' ', '_')}"
    spec_path = work / f"spec_{label.replace(' ', '_')}.yaml"
    spec_path.write_text(yaml.safe_dump(demo_spec(str(tiff), str(out)), sort_keys=False))
    env = haloflow_env(cold_cache, args.haloflow_src)
    res = run_haloflow(label, spec_path, out, cwd=work, interval=args.interval_ms / 1e3,
                       quiet_wait=args.quiet_wait, env=env)
    table = out / "04_measure.csv"
    if table.is_file():
        with open(table) as f:
            res.extra["csv_rows"] = sum(1 for _ in f) - 1
        res.extra["csv"] = str(table)
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
    info = read_json_line(res)
    if info:
        res.objects = info["objects"]
        res.extra["steps"] = info["seconds"]
        res.extra["labels_dtype"] = info["labels_dtype"]
        res.extra["threshold"] = info["threshold"]
    return res


# --------------------------------------------------------------------------- reporting
def build_report(args, shape, command: str, setup: dict, groups: dict[str, list[RunResult]],
                 checks: list[str]) -> str:
    base = groups["scikit-image / SciPy (one process)"]
    base_wall = med([r.wall for r in base])
    base_pss = med([r.peak_pss for r in base])
    lines = []
    lines.append(f"Run on {setup['date']} with:\n\n```bash\n{command}\n```\n")
    lines.append(f"Volume {'x'.join(map(str, shape))} uint16 ({setup['volume_mib']:.0f} MiB), generated with "
                 f"`flows.demo.write_demo_tiff` in {setup['gen_s']:.1f} s; spec from `flows.demo.demo_spec` "
                 f"(chunks {setup['chunks']}). Repeats: {args.repeat} (median, with min–max when more than one). "
                 + sampling_note(args.interval_ms, args.quiet_wait, groups) + "\n")
    lines.append("| what | wall s | peak tree memory GiB (sum of PSS) | peak sum of RSS GiB | objects | ratio to scikit-image (wall / memory) | other load on the machine, cores |")
    lines.append("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for what, runs in groups.items():
        walls = [r.wall for r in runs]
        pss = [r.peak_pss / GIB for r in runs]
        rss = [r.peak_rss / GIB for r in runs]
        objs = sorted({r.objects for r in runs}, key=str)
        ratio = f"{med(walls) / base_wall:.1f}× / {med([r.peak_pss for r in runs]) / base_pss:.2f}×"
        lines.append(f"| {what} | {fmt_spread(walls, '.1f')} | {fmt_spread(pss, '.2f')} | "
                     f"{fmt_spread(rss, '.2f')} | {', '.join(map(str, objs))} | {ratio} | "
                     f"{fmt_spread([r.extra.get('background_cores', 0.0) for r in runs], '.2f')} |")
    lines.append("")

    lines += phase_table({what: runs for what, runs in groups.items() if what.startswith("haloflow")})
    lines += memory_by_role_table(groups)
    lines += cpu_by_role_table(groups)
    lines += per_step_lines(groups)
    lines.append("Checks:\n")
    lines.extend(f"- {c}" for c in checks)
    lines.append("")
    v = setup["versions"]
    lines.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".  ")
    lines.append(f"Machine: {setup['machine']}.  ")
    lines.append(f"haloflow source: {setup['source']}.\n")
    return "\n".join(lines)


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
            "versions": versions(),
            "machine": machine(),
            "source": commit_note or describe_source(source),
        }
        print(f"volume {shape} written in {gen_s:.1f} s ({setup['volume_mib']:.0f} MiB)")

        groups: dict[str, list[RunResult]] = {}
        all_runs: list[RunResult] = []
        discarded: list[RunResult] = []

        def quiet(make, label: str) -> RunResult:
            return least_disturbed(make, label, max_other_load=args.max_other_load, retries=args.retries,
                                   discarded=discarded)

        if not args.no_cold:
            r = quiet(lambda lb: haloflow_run(lb, tiff, work, args, cold_cache=work / "cold-cache"), "haloflow cold")
            groups["haloflow run, cold (first ever run: empty haloflow cache)"] = [r]
            all_runs.append(r)
        r = haloflow_run("haloflow warm-up", tiff, work, args, cold_cache=None)
        print(summary_line(r), flush=True)
        all_runs.append(r)
        r = skimage_run("skimage warm-up", tiff, work, args)
        print(summary_line(r), flush=True)
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

        checks = disturbance_checks(groups, discarded, args.max_other_load)
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
        checks.append(warning_lines(all_runs))
        checks.append(f"largest process tree seen: haloflow {max(r.max_procs for r in all_runs if r.label.startswith('haloflow'))} "
                      f"processes, scikit-image {max(r.max_procs for r in all_runs if r.label.startswith('skimage'))}")

        report = build_report(args, shape, command, setup, groups, checks)
        print()
        print(report)
        (work / "report.md").write_text(report)
        save_runs(work / "runs.json", all_runs, groups)
        if args.markdown:
            write_section(args.markdown, SECTION, report)
            print(f"section written to {args.markdown}")
        return 0 if not failed and same else 1
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
