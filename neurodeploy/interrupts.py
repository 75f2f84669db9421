"""SIGTERM and Ctrl-C at safe points.

The CLI turns SIGTERM into an exception so that every ``with``/``finally`` runs. A few places must
not be interrupted half-way (the swap of an output folder; Lava's start-up, whose logging locks an
exception can leave held): they hold the signals back with :func:`deferred_signals` and deliver them
to the previous handlers when the block ends. Worker processes (Lava's) are forked inside
:func:`children_die_with_parent`, so that not even ``kill -9`` of the parent orphans them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def deferred_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[list[int]]:
    """Record ``signals`` instead of acting on them; yield the list of those received so far (code
    that loops can poll it and stop early); on exit restore the handlers and re-raise each."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield pending
        return
    saved = {s: signal.getsignal(s) for s in signals}
    saved = {s: h for s, h in saved.items() if h is not None and h is not signal.SIG_IGN}
    for s in saved:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield pending
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


_PR_SET_PDEATHSIG = 1
_fork_guard = {"active": 0, "forking_pid": 0}


@contextlib.contextmanager
def children_die_with_parent() -> Iterator[None]:
    """Processes forked inside this block get SIGKILL when their parent dies (Linux
    ``PR_SET_PDEATHSIG``; the parent is the thread that forked, so fork from the thread that waits for
    them) and the default SIGTERM / Ctrl-C handling instead of the parent's."""
    _fork_guard["active"] += 1
    try:
        yield
    finally:
        _fork_guard["active"] -= 1


def _before_fork() -> None:
    _fork_guard["forking_pid"] = os.getpid()


def _after_fork_in_child() -> None:
    if not _fork_guard["active"]:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: children are still stopped on SIGTERM / Ctrl-C
        return
    if os.getppid() != _fork_guard["forking_pid"]:  # the parent died before prctl took effect
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
