"""Token spills: token ids (and their loss mask) appended to flat files, in order.

Two writers share the format: each task spills its documents' ids to ``task-NNNNNN.ids.bin``
(published atomically when the task is done), and the driver appends the tasks' spills in task
order into one ``ids.bin`` that packing reads rows from. A loss mask is stored only once some
document needs one (prompts, chats): the mask file then *appears late*, and every token before
the first masked document gets a 1 (a plain-text token is always a target), so the mask stays
aligned with the ids whichever document came first. :class:`TokenFiles` is the one place that
rule lives.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..io import AtomicFile, write_ones


class TokenFiles:
    """An ids file and a loss-mask file that appears when the first masked document does.

    ``atomic``: write both under temporary names and publish them with :meth:`commit` (a task's
    spill, which a resumed run reuses); otherwise write in place (the driver's spill, rebuilt
    from the task spills on every run) and :meth:`close`.
    """

    def __init__(self, ids_path: Path, mask_path: Path, *, atomic: bool) -> None:
        self.ids_path, self.mask_path = Path(ids_path), Path(mask_path)
        self._atomic = atomic
        self._ids: Any = AtomicFile(ids_path) if atomic else open(ids_path, "wb")
        self._mask: Any = None
        self.tokens = 0

    @property
    def has_mask(self) -> bool:
        return self._mask is not None

    def _mask_file(self, masked: bool) -> IO[bytes] | Any | None:
        """The mask file to append to (opened, with ones for the tokens so far, when the first
        masked document arrives), or None while no document needed a mask."""
        if masked and self._mask is None:
            self._mask = AtomicFile(self.mask_path) if self._atomic else open(self.mask_path, "wb")
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

    def append_files(self, ids_path: str, mask_path: str | None, n_tokens: int) -> None:
        """Append another spill's files (``mask_path`` None: that spill had no mask)."""
        with open(ids_path, "rb") as src:
            shutil.copyfileobj(src, self._ids, 1 << 22)
        f = self._mask_file(mask_path is not None)
        if f is not None:
            if mask_path is None:
                write_ones(f, n_tokens)
            else:
                with open(mask_path, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 22)
        self.tokens += n_tokens

    def commit(self) -> None:
        """Publish an atomic spill (ids, and the mask if one appeared)."""
        self._ids.commit()
        if self._mask is not None:
            self._mask.commit()

    def close(self) -> None:
        """Close an in-place spill, or discard an atomic one that was not committed."""
        for f in (self._ids, self._mask):
            if f is None:
                continue
            if isinstance(f, AtomicFile):
                if not f.file.closed:
                    f.discard()
            else:
                f.close()


class RunSpill:
    """The driver's spill: every task's tokens appended in task order into one file, and the
    per-document lengths (8 bytes per document) packing plans over."""

    def __init__(self, work: Path) -> None:
        self.files = TokenFiles(work / "ids.bin", work / "loss_mask.bin", atomic=False)
        self._lengths: list[np.ndarray] = []   # tokens per document, duplicates included
        self._planned: list[np.ndarray] = []   # the same with removed documents at 0
        self._dropped: list[np.ndarray] = []   # documents removed after their task was appended
        self.docs = 0

    @property
    def tokens(self) -> int:
        return self.files.tokens

    def append_task(self, lengths: np.ndarray, keep: np.ndarray, ids_path: str,
                    mask_path: str | None) -> None:
        """A task's spill; ``keep`` marks the documents that go on to packing. The task files
        stay until the run succeeds: a crash resumes from them."""
        self.files.append_files(ids_path, mask_path, int(lengths.sum()))
        self._lengths.append(lengths)
        self._planned.append(np.where(keep, lengths, 0))
        self.docs += len(lengths)

    def drop(self, positions: np.ndarray) -> None:
        """Remove documents (global positions in append order) decided after their task, e.g.
        by the shuffle MinHash; their tokens stay in the spill but get no piece."""
        self._dropped.append(np.asarray(positions, dtype=np.int64))

    def finish(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(lengths, planned lengths, has_loss_mask); closes the files and hands the lengths
        over (they are held once, by the caller)."""
        self.files.close()

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)

        planned = cat(self._planned)
        planned[cat(self._dropped)] = 0
        lengths = cat(self._lengths)
        self._lengths, self._planned, self._dropped = [], [], []
        return lengths, planned, self.files.has_mask

    def close(self) -> None:
        self.files.close()
