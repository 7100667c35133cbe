"""Prefect's settings serialized and rebuilt once per distinct value in a process (``flows.prefect_settings``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect.context import SettingsContext
from prefect.settings import Settings

from flows import prefect_settings
from flows.prefect_settings import _build_once, _serialize_once


@pytest.fixture
def counted():
    calls = []

    def count(original):
        def counted_call(*args, **kwargs):
            calls.append(args[0])
            return original(*args, **kwargs)

        return counted_call

    return calls, count


def original(method):
    return getattr(method, "__wrapped__", method)


def test_a_context_is_serialized_once_and_each_caller_gets_its_own_copy(counted):
    calls, count = counted
    serialize = _serialize_once(count(original(SettingsContext.serialize)))
    context = SettingsContext.get()
    first, second = serialize(context), serialize(context)
    assert first == second == original(SettingsContext.serialize)(context)
    assert len(calls) == 1
    second["settings"]["changed"] = True
    assert "changed" not in serialize(context)["settings"]
    assert len(calls) == 1


def test_other_settings_or_secrets_left_out_are_serialized_anew(counted):
    calls, count = counted
    serialize = _serialize_once(count(original(SettingsContext.serialize)))
    context = SettingsContext.get()
    other = SettingsContext(profile=context.profile, settings=Settings(logging={"level": "DEBUG"}))
    serialize(context)
    assert serialize(other)["settings"]["logging"]["level"] == "DEBUG"
    serialize(context, include_secrets=False)
    assert len(calls) == 3


def test_settings_rebuilt_from_the_same_dict_are_the_first_build_and_equal_prefects(counted):
    calls, count = counted
    build = _build_once(count(original(SettingsContext.__init__)))

    class Context(SettingsContext):
        __init__ = build

    values = original(SettingsContext.serialize)(SettingsContext.get())
    first, second = Context(**values), Context(**values)
    assert second.settings is first.settings
    assert first.settings.model_dump() == SettingsContext(**values).settings.model_dump()
    assert len(calls) == 2  # each context is still made by Prefect's own __init__


def test_a_changed_environment_or_settings_file_builds_them_again(monkeypatch, tmp_path):
    class Context(SettingsContext):
        __init__ = _build_once(original(SettingsContext.__init__))

    monkeypatch.chdir(tmp_path)
    values = original(SettingsContext.serialize)(SettingsContext.get())
    values["settings"].get("logging", {}).pop("level", None)
    first = Context(**values)
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    from_environment = Context(**values)
    assert from_environment.settings is not first.settings
    assert from_environment.settings.logging.level == "DEBUG"
    monkeypatch.delenv("PREFECT_LOGGING_LEVEL")
    (tmp_path / "prefect.toml").write_text('[logging]\nlevel = "ERROR"\n')
    from_file = Context(**values)
    assert from_file.settings is not first.settings
    assert from_file.settings.logging.level == "ERROR"


def test_contexts_given_settings_objects_are_left_to_prefect(counted):
    calls, count = counted

    class Context(SettingsContext):
        __init__ = _build_once(count(original(SettingsContext.__init__)))

    settings = Settings()
    assert Context(profile=SettingsContext.get().profile, settings=settings).settings is settings
    assert len(calls) == 1


def test_putting_it_in_place_twice_wraps_prefects_methods_once():
    """In a fresh interpreter, so that this test process keeps Prefect's own methods."""
    code = ("from flows.prefect_settings import reuse_prefect_settings as r; from prefect.context import "
            "SettingsContext as S; print(r(), r(), not hasattr(S.serialize.__wrapped__, '__wrapped__'), "
            "not hasattr(S.__init__.__wrapped__, '__wrapped__'), S(**S.get().serialize()).settings is "
            "S(**S.get().serialize()).settings)")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert answer.stdout.split() == ["True"] * 5


def test_the_key_holds_the_prefect_environment_the_directory_and_the_files(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    key = prefect_settings.settings_inputs({"a": 1})
    assert prefect_settings.settings_inputs({"a": 1}) == key
    assert prefect_settings.settings_inputs({"a": 2}) != key
    monkeypatch.setenv("OTHER_VARIABLE", "x")
    assert prefect_settings.settings_inputs({"a": 1}) == key
    (tmp_path / ".env").write_text("PREFECT_LOGGING_LEVEL=ERROR\n")
    assert prefect_settings.settings_inputs({"a": 1}) != key
