"""``--dedupe-report FILE``: one JSON line per removed duplicate, exact or near, in input order.

Each line names the removed document, why (``kind``: an exact copy, or a MinHash near
duplicate) and the kept document it duplicates: source file and line, the record's id field
(``--id-field``, when the record has one) and a short excerpt of both, plus the similarity (1.0
for exact copies; the exact or estimated Jaccard for MinHash). When what a document matched was
itself removed later (an exact copy of a document that MinHash then removed; a copy inside a
task whose first occurrence was a copy of an earlier task's), the line names the document at the
end of that chain, the one the dataset keeps, with its similarity::

    {"kind": "near", "source": "a.jsonl", "line": 12, "id": "doc-12", "excerpt": "...",
     "matched_source": "a.jsonl", "matched_line": 3, "matched_id": "doc-3",
     "matched_excerpt": "...", "similarity": 0.9123}

The driver holds 25 bytes per removal (two document ids, the similarity, the kind) and never
the texts: the workers save each task's ids and excerpts next to its result
(:func:`fastprep.pipeline.tasks.task_docs`), and :meth:`DedupeReport.commit` reads them back,
one task at a time, only for the documents the report names.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..io import AtomicFile

_LINE_BITS = 40
_KINDS = ("exact", "near")


def doc_id(file: int | np.ndarray, line: int | np.ndarray) -> np.ndarray:
    """Run-wide document ids, increasing in input order: ``file << 40 | line``."""
    return (np.asarray(file, dtype=np.int64) << np.int64(_LINE_BITS)) | np.asarray(line, dtype=np.int64)


def split_doc_id(d: int) -> tuple[int, int]:
    """(file index, line) of a :func:`doc_id`."""
    return d >> _LINE_BITS, d & ((1 << _LINE_BITS) - 1)


def _kept_ends(removed: np.ndarray, matched: np.ndarray,
               sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Follow each match that was itself removed to the kept document at the end of its chain.
    A chain has exact links (identical texts: similarity unchanged) and at most one near link
    (MinHash only ever matches kept documents), so its similarity is the lowest on it."""
    matched, sim = matched.copy(), sim.copy()
    link = {int(r): i for i, r in enumerate(removed.tolist())}
    for i in range(len(matched)):
        seen = 0
        j = link.get(int(matched[i]))
        while j is not None and seen <= len(matched):  # bounded: ids increase along a chain
            matched[i] = matched[j]
            sim[i] = min(sim[i], sim[j])
            j = link.get(int(matched[j]))
            seen += 1
    return matched, sim


class DedupeReport:
    def __init__(self, path: str, files: list[str]) -> None:
        self.path, self.files = path, files
        self._tasks: list[list[tuple[int, Path]]] = [[] for _ in files]  # per file: (first line, docs file)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def task(self, file: int, first_line: int, docs_path: Path) -> None:
        """A task's documents (lines from ``first_line + 1``) are described in ``docs_path``."""
        self._tasks[file].append((first_line, docs_path))

    def add(self, kind: str, removed: np.ndarray, matched: np.ndarray,
            similarity: np.ndarray | float) -> None:
        """Removals: the :func:`doc_id` of the removed copies and of the documents they
        duplicate."""
        n = len(removed)
        if not n:
            return
        self._parts.append((np.full(n, _KINDS.index(kind), np.uint8),
                            np.asarray(removed, np.int64), np.asarray(matched, np.int64),
                            np.broadcast_to(np.asarray(similarity, np.float64), (n,)).copy()))

    def commit(self) -> None:
        """Write the report (in the order of the removed documents) and rename it into place."""
        if self._parts:
            kinds, removed, matched, sim = (np.concatenate(c) for c in zip(*self._parts))
        else:
            kinds, removed, matched, sim = (np.zeros(0, t) for t in (np.uint8, np.int64, np.int64, np.float64))
        matched, sim = _kept_ends(removed, matched, sim)
        order = np.argsort(removed, kind="stable")
        info = self._describe(np.union1d(removed, matched))
        with AtomicFile(self.path) as f:
            for i in order.tolist():
                r, m = int(removed[i]), int(matched[i])
                row: dict[str, Any] = {"kind": _KINDS[kinds[i]], **self._where(r, info, ""),
                                       **self._where(m, info, "matched_"),
                                       "similarity": round(float(sim[i]), 4)}
                f.write(orjson.dumps(row) + b"\n")

    def _where(self, d: int, info: dict[int, tuple[Any, str]], prefix: str) -> dict[str, Any]:
        file, line = split_doc_id(d)
        rid, text = info.get(d, (None, None))
        out: dict[str, Any] = {f"{prefix}source": self.files[file], f"{prefix}line": line}
        if rid is not None:
            out[f"{prefix}id"] = rid
        if text is not None:
            out[f"{prefix}excerpt"] = text
        return out

    def _describe(self, wanted: np.ndarray) -> dict[int, tuple[Any, str]]:
        """(id, excerpt) of each wanted document, read from its task's docs file."""
        by_task: dict[Path, tuple[int, int, set[int]]] = {}
        for d in wanted.tolist():
            file, line = split_doc_id(d)
            tasks = self._tasks[file]
            k = bisect.bisect_left(tasks, (line,)) - 1  # the last task starting before the line
            first, path = tasks[k]
            by_task.setdefault(path, (file, first, set()))[2].add(line - first)
        info: dict[int, tuple[Any, str]] = {}
        for path, (file, first, lines) in by_task.items():
            for local, rid, text in orjson.loads(path.read_bytes()):
                if local in lines:
                    info[int(doc_id(file, first + local))] = (rid, text)
        return info

    def discard(self) -> None:
        self._parts.clear()
