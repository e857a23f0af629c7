"""Ctrl-C / SIGTERM during training: finish the step, checkpoint, stop. A second signal aborts."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def graceful_interrupt(request_stop: Callable[[], bool]) -> Iterator[None]:
    """Route SIGINT / SIGTERM to ``request_stop`` (which returns whether a stop was already asked for)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if request_stop():
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
