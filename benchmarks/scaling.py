"""Scaling: the large-image pipeline at several volume sizes, haloflow against scikit-image.

The pipeline and the runs are ``pipeline.py``'s (gaussian sigma 2 -> Otsu ->
label connectivity 1 -> measure; ``haloflow run`` end to end and SciPy /
scikit-image on the whole volume, each in a fresh process, measured with
``measure.run_measured``), on volumes of ``--sizes`` planes of ``--plane``
pixels.  Reported per size: wall time, time per voxel (haloflow's also for its
stages alone, without Prefect start-up and other fixed costs) and peak memory
of the process tree, as a Markdown table and a PNG plot (``--plot``, default
``benchmarks/scaling.png``; matplotlib when installed, else drawn with Pillow).

Usage::

    python benchmarks/scaling.py                                    # 32 64 128 256 planes of 1024 x 1024
    python benchmarks/scaling.py --sizes 16 32 64 --plane 512 512
    python benchmarks/scaling.py --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from measure import GIB, disturbance_checks, load_warning, med, sampling_note, save_runs, warning_lines, write_section
from pipeline import (DASK_IMAGE, HALOFLOW, SKIMAGE, Measured, add_common_options, chunks_note, command_line,
                      dask_image_installed, cpu_seconds, footer_lines, load_measured, measure_shape, now, warm_up, workdir)
from reference import CONNECTIVITY, MODE, SIGMA

SECTION = "## Scaling: time per voxel and peak memory against volume size"
SHORT = {HALOFLOW: "haloflow", SKIMAGE: "scikit-image", DASK_IMAGE: "dask-image"}
SERIES = ("voxels", "wall", "ns_per_voxel", "cpu_ns_per_voxel", "peak_gib")
PANELS = (("ns_per_voxel", "wall time per voxel, ns"), ("cpu_ns_per_voxel", "CPU time per voxel, ns (whole tree)"),
          ("peak_gib", "peak memory of the process tree, GiB (PSS)"))
COLOURS = {"haloflow": "tab:blue", "scikit-image": "tab:orange", "dask-image": "tab:green"}


def series(results: list[Measured]) -> dict[str, dict[str, list[float]]]:
    """Per tool, one entry per size (medians): voxels, wall s, wall and CPU ns per voxel, peak GiB; haloflow's
    stages alone too (wall only)."""
    out: dict[str, dict[str, list[float]]] = {}
    for m in results:
        for what, runs in m.groups.items():
            s = out.setdefault(SHORT[what], {k: [] for k in SERIES})
            wall = med([r.wall for r in runs])
            s["voxels"].append(m.voxels)
            s["wall"].append(wall)
            s["ns_per_voxel"].append(1e9 * wall / m.voxels)
            s["cpu_ns_per_voxel"].append(1e9 * med([cpu_seconds(r) for r in runs]) / m.voxels)
            s["peak_gib"].append(med([r.peak_pss for r in runs]) / GIB)
            if what == HALOFLOW:
                st = out.setdefault("haloflow stages only", {k: [] for k in SERIES})
                stages = med([sum(r.extra.get("stages", {}).values()) for r in runs])
                st["voxels"].append(m.voxels)
                st["wall"].append(stages)
                st["ns_per_voxel"].append(1e9 * stages / m.voxels)
                st["cpu_ns_per_voxel"].append(float("nan"))
                st["peak_gib"].append(float("nan"))
    return out


def table_lines(results: list[Measured]) -> list[str]:
    """One row per size: each tool's wall, ns / voxel and peak memory, and haloflow's ratios to scikit-image."""
    lines = ["| volume | Mvoxel | haloflow wall s | haloflow stages s | haloflow ns / voxel | haloflow peak GiB | "
             "scikit-image wall s | scikit-image ns / voxel | scikit-image peak GiB | CPU s, whole tree (haloflow / "
             "scikit-image) | haloflow / scikit-image (wall / memory / CPU) | objects | other load, cores "
             "(haloflow / scikit-image) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for m in results:
        h, s = m.groups[HALOFLOW], m.groups[SKIMAGE]
        hw, sw = med([r.wall for r in h]), med([r.wall for r in s])
        hp, sp = med([r.peak_pss for r in h]), med([r.peak_pss for r in s])
        stages = med([sum(r.extra.get("stages", {}).values()) for r in h])
        hc, sc = med([cpu_seconds(r) for r in h]), med([cpu_seconds(r) for r in s])
        objects = sorted({r.objects for r in m.runs()}, key=str)
        lines.append(f"| {'x'.join(map(str, m.shape))} | {m.voxels / 1e6:.0f} | {hw:.1f} | {stages:.1f} | "
                     f"{1e9 * hw / m.voxels:.1f} | {hp / GIB:.2f} | {sw:.1f} | {1e9 * sw / m.voxels:.1f} | "
                     f"{sp / GIB:.2f} | {hc:.1f} / {sc:.1f} | {hw / sw:.1f}× / {hp / sp:.2f}× / {hc / sc:.1f}× | "
                     f"{', '.join(map(str, objects))} | "
                     f"{med([r.extra['background_cores'] for r in h]):.2f} / "
                     f"{med([r.extra['background_cores'] for r in s]):.2f} |")
    lines.append("")
    return lines


# --------------------------------------------------------------------------- the plot
def plot(data: dict[str, dict[str, list[float]]], path: Path, title: str) -> str:
    """Three panels (wall and CPU ns per voxel, peak memory) against Mvoxel; returns what drew it."""
    if importlib.util.find_spec("matplotlib") is not None:
        plot_matplotlib(data, path, title)
        return "matplotlib"
    plot_pillow(data, path, title)
    return "Pillow (matplotlib is not installed)"


def plot_matplotlib(data, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.2), dpi=100)
    for ax, (key, ylabel) in zip(axes, PANELS):
        for name, s in data.items():
            if all(y != y for y in s[key]):  # all NaN: not measured for this series
                continue
            style = "--" if name.endswith("only") else "-"
            ax.plot([v / 1e6 for v in s["voxels"]], s[key], style, color=COLOURS[name.removesuffix(" stages only")],
                    marker="o", label=name)
        ax.set_xscale("log", base=2)
        if key != "peak_gib":
            ax.set_yscale("log")
        ax.set_xlabel("volume, Mvoxel")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pillow(data, path: Path, title: str) -> None:
    """A plain line plot per panel with Pillow: linear axes from zero, one colour per series."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    img = Image.new("RGB", (1500, 420), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 5), title, fill="black")
    for panel, (key, ylabel) in enumerate(PANELS):
        x0, y0, w, h = 60 + panel * 500, 40, 400, 320
        draw.rectangle((x0, y0, x0 + w, y0 + h), outline="black")
        xs = [v / 1e6 for s in data.values() for v in s["voxels"]]
        ys = [y for s in data.values() for y in s[key] if y == y]
        xmax, ymax = max(xs) * 1.05, max(ys) * 1.1
        draw.text((x0, y0 + h + 8), f"volume, Mvoxel (0 to {xmax:.0f})", fill="black")
        draw.text((x0, y0 - 14), f"{ylabel} (0 to {ymax:.3g})", fill="black")
        for i, (name, s) in enumerate(data.items()):
            points = [(x0 + w * v / 1e6 / xmax, y0 + h - h * y / ymax) for v, y in zip(s["voxels"], s[key]) if y == y]
            if points:
                draw.line(points, fill=colours[i % len(colours)], width=2)
                for px, py in points:
                    draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colours[i % len(colours)])
                draw.text((x0 + 10, y0 + 10 + 14 * i), name, fill=colours[i % len(colours)])
    img.save(path)


# --------------------------------------------------------------------------- report and command line
def build_report(results: list[Measured], args, command: str, date: str, drawn_by: str,
                 reused: list[Measured] = ()) -> str:
    groups = {f"{SHORT[what]} {'x'.join(map(str, m.shape))}": rs for m in results for what, rs in m.groups.items()}
    runs = [r for m in results for r in m.runs()]
    discarded = [r for m in results for r in m.discarded]
    counts_agree = all(len({r.objects for r in m.runs()}) == 1 for m in results)
    lines = [f"Run on {date} with:\n\n```bash\n{command}\n```\n",
             f"The pipeline of `pipeline.py` (gaussian sigma {SIGMA:g}, mode {MODE} -> Otsu -> label connectivity "
             f"{CONNECTIVITY} -> measure label, area, centroid) on volumes of "
             f"{', '.join('x'.join(map(str, m.shape)) for m in results)} (`benchmarks/volume.py`), "
             f"{chunks_note(args)}{f'; haloflow workers each limited to {args.worker_memory}' if args.worker_memory else ''}. " + (f"The {', '.join('x'.join(map(str, m.shape)) for m in reused)} runs are "
             f"`pipeline.py`'s (read from {', '.join(f'`{p}`' for p in args.also)}, not run again); the others were "
             f"run here. " if reused else "") + f"Each run "
             f"a fresh process, repeats: {args.repeat} (medians). `haloflow stages` is the sum of the stages' seconds "
             f"in its `run.json`: the run without Prefect server start-up, flow and cluster set-up and tear-down. "
             + sampling_note(args.interval_ms, args.quiet_wait, groups) + "\n"]
    lines += load_warning(groups, args.max_other_load)
    lines += table_lines(results)
    link = os.path.relpath(args.plot.resolve(), (args.markdown or args.plot).resolve().parent)
    lines.append(f"![time per voxel and peak memory against volume size]({link})\n\n"
                 f"`{link}`: drawn with {drawn_by}; dashed: haloflow's stages alone.\n")
    checks = disturbance_checks(groups, discarded, args.max_other_load)
    failed = [r.label for r in runs if r.returncode != 0]
    checks.append("all runs exited 0" if not failed else f"FAILED runs: {', '.join(failed)}")
    checks.append("object counts agree at every size" if counts_agree else "OBJECT COUNTS DIFFER at some size")
    checks.append(warning_lines(runs))
    lines += ["Checks:\n", *(f"- {c}" for c in checks), ""]
    lines += footer_lines()
    return "\n".join(lines)


def only_compared(m: Measured, with_dask_image: bool) -> Measured:
    """The runs of ``m`` that the scaling compares: haloflow and scikit-image (and dask-image), none stopped early."""
    wanted = {HALOFLOW, SKIMAGE} | ({DASK_IMAGE} if with_dask_image else set())
    groups = {what: [r for r in rs if not r.extra.get("timed_out")] for what, rs in m.groups.items() if what in wanted}
    return Measured(m.shape, {what: rs for what, rs in groups.items() if rs}, m.discarded, gen_s=m.gen_s,
                    volume_mib=m.volume_mib)


def reuse(paths: list[Path], plane: tuple[int, ...], skip: set, with_dask_image: bool) -> list[Measured]:
    """The sizes measured earlier (runs.json of pipeline.py, scaling_runs.json of this script) with planes ``plane``."""
    found: dict[tuple[int, ...], Measured] = {}
    for path in paths:
        for m in load_measured(path):
            if m.shape[1:] == plane and m.shape not in skip and m.shape not in found:
                found[m.shape] = only_compared(m, with_dask_image)
    return [m for m in found.values() if HALOFLOW in m.groups and SKIMAGE in m.groups]


def write_outputs(results: list[Measured], reused: list[Measured], args, command: str, date: str) -> str:
    """The plot, and the report (printed, and in --markdown)."""
    drawn_by = plot(series(results), args.plot, f"gaussian -> Otsu -> label -> measure, planes of "
                                                f"{args.plane[0]}x{args.plane[1]} ({date})")
    report = build_report(results, args, command, date, drawn_by, reused)
    print("\n" + report)
    print(f"plot written to {args.plot}")
    if args.markdown:
        write_section(args.markdown, SECTION, report)
        print(f"section written to {args.markdown}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], metavar="PLANES",
                        help="volume sizes, as numbers of planes (default 32 64 128 256)")
    parser.add_argument("--plane", type=int, nargs=2, default=[1024, 1024], metavar=("Y", "X"),
                        help="plane shape (default 1024 1024)")
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent / "scaling.png",
                        help="where to save the PNG plot (default benchmarks/scaling.png)")
    parser.add_argument("--with-dask-image", action="store_true", help="also run dask-image at each size (slow)")
    parser.add_argument("--also", type=Path, action="append", default=[], metavar="RUNS_JSON",
                        help="add the sizes measured by pipeline.py (the runs.json in its --workdir) to the table "
                             "and plot, without running them again (repeatable)")
    parser.add_argument("--from-runs", type=Path, default=None, metavar="RUNS_JSON",
                        help="run nothing: report and plot the sizes of an earlier run's scaling_runs.json "
                             "(and --also), with the options it ran with")
    parser.add_argument("--command", default=None, help="with --from-runs: the command that made the runs")
    parser.add_argument("--date", default=None, help="with --from-runs: when they were made")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the warm-up runs (when a benchmark has just run on this machine)")
    parser.add_argument("--dask-image-timeout", type=float, default=900.0,
                        help="stop a dask-image run after this many seconds (default 900)")
    add_common_options(parser)
    args = parser.parse_args(argv)
    args.dask_image = args.with_dask_image and dask_image_installed()
    plane = tuple(args.plane)
    if args.from_runs:
        results = reuse([args.from_runs], plane, set(), args.dask_image)
        reused = reuse(args.also, plane, {m.shape for m in results}, args.dask_image)
        write_outputs(sorted(results + reused, key=lambda m: m.voxels), reused, args,
                      args.command or "(not recorded)", args.date or "(not recorded)")
        return 0
    work, temp = workdir(args)
    print(f"workdir: {work}")
    try:
        date = now()
        warm = warm_up(work, args) if args.warm_up else []
        results = [measure_shape((n, *plane), work, args, with_dask_image=args.dask_image) for n in args.sizes]
        save_runs(work / "scaling_runs.json", warm + [r for m in results for r in m.runs() + m.discarded],
                  {f"{what} {m.shape}": rs for m in results for what, rs in m.groups.items()})
        reused = reuse(args.also, plane, {m.shape for m in results}, args.dask_image)
        report = write_outputs(sorted(results + reused, key=lambda m: m.voxels), reused, args, command_line(argv), date)
        (work / "scaling.md").write_text(report)
        ok = all(r.returncode == 0 for m in results for r in m.runs())
        return 0 if ok else 1
    finally:
        if temp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
