"""Token spills: token ids (and their loss mask) appended to flat files, in order.

Each task spills its documents' ids to ``task-NNNNNN.ids.bin`` (published atomically when the
task is done); the driver reads row pieces from those files in task order (:class:`RunSpill`).
A loss mask is stored only once some document needs one (prompts, chats): the mask file then
*appears late*, and every token before the first masked document gets a 1 (a plain-text token
is always a target), so the mask stays aligned with the ids whichever document came first.
:class:`TokenFiles` is the one place that rule lives; a task with no mask file at all reads as
all targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import AtomicFile, read_ranges, write_ones


class TokenFiles:
    """An ids file and a loss-mask file that appears when the first masked document does, both
    written under temporary names and published with :meth:`commit` (a task's spill, which a
    resumed run reuses)."""

    def __init__(self, ids_path: Path, mask_path: Path) -> None:
        self.ids_path, self.mask_path = Path(ids_path), Path(mask_path)
        self._ids = AtomicFile(ids_path)
        self._mask: AtomicFile | None = None
        self.tokens = 0

    @property
    def has_mask(self) -> bool:
        return self._mask is not None

    def _mask_file(self, masked: bool) -> AtomicFile | None:
        """The mask file to append to (opened, with ones for the tokens so far, when the first
        masked document arrives), or None while no document needed a mask."""
        if masked and self._mask is None:
            self._mask = AtomicFile(self.mask_path)
            write_ones(self._mask, self.tokens)
        return self._mask

    def append(self, ids: np.ndarray, mask: np.ndarray | None) -> None:
        """Append token ids (already in the spill's dtype) and their mask (uint8, or None: all
        targets)."""
        self._ids.write(memoryview(np.ascontiguousarray(ids)).cast("B"))
        f = self._mask_file(mask is not None)
        if f is not None:
            if mask is None:
                write_ones(f, len(ids))
            else:
                f.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
        self.tokens += len(ids)

    def commit(self) -> None:
        """Publish an atomic spill (ids, and the mask if one appeared)."""
        self._ids.commit()
        if self._mask is not None:
            self._mask.commit()

    def close(self) -> None:
        """Discard what was not committed."""
        for f in (self._ids, self._mask):
            if f is not None and not f.file.closed:
                f.discard()


class RunSpill:
    """The run's tokens: every task's spill files, in task order, read as one stream.

    The driver does not copy the task spills into one file (a second write and read of every
    token, on a machine where writes are throttled once the page cache fills): it records each
    task's files and token count, and :meth:`read` gathers row pieces from them with positioned
    reads. A task without a mask file holds only plain text: its tokens read as all targets.
    Per document only its length stays in memory (8 bytes), plus 0 for removed documents.
    """

    MAX_OPEN = 64  # task files kept open at once while rows are gathered

    def __init__(self) -> None:
        self._parts: list[tuple[str, str | None, int]] = []  # (ids, mask or None, tokens)
        self._lengths: list[np.ndarray] = []   # tokens per document, duplicates included
        self._planned: list[np.ndarray] = []   # the same with removed documents at 0
        self._dropped: list[np.ndarray] = []   # documents removed after their task was appended
        self._open: dict[str, Any] = {}
        self.docs = 0
        self.tokens = 0
        self._bounds = np.zeros(1, np.int64)

    @property
    def has_mask(self) -> bool:
        return any(m is not None for _, m, _ in self._parts)

    def append_task(self, lengths: np.ndarray, keep: np.ndarray, ids_path: str,
                    mask_path: str | None) -> None:
        """A task's spill; ``keep`` marks the documents that go on to packing. The task files
        stay until the run succeeds: a crash resumes from them."""
        n = int(lengths.sum())
        self._parts.append((ids_path, mask_path, n))
        self._lengths.append(lengths)
        self._planned.append(np.where(keep, lengths, 0))
        self.docs += len(lengths)
        self.tokens += n

    def drop(self, positions: np.ndarray) -> None:
        """Remove documents (global positions in append order) decided after their task, e.g.
        by the shuffle MinHash; their tokens stay in the spill but get no piece."""
        self._dropped.append(np.asarray(positions, dtype=np.int64))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(lengths, planned lengths), handed over (they are held once, by the caller)."""
        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        planned = cat(self._planned)
        planned[cat(self._dropped)] = 0
        lengths = cat(self._lengths)
        self._lengths, self._planned, self._dropped = [], [], []
        self._bounds = np.zeros(len(self._parts) + 1, np.int64)
        np.cumsum([n for _, _, n in self._parts], out=self._bounds[1:])
        return lengths, planned

    def _file(self, path: str) -> Any:
        f = self._open.get(path)
        if f is None:
            if len(self._open) >= self.MAX_OPEN:
                self._open.pop(next(iter(self._open))).close()
            f = self._open[path] = open(path, "rb")
        return f

    def read(self, starts: np.ndarray, lens: np.ndarray, ids_out: np.ndarray,
             mask_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The token ranges ``[start, start + len)`` of the run's stream (ascending), and their
        loss mask when ``mask_out`` is given, into the front of the buffers."""
        total = int(lens.sum())
        task = np.searchsorted(self._bounds, starts, side="right") - 1
        cut = np.flatnonzero(np.diff(task)) + 1   # ranges are ascending: tasks come in runs
        pos = 0
        for a, b in zip(np.concatenate([[0], cut]).tolist(), np.concatenate([cut, [len(lens)]]).tolist()):
            if a == b:
                continue
            t = int(task[a])
            ids_path, mask_path, _ = self._parts[t]
            local, n = starts[a:b] - self._bounds[t], lens[a:b]
            k = int(n.sum())
            read_ranges(self._file(ids_path), local, n, ids_out[pos:pos + k])
            if mask_out is not None:
                if mask_path is None:
                    mask_out[pos:pos + k] = 1  # plain text: every token is a target
                else:
                    read_ranges(self._file(mask_path), local, n, mask_out[pos:pos + k])
            pos += k
        return ids_out[:total], (mask_out[:total] if mask_out is not None else None)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
