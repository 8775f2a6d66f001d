"""One funnel for progress: one line per phase with its elapsed time.

``Progress.step(name)`` is a context manager; nested steps are indented.  Output goes to a
text stream (stderr by default) so stdout stays clean for machine-readable output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.depth = 0
        self.timings: dict[str, float] = {}
        self.t0 = time.monotonic()

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"{'  ' * self.depth}{message}", file=self.stream, flush=True)

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
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            self.info(f"[{elapsed:7.1f}s] {name}{'' if ok else ' FAILED'}")

    def elapsed(self) -> float:
        return time.monotonic() - self.t0
