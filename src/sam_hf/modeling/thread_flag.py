"""A switch that a context turns on for the code it runs, in its own thread only."""

from __future__ import annotations

import contextlib
import threading


class ThreadFlag:
    """`flag()` is True inside `with flag.on():` in this thread (nested contexts restore what was there)."""

    def __init__(self) -> None:
        self._thread = threading.local()

    def __call__(self) -> bool:
        return getattr(self._thread, "value", False)

    @contextlib.contextmanager
    def on(self):
        previous = self()
        self._thread.value = True
        try:
            yield
        finally:
            self._thread.value = previous
