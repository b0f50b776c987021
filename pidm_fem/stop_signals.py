"""SIGINT and SIGTERM as requests to stop at the next safe point, not as exceptions anywhere."""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: the signals a long computation turns into stop requests
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: prctl option of Linux: the signal a process receives when its parent dies
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the operating system send ``signum`` to this process when its parent dies (Linux; elsewhere nothing).

    The initializer of worker processes: a worker must not outlive the process that
    waits for its results, even when that process is killed.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


class StopRequest:
    """The first stop signal received while :func:`stop_requests` is active (None before any)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""


@contextmanager
def stop_requests(also: Callable[[int], None] | None = None) -> Iterator[StopRequest]:
    """Record SIGINT and SIGTERM instead of acting on them, for the duration of the block.

    The work checks ``request.signum`` at its safe points (the end of a training step)
    and stops there. Repeated signals are recorded once. Outside the main thread (where
    Python cannot install handlers) nothing is installed and signals act as usual.

    Parameters
    ----------
    also
        Called with each signal received (to forward it to worker processes).
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum: int, _frame) -> None:
        if request.signum is None:
            request.signum = signum
        if also is not None:
            also(signum)

    previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
