"""SIGTERM and Ctrl-C at safe points.

The CLI turns SIGTERM into an exception so that every ``with``/``finally`` runs. A few places must
not be interrupted half-way (the swap of an output folder; Lava's start-up, whose logging locks an
exception can leave held): they hold the signals back with :func:`deferred_signals` and deliver them
to the previous handlers when the block ends.
"""

from __future__ import annotations

import contextlib
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
