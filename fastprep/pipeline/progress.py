"""The progress bar of ``fastprep prepare`` on stderr (``tqdm``): input bytes done, with the
percentage, ETA, documents/s, MB/s of UTF-8 text and tokens/s; then the rows written.

Input bytes advance as tasks finish, in any order (a task is 1-64 MiB of input); the
document, text and token rates advance as the driver merges results in task order. Off when
stderr is not a terminal (logs and pipes stay clean), unless forced with ``--progress``; off
with ``--quiet`` or ``--no-progress``.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        # None: tqdm's own test, a bar only when stderr is a terminal
        self.disable = None if enabled is None else not enabled
        self.start = time.perf_counter()
        self._shown = 0.0
        self.bar: Any = None

    def _open(self, desc: str, total: int, unit: str, initial: int = 0, **kw: Any) -> None:
        self.close()
        if self.disable is True:
            return  # no bar: not even tqdm's import (a start-up cost of every small run)
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        disable=self.disable, dynamic_ncols=True, mininterval=0.25,
                        smoothing=0.1, leave=True, **kw)

    def reading(self, total_bytes: int, done_bytes: int) -> None:
        """The task phase over ``total_bytes`` of input, ``done_bytes`` of it saved by an
        interrupted run."""
        self._open("prepare", total_bytes, "B", done_bytes, unit_scale=True, unit_divisor=1000)

    def task_done(self, task: Any) -> None:
        if self.bar is not None:
            self.bar.update(task.size)

    def merged(self, docs: int, text_bytes: int, tokens: int) -> None:
        """The rates of what the driver has merged so far."""
        if self.bar is None or self.bar.disable:
            return
        now = time.perf_counter()
        dt = max(now - self.start, 1e-9)
        refresh = now - self._shown >= 0.25  # the first merge shows at once, then 4 per second
        if refresh:
            self._shown = now
        self.bar.set_postfix_str(f"{docs:,} docs, {docs / dt:,.0f} docs/s, "
                                 f"{text_bytes / 1e6 / dt:,.1f} MB/s text, "
                                 f"{tokens / dt:,.0f} tok/s", refresh=refresh)

    def stage(self, desc: str, total: int = 0, unit: str = "rows") -> None:
        """A new phase: a bar over ``total`` units, or its name and elapsed time when the
        total is unknown (0)."""
        if total:
            self._open(desc, total, unit)
        else:
            self._open(desc, None, unit, bar_format="{desc} {elapsed}")  # type: ignore[arg-type]

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # the final state (100%, the last rates) stays on screen
            self.bar.close()
            self.bar = None
