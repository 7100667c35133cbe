"""What ``haloflow run`` shows in the terminal: progress, one line per stage, a final line.

Three levels:

- ``normal``: a progress display for the running stage (one updating line on a
  terminal, a plain line every :data:`PLAIN_EVERY` seconds otherwise), a
  summary line per stage, the final line; Prefect's and Dask's own logs only
  from warnings up.
- ``quiet``: errors and the final line only.
- ``verbose``: as normal, with progress as plain lines, and Prefect's and
  Dask's logs as they come.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, TextIO

from flows.progress import Progress

__all__ = ["Console", "PLAIN_EVERY", "format_duration", "short_number", "stage_line", "tame_logs"]

#: Seconds between progress lines when the output is not a terminal.
PLAIN_EVERY = 10.0
#: Seconds between redraws of the progress line on a terminal.
LIVE_EVERY = 0.2
MODES = ("quiet", "normal", "verbose")
_BAR = 24
#: Level of Prefect's console log handler, per mode (``None``: as configured).
_CONSOLE_LEVEL = {"quiet": "CRITICAL", "normal": "WARNING", "verbose": None}


class Console:
    """The run's terminal output; thread-safe (the run watcher reports from its own thread).

    Parameters
    ----------
    mode : str
        ``"quiet"``, ``"normal"`` or ``"verbose"``.
    out, err : text streams
        Where lines go (default: ``sys.stdout`` and ``sys.stderr`` when called).
    live : bool, optional
        One updating progress line (default: in normal mode, if ``out`` is a terminal).
    every : float, optional
        Seconds between plain progress lines (default :data:`PLAIN_EVERY`).
    """

    def __init__(self, mode: str = "normal", *, out: TextIO | None = None, err: TextIO | None = None,
                 live: bool | None = None, every: float | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live = (mode == "normal" and _is_terminal(self.out)) if live is None else live
        self.every = PLAIN_EVERY if every is None else every
        self._lock = threading.RLock()
        self._shown = ""  # the progress line on screen (live mode)
        self._stages: dict[str, _Rate] = {}
        self._plain_printed: dict[str, tuple[float, int | None]] = {}  # per stage: when the last plain line was printed, at what count
        self._last_live = 0.0

    # -- what the run reports --------------------------------------------------------
    def info(self, text: str) -> None:
        """A line of the normal output (not in quiet mode)."""
        if self.mode != "quiet":
            self._line(text, self.out)

    def progress(self, progress: Progress) -> None:
        """The running stage's progress, from :class:`flows.progress.RunWatcher`."""
        if self.mode == "quiet":
            return
        now = time.monotonic()
        with self._lock:
            rate = self._stages.setdefault(progress.key, _Rate(now))
            rate.add(now, progress.done)
            text = progress_line(progress, rate.per_second(), now - rate.started)
            if self.live:
                if now - self._last_live >= LIVE_EVERY or progress.done == progress.total:
                    self._show(text)
                    self._last_live = now
                return
            last_time, last_done = self._plain_printed.get(progress.key, (rate.started, None))
            if now - last_time >= self.every and progress.done != last_done:
                self._plain_printed[progress.key] = (now, progress.done)
                self._line(text, self.out)

    def stage(self, entry: dict[str, Any]) -> None:
        """One stage ended: its summary line."""
        if self.mode == "quiet":
            return
        rate = self._stages.get(entry.get("name", ""))
        self._line(stage_line(entry, None if rate is None else rate.per_second()), self.out)

    def final(self, text: str) -> None:
        """The run's last line (shown in every mode)."""
        self._line(text, self.out)

    def error(self, text: str) -> None:
        """An error (shown in every mode)."""
        self._line(text, self.err)

    def close(self) -> None:
        """Clear the progress line, if one is on screen."""
        with self._lock:
            self._clear()

    # -- drawing ---------------------------------------------------------------------
    def _line(self, text: str, stream: TextIO) -> None:
        with self._lock:
            self._clear()
            print(text, file=stream, flush=True)

    def _show(self, text: str) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        text = text[:width]
        pad = " " * max(0, len(self._shown) - len(text))
        self.out.write("\r" + text + pad)
        self.out.flush()
        self._shown = text

    def _clear(self) -> None:
        if self._shown:
            self.out.write("\r" + " " * len(self._shown) + "\r")
            self.out.flush()
            self._shown = ""

    def log_filter(self, record: logging.LogRecord) -> bool:
        """A logging filter for console handlers: clear the progress line before a log line is drawn."""
        self.close()
        return True


class _Rate:
    """Units done per second since a stage was first seen (units found already done, e.g. resumed, not counted)."""

    def __init__(self, started: float):
        self.started = started
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def add(self, now: float, done: int | None) -> None:
        if done is None:
            return
        if self.first is None:
            self.first = (now, done)
        if self.last is None or done != self.last[1]:
            self.last = (now, done)

    def per_second(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        seconds, units = self.last[0] - self.first[0], self.last[1] - self.first[1]
        return units / seconds if seconds > 0 and units > 0 else None


def progress_line(progress: Progress, rate: float | None, elapsed: float) -> str:
    """The progress display of a stage: bar, units done / total, throughput, time left.

    >>> progress_line(Progress("01_gaussian", 6, 8, "blocks"), 2.0, 3.0)
    '  01_gaussian     [##################------]  6/8 blocks   75%  2.0 blocks/s  0:01 left'
    >>> progress_line(Progress("04_measure", None, None, "", "measuring"), None, 65.0)
    '  04_measure      measuring  1:05'
    """
    if progress.fraction is None:
        return f"  {progress.key:<15} {progress.phase or 'working'}  {format_duration(elapsed)}"
    filled = round(_BAR * progress.fraction)
    text = (f"  {progress.key:<15} [{'#' * filled}{'-' * (_BAR - filled)}]  {progress.done}/{progress.total} "
            f"{progress.unit}  {100 * progress.fraction:3.0f}%")
    if rate:
        left = (progress.total - progress.done) / rate
        text += f"  {rate:.1f} {progress.unit}/s  {format_duration(left)} left"
    return text


def stage_line(entry: dict[str, Any], rate: float | None = None) -> str:
    """A stage's summary: name, status, seconds, and what it wrote or found.

    >>> stage_line({"name": "03_label", "status": "computed", "seconds": 1.25,
    ...             "info": {"objects": 42, "blocks": {"total": 8, "written": 8, "reused": 0}}})
    '  03_label        computed     1.2 s  8 blocks; 42 objects'
    >>> stage_line({"name": "04_measure", "status": "cached", "seconds": 0.01, "info": {"rows": 1}})
    '  04_measure      cached       0.0 s  1 row'
    """
    info = entry.get("info") or {}
    found: list[str] = []
    blocks = info.get("blocks")
    if blocks and blocks.get("reused") and entry.get("status") == "resumed":
        found.append(f"{blocks['written']} of {blocks['total']} blocks written, {blocks['reused']} reused")
    elif blocks:
        found.append(_count(blocks["total"], "block"))
    if "images" in entry:
        found.append(_count(len(entry["images"]), "image"))
        computed, failed = entry.get("computed_images", []), entry.get("failed_images", [])
        reused = len(entry["images"]) - len(computed) - len(failed)
        found[-1] += f" ({len(computed)} computed, {reused} reused" + (f", {len(failed)} failed)" if failed else ")")
    if "threshold" in info:
        found.append(f"threshold {short_number(info['threshold'])}")
    if "objects" in info:
        found.append(_count(info["objects"], "object"))
    if "rows" in info:
        found.append(_count(info["rows"], "row"))
    if rate and entry.get("status") != "cached":
        found.append(f"{rate:.1f} {'images' if 'images' in entry else 'blocks'}/s")
    return f"  {entry.get('name', '?'):<15} {entry.get('status', '?'):<9} {entry.get('seconds', 0.0):6.1f} s  " + "; ".join(found)


def format_duration(seconds: float) -> str:
    """``M:SS`` (or ``H:MM:SS``).

    >>> format_duration(3725)
    '1:02:05'
    >>> format_duration(4.4)
    '0:04'
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def short_number(value) -> str:
    """A value of the run record, short: ``6`` significant digits; lists (one per channel) as ``[a, b]``.

    >>> short_number([1.23456789, 2]), short_number(None)
    ('[1.23457, 2]', '')
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(short_number(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class tame_logs:
    """Keep Prefect's and Dask's console logs to what the console's mode wants, for a ``with`` block.

    Sets ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`` (unless the user set it),
    which Prefect reads when it sets up logging, in this process and in the
    Dask worker processes started inside the block; and sets the level of the
    console handlers Prefect has set up in this process already (call
    :meth:`attach` again after importing Prefect). Unless verbose, those
    handlers print an error as its one line, without the traceback: the
    command line's last line says what failed. The API log handler is left
    alone: the Prefect UI still gets every log line, tracebacks included.
    """

    _VARIABLE = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
    #: Prefect's SDK prints a telemetry notice on every run in a terminal (each run has a new
    #: Prefect home); the servers haloflow starts have analytics off, so say so to the client too.
    _NO_TELEMETRY = "DO_NOT_TRACK"

    def __init__(self, console: Console):
        self.console = console
        self.level = _CONSOLE_LEVEL[console.mode]
        self._saved_env: str | None = None
        self._saved: list[tuple[logging.Handler, int, logging.Formatter | None]] = []
        self._distributed = logging.getLogger("distributed")
        self._distributed_level = self._distributed.level

    def __enter__(self) -> "tame_logs":
        self._saved_env = os.environ.get(self._VARIABLE)
        if self.level is not None and self._saved_env is None:
            os.environ[self._VARIABLE] = self.level
        self._set_telemetry = not os.environ.get("PREFECT_API_URL") and self._NO_TELEMETRY not in os.environ
        if self._set_telemetry:
            os.environ[self._NO_TELEMETRY] = "1"
        self.attach()
        return self

    def attach(self) -> None:
        """Apply the level (and the filter that clears the progress line) to Prefect's console handlers here."""
        if self.console.mode == "verbose":
            self._distributed.setLevel(logging.INFO)
        for handler in _console_handlers():
            if any(handler is h for h, _, _ in self._saved):
                continue
            self._saved.append((handler, handler.level, handler.formatter))
            if self.level is not None:
                handler.setLevel(max(handler.level, logging.getLevelName(self.level)))
            if self.console.mode != "verbose" and handler.formatter is not None:
                handler.setFormatter(_WithoutTraceback(handler.formatter))
            handler.addFilter(self.console.log_filter)

    def __exit__(self, *exc: object) -> None:
        if self._saved_env is None:
            os.environ.pop(self._VARIABLE, None)
        if self._set_telemetry:
            os.environ.pop(self._NO_TELEMETRY, None)
        for handler, level, formatter in self._saved:
            handler.setLevel(level)
            handler.setFormatter(formatter)
            handler.removeFilter(self.console.log_filter)
        self._saved.clear()
        self._distributed.setLevel(self._distributed_level)


class _WithoutTraceback(logging.Formatter):
    """Another formatter's lines, without the traceback of an error (the record itself is left as it was)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers in this process (none if Prefect has not set up logging)."""
    if "prefect.logging.handlers" not in sys.modules:
        return []
    from prefect.logging.handlers import PrefectConsoleHandler

    found: list[logging.Handler] = []
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and handler not in found:
                found.append(handler)
    return found
