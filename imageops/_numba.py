"""Numba for the few kernels that need it: compiled once, kept in Numba's on-disk cache."""

from __future__ import annotations

import numba


def compiled(function):
    """``function`` compiled by Numba, with its machine code kept in Numba's cache when a cache folder is writable.

    Numba looks for one beside the module, then in the user's cache folder
    (``NUMBA_CACHE_DIR`` names another); with none, each process compiles
    the kernels again at its first call (a few seconds).
    """
    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True, boundscheck=False)(function)
