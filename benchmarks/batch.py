"""Batch workflow: ``haloflow run`` on a glob of small TIFFs against a plain Python for-loop.

``--images`` (default 2000) deterministic uint16 images of ``--size`` (default
512 x 512; ``flows.demo.demo_volume`` in 2D, image ``i`` seeded ``i``, kept in
the workdir and reused), the pipeline gaussian (sigma 2) -> Otsu -> label
(connectivity 1) -> measure (label, area, centroid):

* ``haloflow``: ``haloflow run --verbose`` on a ``flow: batch`` spec whose
  input is the glob (every step's store under ``OUT/IMAGE/``, one
  ``OUT/04_measure.csv`` with an ``image`` column first);
* ``for-loop``: one process reading each TIFF, filtering, thresholding,
  labelling, writing a labels TIFF, and one CSV (``reference.py batch``).

Each run is a fresh process measured with ``measure.run_measured``, after one
unreported warm-up of each on a few images.  Checked: the same objects per
image, and the tables equal up to row order.

Usage::

    python benchmarks/batch.py                                      # 2000 images of 512 x 512
    python benchmarks/batch.py --images 200 --repeat 3
    python benchmarks/batch.py --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from measure import (GIB, RunResult, compare_tables, cpu_by_role_table, disturbance_checks, fmt_spread,
                     least_disturbed, load_warning, med, memory_by_role_table, per_step_lines, phase_table,
                     read_json_line, run_haloflow, run_measured, sampling_note, save_runs, summary_line,
                     warning_lines, write_section)
from pipeline import add_common_options, command_line, footer_lines, now, workdir
from reference import CONNECTIVITY, MODE, PROPERTIES, SIGMA

HERE = Path(__file__).resolve().parent
SECTION = "## Batch workflow: haloflow vs a plain for-loop over small images"
HALOFLOW = "haloflow run, flow: batch (Prefect + Dask, end to end)"
HALOFLOW_KEEP = "haloflow run, flow: batch, keep: [label] (only the labels and the table written)"
LOOP = "plain Python for-loop (one process)"
OBJECTS_PER_IMAGE = 30  # blobs drawn per image
WARM_UP_IMAGES = 8


# --------------------------------------------------------------------------- data
def image_folder(work: Path, count: int, size: tuple[int, int]) -> Path:
    return work / f"images_{count}_{size[0]}x{size[1]}"


def write_images(folder: Path, count: int, size: tuple[int, int]) -> float | None:
    """``count`` TIFFs ``img_00000.tif`` ... in ``folder``, unless a complete set is there; seconds taken or None."""
    import tifffile

    from flows.demo import demo_volume

    done = folder / ".done"
    if done.is_file() and json.loads(done.read_text()).get("count") == count:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(count):
        tifffile.imwrite(folder / f"img_{i:05d}.tif", demo_volume(size, n_objects=OBJECTS_PER_IMAGE, seed=i),
                         photometric="minisblack")
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"count": count, "size": list(size), "seconds": seconds}))
    return seconds


def batch_spec(pattern: str, out: Path, keep: list[str] | None = None) -> dict:
    """The benchmark pipeline as a haloflow batch spec (``keep``: the image steps whose stores are written)."""
    return {**({"keep": keep} if keep else {}),
        "flow": "batch",
        "input": pattern,
        "steps": [
            {"op": "gaussian", "sigma": SIGMA, "mode": MODE},
            {"op": "threshold", "method": "otsu"},
            {"op": "label", "connectivity": CONNECTIVITY},
            {"op": "measure", "properties": PROPERTIES, "intensity": None},
        ],
        "output": str(out),
    }


# --------------------------------------------------------------------------- the runs
def objects_per_image(table: Path) -> Counter:
    """Rows per value of the ``image`` column."""
    with open(table) as f:
        return Counter(row["image"] for row in csv.DictReader(f))


def haloflow_batch(label: str, folder: Path, work: Path, args, keep: list[str] | None = None) -> RunResult:
    out = work / f"out_{label.replace(' ', '_').replace('#', '')}"
    shutil.rmtree(out, ignore_errors=True)  # every measured run computes (a rerun would be cached)
    spec_path = work / f"spec_{label.replace(' ', '_').replace('#', '')}.yaml"
    spec_path.write_text(yaml.safe_dump(batch_spec(str(folder / "*.tif"), out, keep), sort_keys=False))
    res = run_haloflow(label, spec_path, out, cwd=work, interval=args.interval_ms / 1e3,
                       quiet_wait=args.quiet_wait, workers=args.workers, worker_memory=args.worker_memory)
    table = out / "04_measure.csv"
    if table.is_file():
        res.extra["csv"] = str(table)
        res.extra["per_image"] = objects_per_image(table)
        res.objects = sum(res.extra["per_image"].values())
    return res


def loop_batch(label: str, folder: Path, work: Path, args) -> RunResult:
    out = work / f"out_{label.replace(' ', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, str(HERE / "reference.py"), "batch", str(folder / "*.tif"), str(out)]
    res = run_measured(label, argv, env=dict(os.environ), cwd=work, interval=args.interval_ms / 1e3, log_dir=work,
                       quiet_wait=args.quiet_wait)
    info = read_json_line(res)
    res.objects = info.get("objects")
    res.extra["steps"] = info.get("seconds", {})
    res.extra["per_image_reported"] = info.get("per_image", {})
    if (out / "measure.csv").is_file():
        res.extra["csv"] = str(out / "measure.csv")
        res.extra["per_image"] = objects_per_image(out / "measure.csv")
    return res


# --------------------------------------------------------------------------- checks and report
def check_lines(groups: dict[str, list[RunResult]], discarded: list[RunResult], images: int, args) -> list[str]:
    runs = [r for rs in groups.values() for r in rs]
    checks = disturbance_checks(groups, discarded, args.max_other_load)
    failed = [r.label for r in runs + discarded if r.returncode != 0]
    checks.append("all runs exited 0" if not failed else f"FAILED runs: {', '.join(failed)}")
    loop = groups[LOOP][0]
    reported = {k: v for k, v in loop.extra.get("per_image_reported", {}).items()}
    stems = set(reported)
    for r in runs:
        per = r.extra.get("per_image", Counter())
        differ = sorted(s for s in stems if per.get(s, 0) != reported[s])
        checks.append(f"{r.label}: {sum(per.values())} objects in {images} images; objects per image "
                      + ("equal to the for-loop's labels (max per image) for every image" if not differ else
                         f"DIFFER from the for-loop's labels in {len(differ)} images, e.g. {differ[:5]}"))
    for what in (HALOFLOW, HALOFLOW_KEEP):
        h = groups[what][0].extra.get("csv") if groups.get(what) else None
        if h and loop.extra.get("csv"):
            checks.append(f"tables ({what} `04_measure.csv` vs the for-loop's CSV, rows sorted by image then values, "
                          f"label numbers ignored): {compare_tables(h, loop.extra['csv'])}")
    checks.append(warning_lines(runs))
    return checks


def main_table(groups: dict[str, list[RunResult]], images: int, pixels: int) -> list[str]:
    base = groups[LOOP]
    base_wall, base_pss = med([r.wall for r in base]), med([r.peak_pss for r in base])
    lines = ["| what | wall s | images / s | Mpixel / s | ms per image | peak tree memory GiB (sum of PSS) | "
             "peak sum of RSS GiB | objects | ratio to the for-loop (wall / memory) | other load on the machine, cores |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for what, runs in groups.items():
        wall = med([r.wall for r in runs])
        objs = ", ".join(map(str, sorted({r.objects for r in runs}, key=str)))
        lines.append(f"| {what} | {fmt_spread([r.wall for r in runs], '.1f')} | {images / wall:.1f} | "
                     f"{images * pixels / wall / 1e6:.1f} | {1e3 * wall / images:.1f} | "
                     f"{fmt_spread([r.peak_pss / GIB for r in runs], '.2f')} | "
                     f"{fmt_spread([r.peak_rss / GIB for r in runs], '.2f')} | {objs} | "
                     f"{wall / base_wall:.1f}× / {med([r.peak_pss for r in runs]) / base_pss:.2f}× | "
                     f"{fmt_spread([r.extra['background_cores'] for r in runs], '.2f')} |")
    lines.append("")
    return lines


def build_report(groups, discarded, args, command: str, date: str, gen_s: float | None) -> str:
    size = "x".join(map(str, args.size))
    gen = f"written in {gen_s:.1f} s" if gen_s else "reused from an earlier run of the script"
    lines = [f"Run on {date} with:\n\n```bash\n{command}\n```\n",
             f"{args.images} uint16 images of {size} (`flows.demo.demo_volume` in 2D, {OBJECTS_PER_IMAGE} blobs each, "
             f"image i seeded i; {gen}). Pipeline: gaussian sigma {SIGMA:g} (mode {MODE}, on float32) -> Otsu -> "
             f"label (connectivity {CONNECTIVITY}) -> measure ({', '.join(PROPERTIES)}). haloflow: a `flow: batch` "
             f"spec on the glob, workers: {args.workers or 'its default (one per core)'}; it writes an OME-Zarr store "
             f"per image and step (3 per image) and one CSV; with `keep: [label]` only the label store per image and the "
             f"CSV, gaussian and threshold computed in the same worker task as the label. The for-loop writes a labels TIFF per image and one CSV. "
             f"Each run a fresh process, after one unreported warm-up of each on {WARM_UP_IMAGES} images. Repeats: "
             f"{args.repeat} (median, with min–max when more than one). "
             + sampling_note(args.interval_ms, args.quiet_wait, groups) + "\n"]
    lines += load_warning(groups, args.max_other_load)
    lines += main_table(groups, args.images, args.size[0] * args.size[1])
    lines += phase_table({what: groups[what] for what in (HALOFLOW, HALOFLOW_KEEP) if groups.get(what)})
    lines += memory_by_role_table(groups)
    lines += cpu_by_role_table(groups)
    lines += per_step_lines(groups)
    lines += ["Checks:\n", *(f"- {c}" for c in check_lines(groups, discarded, args.images, args)), ""]
    lines += footer_lines()
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def warm_up(work: Path, args) -> list[RunResult]:
    """One unreported run of each on a few images."""
    folder = image_folder(work, WARM_UP_IMAGES, tuple(args.size))
    write_images(folder, WARM_UP_IMAGES, tuple(args.size))
    quick = argparse.Namespace(**{**vars(args), "quiet_wait": 0})
    runs = [haloflow_batch("haloflow warm-up", folder, work, quick), loop_batch("for-loop warm-up", folder, work, quick)]
    for r in runs:
        print(summary_line(r), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="number of images (default 2000)")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("Y", "X"),
                        help="image shape (default 512 512)")
    add_common_options(parser, chunks=False)
    args = parser.parse_args(argv)
    work, temp = workdir(args)
    print(f"workdir: {work}")
    try:
        date = now()
        folder = image_folder(work, args.images, tuple(args.size))
        gen_s = write_images(folder, args.images, tuple(args.size))
        print(f"{args.images} images in {folder}" + (f" (written in {gen_s:.1f} s)" if gen_s else " (reused)"), flush=True)
        warm = warm_up(work, args)
        groups: dict[str, list[RunResult]] = {HALOFLOW: [], HALOFLOW_KEEP: [], LOOP: []}
        discarded: list[RunResult] = []
        makers = {HALOFLOW: lambda lb: haloflow_batch(lb, folder, work, args),
                  HALOFLOW_KEEP: lambda lb: haloflow_batch(lb, folder, work, args, keep=["label"]),
                  LOOP: lambda lb: loop_batch(lb, folder, work, args)}
        short = {HALOFLOW: "haloflow batch", HALOFLOW_KEEP: "haloflow batch keep label", LOOP: "for-loop"}
        for i in range(args.repeat):
            for what, make in makers.items():
                groups[what].append(least_disturbed(make, f"{short[what]} #{i + 1}", max_other_load=args.max_other_load,
                                                    retries=args.retries, discarded=discarded))
        report = build_report(groups, discarded, args, command_line(argv), date, gen_s)
        print("\n" + report)
        (work / "batch.md").write_text(report)
        save_runs(work / "batch_runs.json", warm + [r for rs in groups.values() for r in rs] + discarded, groups)
        if args.markdown:
            write_section(args.markdown, SECTION, report)
            print(f"section written to {args.markdown}")
        runs = [r for rs in groups.values() for r in rs]
        ok = all(r.returncode == 0 for r in runs) and len({r.objects for r in runs}) == 1
        return 0 if ok else 1
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
