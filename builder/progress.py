"""One funnel for progress: one line per phase with its elapsed time.

``Progress.step(name)`` is a context manager; nested steps are indented.  Output goes to a
text stream (stderr by default) so stdout stays clean for machine-readable output.  Steps
may run in threads (``parallel``): the nesting depth is kept per thread.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self._local = threading.local()
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @depth.setter
    def depth(self, value: int) -> None:
        self._local.depth = value

    def info(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                print(f"{'  ' * self.depth}{message}", file=self.stream, flush=True)

    def parallel(self, *fns: Callable[[], None]) -> None:
        """Run ``fns`` in threads at the current depth; the first exception is raised once
        all have ended."""
        depth = self.depth

        def run(fn: Callable[[], None]) -> None:
            self.depth = depth
            fn()

        with ThreadPoolExecutor(max_workers=len(fns)) as pool:
            futures = [pool.submit(run, fn) for fn in fns]
        for f in futures:
            f.result()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self.depth += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            self.depth -= 1
            elapsed = time.monotonic() - start
            with self._lock:
                self.timings[name] = self.timings.get(name, 0.0) + elapsed
            self.info(f"[{elapsed:7.1f}s] {name}{'' if ok else ' FAILED'}")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0
