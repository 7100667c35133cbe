"""The op registry: for each op, its parameters, halo, kinds, output dtype and block function.

Everything a lifting layer needs to run an op on chunks, and everything a
spec needs to check a pipeline before it runs, without running it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

#: Edge modes whose chunked result equals the whole-image one. ``'wrap'`` is left out on purpose:
#: a chunk at the image's edge would wrap onto itself, not onto the opposite side of the image.
Mode = Literal["nearest", "reflect", "constant", "mirror"]
Kind = Literal["image", "mask", "labels", "table"]


class OpParams(BaseModel):
    """Base of every op's parameters: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class OpInfo:
    """What the lifting layer and the spec need to know about one op."""

    name: str
    version: str
    params: type[OpParams]
    family: Literal["pointwise", "neighbourhood", "global", "label", "table"]
    takes: tuple[Kind, ...]
    gives: Kind
    halo: Callable[[OpParams, int], tuple[int, ...]]
    out_dtype: Callable[[OpParams, np.dtype], np.dtype]
    block_fn: Callable[..., np.ndarray] | None = None
    #: ``inner_fn(block, params, margins)``: ``block_fn``'s result without ``margins`` ((before, after) per
    #: axis), when the op can leave them out as it goes for less work, to the same bits.
    inner_fn: Callable[..., np.ndarray] | None = None
    summary: str = ""


#: Every op, by name. Op families add theirs with :func:`register` when ``imageops`` is imported.
OPS: dict[str, OpInfo] = {}


def register(info: OpInfo) -> OpInfo:
    """Add an op to the registry; its params model must name it in a ``Literal`` field ``op``."""
    if info.name in OPS:
        raise ValueError(f"op {info.name!r} is registered twice")
    if info.params.model_fields["op"].default != info.name:
        raise ValueError(f"op {info.name!r}: its params model's 'op' field must default to {info.name!r}")
    OPS[info.name] = info
    return info


def all_params() -> tuple[type[OpParams], ...]:
    """Every registered op's params model, in registration order."""
    return tuple(info.params for info in OPS.values())


def get_op(name: str) -> OpInfo:
    """The registry entry of op ``name``, or a ValueError listing the known ops.

    >>> get_op("gaussian").gives
    'image'
    """
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(OPS)}") from None
