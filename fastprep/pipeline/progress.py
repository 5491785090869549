"""A one-line progress display on stderr (docs/s, MB/s, tokens/s); silent when stderr is not a
terminal, so logs and pipes stay clean."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool | None = None, interval: float = 0.25) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.interval = interval
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, docs: int, nbytes: int, tokens: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        dt = max(now - self.start, 1e-9)
        sys.stderr.write(f"\rreading | {docs:,} docs {docs / dt:,.0f}/s | "
                         f"{nbytes / 1e6 / dt:,.2f} MB/s | {tokens / dt:,.0f} tok/s   ")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{text:<80}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
