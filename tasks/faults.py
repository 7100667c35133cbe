"""Which failures are worth a retry: transient I/O and a lost worker, never bad data."""

from __future__ import annotations

import errno

# OSErrors that another attempt cannot fix: the input is not there, not allowed, or the disk is full.
_PERMANENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EDQUOT}
# Raised by distributed when a worker dies or a connection drops; matched by name so this stays pure.
_TRANSIENT_NAMES = {"KilledWorker", "CommClosedError", "FutureCancelledError"}


def is_transient(error: BaseException) -> bool:
    """True for failures that may pass on another attempt.

    >>> is_transient(TimeoutError("read timed out"))
    True
    >>> is_transient(OSError(errno.EIO, "input/output error"))
    True
    >>> is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    False
    >>> is_transient(ValueError("sigma must be >= 0"))
    False
    """
    for exc in _chain(error):
        if type(exc).__name__ in _TRANSIENT_NAMES or isinstance(exc, (TimeoutError, ConnectionError)):
            return True
        if isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            if exc.errno not in _PERMANENT_ERRNOS:
                return True
    return False


def _chain(error: BaseException):
    """The error and the errors it was raised from, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
