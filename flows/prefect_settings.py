"""Prefect's settings carried to a task's process once per run, not once per task.

Prefect gives every task it submits to Dask its flow's settings as a plain
dict (``prefect.context.serialize_context``), and the worker builds a
``Settings`` object from that dict again (``hydrated_context``). Both sides
are the same for every task of a run, yet both cost:

* in the flow's process, ``SettingsContext.serialize`` dumps the settings
  and walks them for secrets (19 ms in an idle process): a served run's
  stage submissions took 60-170 ms each with it, 13-75 ms once it was kept;
* on the worker, pydantic-settings reads the environment, ``.env``,
  ``prefect.toml``, ``pyproject.toml`` and the profiles again for each of
  the settings' nested models before a task's code starts: 45-65 ms a task
  between one stage and the next in served runs (26 ms in an idle process),
  3-15 ms once built.

:func:`reuse_prefect_settings` keeps, in its process, the result of each:

* the serialized dict of a settings context, for as long as the context
  holds the same profile and ``Settings`` objects (Prefect never changes
  one in place: new settings are new objects);
* the ``Settings`` object built from a serialized dict, reused for the same
  dict while everything else it is built from is unchanged: the process's
  ``PREFECT_`` environment variables, its working directory, and the size
  and modification time of the files Prefect reads settings from.

The objects are those Prefect built the first time, so a task sees the
settings it would have had. Where Prefect no longer has these methods,
nothing is changed.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

#: How many distinct settings each cache keeps (a process sees one or two).
KEPT = 8

#: Files in the working directory that Prefect reads settings from.
SETTINGS_FILES = (".env", "prefect.toml", "pyproject.toml")


def reuse_prefect_settings() -> bool:
    """Serialize and rebuild Prefect's settings once per distinct value in this process; whether that is in place.

    Idempotent; safe in any process that uses Prefect.
    """
    try:
        from prefect.context import SettingsContext
    except ImportError:
        return False
    if getattr(SettingsContext, "_haloflow_reuses_settings", False):
        return True
    if not callable(getattr(SettingsContext, "serialize", None)) or "settings" not in SettingsContext.model_fields:
        return False
    SettingsContext.serialize = _serialize_once(SettingsContext.serialize)
    SettingsContext.__init__ = _build_once(SettingsContext.__init__)
    SettingsContext._haloflow_reuses_settings = True
    return True


def _serialize_once(serialize):
    kept: OrderedDict[tuple, tuple[Any, Any, dict]] = OrderedDict()

    def serialize_once(self, include_secrets: bool = True) -> dict[str, Any]:
        key = (id(self.profile), id(self.settings), include_secrets)
        found = kept.get(key)
        if found is None or found[0] is not self.profile or found[1] is not self.settings:
            found = (self.profile, self.settings, serialize(self, include_secrets=include_secrets))
            _keep(kept, key, found)
        return copy.deepcopy(found[2])  # the caller's own, as Prefect's is

    serialize_once.__wrapped__ = serialize
    return serialize_once


def _build_once(init):
    kept: OrderedDict[tuple, Any] = OrderedDict()

    def init_once(self, **data: Any) -> None:
        values = data.get("settings")
        if not isinstance(values, dict):
            init(self, **data)
            return
        key = settings_inputs(values)
        built = kept.get(key)
        if built is not None:
            init(self, **{**data, "settings": built})
            return
        init(self, **data)
        _keep(kept, key, self.settings)

    init_once.__wrapped__ = init
    return init_once


def _keep(kept: OrderedDict, key: tuple, value: Any) -> None:
    kept[key] = value
    while len(kept) > KEPT:
        kept.popitem(last=False)


def settings_inputs(values: dict[str, Any]) -> tuple:
    """Everything a ``Settings`` built from ``values`` depends on in this process, as a hashable key."""
    environment = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith("PREFECT_")))
    files = tuple((str(path), _stamp(path)) for path in (*map(Path, SETTINGS_FILES), _profiles_path()))
    return json.dumps(values, sort_keys=True, default=repr), environment, os.getcwd(), files


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def _profiles_path() -> Path:
    """The profiles file Prefect reads, as Prefect finds it (or its usual place where that helper is gone)."""
    try:
        from prefect.settings.sources import _get_profiles_path
    except ImportError:
        home = os.environ.get("PREFECT_HOME")
        return Path(os.environ.get("PREFECT_PROFILES_PATH") or Path(home or Path.home() / ".prefect") / "profiles.toml")
    return _get_profiles_path()
