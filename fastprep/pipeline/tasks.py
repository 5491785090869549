"""Work units and the task function: read -> map -> clean -> in-task dedupe -> sign -> encode -> spill.

A task is a whole input file or, for large uncompressed JSON Lines files, a byte range of one
(split at line boundaries by the reader), with a deterministic index in input order. Tasks are
the unit of parallelism (:mod:`fastprep.pipeline.executor`); the driver merges their results
strictly in task order, so the output does not depend on how many run at once.

A task writes its token ids (and loss mask) to ``<work>/task-<index>.*.bin`` and returns only
small per-document arrays: lengths, 128-bit digests for exact deduplication, optional MinHash
signatures (4 bytes per permutation) and shingle sets, kinds, line numbers and target-token
counts. Exact copies inside a task are dropped before tokenizing; copies across tasks and near
duplicates are decided by the driver in input order and masked out of packing (their tokens
were computed in vain, a cost bounded by the duplicate rate).

Everything a worker needs comes in a :class:`TaskSpec` the driver built once (the tokenizer as
the driver resolved it, never re-derived from the configuration here).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..dataset.format import ids_dtype
from ..dedupe.minhash import MinHashConfig
from ..io import AtomicFile
from ..stages.clean import CleanConfig
from ..stages.read import Raw, ReadConfig, read_file, read_jsonl, splittable
from ..stages.records import Doc, RecordConfig
from ..stages.encode import BackendDisagreement, Encoded
from ..stages.tokenize import TokenizerSpec
from .quarantine import excerpt
from .spill import TokenFiles


@dataclass(frozen=True)
class Task:
    index: int
    file: int            # index into the sorted input file list
    path: str
    start: int = 0       # byte range of an uncompressed JSONL file; (0, None) = whole file
    end: int | None = None
    size: int = 0        # bytes, for largest-first scheduling and progress
    source: int = 0      # the mix source of its file (its record mapping)


def plan_tasks(files: list[str], target_bytes: int) -> list[Task]:
    """Whole files, with uncompressed JSON Lines files larger than 2 x target cut into ranges.
    Paths are absolute: a task may run in another working folder (a Ray worker)."""
    tasks: list[Task] = []
    for i, name in enumerate(files):
        path = os.path.abspath(name)
        size = os.path.getsize(path)
        if splittable(path) and size > 2 * target_bytes:
            n = -(-size // target_bytes)
            bounds = [size * k // n for k in range(n + 1)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                tasks.append(Task(len(tasks), i, path, a, b, b - a))
        else:
            tasks.append(Task(len(tasks), i, path, 0, None, size))
    return tasks


@dataclass(frozen=True)
class TaskSpec:
    """What every task of a run needs, built once by the driver and shipped with each task."""

    read: ReadConfig
    records: RecordConfig
    clean: CleanConfig
    exact: bool
    minhash: MinHashConfig | None
    tokenizer: TokenizerSpec
    batch_bytes: int
    strict: bool
    backend: str = "hf"          # the backend the driver chose (pipeline/backend.py)
    backend_explicit: bool = False  # asked for by name: a spot-check mismatch is an error
    spot_check: float = 0.0      # share of documents re-encoded with tokenizers
    report_id_field: str | None = None  # --dedupe-report: save each document's id and excerpt
    source_records: tuple[RecordConfig, ...] = ()  # a mix: each source's record mapping
    # --decontaminate: the evaluation files' names (the index is in the work folder); None: off
    decontam: tuple[str, ...] | None = None

    def records_for(self, task: Task) -> RecordConfig:
        return self.source_records[task.source] if self.source_records else self.records

    @property
    def ids_dtype(self) -> np.dtype:
        return ids_dtype(self.tokenizer.vocab_size)


class TaskStopped(RuntimeError):
    """The driver no longer wants this task: an earlier one failed (:func:`stop_tasks_after`)."""


STOP_FILE = "stop"


def stop_tasks_after(work: str | Path, index: int) -> None:
    """Ask every running task with an index above ``index`` to stop (-1: all of them). A file
    in the work folder, so workers on every node see it; the lowest index asked for wins."""
    path = Path(work) / STOP_FILE
    current = _stop_index(path)
    if current is None or index < current:
        with AtomicFile(path) as f:
            f.write(str(index).encode())


def clear_stop(work: str | Path) -> None:
    (Path(work) / STOP_FILE).unlink(missing_ok=True)


def _stop_index(path: Path) -> int | None:
    try:
        return int(path.read_bytes())
    except (FileNotFoundError, ValueError):  # absent, or (never) half-written
        return None


def _check_stop(work: str, task: Task) -> None:
    """Between batches: one ``stat`` when no stop was asked for."""
    path = Path(work) / STOP_FILE
    if os.path.exists(path):
        index = _stop_index(path)
        if index is not None and index < task.index:
            raise TaskStopped(f"task {task.index} stopped: task {index} failed")


class TaskStrictError(ValueError):
    """A bad record under --strict inside a task; the driver rewrites its line number globally."""

    def __init__(self, task: int, line: int, reason: str, detail: str) -> None:
        super().__init__(task, line, reason, detail)
        self.task, self.line, self.reason, self.detail = task, line, reason, detail


@dataclass
class TaskCounts:
    """Every counter a task keeps; the driver adds them up in task order."""

    records_read: int = 0      # raw records (lines/rows), bad ones included, blank lines not
    blank_lines: int = 0
    exact_duplicates: int = 0  # copies of an earlier document of the same task
    repaired: Counter[str] = field(default_factory=Counter)  # by kind: utf8 and clean.REPAIRS
    text_chars: int = 0        # characters of the documents that reached tokenization
    text_bytes: int = 0        # their UTF-8 bytes (what MB/s figures count)

    def to_json(self) -> dict[str, Any]:
        return {"records_read": self.records_read, "blank_lines": self.blank_lines,
                "exact_duplicates": self.exact_duplicates, "repaired": dict(self.repaired),
                "text_chars": self.text_chars, "text_bytes": self.text_bytes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskCounts:
        return cls(records_read=d["records_read"], blank_lines=d["blank_lines"],
                   exact_duplicates=d["exact_duplicates"], repaired=Counter(d["repaired"]),
                   text_chars=d["text_chars"], text_bytes=d["text_bytes"])


@dataclass
class TaskResult:
    task: Task
    n_lines: int                          # raw records (lines/rows) consumed, for global line numbers
    bad: list[tuple[int, str, str, Any]]  # (local line, reason, detail, excerpt)
    counts: TaskCounts
    lengths: np.ndarray                   # int64 [docs]
    lines: np.ndarray                     # int64 [docs], local line numbers
    kinds: np.ndarray                     # uint8 [docs]
    chars: np.ndarray                     # int64 [docs], characters of the cleaned texts
    targets: np.ndarray                   # int64 [docs], tokens whose loss mask is 1
    digests: np.ndarray | None            # uint64 [docs, 2]
    signatures: np.ndarray | None         # MinHash signatures [docs, num_perm]
    set_values: np.ndarray | None         # uint32 shingle sets MinHash compares (verify="exact")
    set_offsets: np.ndarray | None        # int64 [docs + 1] into set_values
    ids_path: str
    mask_path: str | None                 # None when every document is plain text
    seconds: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)  # backend, spot checks, a rerun
    # --dedupe-report only: (local line, local line of the first occurrence) of each in-task
    # exact copy; the documents' ids (from the field report_id_field) and excerpts are in
    # task_docs()
    dups: list[tuple[int, int]] | None = None
    report_id_field: str | None = None
    # --decontaminate: (position among the task's documents, detail, excerpt) of each document
    # sharing an n-gram with an evaluation document; the driver removes them
    contaminated: list[tuple[int, str, str]] = field(default_factory=list)


# ---- the stages of one task ---------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _stages(spec: TaskSpec) -> dict[str, Any]:
    """Per-process stage objects, built once per run (tokenizer load, template compile)."""
    if _STATE.get("spec") != spec:
        from ..stages.clean import Cleaner
        from ..stages.encode import Encoder
        from ..stages.records import RecordMapper
        from ..stages.tokenize import TokenizerBundle
        from .backend import open_backend

        bundle = TokenizerBundle.from_spec(spec.tokenizer)
        encoder = Encoder(bundle, open_backend(spec.backend, bundle))
        _STATE.clear()
        mappers = {r: RecordMapper(r) for r in {spec.records, *spec.source_records}}
        _STATE.update(spec=spec, mappers=mappers, cleaner=Cleaner(spec.clean),
                      encoder=encoder, reference=Encoder(bundle, encoder.reference))
    return _STATE


def preload(tokenizer_file: str, fast: bool, minhash: bool, decontam: bool = False) -> None:
    """A worker's warm-up, run when it starts (before the driver knows the run's backend):
    load the tokenizer, the fast backend if it may be chosen, and MinHash's and
    decontamination's kernels (numba's cache load of the latter took ~1 s of a worker's first
    task). The loads are cached by content, so the first task finds them done."""
    from pathlib import Path as _Path

    from ..stages.tokenize import load_tokenizer
    from .backend import preload_backend

    raw = _Path(tokenizer_file).read_bytes()
    load_tokenizer(raw, _Path(tokenizer_file))
    if fast:
        preload_backend("fastokens", raw)
    if minhash:
        from ..dedupe.minhash import MinHashConfig, signatures_and_sets

        signatures_and_sets(["warm up the kernels"], MinHashConfig())
    if decontam:
        from ..dedupe.decontam import NgramIndex

        words = "warm up the kernels of the decontamination index on one short text"
        index = NgramIndex.build([words], n=3)
        index.match([words])
        index.first_gram(words)


class BackendMismatch(ValueError):
    """A spot-checked document whose ids from the run's backend differ from tokenizers'."""

    def __init__(self, task: int, line: int, backend: str) -> None:
        super().__init__(task, line, backend)
        self.task, self.line, self.backend = task, line, backend
        self.seconds: dict[str, float] = {}  # the stage times of the attempt it ends


class _SpotChecks:
    """Re-encodes a deterministic sample of each batch with tokenizers and compares."""

    MAX_CHARS = 1 << 18  # a huge document is not worth re-encoding on the slow reference

    def __init__(self, spec: TaskSpec, task: Task, st: dict[str, Any]) -> None:
        self.on = spec.backend != "hf" and spec.spot_check > 0
        self.rate, self.task, self.st = spec.spot_check, task, st
        self.texts = self.tokens = 0

    def __call__(self, docs: list[Doc], enc: Encoded) -> None:
        if not self.on:
            return
        from ..stages.backends import spot_sample

        picked = [i for i, d in enumerate(docs) if enc.keep[i] and d.chars <= self.MAX_CHARS
                  and spot_sample(d.text or d.prompt + d.completion
                                  or "".join(c for _, c in d.messages), self.rate)]
        if not picked:
            return
        ref = self.st["reference"]([docs[i] for i in picked])  # one call for the whole sample
        starts = np.zeros(len(enc.lengths) + 1, dtype=np.int64)
        np.cumsum(enc.lengths, out=starts[1:])
        kept = np.cumsum(enc.keep) - 1  # position of each kept document in enc
        ref_starts = np.zeros(len(ref.lengths) + 1, dtype=np.int64)
        np.cumsum(ref.lengths, out=ref_starts[1:])
        for j, i in enumerate(picked):
            a, b = starts[kept[i]], starts[kept[i] + 1]
            ra, rb = ref_starts[j], ref_starts[j + 1]
            same = np.array_equal(ref.ids[ra:rb], enc.ids[a:b]) and (
                ref.loss_mask is None or enc.loss_mask is None
                or np.array_equal(ref.loss_mask[ra:rb], enc.loss_mask[a:b]))
            if not same:
                raise BackendMismatch(self.task.index, docs[i].line, self.st["encoder"].backend.name)
        self.texts += len(picked)
        self.tokens += len(ref.ids)

    def record(self) -> dict[str, Any]:
        return {"texts": self.texts, "tokens": self.tokens}


class _BadRecords:
    """Bad records of a task with their local line numbers; under --strict the first one stops
    the task."""

    def __init__(self, task: int, strict: bool) -> None:
        self.task, self.strict = task, strict
        self.items: list[tuple[int, str, str, Any]] = []

    def add(self, line: int, reason: str, detail: str, raw: Any = "") -> None:
        if self.strict:
            raise TaskStrictError(self.task, line, reason, detail)
        self.items.append((line, reason, detail, excerpt(raw)))


def _raws(task: Task, cfg: ReadConfig) -> Iterator[Raw]:
    if task.end is not None:
        return read_jsonl(task.path, task.file, cfg, task.start, task.end)
    return read_file(task.path, task.file, cfg)


def _utf8_len(s: str) -> int:
    # isascii() reads a flag of the string object: ASCII text costs no encode
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


class _DocInfo:
    """--dedupe-report: each document's id field and a short excerpt, by local line."""

    def __init__(self, id_field: str) -> None:
        self.id_field = id_field
        self.rows: list[list[Any]] = []

    def add(self, raw: Raw, texts: list[str]) -> None:
        rid = raw.value.get(self.id_field) if isinstance(raw.value, dict) else None
        if rid is not None and not isinstance(rid, (str, int, float, bool)):
            rid = orjson.dumps(rid, default=str).decode()
        text = " ".join(" ".join(texts)[:400].split())  # whitespace runs shown as one space
        self.rows.append([raw.line, rid, text[:120] + ("..." if len(text) > 120 else "")])


def _documents(raws: Iterable[Raw], st: dict[str, Any], records: RecordConfig,
               counts: TaskCounts, bad: _BadRecords, info: _DocInfo | None = None,
               seconds: Counter[str] | None = None) -> Iterator[Doc]:
    """read -> map -> clean: the documents of the raw records, bad ones quarantined. The time
    spent mapping and cleaning adds to ``seconds["clean"]`` (what reading costs is the rest of
    the time the caller waits for documents)."""
    from ..stages.records import RecordError

    mapper, cleaner = st["mappers"][records], st["cleaner"]
    seconds = Counter() if seconds is None else seconds
    clock = time.perf_counter
    for raw in raws:
        if raw.repaired:  # a repair while reading counts even when the record is then bad
            counts.repaired.update(raw.repaired)
        if raw.bad is not None:
            if raw.bad.reason == "blank_line":
                counts.blank_lines += 1
            else:
                counts.records_read += 1
                bad.add(raw.line, raw.bad.reason, raw.bad.detail, raw.bad.excerpt)
            continue
        counts.records_read += 1
        t = clock()
        try:
            doc = mapper(raw.value, raw.file, raw.line)
            for kind in cleaner(doc):
                counts.repaired[kind] += 1
        except RecordError as e:
            seconds["clean"] += clock() - t
            bad.add(raw.line, e.reason, e.detail, raw.value)
            continue
        seconds["clean"] += clock() - t
        texts = doc.texts()
        doc.chars = sum(map(len, texts))
        counts.text_chars += doc.chars
        counts.text_bytes += sum(map(_utf8_len, texts))
        if info is not None:
            info.add(raw, texts)
        yield doc


def _batches(docs: Iterable[Doc], batch_chars: int) -> Iterator[list[Doc]]:
    """Consecutive documents, cut once a batch holds ``batch_chars`` characters."""
    batch: list[Doc] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += doc.chars
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _InTaskDedupe:
    """Exact copies inside one task are dropped before tokenizing (tokenizing them would be
    wasted work); the driver still removes copies across tasks, so the kept set is the same
    first occurrences whatever the task boundaries."""

    def __init__(self, track: bool = False) -> None:
        # 16-byte digest -> line of its first occurrence (for the report), else a set
        self.seen: dict[bytes, int] | set[bytes] = {} if track else set()
        self.dups: list[tuple[int, int]] = []  # with track: (line, line of the first occurrence)

    def __call__(self, docs: list[Doc], counts: TaskCounts) -> tuple[list[Doc], np.ndarray]:
        from ..dedupe.exact import ExactDeduper
        from ..stages.records import dedupe_key

        d = ExactDeduper.digests([dedupe_key(doc) for doc in docs])
        first = np.ones(len(docs), dtype=np.bool_)
        seen = self.seen
        if isinstance(seen, dict):
            for i, key in enumerate(map(bytes, d)):
                line = seen.setdefault(key, docs[i].line)
                if line != docs[i].line:
                    first[i] = False
                    self.dups.append((docs[i].line, line))
        else:
            for i, key in enumerate(map(bytes, d)):
                if key in seen:
                    first[i] = False
                else:
                    seen.add(key)
        if first.all():
            return docs, d
        counts.exact_duplicates += int(len(docs) - first.sum())
        return [doc for doc, k in zip(docs, first) if k], d[first]


@dataclass
class _Batch:
    """One batch's documents and what the stages computed for them, aligned."""

    docs: list[Doc]
    digests: np.ndarray | None = None
    sigs: np.ndarray | None = None
    sets: tuple[np.ndarray, np.ndarray] | None = None

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the documents where ``keep`` is True (e.g. those that encoded)."""
        from ..dedupe.minhash import take_sets

        self.docs = [d for d, k in zip(self.docs, keep) if k]
        if self.digests is not None:
            self.digests = self.digests[keep]
        if self.sigs is not None:
            self.sigs = self.sigs[keep]
        if self.sets is not None:
            self.sets = take_sets(self.sets, np.flatnonzero(keep))


class _Contamination:
    """The task's check against the evaluation sets' index, which the driver may still be
    building when the task starts: each batch's encoded documents wait (their texts, a few MB)
    until the index file appears, so the task tokenizes meanwhile instead of waiting; the task
    waits only at its end, if the index is not there yet. Contaminated documents are reported
    by their position among the task's documents, and the driver removes them as it removes
    duplicates (their tokens were spilled in vain)."""

    def __init__(self, spec: TaskSpec, st: dict[str, Any], work: str, task: Task) -> None:
        self.names, self.st, self.work, self.task = spec.decontam, st, work, task
        self.pending: list[tuple[int, list[Doc]]] = []  # (position of the first, documents)
        self.found: list[tuple[int, str, str]] = []     # (position, detail, excerpt)
        self.seconds = 0.0

    def _checker(self, wait: bool) -> Any:
        from .decontam import INDEX_FILE, Checker

        if self.st.get("checker_work") == self.work:  # mapped once per process and run
            return self.st["checker"]
        path = Path(self.work) / INDEX_FILE
        while not path.exists():
            if not wait:
                return None
            _check_stop(self.work, self.task)  # the driver stops the tasks if its build fails
            time.sleep(0.01)
        assert self.names is not None
        self.st["checker"], self.st["checker_work"] = Checker(self.work, self.names), self.work
        return self.st["checker"]

    def add(self, first: int, docs: list[Doc], wait: bool = False) -> None:
        """The documents at positions ``first``, ``first + 1``, ... of the task's output."""
        if docs:
            self.pending.append((first, docs))
        checker = self._checker(wait)
        if checker is None:
            return
        t = time.perf_counter()
        for first, docs in self.pending:
            _, found = checker(docs)
            self.found += [(first + i, detail, excerpt(text)) for i, detail, text in found]
        self.pending.clear()
        self.seconds += time.perf_counter() - t


def _sign(batch: _Batch, cfg: MinHashConfig) -> None:
    from ..dedupe.minhash import signatures_and_sets
    from ..stages.records import similarity_text

    batch.sigs, batch.sets = signatures_and_sets([similarity_text(d) for d in batch.docs], cfg)


class _TaskOutput:
    """The task's spill files and per-document arrays, collected batch by batch."""

    def __init__(self, work: str, task: Task, dtype: np.dtype, spec: TaskSpec) -> None:
        self.task, self.dtype, self.spec = task, dtype, spec
        self.files = TokenFiles(task_file(work, task, "ids.bin"),
                                task_file(work, task, "loss_mask.bin"))
        self.parts: dict[str, list[Any]] = {k: [] for k in
                                             ("lengths", "digests", "sigs", "sets")}
        self.lines: list[int] = []
        self.kinds: list[int] = []
        self.chars: list[int] = []
        self.targets: list[np.ndarray] = []

    def add(self, batch: _Batch, enc: Encoded) -> None:
        self.files.append(enc.ids.astype(self.dtype, copy=False), enc.loss_mask)
        self.parts["lengths"].append(enc.lengths)
        self.lines.extend(d.line for d in batch.docs)
        self.kinds.extend(d.kind for d in batch.docs)
        self.chars.extend(d.chars for d in batch.docs)
        self.targets.append(doc_targets(enc.lengths, enc.loss_mask))
        for key, value in (("digests", batch.digests), ("sigs", batch.sigs), ("sets", batch.sets)):
            if value is not None:
                self.parts[key].append(value)

    def add_digests(self, digests: np.ndarray) -> None:
        """Digests of a batch that left nothing to encode (all in-task copies)."""
        self.parts["digests"].append(digests)

    def finish(self, n_lines: int, bad: _BadRecords, counts: TaskCounts,
               seconds: dict[str, float], info: _DocInfo | None = None,
               dups: list[tuple[int, int]] | None = None) -> TaskResult:
        from ..dedupe.minhash import concat_sets

        self.files.commit()
        p, spec = self.parts, self.spec
        if info is not None:
            with AtomicFile(task_docs(self.files.ids_path.parent, self.task)) as f:
                f.write(orjson.dumps(info.rows))

        def cat(key: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate(p[key]) if p[key] else empty

        sets = (concat_sets(p["sets"]) if spec.minhash is not None
                and spec.minhash.verify == "exact" else None)
        return TaskResult(
            task=self.task, n_lines=n_lines, bad=bad.items, counts=counts,
            lengths=cat("lengths", np.zeros(0, np.int64)),
            lines=np.asarray(self.lines, dtype=np.int64),
            kinds=np.asarray(self.kinds, dtype=np.uint8),
            chars=np.asarray(self.chars, dtype=np.int64),
            targets=cat_targets(self.targets),
            digests=cat("digests", np.zeros((0, 2), np.uint64)) if spec.exact else None,
            signatures=(np.concatenate(p["sigs"]) if p["sigs"] else None)
            if spec.minhash is not None else None,
            set_values=None if sets is None else sets[0],
            set_offsets=None if sets is None else sets[1],
            ids_path=str(self.files.ids_path),
            mask_path=str(self.files.mask_path) if self.files.has_mask else None,
            seconds=seconds, dups=None if info is None else (dups or []),
            report_id_field=None if info is None else info.id_field)


def doc_targets(lengths: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Tokens with loss mask 1 per document (all of them without a mask): what
    ``documents.bin`` records for the report's target shares."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if mask is None:
        return lengths.copy()
    ends = np.cumsum(lengths)
    ones = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return ones[ends] - ones[ends - lengths]


def cat_targets(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def run_task(task: Task, spec: TaskSpec, work: str) -> TaskResult:
    """Process one task; safe to call in a worker process or inline. The result is saved in
    the work folder (the resume unit) and returned.

    A spot check that finds the fast backend disagreeing with tokenizers reruns the whole task
    on tokenizers (``--tokenizer-backend auto``; the result says so) or stops the run naming
    the document (an explicitly chosen backend)."""
    import dataclasses

    try:
        res = _run_task(task, spec, work)
    except BackendMismatch as e:
        if spec.backend_explicit:
            raise
        res = _run_task(task, dataclasses.replace(spec, backend="hf"), work)
        res.checks["rerun_on_reference"] = {"backend": e.backend, "line": e.line}
        # the fast attempt's time was spent too: its stages count, its total as discarded
        res.seconds = dict(Counter(res.seconds) + Counter(e.seconds))
        res.seconds["rerun_discarded"] = e.seconds.get("task", 0.0)
    save_result(res, work)
    return res


def _run_task(task: Task, spec: TaskSpec, work: str) -> TaskResult:
    st = _stages(spec)
    counts, bad = TaskCounts(), _BadRecords(task.index, spec.strict)
    seconds: Counter[str] = Counter()
    in_task = _InTaskDedupe(track=spec.report_id_field is not None) if spec.exact else None
    out = _TaskOutput(work, task, spec.ids_dtype, spec)
    raws = _Counted(_raws(task, spec.read))
    spot = _SpotChecks(spec, task, st)
    info = _DocInfo(spec.report_id_field) if spec.report_id_field is not None else None
    contam = _Contamination(spec, st, work, task) if spec.decontam is not None else None
    t_task = time.perf_counter()
    # the stage split (fastprep bench, --json): reading is the wait for documents minus mapping
    # and cleaning, which _documents times itself
    batches = _batches(_documents(raws, st, spec.records_for(task), counts, bad, info, seconds),
                       spec.batch_bytes)
    try:
        while True:
            t = time.perf_counter()
            docs = next(batches, None)
            seconds["read"] += time.perf_counter() - t
            if docs is None:
                break
            _check_stop(work, task)
            batch = _Batch(docs)
            if in_task is not None:
                t = time.perf_counter()
                batch.docs, batch.digests = in_task(batch.docs, counts)
                seconds["exact_hash"] += time.perf_counter() - t
                if not batch.docs:
                    out.add_digests(batch.digests)
                    continue
            if spec.minhash is not None:
                t = time.perf_counter()
                _sign(batch, spec.minhash)
                seconds["minhash_signatures"] += time.perf_counter() - t
            t = time.perf_counter()
            try:
                enc = st["encoder"](batch.docs)
            except BackendDisagreement as e:
                seconds["tokenize"] += time.perf_counter() - t
                raise BackendMismatch(task.index, batch.docs[e.index].line, e.backend) from None
            seconds["tokenize"] += time.perf_counter() - t
            t = time.perf_counter()
            try:
                spot(batch.docs, enc)
            finally:
                seconds["spot_check"] += time.perf_counter() - t
            if not enc.keep.all():
                for i, reason, detail in enc.errors:
                    bad.add(batch.docs[i].line, reason, detail)
                batch.keep(enc.keep)
            t = time.perf_counter()
            first = len(out.lines)
            out.add(batch, enc)
            seconds["spill"] += time.perf_counter() - t
            if contam is not None:
                contam.add(first, batch.docs)
        if contam is not None:
            t, before = time.perf_counter(), contam.seconds
            contam.add(len(out.lines), [], wait=True)
            seconds["decontaminate_wait"] += time.perf_counter() - t - (contam.seconds - before)
            seconds["decontaminate"] += contam.seconds
        seconds["read"] -= seconds["clean"]
        seconds["task"] = time.perf_counter() - t_task
        res = out.finish(raws.n, bad, counts, dict(seconds), info,
                         in_task.dups if in_task is not None else None)
        if contam is not None:
            res.contaminated = contam.found
    except BackendMismatch as e:
        seconds["read"] -= seconds["clean"]
        seconds["task"] = time.perf_counter() - t_task
        e.seconds = dict(seconds)
        raise
    finally:
        out.files.close()
    res.checks = {"backend": spec.backend, "spot_checks": spot.record()}
    return res


class _Counted:
    """An iterator that counts what it hands out (raw records consumed, for global lines)."""

    def __init__(self, it: Iterator[Raw]) -> None:
        self.it, self.n = it, 0

    def __iter__(self) -> Iterator[Raw]:
        for item in self.it:
            self.n += 1
            yield item


# ---- persistence: a finished task survives a crash of the run ------------------------------

def task_file(work: str | Path, task: Task, suffix: str) -> Path:
    return Path(work) / f"task-{task.index:06d}.{suffix}"


def task_docs(work: str | Path, task: Task) -> Path:
    """--dedupe-report: the task's documents as ``[[local line, id, excerpt], ...]``."""
    return task_file(work, task, "docs.json")


_ARRAYS = ("lengths", "lines", "kinds", "chars", "targets", "digests", "signatures",
           "set_values", "set_offsets")


def save_result(res: TaskResult, work: str | Path) -> None:
    """Arrays to ``.npz`` (no pickle), the rest to ``.json``, each renamed into place; the JSON is
    written last, so its presence means the task's files are complete."""
    with AtomicFile(task_file(work, res.task, "meta.npz")) as f:
        np.savez(f.file, **{k: getattr(res, k) for k in _ARRAYS if getattr(res, k) is not None})
    meta = {"n_lines": res.n_lines, "bad": res.bad, "counts": res.counts.to_json(),
            "has_mask": res.mask_path is not None, "seconds": res.seconds, "checks": res.checks,
            "task": [res.task.file, res.task.start, res.task.end], "dups": res.dups,
            "report_id_field": res.report_id_field, "contaminated": res.contaminated}
    with AtomicFile(task_file(work, res.task, "json")) as f:
        f.write(orjson.dumps(meta))


def load_result(task: Task, work: str | Path, itemsize: int,
                report_id_field: str | None = None) -> TaskResult | None:
    """The saved result of ``task``, or None when absent or inconsistent (then it is rerun);
    with ``report_id_field`` (--dedupe-report), also None when it was saved without the
    documents' ids and excerpts, or with another id field."""
    done = task_file(work, task, "json")
    try:
        meta = orjson.loads(done.read_bytes())
        if meta["task"] != [task.file, task.start, task.end]:
            return None
        if report_id_field is not None and (meta.get("report_id_field") != report_id_field
                                            or not task_docs(work, task).is_file()):
            return None
        with np.load(task_file(work, task, "meta.npz"), allow_pickle=False) as z:
            arrays = {k: z[k] if k in z.files else None for k in _ARRAYS}
        ids_path = task_file(work, task, "ids.bin")
        mask_path = task_file(work, task, "loss_mask.bin") if meta["has_mask"] else None
        if arrays["chars"] is None or arrays["targets"] is None:
            return None  # saved by a fastprep that kept no per-document statistics: rerun it
        n_tokens = int(arrays["lengths"].sum())
        if ids_path.stat().st_size != n_tokens * itemsize:
            return None
        if mask_path is not None and mask_path.stat().st_size != n_tokens:
            return None
        counts = TaskCounts.from_json(meta["counts"])
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return TaskResult(task=task, n_lines=meta["n_lines"], bad=[tuple(b) for b in meta["bad"]],
                      counts=counts, ids_path=str(ids_path),
                      mask_path=str(mask_path) if mask_path else None, seconds=meta["seconds"],
                      checks=meta.get("checks", {}),
                      dups=None if meta.get("dups") is None else [tuple(x) for x in meta["dups"]],
                      report_id_field=meta.get("report_id_field"),
                      contaminated=[tuple(c) for c in meta.get("contaminated", [])],
                      **arrays)
