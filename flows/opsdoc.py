"""The op and spec references, made from the registry and the spec's model: ``haloflow ops`` and the README's tables.

Every registered op with what it takes and gives, each parameter's type,
bounds and default, and its one-line description (the first line of its
parameters' docstring); every field of a pipeline spec likewise. The README
holds the Markdown forms between :data:`START` and :data:`END` (ops) and
between :data:`SPEC_START` and :data:`SPEC_END` (spec fields);
``python -m flows.opsdoc README.md`` rewrites both.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from imageops import OPS
from imageops.registry import OpInfo

START = "<!-- ops:start -->"
END = "<!-- ops:end -->"
SPEC_START = "<!-- spec:start -->"
SPEC_END = "<!-- spec:end -->"


def ops_reference(markdown: bool = False) -> str:
    """Every registered op, its parameters and description: plain text, or a Markdown table.

    >>> print(ops_reference().splitlines()[1])
      sigma: float in (0, 1000], required. Standard deviation of the kernel, in voxels.
    >>> print(ops_reference(markdown=True).splitlines()[3][:70])
    | `median` | image | image | `size`: int in (0, 255], required; `mode`
    """
    if markdown:
        return _markdown_table(OPS.values())
    return "\n\n".join(_text_entry(info) for info in OPS.values()) + "\n"


def spec_reference() -> str:
    """Every field of a pipeline spec (:class:`flows.spec.PipelineSpec`) as a Markdown table.

    >>> print(spec_reference().splitlines()[2])
    | `flow` | "large_image" or "batch", default "large_image" | Workflow. |
    """
    from flows.spec import PipelineSpec

    lines = ["| field | type and default | description |", "| --- | --- | --- |"]
    for name, field in PipelineSpec.model_fields.items():
        kind = "list of steps, at least 1, required: each an op of the table below" if name == "steps" else describe_parameter(field)
        about = ". ".join(part.rstrip(".") for part in (field.title, field.description) if part) + "."
        lines.append("| " + " | ".join(_cell(c) for c in (f"`{name}`", kind, about)) + " |")
    return "\n".join(lines) + "\n"


def describe_parameter(field: FieldInfo) -> str:
    """One parameter as ``type in bounds, default value``.

    >>> from imageops.catalog import LabelParams, MedianParams
    >>> describe_parameter(MedianParams.model_fields["size"])
    'int in (0, 255], required'
    >>> describe_parameter(LabelParams.model_fields["connectivity"])
    'int in [1, 3] or null, default null'
    """
    annotation, nullable = _without_none(field.annotation)
    described = describe_type(annotation) + _bounds(field.metadata) + (" or null" if nullable else "")
    return f"{described}, {_default(field)}"


def describe_type(annotation) -> str:
    """A type as a reader of the spec sees it.

    >>> describe_type(list[typing.Literal["a", "b"]])
    'list of "a" or "b"'
    >>> describe_type(str | list[str] | None)
    'str, list of str or null'
    >>> describe_type(tuple[float, float])
    'pair of float'
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return describe_type(args[0]) + _bounds(annotation.__metadata__)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(field.alias or name for name, field in annotation.model_fields.items()) + "}"
    if origin is typing.Literal:
        return _one_of([json.dumps(a) for a in args])
    if origin in (typing.Union, types.UnionType):
        return _one_of([describe_type(a) for a in args])
    if origin is list:
        return f"list of {describe_type(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[0] == args[1]:
            return f"pair of {describe_type(args[0])}"
        return "tuple of (" + ", ".join(describe_type(a) for a in args) + ")"
    return getattr(annotation, "__name__", str(annotation))


def replace_block(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with what lies between the `start` and `end` lines replaced by ``block``.

    >>> replace_block("a\\n<!-- ops:start -->\\nold\\n<!-- ops:end -->\\nb\\n", "new\\n")
    'a\\n<!-- ops:start -->\\nnew\\n<!-- ops:end -->\\nb\\n'
    """
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"the text must hold one {start!r} line, then one {end!r} line")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}{end}{tail}"


def read_block(text: str, start: str = START, end: str = END) -> str:
    """What lies between the `start` and `end` lines of ``text``."""
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"the text must hold one {start!r} line and one {end!r} line")
    return text.split(start, 1)[1].split(end, 1)[0].removeprefix("\n")


def _markdown_table(infos) -> str:
    lines = ["| op | takes | gives | parameters | description |", "| --- | --- | --- | --- | --- |"]
    for info in infos:
        parameters = "; ".join(f"`{name}`: {describe_parameter(field)}" for name, field in _parameters(info))
        cells = [f"`{info.name}`", " or ".join(info.takes), info.gives, parameters or "none", _description(info)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _text_entry(info: OpInfo) -> str:
    lines = [f"{info.name}: {' or '.join(info.takes)} -> {info.gives}. {_description(info)}"]
    for name, field in _parameters(info):
        about = f" {field.description}" if field.description else ""
        lines.append(f"  {name}: {describe_parameter(field)}.{about}")
    return "\n".join(lines)


def _parameters(info: OpInfo) -> list[tuple[str, FieldInfo]]:
    """The op's parameters, in their model's order (``op`` itself left out)."""
    return [(name, field) for name, field in info.params.model_fields.items() if name != "op"]


def _description(info: OpInfo) -> str:
    """The first line of the parameters' docstring, or the registry's summary."""
    doc = (info.params.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else info.summary


def _without_none(annotation):
    """``(X, True)`` for ``X | None``, else ``(annotation, False)``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def _one_of(choices: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    if len(choices) == 1:
        return choices[0]
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _bounds(metadata) -> str:
    """`` in (0, 100]``, `` >= 0``, ``, at least 1``, ``, finite`` from a field's constraints."""
    low = high = ""
    extra = []
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(gt=0)]: its constraints
            return _bounds(item.metadata)
        if isinstance(item, annotated_types.Gt):
            low = f"({item.gt}"
        elif isinstance(item, annotated_types.Ge):
            low = f"[{item.ge}"
        elif isinstance(item, annotated_types.Lt):
            high = f"{item.lt})"
        elif isinstance(item, annotated_types.Le):
            high = f"{item.le}]"
        elif isinstance(item, annotated_types.MinLen):
            extra.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            extra.append(f"at most {item.max_length}")
        elif getattr(item, "allow_inf_nan", None) is False:
            extra.append("finite")
    if low and high:
        text = f" in {low}, {high}"
    elif low:
        text = (" > " if low[0] == "(" else " >= ") + low[1:]
    elif high:
        text = (" < " if high[-1] == ")" else " <= ") + high[:-1]
    else:
        text = ""
    return text + "".join(f", {e}" for e in extra)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"default {json.dumps(field.default_factory())}"
    if field.is_required():
        return "required"
    return f"default {json.dumps(field.default)}"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no pipes, no HTML tags."""
    return text.replace("|", "\\|").replace("<", "\\<")


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.opsdoc README.md``: rewrite the op table (and the spec table, if it has its markers)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m flows.opsdoc FILE.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    text = replace_block(path.read_text(), ops_reference(markdown=True))
    if SPEC_START in text:
        text = replace_block(text, spec_reference(), SPEC_START, SPEC_END)
    path.write_text(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
