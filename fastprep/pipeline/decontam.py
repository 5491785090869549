"""Decontamination in the run: the evaluation sets' n-gram index, built once, used by every task.

The driver reads the ``--decontaminate`` files before the first task with the run's readers
and record mapping (a record that cannot be mapped is counted, not indexed), builds the
:class:`fastprep.dedupe.decontam.NgramIndex` and saves it in the work folder with the location
of every evaluation document. Each worker memory-maps that file once per run (the page cache
is shared; nothing is rebuilt per task) and checks its cleaned documents batch by batch,
before deduplication: a training document sharing an n-gram with an evaluation document is
removed and quarantined as ``contaminated``, naming the evaluation record and the words
shared. What the index holds and what it removed go into the manifest's ``decontamination``
section.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..dedupe.decontam import NgramIndex
from ..io import AtomicFile
from ..stages.clean import Cleaner
from ..stages.read import expand_paths, file_sizes, read_file
from ..stages.records import Doc, RecordError, RecordMapper
from .config import Recipe

INDEX_FILE = "decontam.idx"
WHERE_FILE = "decontam-where.i64"  # [eval docs, 2]: file index, line of each evaluation document


def eval_files(recipe: Recipe) -> list[str]:
    """The evaluation files, sorted (empty without ``--decontaminate``)."""
    return expand_paths(recipe.decontaminate.paths) if recipe.decontaminate.paths else []


def _eval_texts(files: list[str], recipe: Recipe, where: list[tuple[int, int]],
                skipped: Counter[str]) -> Iterator[str]:
    """Every evaluation document's text (its texts joined by newlines), its location appended
    to ``where``; unusable records counted by reason in ``skipped``."""
    mapper, cleaner = RecordMapper(recipe.records), Cleaner(recipe.clean)
    for i, path in enumerate(files):
        for raw in read_file(path, i, recipe.read):
            if raw.bad is not None:
                if raw.bad.reason != "blank_line":
                    skipped[raw.bad.reason] += 1
                continue
            try:
                doc = mapper(raw.value, i, raw.line)
                cleaner(doc)
            except RecordError as e:
                skipped[e.reason] += 1
                continue
            where.append((i, raw.line))
            yield doc_text(doc)


def doc_text(doc: Doc) -> str:
    """What decontamination compares: every text of the document (prompt and completion, or
    every message), one per line, so an n-gram never runs from one into the next."""
    return "\n".join(doc.texts())


class Builder:
    """Builds the index in a thread, started before the parity gate: reading the evaluation
    sets and loading numba's kernels overlap the gate's work instead of preceding the first
    task. :meth:`save` waits for it and writes it into the work folder."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._build, name="fastprep-decontam", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            # load the kernels first: the driver's other kernels load in another thread under
            # numba's one compiler lock, and those are needed only after the tasks, these now
            NgramIndex.build(["load the kernels"], n=1).match(["load the kernels"])
            files = eval_files(self.recipe)
            where: list[tuple[int, int]] = []
            skipped: Counter[str] = Counter()
            texts = _eval_texts(files, self.recipe, where, skipped)
            index = NgramIndex.build(texts, self.recipe.decontaminate.ngram)
            self._out.update(index=index, where=where, skipped=skipped, files=files)
        except BaseException as e:  # noqa: BLE001 - raised again in save()
            self._out["error"] = e

    def join(self) -> None:
        self._thread.join()

    def save(self, work: Path) -> dict[str, Any]:
        """Write the index into ``work``; return the manifest's section."""
        self.join()
        if "error" in self._out:
            raise self._out["error"]
        index, skipped = self._out["index"], self._out["skipped"]
        if not index.eval_docs:
            why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "the files are empty"
            raise ValueError(f"--decontaminate: no usable evaluation document in "
                             f"{', '.join(self.recipe.decontaminate.paths)} ({why}); check the "
                             f"files and the field mapping (--text-field, --prompt-field, ...)")
        index.save(work / INDEX_FILE)
        with AtomicFile(work / WHERE_FILE) as f:
            f.write(np.asarray(self._out["where"], dtype="<i8").reshape(-1, 2).tobytes())
        return {"files": file_sizes(self._out["files"]), "ngram": index.n,
                "eval_documents": index.eval_docs,
                "eval_records_skipped": dict(sorted(skipped.items())), "ngrams": index.grams,
                "eval_documents_too_short": index.too_short, "index_bytes": index.nbytes}


class Checker:
    """A worker's view of the index: which documents of a batch are contaminated, and the
    quarantine detail for each."""

    def __init__(self, work: str, names: tuple[str, ...]) -> None:
        self.index = NgramIndex.load(Path(work) / INDEX_FILE)
        raw = np.fromfile(Path(work) / WHERE_FILE, dtype="<i8")
        self.where = raw.reshape(-1, 2)
        self.names = names

    def __call__(self, docs: list[Doc]) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """(keep mask, [(document position, detail, excerpt)] for the contaminated ones)."""
        texts = [doc_text(d) for d in docs]
        hits = self.index.match(texts)
        bad = np.flatnonzero(hits >= 0)
        out = []
        for i in bad.tolist():
            f, line = (int(x) for x in self.where[int(hits[i])])
            gram = self.index.first_gram(texts[i]) or ""
            shown = gram if len(gram) <= 160 else gram[:160] + "..."
            detail = (f"shares the {self.index.n}-gram \"{shown}\" with the evaluation record "
                      f"{self.names[f]}:{line}")
            out.append((i, detail, texts[i]))
        return hits < 0, out


def display_names(files: list[str]) -> tuple[str, ...]:
    """Evaluation file names as the quarantine shows them (relative where that is shorter)."""
    out = []
    for f in files:
        rel = os.path.relpath(f)
        out.append(rel if len(rel) < len(f) else f)
    return tuple(out)
