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
from collections.abc import Callable, Iterator
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
    """Builds the index in a thread that starts with the run, and saves it into the work folder
    as soon as both exist (:meth:`attach`): reading the evaluation sets and loading numba's
    kernels overlap the workers' start, the parity gate and the first tasks, which tokenize
    meanwhile and check their documents once the index file appears. A failed build stops the
    tasks (the work folder's stop file) and :meth:`record` raises its error."""

    def __init__(self, recipe: Recipe, stop_tasks: Callable[[Path], None]) -> None:
        """``stop_tasks(work)``: ask every task of the run to stop (they wait for an index
        that will never come when the build fails)."""
        self.recipe, self._stop_tasks = recipe, stop_tasks
        self._out: dict[str, Any] = {}
        self._work: Path | None = None
        self._attached = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastprep-decontam", daemon=True)
        self._thread.start()

    def attach(self, work: Path) -> None:
        """The run's work folder exists: save the index there once it is built. A file left
        by an interrupted run goes first (its tasks would read it before the new one lands)."""
        for name in (INDEX_FILE, WHERE_FILE):
            (work / name).unlink(missing_ok=True)
        self._work = work
        self._attached.set()
        if self.failed is not None:  # failed before it knew the folder: stop the tasks now
            self._stop_tasks(work)

    def _run(self) -> None:
        try:
            self._build()
            self._attached.wait()
            assert self._work is not None
            self._save(self._work)
        except BaseException as e:  # noqa: BLE001 - raised again by record()
            self._out["error"] = e
            if self._work is not None:
                self._stop_tasks(self._work)

    def _build(self) -> None:
        # load the kernels first: the driver's other kernels load in another thread under
        # numba's one compiler lock, and those are needed only after the tasks, these now
        NgramIndex.build(["load the kernels"], n=1)
        files = eval_files(self.recipe)
        where: list[tuple[int, int]] = []
        skipped: Counter[str] = Counter()
        index = NgramIndex.build(_eval_texts(files, self.recipe, where, skipped),
                                 self.recipe.decontaminate.ngram)
        if not index.eval_docs:
            why = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "the files are empty"
            raise ValueError(f"--decontaminate: no usable evaluation document in "
                             f"{', '.join(self.recipe.decontaminate.paths)} ({why}); check the "
                             f"files and the field mapping (--text-field, --prompt-field, ...)")
        self._out.update(index=index, where=where, skipped=skipped, files=files)

    def _save(self, work: Path) -> None:
        with AtomicFile(work / WHERE_FILE) as f:  # first: the index's arrival is the signal
            f.write(np.asarray(self._out["where"], dtype="<i8").reshape(-1, 2).tobytes())
        self._out["index"].save(work / INDEX_FILE)

    def join(self) -> None:
        """Wait for the thread (a run that ends early never attaches: it gives up waiting)."""
        self._attached.set()
        self._thread.join()

    @property
    def failed(self) -> BaseException | None:
        return self._out.get("error")

    def record(self) -> dict[str, Any]:
        """The manifest's section, once the index is saved; the build's error if it failed."""
        self._thread.join()
        if self.failed is not None:
            raise self.failed
        index, skipped = self._out["index"], self._out["skipped"]
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
