"""The flow's artifact publisher: in the background, in order, in the flow's context, never failing the run."""

from __future__ import annotations

import contextvars
import logging
import threading

import pytest

from flows.publishing import ArtifactPublisher

WHO = contextvars.ContextVar("who", default="nobody")


def test_a_publication_waits_for_release_then_runs_beside_the_caller():
    started, release = threading.Event(), threading.Event()
    done = []

    def publication():
        started.set()
        release.wait(10)
        done.append(threading.current_thread().name)

    with ArtifactPublisher(logging.getLogger("test")) as publisher:
        publisher.publish("slow", publication)
        assert not started.wait(0.2)  # held: the next stage is being submitted
        publisher.release()
        assert started.wait(10) and done == []  # made in the background while the caller goes on
        release.set()
    assert len(done) == 1 and done[0] != threading.current_thread().name  # waited for on exit


def test_publications_keep_their_order_and_see_the_context_they_were_made_in():
    seen = []
    with ArtifactPublisher(logging.getLogger("test")) as publisher:
        for name in ("first", "second", "third"):
            token = WHO.set(name)
            publisher.publish(name, lambda: seen.append(WHO.get()))
            WHO.reset(token)
    assert seen == ["first", "second", "third"]


def test_a_failed_publication_is_a_warning_and_the_others_are_made(caplog):
    made = []

    def broken():
        raise ConnectionError("the API went away")

    with caplog.at_level(logging.WARNING, logger="test"):
        with ArtifactPublisher(logging.getLogger("test")) as publisher:
            publisher.publish("01_gaussian", broken)
            publisher.publish("02_threshold", made.append, "table")
            assert publisher.wait() == 1
    assert made == ["table"]
    assert "01_gaussian: artifacts not published: ConnectionError: the API went away" in caplog.text


def test_leaving_on_an_error_waits_for_the_publications_and_keeps_the_error():
    made = []
    release = threading.Event()
    with pytest.raises(RuntimeError, match="stage failed"):
        with ArtifactPublisher(logging.getLogger("test")) as publisher:
            publisher.publish("01_gaussian", lambda: (release.wait(10), made.append("picture")))
            release.set()
            raise RuntimeError("stage failed")
    assert made == ["picture"]
