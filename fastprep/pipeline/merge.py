"""The driver's merge: task results in task order -> quarantine, dedupe, counts and the token spill.

For each result the driver quarantines its bad records with global line numbers, removes exact
duplicates against every earlier task (first occurrence kept) and near duplicates (MinHash over
the signatures the workers computed: the streaming index here, or a band shuffle decided after
the last task), and appends the task's tokens to the run's spill. Only small per-document
arrays are held (lengths in the spill; the dedupe indexes until packing starts).

Documents are identified across the run by :func:`fastprep.pipeline.report.doc_id`: the input
file's index in the upper bits and the line (or row) in the lower 40, so ids increase in input
order, which is what MinHash's keep-first needs.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dedupe.exact import ExactDeduper
from ..dedupe.minhash import MinHashConfig
from ..stages.records import KIND_NAMES
from .config import PrepareConfig
from .executor import available_cores
from .quarantine import Quarantine
from .report import DedupeReport, doc_id
from .spill import RunSpill
from .tasks import TaskResult, task_docs

@dataclass(frozen=True)
class Removed:
    positions: np.ndarray  # int64: spill positions of the removed near duplicates
    kinds: np.ndarray      # uint8: their record kinds


class NearShuffle:
    """MinHash by band shuffle (:mod:`fastprep.dedupe.shuffle`) instead of the driver's index.

    Per task (after exact dedupe, so copies never form the quadratic buckets), the driver writes
    the documents' band keys into ``P`` partition files and their signatures or shingle sets
    into a store, both under the work folder (shared storage under Ray). After the last task,
    every partition's candidate pairs are found and verified in parallel (Ray tasks, or
    in-process without Ray) and the keep-first resolution gives exactly the streaming index's
    decision. The driver keeps 17 B per MinHash'd document (id, spill position, kind) plus 8 B
    for its target count, not the index's per-kept-document tables.
    """

    def __init__(self, mh: MinHashConfig, work: Path, partitions: int, ray: bool,
                 ray_cpus: int) -> None:
        self.mh, self.ray, self.ray_cpus = mh, ray, ray_cpus
        self.dir = work / "near-shuffle"
        if self.dir.exists():  # a resumed run rewrites every task's files from its saved result
            shutil.rmtree(self.dir)
        self.dir.mkdir()
        self.partitions = partitions
        self._parts: dict[str, list[np.ndarray]] = {"ids": [], "pos": [], "kinds": []}
        self.stats: dict[str, Any] = {"method": "shuffle", "partitions": self.partitions}

    def add(self, res: TaskResult, idx: np.ndarray, doc_ids: np.ndarray, sets: Any, base: int) -> None:
        from ..dedupe.shuffle import partition_signatures, write_doc_store

        assert res.signatures is not None
        name = f"task-{res.task.index:06d}"
        sigs = res.signatures[idx]
        partition_signatures(sigs, doc_ids, self.mh, self.partitions, self.dir, name)
        exact = self.mh.verify == "exact"
        write_doc_store(self.dir / "store", name, doc_ids, None if exact else sigs,
                        sets if exact else None)
        for key, value in (("ids", doc_ids), ("pos", base + idx), ("kinds", res.kinds[idx])):
            self._parts[key].append(value)

    def resolve(self, report: DedupeReport | None) -> Removed:
        from ..dedupe.shuffle import FileStore, local_shuffle_dedupe, partition_files, ray_shuffle_dedupe

        def cat(key: str, dtype: Any) -> np.ndarray:
            return np.concatenate(self._parts[key]) if self._parts[key] else np.zeros(0, dtype)

        ids = cat("ids", np.int64)
        if not ids.size:
            return Removed(np.zeros(0, np.int64), np.zeros(0, np.uint8))
        by_partition = partition_files(self.dir, self.partitions)
        store = FileStore(self.dir / "store")
        if self.ray:
            removals = ray_shuffle_dedupe(by_partition, store, self.mh, num_cpus=self.ray_cpus)
        else:
            removals = local_shuffle_dedupe(by_partition, store, self.mh)
        self.stats.update(candidate_pairs=removals.candidates, verified_pairs=removals.verified,
                          files_bytes=sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file()))
        res = removals.result(ids)
        gone = ~res.keep
        if report is not None:
            report.add("near", ids[gone], res.match[gone], res.similarity[gone])
        return Removed(cat("pos", np.int64)[gone], cat("kinds", np.uint8)[gone])


class Merger:
    """Consumes task results in task order (:meth:`add`), then decides what the shuffle left
    open (:meth:`finish`). Its counts feed the manifest."""

    def __init__(self, cfg: PrepareConfig, files: list[str], work: Path, quarantine: Quarantine,
                 spill: RunSpill, file_source: np.ndarray | None = None) -> None:
        self.files, self.quarantine, self.spill, self.work = files, quarantine, spill, work
        # the source (mix) of each input file; every document's statistics, in spill order
        self.file_source = (np.zeros(len(files), np.uint8) if file_source is None
                            else np.asarray(file_source, np.uint8))
        self._docs: dict[str, list[np.ndarray]] = {"chars": [], "targets": [], "kind": [],
                                                   "source": []}
        self.records_by_file = np.zeros(len(files), np.int64)  # the mix's records read
        self.decontam: dict[str, Any] = {}  # the manifest's decontamination section
        dedupe = cfg.recipe.dedupe
        self.report = (DedupeReport(cfg.run.dedupe_report, files)
                       if cfg.run.dedupe_report else None)
        # a report names each exact copy's first occurrence: the table keeps its id
        self.exact = ExactDeduper(track=self.report is not None) if dedupe.exact else None
        self.minhash: Any = None
        self.shuffle: NearShuffle | None = None
        if dedupe.minhash is not None:
            from ..dedupe.minhash import MinHashDeduper

            stream = cfg.run.resolved_near_method() == "stream"
            # stream: exact verification keeps the kept documents' shingle sets in a
            # memory-mapped file of the work folder (removed with it), not in the heap
            self.minhash = MinHashDeduper(dedupe.minhash, sets_file=work / "minhash-sets.u32") \
                if stream else None
            if not stream:
                workers = cfg.run.workers or available_cores()
                # a few partitions per parallel slot, so a slow partition does not hold up the end
                self.shuffle = NearShuffle(dedupe.minhash, work, max(2, 4 * workers),
                                           cfg.run.executor == "ray", cfg.run.ray_cpus_per_task)
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.kinds = np.zeros(len(KIND_NAMES), np.int64)
        self.line_offset = [0] * len(files)  # lines consumed so far per file (byte-range tasks)
        self.spot = Counter()                 # spot-checked documents and tokens
        self.reruns: list[dict[str, Any]] = []  # tasks a spot check moved to tokenizers

    def add(self, res: TaskResult) -> int:
        """Merge the next task's result; returns the tokens it keeps (after exact and, when
        streaming, near dedupe)."""
        f = res.task.file
        off = self.line_offset[f]
        self.line_offset[f] += res.n_lines
        for line, reason, detail, excerpt in res.bad:
            self.quarantine.add(f, off + line, reason, detail, excerpt)
        c = res.counts
        self.records_by_file[f] += c.records_read
        self.counts.update(records_read=c.records_read, blank_lines=c.blank_lines,
                           exact_duplicates=c.exact_duplicates, text_chars=c.text_chars,
                           text_bytes=c.text_bytes)
        self.counts.update({f"repaired_{k}": v for k, v in c.repaired.items()})
        self.seconds.update(res.seconds)
        self.spot.update(res.checks.get("spot_checks", {}))
        rerun = res.checks.get("rerun_on_reference")
        if rerun:
            self.reruns.append({"source": self.files[f], "line": off + rerun["line"],
                                "backend": rerun["backend"]})
        keep = np.ones(len(res.lengths), dtype=np.bool_)
        ids = doc_id(f, off + res.lines)
        if self.report is not None:
            self._report_task(res, off)
        clean = self._decontaminated(res, off)
        if self.exact is not None and res.digests is not None:
            first = self.exact.insert(res.digests, ids if self.report is not None else None)
            dup = ~first & clean  # a contaminated document counts once, as contaminated
            self.counts["exact_duplicates"] += int(dup.sum())
            if self.report is not None:
                self.report.add("exact", ids[dup], self.exact.matches[dup[~first]], 1.0)
            keep &= first
        keep &= clean
        if res.signatures is not None and keep.any():
            self._near(res, keep, ids)
        self.kinds += np.bincount(res.kinds[keep], minlength=len(KIND_NAMES))
        self.spill.append_task(res.lengths, keep, res.ids_path, res.mask_path)
        self._add_docs(res)
        return int(res.lengths[keep].sum())

    def _decontaminated(self, res: TaskResult, off: int) -> np.ndarray:
        """The task's documents that share no n-gram with an evaluation set (the worker found
        the others); those are quarantined with the evaluation record they match."""
        clean = np.ones(len(res.lengths), dtype=np.bool_)
        for pos, detail, text in res.contaminated:
            clean[pos] = False
            self.quarantine.add(res.task.file, off + int(res.lines[pos]), "contaminated", detail, text)
        return clean

    def _add_docs(self, res: TaskResult) -> None:
        big = np.iinfo(np.uint32).max  # a document over 4G characters is clipped, not wrapped
        d = self._docs
        d["chars"].append(np.minimum(res.chars, big).astype(np.uint32))
        d["targets"].append(np.minimum(res.targets, big).astype(np.uint32))
        d["kind"].append(res.kinds.astype(np.uint8))
        d["source"].append(np.full(len(res.lengths), self.file_source[res.task.file], np.uint8))

    def documents(self) -> dict[str, np.ndarray]:
        """Every merged document's characters, targets, kind and source, in spill order
        (removed duplicates included: the caller keeps those it packs), handed over."""
        empty = {"chars": np.uint32, "targets": np.uint32, "kind": np.uint8, "source": np.uint8}
        out = {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in self._docs.items()}
        self._docs = {k: [] for k in self._docs}
        return out

    def _report_task(self, res: TaskResult, off: int) -> None:
        """The task's documents for the report, and its in-task exact copies."""
        assert self.report is not None
        f = res.task.file
        self.report.task(f, off, task_docs(self.work, res.task))
        if res.dups:
            pairs = np.asarray(res.dups, dtype=np.int64)
            self.report.add("exact", doc_id(f, off + pairs[:, 0]), doc_id(f, off + pairs[:, 1]), 1.0)

    def _near(self, res: TaskResult, keep: np.ndarray, ids: np.ndarray) -> None:
        from ..dedupe.minhash import take_sets

        idx = np.flatnonzero(keep)
        doc_ids = ids[idx]
        sets = (take_sets((res.set_values, res.set_offsets), idx)
                if res.set_values is not None and res.set_offsets is not None else None)
        if self.shuffle is not None:  # decided after the last task, by the shuffle
            self.shuffle.add(res, idx, doc_ids, sets, self.spill.docs)
            return
        assert res.signatures is not None
        mh = self.minhash.add(res.signatures[idx], doc_ids, sets)
        keep[idx] = mh.keep
        self.counts["near_duplicates"] += int(len(idx) - mh.keep.sum())
        if self.report is not None:
            gone = ~mh.keep
            self.report.add("near", doc_ids[gone], mh.match[gone], mh.similarity[gone])

    def finish(self) -> None:
        """Resolve the band shuffle (if any) after the last task."""
        if self.shuffle is None:
            return
        removed = self.shuffle.resolve(self.report)
        self.spill.drop(removed.positions)
        self.counts["near_duplicates"] += len(removed.positions)
        self.kinds -= np.bincount(removed.kinds, minlength=len(KIND_NAMES))

    def dedupe_record(self, cfg: PrepareConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the manifest's ``dedupe`` section, the near-dedupe method's costs for the stats).

        How near duplicates were found depends on the method, what was found does not: the
        manifest holds the parameters, the run's stats the method's costs."""
        dedupe = cfg.recipe.dedupe
        out: dict[str, Any] = {"exact": dedupe.exact,
                               "exact_index_bytes": self.exact.nbytes if self.exact else 0}
        near: dict[str, Any] = {}
        if dedupe.minhash is not None:
            out["minhash"] = dedupe.minhash.params()
            if self.shuffle is not None:
                near = self.shuffle.stats
            else:
                near = {"method": "stream", "index_bytes": self.minhash.nbytes,
                        "bytes_per_doc": round(self.minhash.bytes_per_doc, 1),
                        "sets_file_bytes": self.minhash.sets_file_bytes}
        return out, near

    def decontam_record(self) -> dict[str, Any]:
        """The manifest's ``decontamination`` section: the index's figures and what it removed."""
        if not self.decontam:
            return {}
        return {**self.decontam, "contaminated": int(self.quarantine.counts.get("contaminated", 0))}

    def backend_record(self) -> dict[str, Any]:
        """The run's spot checks for the manifest's ``tokenizer.backend``."""
        return {"spot_checks": {"texts": self.spot["texts"], "tokens": self.spot["tokens"],
                                "tasks_rerun_on_hf": len(self.reruns),
                                "mismatches": self.reruns[:10]}}

    def release_indexes(self) -> None:
        """The dedupe indexes are done with: their per-document memory must not add to the
        packing plan's."""
        self.exact = self.minhash = self.shuffle = None

    def close_report(self, ok: bool) -> None:
        """Write the report (it reads the tasks' document files: before the work folder goes)."""
        if self.report is not None:
            self.report.commit() if ok else self.report.discard()
            self.report = None
