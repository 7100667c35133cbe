"""Which Dask cluster a run uses, and the checks that it can do the run.

A run's chunk work goes to one of, in this order of precedence:

1. ``haloflow run --cluster tcp://host:port`` (an existing scheduler);
2. the spec's ``cluster:`` field, an address or a cluster class::

       cluster: tcp://scheduler.example.org:8786
       # or
       cluster:
         class: dask_jobqueue.SLURMCluster
         kwargs: {cores: 8, memory: 32GB, walltime: "02:00:00"}
         adapt: {minimum: 0, maximum: 50}

3. ``HALOFLOW_CLUSTER=tcp://host:port`` in the environment;
4. a local cluster of worker processes made for the run.

The class and its ``kwargs``/``adapt`` go unchanged to
``prefect_dask.DaskTaskRunner(cluster_class=..., cluster_kwargs=...,
adapt_kwargs=...)``.  Workers of another machine must see the input and the
output folder at the same paths: :func:`check_workers_reach` asks them.

This module never imports prefect; ``distributed`` only inside the functions
that talk to a scheduler.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.runner import CLUSTER_ENV_VAR

__all__ = [
    "AdaptiveScaling",
    "ClusterChoice",
    "ClusterClass",
    "ClusterError",
    "check_address",
    "check_scheduler_answers",
    "check_workers_reach",
    "choose_cluster",
    "import_cluster_class",
    "path_view",
    "unreachable_paths",
]

#: Seconds to wait for a scheduler to answer before a run starts.
CONNECT_TIMEOUT = 5.0

#: Communication protocols of ``distributed`` that a scheduler address may use.
SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")

_ADDRESS = re.compile(
    r"^(?P<scheme>[a-z]+)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})/?$"
)


class ClusterError(ValueError):
    """A cluster a run cannot use: the message names the address, path or field and the problem."""


def check_address(address: str) -> str:
    """The scheduler address if it reads ``SCHEME://HOST:PORT``; ValueError saying what is expected.

    >>> check_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    >>> check_address("10.0.0.5:8786")
    Traceback (most recent call last):
    ...
    ValueError: '10.0.0.5:8786' is not a Dask scheduler address: expected tcp://HOST:PORT (or tls://, ws://, wss://, ucx://)
    """
    match = _ADDRESS.match(address.strip()) if isinstance(address, str) else None
    expected = f"expected tcp://HOST:PORT (or {', '.join(s + '://' for s in SCHEMES[1:])})"
    if match is None:
        raise ValueError(f"{address!r} is not a Dask scheduler address: {expected}")
    if match["scheme"] not in SCHEMES:
        raise ValueError(f"{address!r}: unknown protocol {match['scheme']!r}; {expected}")
    if not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{address!r}: port {match['port']} is not in 1..65535")
    return address.strip().rstrip("/")


def import_cluster_class(name: str) -> type:
    """The class ``package.module.Class``; ValueError naming it and why it cannot be imported.

    >>> import_cluster_class("distributed.LocalCluster").__name__
    'LocalCluster'
    """
    module_name, _, class_name = name.rpartition(".")
    if not module_name or not class_name.isidentifier():
        raise ValueError(f"{name!r} is not a class path like dask_jobqueue.SLURMCluster")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f" (pip install {error.name.split('.')[0].replace('_', '-')})" if error.name else ""
        raise ValueError(f"cannot import {name}: {error}{hint}") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"cannot import {name}: module {module_name} has no class {class_name!r}")
    return cls


class AdaptiveScaling(BaseModel):
    """Keyword arguments of ``cluster.adapt(...)``: ``minimum`` and ``maximum`` workers, and any other the class takes.

    Other keys (``wait_count``, ``target_duration``, dask-jobqueue's
    ``minimum_jobs``/``maximum_jobs``) go through unchanged.
    """

    model_config = ConfigDict(extra="allow", title="adaptive scaling")
    minimum: int | None = Field(None, ge=0, title="Minimum workers")
    maximum: int | None = Field(None, ge=1, title="Maximum workers")

    @model_validator(mode="after")
    def _minimum_not_above_maximum(self):
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


class ClusterClass(BaseModel):
    """A Dask cluster made for the run by a cluster class (dask-jobqueue, dask-kubernetes, ...)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, title="cluster class")
    class_: str = Field(alias="class", title="Class", description="e.g. dask_jobqueue.SLURMCluster")
    kwargs: dict[str, Any] = Field(default_factory=dict, title="Arguments", description="Keyword arguments of the class.")
    adapt: AdaptiveScaling | None = Field(None, title="Adaptive scaling")

    @field_validator("class_")
    @classmethod
    def _importable(cls, name: str) -> str:
        import_cluster_class(name)
        return name

    def runner_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``DaskTaskRunner`` for this cluster."""
        adapt = self.adapt.model_dump(exclude_none=True) if self.adapt else None
        return {"cluster_class": self.class_, "cluster_kwargs": dict(self.kwargs), "adapt_kwargs": adapt}


@dataclass(frozen=True)
class ClusterChoice:
    """Where a run's work goes, and which option chose it (for messages)."""

    source: str  # "--cluster", "spec cluster", "HALOFLOW_CLUSTER" or "local"
    address: str | None = None
    cluster_class: ClusterClass | None = None

    @property
    def is_local(self) -> bool:
        return self.address is None and self.cluster_class is None

    def describe(self) -> str:
        if self.address:
            return f"the Dask cluster at {self.address} ({self.source})"
        if self.cluster_class:
            return f"a {self.cluster_class.class_} cluster ({self.source})"
        return "a local Dask cluster"


def choose_cluster(option: str | None, spec_cluster: str | ClusterClass | None,
                   environ: Mapping[str, str], *, local_options: bool = False) -> ClusterChoice:
    """Apply the precedence ``--cluster`` > spec ``cluster:`` > ``HALOFLOW_CLUSTER`` > local.

    ``local_options``: the caller asked for a local-cluster setting (``--workers``),
    which then wins over the environment's default address, and is refused
    with ``--cluster`` or a spec's cluster.  ClusterError names the option.

    >>> choose_cluster(None, None, {"HALOFLOW_CLUSTER": "tcp://h:8786"}).address
    'tcp://h:8786'
    >>> choose_cluster("tcp://a:1", "tcp://b:2", {}).source
    '--cluster'
    """
    if option:
        _refuse_local_options(local_options, f"--cluster {option}")
        return ClusterChoice("--cluster", address=_checked(option, "--cluster"))
    if spec_cluster is not None:
        _refuse_local_options(local_options, "the spec's cluster field")
        if isinstance(spec_cluster, ClusterClass):
            return ClusterChoice("spec cluster", cluster_class=spec_cluster)
        return ClusterChoice("spec cluster", address=_checked(spec_cluster, "cluster"))
    env_address = environ.get(CLUSTER_ENV_VAR)
    if env_address and not local_options:
        return ClusterChoice(CLUSTER_ENV_VAR, address=_checked(env_address, CLUSTER_ENV_VAR))
    return ClusterChoice("local")


def _checked(address: str, where: str) -> str:
    try:
        return check_address(address)
    except ValueError as error:
        raise ClusterError(f"{where}: {error}") from None


def _refuse_local_options(local_options: bool, chosen: str) -> None:
    if local_options:
        raise ClusterError(f"--workers and --worker-memory set up a local cluster; the run goes to {chosen} "
                           "instead, whose workers are started with their own")


def check_scheduler_answers(address: str, timeout: float = CONNECT_TIMEOUT) -> int:
    """Ask the scheduler at ``address`` who it is; return how many workers it has.

    ClusterError naming the address when nothing listens there (answered at
    once for ``tcp://``), or no Dask scheduler answers within ``timeout`` s
    (say, a web server on that port).
    """
    import asyncio

    _refuse_if_closed(address, timeout)
    try:
        identity = asyncio.run(asyncio.wait_for(_identity(address, timeout), timeout))
    except (OSError, TimeoutError, ValueError) as error:
        raise ClusterError(f"no Dask scheduler answers at {address} within {timeout:g} s ({_reason(error)}); "
                           "start one with `dask scheduler`, or check the address") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise ClusterError(f"{address} answers, but not as a Dask scheduler; check the address")
    return len(identity.get("workers", {}))


async def _identity(address: str, timeout: float) -> dict:
    from distributed.core import rpc

    scheduler = rpc(address, timeout=timeout)
    try:
        return await scheduler.identity()
    finally:
        await scheduler.close_rpc()


def _refuse_if_closed(address: str, timeout: float) -> None:
    """For ``tcp://``: refuse at once when nothing listens (distributed retries until its timeout)."""
    match = _ADDRESS.match(address)
    if match is None or match["scheme"] != "tcp":
        return
    try:
        with socket.create_connection((match["host"].strip("[]"), int(match["port"])), timeout=timeout):
            pass
    except OSError as error:
        raise ClusterError(f"no Dask scheduler answers at {address}: {_reason(error)}; "
                           "start one with `dask scheduler`, or check the address") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.splitlines()[0][:200]


# -- can the workers see the run's files? ------------------------------------------

def path_view(paths: list[str]) -> dict[str, list | None]:
    """What this machine sees at each path: ``["file", size]``, ``["dir"]`` or ``None`` (nothing).

    Runs on the workers (by :func:`check_workers_reach`) and on the client; the
    two views must agree.

    >>> path_view(["/no/such/path"])
    {'/no/such/path': None}
    """
    view: dict[str, list | None] = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            view[path] = None
            continue
        view[path] = ["dir"] if os.path.isdir(path) else ["file", info.st_size]
    return view


def unreachable_paths(expected: Mapping[str, Any], seen_by: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """``(path, worker, what the worker sees)`` for each path a worker sees otherwise than the client.

    >>> unreachable_paths({"/a": ["dir"]}, {"tcp://w:1": {"/a": ["dir"]}, "tcp://w:2": {"/a": None}})
    [('/a', 'tcp://w:2', None)]
    """
    return [(path, worker, seen.get(path)) for worker, seen in seen_by.items()
            for path, view in expected.items() if seen.get(path) != view]


def check_workers_reach(client, paths: Mapping[str, str], output: str | Path | None) -> None:
    """Refuse a run whose Dask workers cannot see its files at the paths the client uses.

    ``paths`` maps each input path to the spec field it comes from.  The output
    folder (created already) is checked through a probe file written in it,
    since a folder of the same name exists on many machines (``/tmp``).  Every
    current worker is asked (``client.run``); with none yet, one task waits for
    the first.  ClusterError names the field and the path.
    """
    # Absolute path asked -> (spec field, path as the spec names it).
    shown = {os.path.abspath(os.path.expanduser(p)): (field, p) for p, field in paths.items()}
    probe = None if output is None else Path(output) / f".haloflow-reach-{uuid.uuid4().hex[:12]}"
    if probe is not None:
        probe.write_bytes(b"")
        shown[str(probe)] = ("output", str(output))
    if not shown:
        return
    try:
        expected = path_view(list(shown))
        if client.scheduler_info(n_workers=-1)["workers"]:
            seen_by = client.run(path_view, list(shown), on_error="ignore")
        else:
            seen_by = {"the first worker": client.submit(path_view, list(shown), pure=False).result()}
    finally:
        if probe is not None:
            probe.unlink(missing_ok=True)
    missing = unreachable_paths(expected, seen_by)
    if missing:
        path, worker, seen = missing[0]
        field, name = shown[path]
        what = "nothing" if seen is None else "a different file" if seen and seen[0] == "file" else "something else"
        raise ClusterError(
            f"{field}: the Dask workers cannot reach {name} (worker {worker} sees {what} there); "
            "put it on storage every worker mounts at the same path (a shared file system), "
            "or run on the local cluster"
        )
