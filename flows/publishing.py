"""Stage artifacts published beside the run: the flow goes on to the next stage while the last one's are made."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any


class ArtifactPublisher:
    """Publish the stages' artifacts in one background thread, in order, and wait for them all on exit.

    A stage's picture is a projection of its store, computed on the cluster,
    and a PNG: 0.2-0.3 s a stage on a 256x1024x1024 volume, which the next
    stage would otherwise wait for. A publication is held until
    :meth:`release` (the batch flow calls it once the next stage is
    submitted, so that the two do not contend for the interpreter; the
    large-image flow, whose stages are all submitted first, at once), then
    made in the background. Each runs in a copy of the context it was asked
    for in, so its artifacts belong to this flow run (and to the task run it
    names).
    One that fails is logged as a warning and the run goes on: the stage's
    result is complete and recorded whatever its artifacts. Leaving the
    block, however the flow ends, releases and waits for every publication,
    so a finished run has all of them.

    >>> import logging
    >>> seen = []
    >>> with ArtifactPublisher(logging.getLogger("doc")) as publisher:
    ...     publisher.publish("a", seen.append, 1)
    ...     publisher.publish("b", seen.append, 2)
    ...     held = list(seen)
    >>> held, seen
    ([], [1, 2])
    """

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self._logger = logger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="haloflow-artifacts")
        self._held: list[tuple[str, Callable[[], Any]]] = []
        self._pending: list[tuple[str, Future]] = []

    def publish(self, key: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Hold ``function(*args, **kwargs)`` until :meth:`release`; ``key`` names it in a warning."""
        context = contextvars.copy_context()
        self._held.append((key, partial(context.run, function, *args, **kwargs)))

    def release(self) -> None:
        """Start the held publications in the background, in the order they were asked for."""
        held, self._held = self._held, []
        self._pending += [(key, self._pool.submit(call)) for key, call in held]

    def wait(self) -> int:
        """Release and wait for every publication so far; log each failure; return how many failed."""
        self.release()
        failed = 0
        pending, self._pending = self._pending, []
        for key, future in pending:
            try:
                future.result()
            except Exception as error:  # an artifact is a view of a result that is already complete
                failed += 1
                self._logger.warning("%s: artifacts not published: %s: %s", key, type(error).__name__, error)
        return failed

    def __enter__(self) -> ArtifactPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
