"""The interactive API: the loaders and the lifted ops that the stages run, on dask arrays, from Python.

A stage of a run is :func:`tasks.io.imread` (or :func:`tasks.io.read_ref` of
the previous stage's store), then :func:`tasks.lift.lift`, then a write. This
module gives the same two functions a shorter call, with the op's parameters
as keyword arguments, so that a notebook gets exactly the arrays a run
stores, and can look at them before anything is written:

- :func:`imread`: a TIFF, a glob of TIFFs, a grid of tiles or a zarr store,
  as a lazy dask array (nothing is read until computed);
- :func:`apply`: any image-, mask- or label-producing op. Pointwise and
  neighbourhood ops (``gaussian``, ``median``...) are lazy. Global ops
  (thresholds, ``label``, ``rescale_intensity``, the mask clean-ups) compute
  their first pass when called, over the input's chunks (the histogram for
  a threshold, per-chunk labels and their borders for ``label``), and return
  the result as a lazy map over the chunks, plus what that pass found;
- :func:`measure`: the object table of a label image;
- :func:`open_stage`: a stored stage of a run's output folder, lazily.

``compute`` (for the first pass of global ops) has ``dask.compute``'s
signature; the default runs on Dask's current scheduler.

Examples
--------
>>> import numpy as np, dask.array as da
>>> pixels = np.zeros((16, 16), np.uint16)
>>> pixels[1:5, 1:5] = pixels[1:5, 10:14] = pixels[10:14, 5:9] = 100
>>> image = da.from_array(pixels, chunks=6)
>>> smooth, _ = apply(image, "gaussian", sigma=0.5)           # lazy
>>> mask, found = apply(smooth, "threshold", method="otsu")   # the threshold now, the mask lazily
>>> labels, found = apply(mask, "label")
>>> found, labels.dtype
({'objects': 3}, dtype('uint32'))
>>> measure(labels, ["label", "area"])["area"].tolist()
[16.0, 16.0, 16.0]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from imageops import get_op
from imageops.registry import OpParams
from tasks import io, lift
from tasks.io import imread, read_ref, resolve_input

__all__ = ["apply", "imread", "measure", "open_stage", "op_params", "read_ref", "resolve_input"]


def op_params(op: str, **fields: Any) -> OpParams:
    """The validated parameters of ``op`` (what a spec step holds), e.g. ``op_params("gaussian", sigma=2.0)``.

    Raises
    ------
    ValueError
        An unknown op (the message lists the known ones), or a parameter that is
        unknown or out of bounds (pydantic's ``ValidationError``, naming the field).

    >>> op_params("gaussian", sigma=2.0).truncate
    4.0
    """
    fields.pop("op", None)
    return get_op(op).params(op=op, **fields)


def apply(
    image: da.Array, op: str, *, compute=dask.compute, axes=None, **fields: Any
) -> tuple[da.Array, dict[str, Any]]:
    """Run one image-, mask- or label-producing op on a dask array, as a stage of a run does.

    Parameters
    ----------
    image : dask.array.Array
        The op's input (see ``haloflow ops`` for the kind each op takes).
    op : str
        The op's name.
    compute : callable, optional
        Runs the first pass of a global op (``dask.compute``'s signature).
    axes : tasks.axes.ImageAxes, optional
        The image's channel and time axes, each piece then processed on its
        own, as a stage does with its input's (``resolve_input(path).axes``).
        Default: every axis is spatial.
    **fields
        The op's parameters, as in a spec step.

    Returns
    -------
    result : dask.array.Array
        Lazy: nothing of it is computed until asked.
    found : dict
        What a global op's first pass found (``threshold``, ``objects``...); empty for local ops.

    Raises
    ------
    TypeError
        ``image`` is not a dask array.
    ValueError
        Unknown op, bad parameters, or an op that gives a table (use :func:`measure`).
    """
    if not isinstance(image, da.Array):
        raise TypeError(f"image must be a dask array (dask.array.from_array wraps a NumPy one), got {type(image).__name__}")
    params = op_params(op, **fields)
    if get_op(op).gives == "table":
        raise ValueError(f"op {op!r} gives a table, not an image: use tasks.api.measure")
    if axes is not None:
        return lift.lift(image, params, compute, axes=axes)
    return lift.lift(image, params, compute)


def measure(
    labels: da.Array,
    properties: Sequence[str] | None = None,
    *,
    intensity: da.Array | None = None,
    compute=dask.compute,
) -> dict[str, np.ndarray]:
    """The table of the objects of ``labels``, as a ``measure`` stage writes it (columns named as ``regionprops_table`` names them).

    ``properties`` default to the ``measure`` op's; ``intensity`` is the image
    for the intensity properties (same shape as ``labels``). Computes now.
    """
    if not isinstance(labels, da.Array):
        raise TypeError(f"labels must be a dask array, got {type(labels).__name__}")
    fields: dict[str, Any] = {} if properties is None else {"properties": list(properties)}
    # The spec names the intensity image; here the array itself is passed below.
    fields["intensity"] = None if intensity is None else "input"
    return lift.measure(labels, op_params("measure", **fields), intensity=intensity, compute=compute)


def open_stage(output: str | os.PathLike, name: str) -> da.Array:
    """A stored stage of a run, lazily: ``open_stage("out", "03_label")`` reads ``out/03_label.ome.zarr``.

    Raises
    ------
    FileNotFoundError
        There is no such store (the message lists the stores of the folder).
    ValueError
        The store is not complete (its stage did not finish).
    """
    folder = Path(output).expanduser()
    store = folder / (name if name.endswith(".ome.zarr") else f"{name}.ome.zarr")
    if not store.is_dir():
        known = sorted(p.name.removesuffix(".ome.zarr") for p in folder.glob("*.ome.zarr")) if folder.is_dir() else []
        raise FileNotFoundError(f"no stage {name!r} in {folder}; stages: {', '.join(known) or 'none'}")
    if not io.is_complete(store):
        raise ValueError(f"stage {store} is not complete: its stage did not finish")
    return read_ref(io.open_store_ref(store))
