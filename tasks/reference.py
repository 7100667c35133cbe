"""The small, serialisable reference that stage tasks pass instead of pixels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("image", "mask", "labels", "table")


@dataclass(frozen=True)
class ArrayRef:
    """Where a stage's array is stored and what it holds.

    Parameters
    ----------
    store : str
        Path (or URL) of the OME-Zarr store.
    component : str
        Array path inside the store (``"0"``: full resolution).
    shape, chunks : tuple of int
        The array's shape and its regular chunk shape on disk.
    dtype : str
        NumPy dtype name.
    kind : str
        One of ``image``, ``mask``, ``labels``.
    fingerprint : str
        Content fingerprint: equal fingerprints mean equal contents.

    Examples
    --------
    >>> ref = ArrayRef("out/01_gaussian.ome.zarr", "0", (4, 5), "float32", (4, 5), "image", "ab")
    >>> ArrayRef.from_dict(ref.to_dict()) == ref
    True
    """

    store: str
    component: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    kind: str
    fingerprint: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
        object.__setattr__(self, "dtype", str(self.dtype))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.chunks) != len(self.shape):
            raise ValueError(
                f"chunks {self.chunks} must have one entry per axis of shape {self.shape}"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "chunks": list(self.chunks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArrayRef":
        return cls(**data)


@dataclass(frozen=True)
class TableRef:
    """Where a stage's table (CSV) is stored, its row count and fingerprint."""

    path: str
    rows: int
    columns: tuple[str, ...]
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TableRef":
        return cls(**{**data, "columns": tuple(data["columns"])})


def fingerprint(*parts: Any) -> str:
    """A stable hex digest of JSON-serialisable parts.

    Examples
    --------
    >>> fingerprint("a", {"sigma": 2.0}) == fingerprint("a", {"sigma": 2.0})
    True
    >>> fingerprint("a", 1) == fingerprint("a", 2)
    False
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
