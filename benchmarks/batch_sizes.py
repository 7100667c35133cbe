"""Batch workflow at several batch sizes: is the time per image flat as the number of images grows?

Runs ``batch.py`` once per ``--images`` value (each in its own workdir under
``--workdir``, images kept and reused), then tabulates from each run's
``batch_runs.json``: wall time per image end to end, and the stages' time per
image (the sum of ``run.json``'s stage seconds: the part that grows with the
batch), for haloflow with every store kept, with ``keep: [label]``, and for
the plain for-loop.

Usage::

    python benchmarks/batch_sizes.py --images 500 2000 5000 --workdir /tmp/hfsizes --markdown benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from batch import HALOFLOW, HALOFLOW_KEEP, LOOP, SECTION as BATCH_SECTION
from measure import write_section
from pipeline import command_line, footer_lines, now

HERE = Path(__file__).resolve().parent
SECTION = "## Batch workflow: time per image against the number of images"
SHORT = {HALOFLOW: "every store kept", HALOFLOW_KEEP: "keep: [label]", LOOP: "for-loop"}


def run_size(images: int, work: Path, passthrough: list[str], reuse: bool = False) -> list[dict]:
    """``batch.py`` on ``images`` images in ``work`` (or, with ``reuse``, its last run there); the measured runs."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(HERE / "batch.py"), "--images", str(images), "--workdir", str(work), "--keep", *passthrough]
    if reuse and (work / "batch_runs.json").is_file():
        print(f"reusing the runs in {work}", flush=True)
    else:
        print("$", " ".join(argv), flush=True)
        subprocess.run(argv, check=True)
    runs = json.loads((work / "batch_runs.json").read_text())
    return [r for r in runs if r.get("group") in SHORT]


def per_image(runs: list[dict], group: str, images: int) -> tuple[float, float] | None:
    """Median ms per image of one way of running over a size's runs: end to end, and in the stages."""
    mine = [r for r in runs if r["group"] == group]
    if not mine:
        return None
    wall = statistics.median(r["wall"] for r in mine)
    stages = statistics.median(sum(r.get("extra", {}).get("stages", {}).values()) for r in mine)
    return 1000 * wall / images, 1000 * stages / images


def per_image_rows(sizes: dict[int, list[dict]]) -> list[str]:
    """One row per batch size: ms per image (medians of its runs), end to end and in the stages, for each way of running it."""
    head = "| images | " + " | ".join(f"{SHORT[g]}: wall ms / image | {SHORT[g]}: stages ms / image"
                                      if g != LOOP else "for-loop: wall ms / image" for g in SHORT) + " |"
    rows = [head, "| ---: " * (2 * len(SHORT)) + "|"]
    for images, runs in sizes.items():
        cells = [str(images)]
        for group in SHORT:
            found = per_image(runs, group, images)
            if group == LOOP:
                cells.append(f"{found[0]:.1f}" if found else "–")
                continue
            cells += [f"{found[0]:.1f}", f"{found[1]:.1f}"] if found else ["–", "–"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def spread_lines(sizes: dict[int, list[dict]]) -> list[str]:
    """How far the stages' time per image (each size's median) strays from its mean over the sizes, per way of running."""
    lines = []
    for group in (HALOFLOW, HALOFLOW_KEEP):
        per = [found[1] for images, runs in sizes.items() if (found := per_image(runs, group, images))]
        if len(per) > 1:
            mean = sum(per) / len(per)
            worst = max(abs(p - mean) / mean for p in per)
            lines.append(f"- {SHORT[group]}: the stages' time per image is within ±{100 * worst:.0f} % of its mean "
                         f"({mean:.1f} ms) over {len(per)} sizes")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[500, 2000, 5000], help="batch sizes")
    parser.add_argument("--workdir", type=Path, required=True, help="one sub-folder per size, kept")
    parser.add_argument("--markdown", type=Path, help="add / replace this benchmark's section in this file, and "
                        "batch.py's own section with the run of --section-images images")
    parser.add_argument("--section-images", type=int, default=2000,
                        help="the size whose full batch.py report goes in its section of --markdown (default 2000)")
    parser.add_argument("--reuse", type=int, nargs="*", default=[],
                        help="sizes whose last run in --workdir is reported again, not made again")
    args, passthrough = parser.parse_known_args(argv)
    date = now()
    sizes = {images: run_size(images, args.workdir / f"images_{images}", passthrough, images in args.reuse)
             for images in args.images}
    reused = [images for images in args.images if images in args.reuse]
    lines = [f"Run on {date} with:\n\n```bash\n{command_line(argv)}\n```\n",
             "Each size is one run of `batch.py` (its section above gives the method and, for "
             f"{args.section_images} images, the full report of the run in this table). `wall ms / image`: the whole run divided by the number of images, so the "
             "fixed start-up (Prefect server, cluster, imports: about 15 s) weighs more on small batches; `stages "
             "ms / image`: the sum of the stages' seconds in `run.json` divided by the number of images.\n",
             *([f"Sizes {', '.join(map(str, reused))}: the runs of an earlier invocation, reported again "
                f"(dates in each `batch.md` under `--workdir`).\n"] if reused else []),
             *per_image_rows(sizes), "", *spread_lines(sizes), "", *footer_lines()]
    report = "\n".join(lines)
    print("\n" + report)
    if args.markdown:
        write_section(args.markdown, SECTION, report)
        if args.section_images in sizes:
            batch_report = (args.workdir / f"images_{args.section_images}" / "batch.md").read_text()
            write_section(args.markdown, BATCH_SECTION, batch_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
