"""Every shell and Python example of the README runs, in README order, in one temporary folder.

Blocks fenced as ``bash`` (or ``sh``, ``shell``) run with ``bash -euo
pipefail``, ``python`` blocks with this interpreter, and the ``$ command``
lines of ``text`` / ``console`` transcripts with bash, each from the same
temporary folder, with this session's environment (``PREFECT_API_URL``: the
session's Prefect server, as the README asks). ``yaml`` blocks must parse; the
first full spec among them is the ``spec.yaml`` that the shell examples run.

The only changes to what the README says are the three below, each with its
reason:

- :data:`NOT_RUN`: blocks that cannot run in a test (installing, servers and
  workers that run until stopped, clusters this machine does not have), each
  named by text it holds;
- :data:`ADAPTATIONS`: text replaced in the blocks that run;
- :data:`ENVIRONMENT`: variables added to the session's environment.

A block that is neither listed nor runnable fails the test, and so does a
listing that no longer matches the README (a block was changed or removed).
The files the examples name (``data/volume.tif``, ``spec.yaml``) are made by
the ``workdir`` fixture.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tifffile
import yaml

from flows.demo import demo_volume
from flows.runner import CLUSTER_ENV_VAR

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"

#: Blocks that do not run here, each named by text it holds (exactly one block must hold it), and why.
NOT_RUN = {
    "python -m pip install -e . && haloflow demo --output haloflow-demo":
        "installs the package into the environment the tests run in; the demo it then starts runs below, "
        "from the worked example's transcript ('$ haloflow demo --output haloflow-demo')",
    'python -m pip install -q -e ".[test]" && python -m pytest -q':
        "installs the package and runs the whole test suite, this test included",
    "prefect server start &":
        "starts a Prefect server and `haloflow serve`, which run until stopped (tests/deployments/test_serve.py "
        "serves the flows against the session's server)",
    'haloflow serve --spec nightly.yaml --cron "0 2 * * *" --limit 1':
        "serves a scheduled deployment until stopped (tests/deployments/test_serve.py covers --spec and --cron)",
    "prefect worker start --pool haloflow-process":
        "creates a work pool and deployments on the server, then starts a worker that runs until stopped "
        "(tests/deployments/test_work_pool.py runs them)",
    "haloflow run spec.yaml --workers 2":
        "starts and closes a local cluster of its own, 10-35 s on this 2-core machine for a run of cached stages; "
        "`haloflow run --workers 1` on a local cluster runs in tests/flows/test_resume.py and test_faults.py",
    "dask scheduler --port 8786 --no-dashboard &":
        "starts a Prefect server, a Dask scheduler and workers meant for several machines, which run until stopped",
    "HALOFLOW_CLUSTER=tcp://host:8786 haloflow run spec.yaml":
        "needs a scheduler at that address; both its forms run here against the session's scheduler: "
        "`--cluster tcp://host:8786` in the first block that shows it (address adapted), and HALOFLOW_CLUSTER, "
        "which this test sets for every example (ENVIRONMENT)",
    "export AWS_PROFILE=imaging AWS_ENDPOINT_URL=https://s3.example.org":
        "needs an S3 service with those buckets and that profile; tests/flows/test_object_storage.py runs "
        "`haloflow run` with input, stores and tables on s3:// against an S3 server on 127.0.0.1",
}

#: Text replaced in the blocks that run: (text, replacement, why). ``{scheduler}``: the session's Dask scheduler.
ADAPTATIONS = [
    ("haloflow demo --output haloflow-demo", "haloflow demo --output haloflow-demo --shape 24 96 96",
     "the demo volume is 128 x 512 x 512 by default; a small one keeps the test quick"),
    ("tcp://host:8786", "{scheduler}",
     "the example's address stands for an existing Dask scheduler: the session's cluster is one"),
]

#: Variables added to the examples' environment: (name, value, why). ``{scheduler}``: the session's Dask scheduler.
ENVIRONMENT = [
    (CLUSTER_ENV_VAR, "{scheduler}",
     "runs and flows that would start a local Dask cluster use the session's instead (starting one per example "
     "costs seconds each; tests/flows/test_resume.py and test_faults.py run `haloflow run` on its own local cluster)"),
]

SHELL = ("bash", "sh", "shell")
TRANSCRIPT = ("text", "console")
LANGUAGES = (*SHELL, *TRANSCRIPT, "python", "yaml")
SECONDS_PER_BLOCK = 240


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    language: str
    code: str
    line: int  # of the opening fence

    @property
    def where(self) -> str:
        return f"README.md line {self.line} ({self.language})"

    @property
    def commands(self) -> list[str]:
        """The ``$ command`` lines of a transcript."""
        return [line[2:].strip() for line in self.code.splitlines() if line.startswith("$ ")]


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order.

    >>> [(b.language, b.code, b.line) for b in readme_blocks("a\\n```bash\\necho 1\\n```\\n")]
    [('bash', 'echo 1\\n', 2)]
    """
    blocks, opened, body = [], None, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if opened is None and fence:
            opened, body = (fence.group(1), number), []
        elif opened is not None and fence and not fence.group(1):
            blocks.append(Block(opened[0], "".join(f"{b}\n" for b in body), opened[1]))
            opened = None
        elif opened is not None:
            body.append(line)
    if opened is not None:
        raise ValueError(f"README.md line {opened[1]}: code block never closed")
    return blocks


def listed_reason(block: Block) -> str | None:
    """Why a block does not run, if :data:`NOT_RUN` names it."""
    reasons = [reason for key, reason in NOT_RUN.items() if key in block.code]
    return reasons[0] if reasons else None


def adapted(code: str, scheduler: str) -> str:
    for text, replacement, _ in ADAPTATIONS:
        code = code.replace(text, replacement.format(scheduler=scheduler))
    return code


def spec_block(blocks: list[Block]) -> Block:
    """The first ``yaml`` block that is a whole pipeline spec (it has ``steps`` and ``output``)."""
    for block in blocks:
        if block.language == "yaml":
            data = yaml.safe_load(block.code)
            if isinstance(data, dict) and {"steps", "output"} <= data.keys():
                return block
    raise AssertionError("README.md has no yaml block with a whole pipeline spec (steps, output)")


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_every_block_is_run_or_listed_and_the_lists_match_the_readme():
    """A fast check of the bookkeeping: no unknown kinds of block, no stale listing or adaptation."""
    for block in BLOCKS:
        assert block.language in LANGUAGES, (
            f"{block.where}: a block fenced as {block.language!r}; tests/test_readme.py runs {LANGUAGES} blocks: "
            "fence it as one of them (or teach the test to run it)"
        )
    for key in NOT_RUN:
        holders = [b.where for b in BLOCKS if key in b.code]
        assert len(holders) == 1, f"NOT_RUN names {key!r}, which {len(holders)} README blocks hold ({holders}): update the list"
    runnable = [b.code for b in BLOCKS if b.language in (*SHELL, "python") and listed_reason(b) is None]
    runnable += [c for b in BLOCKS if b.language in TRANSCRIPT and listed_reason(b) is None for c in b.commands]
    for text, _, _ in ADAPTATIONS:
        assert any(text in code for code in runnable), f"ADAPTATIONS replaces {text!r}, which no README block that runs holds"
    for block in BLOCKS:
        if block.language == "yaml":
            yaml.safe_load(block.code)  # every YAML example parses


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the files the examples name: ``data/volume.tif`` and ``spec.yaml`` (the README's spec)."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "data").mkdir()
    # 72 planes: the Python API example computes plane 64.
    tifffile.imwrite(folder / "data" / "volume.tif", demo_volume((72, 64, 64), n_objects=30, seed=7))
    (folder / "spec.yaml").write_text(spec_block(BLOCKS).code)
    return folder


def run_in(folder: Path, argv: list[str], where: str, scheduler: str) -> float:
    """Run one example, and say how long it took; fail with its output if it fails."""
    started = time.perf_counter()
    env = {**os.environ, **{name: value.format(scheduler=scheduler) for name, value, _ in ENVIRONMENT}}
    # Its own process group, so that whatever an example leaves running is stopped with it.
    process = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=SECONDS_PER_BLOCK)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{where} did not finish in {SECONDS_PER_BLOCK} s: {' '.join(argv)}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.returncode != 0:
        pytest.fail(f"{where} failed (exit {process.returncode}):\n{' '.join(argv)}\n--- stdout\n{stdout[-4000:]}\n"
                    f"--- stderr\n{stderr[-4000:]}")
    return time.perf_counter() - started


def examples(folder: Path, scheduler: str) -> list[tuple[str, list[str]]]:
    """Every example that runs, in README order: where it is, and the command that runs it (scripts written to `folder`)."""
    found = []
    for number, block in enumerate(BLOCKS):
        if listed_reason(block) is not None:
            continue
        if block.language in SHELL:
            script = folder / f"block_{number:02d}.sh"
            script.write_text(adapted(block.code, scheduler))
            found.append((block.where, ["bash", "-euo", "pipefail", script.name]))
        elif block.language == "python":
            script = folder / f"block_{number:02d}.py"
            script.write_text(adapted(block.code, scheduler))
            found.append((block.where, [sys.executable, script.name]))
        elif block.language in TRANSCRIPT:
            found += [(block.where, ["bash", "-euo", "pipefail", "-c", adapted(c, scheduler)]) for c in block.commands]
    return found


def test_every_shell_and_python_example_runs(workdir, dask_cluster):
    assert shutil.which("haloflow"), "the haloflow command is not on PATH (pip install -e . first)"
    ran = examples(workdir, dask_cluster)
    assert ran, "no README example runs"
    for where, argv in ran:
        seconds = run_in(workdir, argv, where, dask_cluster)
        print(f"{where}: {argv[-1][:70]} ({seconds:.1f} s)")
    # What the examples say they leave behind.
    assert (workdir / "out" / "03_label.ome.zarr").is_dir() and (workdir / "out" / "run.json").is_file()
    assert (workdir / "haloflow-demo" / "previews" / "03_label_overlay.png").is_file()
