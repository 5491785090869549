"""Which tokenizer backend a run uses, decided once in the driver before any task.

``--tokenizer-backend auto`` (the default) takes the fast backend when it is installed, passes
the static support check (:func:`fastprep.stages.backends.support`) and passes the parity gate:
the built-in probe set plus the run's first documents, encoded by both backends through the
whole encoder (text, prompt/completion, chat pieces and loss masks) and compared. Otherwise the
run uses ``tokenizers`` (``hf``) and says why in one line. An explicit ``fastokens`` that
fails any of these is an error naming the reason; ``hf`` skips the gate.

The choice never changes a byte of the output: it is a run option, recorded with its checks in
the manifest's ``tokenizer.backend``, and the spot checks during the run
(:mod:`fastprep.pipeline.tasks`) keep comparing.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from collections.abc import Sequence, Iterable, Iterator
from typing import Any

import numpy as np

from ..stages.backends import FAST, Backend, BackendError, ParityReport, compare, probe_texts, support
from ..stages.clean import Cleaner, CleanConfig
from ..stages.encode import BackendDisagreement, Encoder
from ..stages.read import Raw, ReadConfig, read_file
from ..stages.records import Doc, RecordConfig, RecordError, RecordMapper
from ..stages.tokenize import TokenizerBundle

GATE_DOCS = 256          # the run's first documents the gate encodes with both backends
GATE_CHARS = 1 << 16     # at most this much of their text (tokenizers encodes it at start-up)


@dataclass
class BackendChoice:
    """The backend a run uses and why; its ``record`` goes into the manifest."""

    name: str
    requested: str
    reason: str | None = None          # why the fast backend is not used (auto), or None
    version: str = ""
    gate: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "requested": self.requested,
                "fallback_reason": self.reason, "parity_gate": self.gate}


# the driver, inline tasks and a worker's warm-up share one load per process
_OPEN: dict[tuple[str, str], Future[Backend]] = {}
_LOCK = threading.Lock()


def preload_backend(name: str, raw: bytes, wait: bool = True) -> Backend | None:
    """The fast backend ``name`` of a tokenizer file's bytes, cached by content. With
    ``wait=False`` the load starts in a thread (fastokens releases the GIL while it builds its
    tables, so the caller goes on) and None is returned."""
    import hashlib

    if name != "fastokens":
        raise BackendError(f"--tokenizer-backend must be auto, hf or fastokens, not {name!r}")
    key = (name, hashlib.sha256(raw).hexdigest())
    with _LOCK:
        fut = _OPEN.get(key)
        if fut is None:
            _OPEN.clear()
            fut = _OPEN[key] = Future()
            threading.Thread(target=_load_fast, args=(fut, raw), daemon=True,
                             name="fastprep-load-backend").start()
    return fut.result() if wait else None


def release_backends() -> None:
    """Drop this process's fast backend (the driver's, once the gate is done and the tasks run
    in workers: its tables and caches no longer serve; ``benchmarks/README.md``, "Component
    figures")."""
    with _LOCK:
        _OPEN.clear()


def _load_fast(fut: Future[Backend], raw: bytes) -> None:
    from ..stages.backends import FastokensBackend

    try:
        fut.set_result(FastokensBackend(raw.decode("utf-8")))
    except BaseException as e:  # noqa: BLE001 - re-raised by whoever waits on it
        fut.set_exception(e)


def open_backend(name: str, bundle: TokenizerBundle) -> Backend:
    """The backend ``name`` for this tokenizer (``BackendError`` if it cannot run it)."""
    from ..stages.backends import HFBackend

    if name == "hf":
        return HFBackend(bundle.tokenizer)
    backend = preload_backend(name, bundle.json_bytes)
    assert backend is not None
    return backend


def first_documents(files: list[str], read: ReadConfig, records: RecordConfig,
                    clean: CleanConfig, limit: int = GATE_DOCS,
                    per_file: Sequence[RecordConfig] | None = None) -> list[Doc]:
    """The run's first documents as the tasks will see them (bad records skipped);
    ``per_file``: each file's own record mapping (a mix whose sources map fields apart)."""
    cleaner = Cleaner(clean)
    mappers = {r: RecordMapper(r) for r in {records, *(per_file or ())}}
    # a record larger than the gate takes is skipped by the reader, unparsed
    read = dataclasses.replace(read, max_record_bytes=min(read.max_record_bytes, 4 * GATE_CHARS))
    docs: list[Doc] = []
    chars = seen = 0
    for i, path in enumerate(files):
        mapper = mappers[per_file[i] if per_file else records]
        for doc in usable_documents(itertools.islice(read_file(path, i, read), 4 * limit),
                                    mapper, cleaner):
            if seen > 16 * GATE_CHARS:  # enough looked at (a file of huge records)
                return docs
            n = sum(map(len, doc.texts()))
            seen += n
            if chars + n > GATE_CHARS:
                continue  # a huge document is the spot checks' business, not the gate's
            docs.append(doc)
            chars += n
            if len(docs) >= limit:
                return docs
    return docs


def usable_documents(raws: Iterable[Raw], mapper: RecordMapper, cleaner: Cleaner) -> Iterator[Doc]:
    """The documents of raw records, bad ones skipped without a count (a sample's view: the
    tasks count and quarantine them)."""
    for raw in raws:
        if raw.bad is not None:
            continue
        try:
            doc = mapper(raw.value, raw.file, raw.line)
            cleaner(doc)
        except RecordError:
            continue
        yield doc


def _same(a: Any, b: Any) -> bool:
    same_mask = (a.loss_mask is None) == (b.loss_mask is None) and (
        a.loss_mask is None or np.array_equal(a.loss_mask, b.loss_mask))
    return (np.array_equal(a.ids, b.ids) and np.array_equal(a.lengths, b.lengths) and same_mask
            and np.array_equal(a.keep, b.keep))


def parity_gate(fast: Backend, bundle: TokenizerBundle, docs: list[Doc]) -> ParityReport:
    """Probe strings and the first documents through both backends; mismatches counted."""
    from ..stages.backends import HFBackend

    ref = HFBackend(bundle.tokenizer)
    report = compare(fast, ref, probe_texts(), special=bundle.special_in_text)
    if docs and not report.mismatches:
        try:
            a = Encoder(bundle, fast)(docs)
        except BackendDisagreement as e:
            report.mismatches, report.first = 1, f"{docs[e.index].file}:{docs[e.index].line}"
            return report
        b = Encoder(bundle, ref)(docs)
        report.texts += len(docs)
        report.tokens += len(b.ids)
        if not _same(a, b):
            for d in docs:  # name the first document that differs
                if not _same(Encoder(bundle, fast)([d]), Encoder(bundle, ref)([d])):
                    report.mismatches += 1
                    report.first = report.first or f"{d.file}:{d.line}"
            report.mismatches = max(report.mismatches, 1)
    return report


def choose(requested: str, bundle: TokenizerBundle, docs: list[Doc], files: list[str]
           ) -> BackendChoice:
    """Decide the run's backend (see the module docstring)."""
    if requested == "hf":
        return BackendChoice("hf", requested, version=open_backend("hf", bundle).version)
    candidates = FAST if requested == "auto" else (requested,)
    reasons = []
    for name in candidates:
        why = support(bundle.config, name)
        try:
            if why is not None:
                raise BackendError(f"{name} does not support this tokenizer's {why}")
            backend = open_backend(name, bundle)
            report = parity_gate(backend, bundle, docs)
            if report.mismatches:
                where = report.first or "a probe text"
                if report.first and ":" in report.first:
                    f, line = report.first.rsplit(":", 1)
                    where = f"{files[int(f)]}:{line}"
                raise BackendError(f"{name} gave different ids from tokenizers on "
                                   f"{report.mismatches} of {report.texts} parity-gate texts "
                                   f"(first: {where})")
        except BackendError as e:
            if requested != "auto":
                raise BackendError(f"--tokenizer-backend {requested}: {e}") from None
            reasons.append(str(e))
            continue
        return BackendChoice(name, requested, version=backend.version, gate=report.to_json())
    return BackendChoice("hf", requested, reason="; ".join(reasons) or "no fast backend",
                         version=open_backend("hf", bundle).version)
