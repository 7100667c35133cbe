"""The pipeline spec: pydantic models, loadable from YAML, checked before any work.

The same fields are the flows' parameters, so the Prefect UI shows them as a
form, a schedule can carry them and Python code can build them.
"""

from __future__ import annotations

import glob
import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model,
                      field_validator, model_validator)

from flows.cluster import ClusterClass, check_address
from imageops import all_params, get_op
from tasks.axes import ImageAxes, resolve_axes
from tasks.io import InputSpec


class SpecError(ValueError):
    """A spec that cannot run: the message names the field or step and the problem."""


class _Named(BaseModel):
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+$", max_length=64, title="Name",
        description="Names the step's output (default: the op). Letters, digits, '_' and '-'.",
    )


def _named_model(params: type) -> type:
    """A spec step: the op's parameters plus an optional ``name``, titled by its op (the UI's choice label)."""
    model = create_model(f"{params.__name__.removesuffix('Params')}Step", __base__=(params, _Named), __module__=__name__)
    model.__doc__ = params.__doc__
    model.model_config["title"] = params.model_fields["op"].default
    model.model_rebuild(force=True)
    return model


STEP_MODELS: tuple[type, ...] = tuple(_named_model(p) for p in all_params())
for _model in STEP_MODELS:
    globals()[_model.__name__] = _model

#: One step, chosen by its ``op`` (validated as a discriminated union).
Step = Annotated[Union[STEP_MODELS], Field(discriminator="op")]
#: The same choice for the flows' signatures: a plain union is an ``anyOf`` in the
#: JSON schema, which the Prefect UI renders as one form per op (it shows a
#: discriminated ``oneOf`` as raw JSON). The flows re-validate through the spec.
StepChoice = Union[STEP_MODELS]


class TileGrid(BaseModel):
    """A grid of TIFF tiles, assembled like ``dask.array.block``."""

    model_config = ConfigDict(extra="forbid", title="tile grid")
    tiles: list[Any] = Field(title="Tiles", description="Nested lists of TIFF paths, one level per grid axis.")

    @field_validator("tiles")
    @classmethod
    def _nested_paths(cls, tiles):
        def check(node, depth):
            if isinstance(node, str):
                return depth
            if not isinstance(node, list) or not node:
                raise ValueError("tiles must be non-empty nested lists of paths")
            depths = {check(child, depth + 1) for child in node}
            if len(depths) != 1:
                raise ValueError("every branch of the tile grid must be nested equally deep")
            return depths.pop()

        if check(tiles, 0) < 1:
            raise ValueError("tiles must be a list")
        return tiles


class ZarrInput(BaseModel):
    """An array in a zarr store (or an OME-Zarr image)."""

    model_config = ConfigDict(extra="forbid", title="zarr store")
    zarr: str = Field(title="Store", description="Path of the zarr store.")
    component: str | None = Field(None, title="Component", description="Array path inside the store.")


InputField = Union[
    Annotated[str, Field(title="path or glob", description="A TIFF, a zarr store, or a glob of TIFFs.")],
    TileGrid,
    ZarrInput,
]


def _cluster_form(value: Any) -> str:
    return "cluster-address" if isinstance(value, str) else "cluster-class"


#: The spec's ``cluster``: a scheduler address, or a cluster class made for the run.
ClusterField = Annotated[
    Union[
        Annotated[Annotated[str, AfterValidator(check_address)], Tag("cluster-address")],
        Annotated[ClusterClass, Tag("cluster-class")],
    ],
    Discriminator(_cluster_form),
]


class PipelineSpec(BaseModel):
    """A whole run: what to read, the steps, where to write."""

    model_config = ConfigDict(extra="forbid")

    flow: Literal["large_image", "batch"] = Field("large_image", title="Workflow")
    input: InputField = Field(title="Input", description="A TIFF, a glob of TIFFs, a tile grid, or a zarr store.")
    chunks: list[Annotated[int, Field(gt=0)]] | None = Field(None, title="Chunks", description="Chunk shape, one entry per axis. Default: near-cubes of 32 MiB in float32 for a 3D volume (small halos), blocks of whole planes of about 64 MiB of the input otherwise.")
    channel_axis: int | None = Field(
        None, ge=-5, le=4, title="Channel axis",
        description="The input's channel axis (0: the first, -1: the last); each channel is processed on its own. "
        "Default: as the input's OME metadata says.",
    )
    time_axis: int | None = Field(
        None, ge=-5, le=4, title="Time axis",
        description="The input's time axis; each time point is processed on its own. "
        "Default: as the input's OME metadata says.",
    )
    steps: list[Step] = Field(
        min_length=1, title="Steps",
        description="The ops, in order; each reads the step before it (measure: the labels before it).",
    )
    output: str = Field(
        title="Output folder",
        description="Where each step's OME-Zarr store or CSV table and run.json go; created if missing.",
    )
    keep: list[str] | None = Field(
        None, title="Stores to keep",
        description="Names of the image steps whose OME-Zarr stores are written (a step's name, or its op); each "
        "other image step is computed inside the next kept step's chunk tasks and never written. The last image "
        "step and the images a measure step reads must be kept. Default: all.",
    )
    cluster: ClusterField | None = Field(
        None, title="Dask cluster",
        description="A scheduler address (tcp://host:port), or {class: dask_jobqueue.SLURMCluster, kwargs: {...}, "
        "adapt: {minimum: 0, maximum: 50}}. haloflow run --cluster wins over it; it wins over HALOFLOW_CLUSTER. "
        "Default: a local cluster.",
    )

    @model_validator(mode="after")
    def _steps_fit_together(self):
        check_steps(self.steps)
        return self

    @model_validator(mode="after")
    def _kept_steps_fit(self):
        check_keep(self.steps, self.keep)
        return self

    @model_validator(mode="after")
    def _channel_and_time_differ(self):
        if self.channel_axis is not None and self.channel_axis == self.time_axis:
            raise ValueError(f"channel_axis and time_axis must be different axes, both are {self.channel_axis}")
        return self

    def to_input(self) -> Any:
        """The input as the loaders take it: a path string or a dict."""
        return self.input if isinstance(self.input, str) else self.input.model_dump(exclude_none=True)


def step_name(step) -> str:
    return step.name or step.op


def input_with_axes(spec: PipelineSpec, source: InputSpec) -> InputSpec:
    """The input with the channel and time axes it is processed by: the spec's fields, else its metadata's.

    Raises SpecError, naming the field, for an axis out of range, both fields
    on one axis, 1 or more than 3 spatial axes left, or steps that do not fit
    those axes (:func:`check_step_axes`).
    """
    try:
        axes = resolve_axes(source.shape, channel_axis=spec.channel_axis, time_axis=spec.time_axis, metadata=source.axes)
    except (TypeError, ValueError) as error:
        raise SpecError(str(error)) from None
    check_step_axes(spec.steps, axes, source.shape)
    return replace(source, channel_axis=axes.channel, time_axis=axes.time)


def check_step_axes(steps, axes: ImageAxes, shape: tuple[int, ...]) -> None:
    """Refuse steps that do not fit the input's channel and time axes, before any work.

    A ``channel`` step needs a channel axis and an index within it; after it
    the image has no channel axis. A ``measure`` step needs labels with no
    channel or time axis (a ``channel`` step before segmenting); its one
    intensity image may have the channel axis (columns ``-0``, ``-1``, ...
    per channel), but not a list of intensity images, nor a time axis.

    >>> from imageops.catalog import ChannelParams
    >>> check_step_axes([ChannelParams(index=2)], ImageAxes(3, channel=0), (2, 30, 40))
    Traceback (most recent call last):
    ...
    flows.spec.SpecError: steps[0] (channel) index: 2 is out of range: the input has 2 channels (axis 0 of shape (2, 30, 40)); use 0 to 1
    """
    shape = tuple(shape)
    named: dict[str, ImageAxes] = {"input": axes}
    for index, step in enumerate(steps):
        where = f"steps[{index}] ({step.op})"
        described = f"axes {''.join(axes.names)}, shape {shape}"
        if step.op == "channel":
            if axes.channel is None:
                raise SpecError(
                    f"{where}: the image it gets has no channel axis ({described}); the input's channel axis comes "
                    "from its OME metadata or the spec's channel_axis, and only one channel step can select from it"
                )
            count = shape[axes.channel]
            if step.index >= count:
                raise SpecError(
                    f"{where} index: {step.index} is out of range: the input has {count} channels "
                    f"(axis {axes.channel} of shape {shape}); use 0 to {count - 1}"
                )
            shape = shape[:axes.channel] + shape[axes.channel + 1:]
            axes = axes.without_channel()
        elif step.op == "measure":
            _check_measure_axes(step, where, axes, described, named)
        named.setdefault(step_name(step), axes)


def _check_measure_axes(step, where: str, labels: ImageAxes, described: str, named: dict[str, ImageAxes]) -> None:
    """A measure step's labels must be spatial; its one intensity image may have a channel axis."""
    if labels.time is not None:
        raise SpecError(f"{where}: measuring an image with a time axis ({described}) is not supported yet")
    if labels.channel is not None:
        raise SpecError(
            f"{where}: its labels have a channel axis ({described}): segment one channel, with "
            "{op: channel, index: N} before the steps that segment, then measure every channel with intensity: input"
        )
    for field, ref in step.intensity_refs():
        axes = named[ref]
        if axes.time is not None:
            raise SpecError(f"{where} {field}: {ref!r} has a time axis (axes {''.join(axes.names)}); it cannot be measured")
        if axes.channel is not None and isinstance(step.intensity, list):
            raise SpecError(
                f"{where} {field}: {ref!r} has a channel axis (axes {''.join(axes.names)}); in a list of intensity "
                f"images its columns -0, -1, ... would be ambiguous: measure it on its own (intensity: {ref})"
            )


def check_steps(steps) -> None:
    """Refuse a pipeline whose steps do not fit: wrong kinds, unknown names, tables fed on."""
    names: dict[str, str] = {"input": "image"}
    kind = "image"
    for number, step in enumerate(steps, start=1):
        info = get_op(step.op)
        where = f"steps[{number - 1}] ({step.op})"
        if kind not in info.takes:
            raise ValueError(f"{where} takes {' or '.join(info.takes)} but the step before gives {kind}")
        name = step_name(step)
        if step.name is not None and name in names:
            raise ValueError(f"{where}: name {name!r} is used twice")
        for field, ref in step.intensity_refs() if step.op == "measure" else ():
            if ref != "input" and names.get(ref) != "image":
                known = [n for n, k in names.items() if k == "image"]
                raise ValueError(f"{where} {field}: {ref!r} is not an earlier image step; known: {known}")
        names.setdefault(name, info.gives)
        kind = info.gives


def kept_steps(steps, keep: list[str] | None) -> list[bool]:
    """For every step, whether its output is written: tables always; image steps if ``keep`` names them (or is None)."""
    return [keep is None or step.op == "measure" or step_name(step) in keep for step in steps]


def check_keep(steps, keep: list[str] | None) -> None:
    """Refuse a ``keep`` list that names no image step, or leaves out a store a later step or the user needs.

    The last image step's store is the run's result; a measure step reads
    the labels before it and its intensity images from their stores.

    >>> check_keep([GaussianStep(sigma=1), ThresholdStep(method="otsu")], ["gaussian"])
    Traceback (most recent call last):
    ...
    ValueError: keep: 'threshold' must be kept (the last image step)
    """
    if keep is None:
        return
    images = [step_name(s) for s in steps if s.op != "measure"]
    unknown = [name for name in keep if name not in images]
    if unknown:
        raise ValueError(f"keep: {unknown} name no image step; the image steps are {images}")
    needed = {images[-1]: "the last image step"} if images else {}
    for index, step in enumerate(steps):
        if step.op != "measure":
            continue
        labels = [step_name(s) for s in steps[:index] if s.op != "measure"][-1:]
        needed.update({name: f"steps[{index}] (measure) reads it" for name in labels})
        needed.update({ref: f"steps[{index}] (measure) reads it" for _, ref in step.intensity_refs() if ref != "input"})
    for name, why in needed.items():
        if name not in keep:
            raise ValueError(f"keep: {name!r} must be kept ({why})")


def load_spec(source: str | Path | dict) -> PipelineSpec:
    """Read and check a spec from a YAML file or a dict; SpecError names what is wrong."""
    if isinstance(source, dict):
        data, origin = source, "spec"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"{path}: no such spec file")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SpecError(f"{path}: not valid YAML: {error}") from None
        origin = str(path)
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a spec is a mapping of fields (input, steps, output), got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{origin}: " + describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """Short lines, one per problem: where (``steps[1] (gaussian) sigma``) and what.

    >>> try:
    ...     PipelineSpec.model_validate({"input": "a.tif", "output": "o", "steps": [{"op": "gaussian", "sigma": -1}]})
    ... except ValidationError as e:
    ...     print(describe_validation_error(e))
    steps[0] (gaussian) sigma: Input should be greater than 0
    """
    from imageops import OPS

    lines = []
    errors = error.errors()
    about_input = [e for e in errors if e["loc"][:1] == ("input",)]
    if len(about_input) > 1:  # one line for a union that matched none of its forms
        errors = [e for e in errors if e not in about_input]
        lines.append("input: must be a path or glob (text), {tiles: [[...], ...]}, or {zarr: PATH, component: NAME}")
    for item in errors[:5]:
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "union_tag_invalid":
            message = f"unknown op {item['ctx']['tag']!r}; known ops: {', '.join(OPS)}"
        where = _location(item["loc"], OPS)
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


_UNION_MEMBERS = ("str", "TileGrid", "ZarrInput", "cluster-address", "cluster-class")


def _location(loc, ops) -> str:
    """``('steps', 0, 'gaussian', 'sigma')`` -> ``steps[0] (gaussian) sigma``; union member names dropped."""
    text = ""
    for index, part in enumerate(loc):
        after_index = index > 0 and isinstance(loc[index - 1], int)
        if isinstance(part, int):
            text += f"[{part}]"
        elif after_index and part in ops:
            text += f" ({part})"
        elif part in _UNION_MEMBERS or str(part).startswith("function-"):
            continue
        else:
            text += (" " if text.endswith(")") else "." if text else "") + str(part)
    return text


#: Folders that runs may read and write, separated by os.pathsep; set by ``haloflow serve --data-root``.
DATA_ROOTS_ENV = "HALOFLOW_DATA_ROOTS"


def data_roots() -> list[Path]:
    """The allowed data roots from the environment (resolved), or none when unrestricted."""
    value = os.environ.get(DATA_ROOTS_ENV, "")
    return [Path(os.path.realpath(p)) for p in value.split(os.pathsep) if p]


def check_data_roots(spec: PipelineSpec, roots: list[Path] | None = None) -> None:
    """Refuse any input or output path outside the data roots (after resolving ``..`` and symlinks)."""
    roots = data_roots() if roots is None else roots
    if not roots:
        return
    for field, path in spec_paths(spec):
        real = Path(os.path.realpath(os.path.expanduser(path)))
        if not any(real == root or root in real.parents for root in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise SpecError(f"{field}: {path} is outside the allowed data folders ({allowed})")


def spec_paths(spec: PipelineSpec):
    """Every path a spec reads or writes, with the field it comes from; a glob gives its folder and its matches."""
    yield "output", spec.output
    source = spec.input
    if isinstance(source, TileGrid):
        for index, path in enumerate(_flatten(source.tiles)):
            yield f"input.tiles[{index}]", path
    elif isinstance(source, ZarrInput):
        yield "input.zarr", source.zarr
    elif glob.has_magic(source):
        yield "input", _glob_folder(source)
        for match in glob.glob(os.path.expanduser(source)):
            yield "input", match
    else:
        yield "input", source


def _glob_folder(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = [p for p in itertools.takewhile(lambda part: not glob.has_magic(part), parts)]
    return str(Path(*fixed)) if fixed else "."


def _flatten(node):
    if isinstance(node, str):
        yield node
    else:
        for child in node:
            yield from _flatten(child)
