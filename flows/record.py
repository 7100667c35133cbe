"""The run record ``OUT/run.json`` and the output folder's naming rules."""

from __future__ import annotations

import json
import platform
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

from flows.spec import PipelineSpec, step_name
from tasks import storage

PACKAGES = ("haloflow", "prefect", "prefect-dask", "dask", "distributed", "numpy", "scipy", "scikit-image", "zarr", "tifffile")


def stage_key(number: int, step) -> str:
    """``NN_NAME``: the step's number (two digits, from 1) and its name or op.

    >>> from flows.spec import GaussianStep
    >>> stage_key(1, GaussianStep(sigma=2.0))
    '01_gaussian'
    """
    return f"{number:02d}_{step_name(step)}"


def prepare_output(output: str, input_=None) -> str:
    """Create the output folder (a local path or a URL); refuse a file, or a folder holding another input's run."""
    path = check_output(output, input_)
    try:
        storage.makedirs(path)
    except OSError as error:
        raise OutputError(f"output {path}: cannot create it ({error})") from error
    return path


def check_output(output: str, input_=None) -> str:
    """The output folder (absolute path or URL), unless it is a file or holds the stores of a run on another input."""
    path = storage.normalize(output)
    try:
        if storage.isfile(path):
            raise OutputError(f"output {path} is a file, not a folder")
        record = storage.join(path, "run.json")
        known = input_ is not None and storage.isfile(record)
    except storage.StorageError as error:
        raise OutputError(f"output {path}: {error}") from error
    except OSError as error:
        raise OutputError(f"output {path} cannot be reached: {type(error).__name__}: {error}") from error
    if known:
        try:
            previous = json.loads(storage.read_text(record))["spec"]["input"]
        except (OSError, ValueError, KeyError, TypeError):
            previous = None
        current = input_ if isinstance(input_, str) else input_.model_dump(mode="json", exclude_none=True)
        if previous is not None and previous != current:
            raise OutputError(
                f"output {path} holds the results of a run on another input ({previous}); "
                "choose another output folder, or remove that one"
            )
    return path


def check_chunks(chunks, shape) -> None:
    """Refuse a chunk shape that does not have one entry per axis of the image."""
    if chunks is not None and len(chunks) != len(shape):
        raise OutputError(f"chunks {list(chunks)} has {len(chunks)} entries but the image has {len(shape)} axes (shape {tuple(shape)})")


class OutputError(ValueError):
    """A run that cannot start: the message names the path or field and the problem."""


def package_versions() -> dict[str, str]:
    """The versions of Python and of :data:`PACKAGES` this process runs with (a new dict each call)."""
    return dict(_package_versions())


@lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    """Read once per process (16 ms, reading the packages' metadata), or once for all runs forked from a process
    that read them (:mod:`flows.run_preload`): its modules are already imported, so these are the runs' versions.
    """
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class RunRecord:
    """What a run did, written to ``OUT/run.json`` after every stage."""

    path: str
    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, spec: PipelineSpec, out: str, images: list[str] | None = None, source=None,
              failed: dict[str, dict[str, str]] | None = None) -> "RunRecord":
        """A new record; ``source``: the resolved input (an InputSpec), recorded as ``source`` (see :func:`source_entry`).

        ``failed``: a batch's images that failed already (their headers could
        not be read), recorded at once as :meth:`finish` records every failure:
        the progress bar counts them as done.
        """
        data = {
            "spec": spec.model_dump(mode="json", exclude_none=True),
            "versions": package_versions(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "stages": [],
        }
        if images is not None:
            data["images"] = images
        if failed:
            data["failed"] = dict(failed)
        if source is not None:
            data["source"] = source_entry(source)
        record = cls(storage.join(out, "run.json"), data)
        record.save()
        return record

    def add_stage(self, number: int, step, result, seconds: float | None = None) -> None:
        entry = {"step": number, "name": stage_key(number, step), "op": step.op, **result.to_dict()}
        entry["seconds"] = round(seconds if seconds is not None else result.seconds, 3)
        entry["fingerprint"] = result.ref.fingerprint
        self.data["stages"].append(entry)
        self.save()

    def add_fused(self, number: int, step, fused=None, save: bool = True) -> None:
        """A step not kept: no store, computed inside the next stage (whose ``info.fused`` holds what it found).

        ``fused``: the large image's fused step (its fingerprint is recorded); none for a batch's images.
        ``save=False``: not written yet (the caller saves once it has added the other steps of the same stage).
        """
        entry = {"step": number, "name": stage_key(number, step), "op": step.op, "kind": "fused", "status": "fused",
                 "seconds": 0.0}
        if fused is not None:
            entry["fingerprint"] = fused.fingerprint
        self.data["stages"].append(entry)
        if save:
            self.save()

    def add_batch_stage(self, number: int, step, results: dict, seconds: float, save: bool = True) -> None:
        """A batch step's per-image results (``save`` as for :meth:`add_fused`)."""
        self.data["stages"].append(
            {
                "step": number,
                "name": stage_key(number, step),
                "op": step.op,
                "status": "cached" if all(_status(r) == "cached" for r in results.values()) else "computed",
                "seconds": round(seconds, 3),
                "computed_images": sorted(i for i, r in results.items() if _status(r) in ("computed", "resumed")),
                "failed_images": sorted(i for i, r in results.items() if _status(r) == "failed"),
                "images": {image: r.to_dict() for image, r in results.items()},
            }
        )
        if save:
            self.save()

    def finish(self, failures: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        """Record the run's end; what the flow returns: the record, with where it is.

        A batch stage's per-image entries come as one read-only
        :class:`tasks.stages.PerImage` each: Prefect walks every list and dict
        a flow returns, looking for futures, before the run may end (1.25 s
        for 2000 images' entries over three stages), but not such a mapping.
        """
        from tasks.stages import PerImage  # the flow imported it already; run.json's readers need not

        self.data["status"] = "failed" if failures else "completed"
        if failures:
            self.data["failed"] = failures
        self.data["seconds"] = round(time.perf_counter() - self.started, 3)
        self.save()
        stages = [{**entry, "images": PerImage(entry["images"])} if isinstance(entry.get("images"), dict) else entry
                  for entry in self.data["stages"]]
        return {"output": storage.parent(self.path), "run_json": self.path, **self.data, "stages": stages}

    def save(self) -> None:
        """Write to a temporary name, then rename (one PUT in an object store): a reader never sees half a record."""
        storage.write_text(self.path, record_json(self.data))


def record_json(data: dict[str, Any]) -> str:
    """``run.json``'s text: indented two spaces, but each image's entry of a batch stage on a line of its own.

    ``json.dumps`` with an indent runs in Python, without an indent in C:
    for 2000 images a record took 0.30 s to write indented, and was written
    again after every stage. The entries are written by the C encoder, the
    rest indented around them. The same JSON either way.

    >>> text = record_json({"stages": [{"name": "01_a", "images": {"x": {"status": "computed"}}}]})
    >>> print(text)
    {
      "stages": [
        {
          "name": "01_a",
          "images": {
            "x": {"status": "computed"}
          }
        }
      ]
    }
    >>> json.loads(text) == {"stages": [{"name": "01_a", "images": {"x": {"status": "computed"}}}]}
    True
    """
    stages = data.get("stages")
    if not isinstance(stages, list) or not any(isinstance(entry.get("images"), dict) for entry in stages):
        return json.dumps(data, indent=2, default=str)
    token = f"haloflow-images-{uuid.uuid4().hex}"
    placeholders: dict[str, str] = {}
    outline = []
    for number, entry in enumerate(stages):
        if isinstance(entry.get("images"), dict) and entry["images"]:
            name = f"{token}-{number}"
            placeholders[json.dumps(name)] = _entries_json(entry["images"], depth=4)
            entry = {**entry, "images": name}
        outline.append(entry)
    text = json.dumps({**data, "stages": outline}, indent=2, default=str)
    for quoted, entries in placeholders.items():
        text = text.replace(quoted, entries, 1)
    return text


def _entries_json(entries: dict[str, Any], depth: int) -> str:
    """A dict as indented JSON (its closing brace at ``depth - 1`` levels) with each value on one line."""
    inner, outer = "  " * depth, "  " * (depth - 1)
    lines = [f"{inner}{json.dumps(key)}: {json.dumps(value, default=str)}" for key, value in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n" + outer + "}"


def source_entry(source) -> dict[str, Any]:
    """What run.json records of the resolved input: shape, dtype, axes, and each axis' physical pixel size and unit.

    ``physical_sizes`` are 1 and ``units`` null where the input's metadata gives none.
    """
    calibration = source.calibration
    return {
        "shape": list(source.shape),
        "dtype": source.dtype,
        "axes": "".join(source.axes.names),
        "physical_sizes": list(calibration.scale),
        "units": list(calibration.units),
    }


def _status(result) -> str:
    return getattr(result, "status", "failed")
