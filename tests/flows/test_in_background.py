"""``flows.pipeline.in_background``: a call made in a thread of its own, in the caller's context."""

from __future__ import annotations

import contextvars
import threading

import pytest

from flows.pipeline import in_background

SEEN = contextvars.ContextVar("SEEN", default="unset")


def test_the_call_sees_the_callers_context_and_runs_in_another_thread():
    SEEN.set("the flow run's")

    def look(suffix):
        return SEEN.get() + suffix, threading.current_thread() is threading.main_thread()

    assert in_background(look, " context").result(timeout=30) == ("the flow run's context", False)


def test_its_error_is_raised_where_its_result_is_asked():
    def fail():
        raise ValueError("no block")

    future = in_background(fail)
    with pytest.raises(ValueError, match="no block"):
        future.result(timeout=30)
