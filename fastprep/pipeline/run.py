"""``fastprep prepare``: read -> clean -> dedupe (exact, then MinHash) -> tokenize -> pack -> write.

Data moves one way. Inputs are cut into tasks (:mod:`fastprep.pipeline.tasks`: whole files, or
byte ranges of big JSONL files); worker processes read, clean, hash and tokenize a task and
spill its token ids to the work folder (``.fastprep-work``). The driver takes results strictly
in task order (:mod:`fastprep.pipeline.merge`): it quarantines bad records with global line
numbers, removes exact and near duplicates, and appends the task's tokens to one spill file,
keeping only 8 bytes per document (its length) in memory.

After the last task the packer plans rows over the lengths (removed documents count as length
0, so they produce no piece; :mod:`fastprep.stages.pack`) and the rows are gathered from the
token spill block by block (:mod:`fastprep.pipeline.rows`) into shards
(:mod:`fastprep.dataset.write`). Peak memory is bounded by the batch size, the block size and
~130 bytes per document (lengths, offsets, the exact-dedupe table, the packing plan), not by
the corpus size; streaming MinHash adds its index.

Same input + same recipe = same bytes, whatever the number of workers, task size or batch size:
input files are sorted, results merge in task order, deduplication keeps the first occurrence,
rows are shuffled with a fixed seed, and the manifest holds no timestamps, timings or
parallelism settings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from concurrent.futures import Future, ThreadPoolExecutor
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import numpy as np

from .._version import __version__
from ..dataset.format import (DOCUMENT_DTYPE, DOCUMENTS_FILE, QUARANTINE_FILE, TOKENIZER_FILE, VAL_DIR,
                              WORK_DIR, Manifest, ids_dtype,
                              segment_dtype)
from ..dataset.write import ShardWriter
from ..io import atomic_write_bytes
from ..stages.mix import assign_sources
from ..stages.pack import PackConfig, PackPlan, plan
from ..stages.read import expand_paths, file_sizes
from ..stages.chat import TemplateError
from ..stages.records import CHAT, KIND_NAMES
from ..stages.tokenize import TokenizerBundle, TokenizerError
from ..stages.backends import BackendError, support
from . import decontam, outdir
from .backend import BackendChoice, choose, first_documents, preload_backend, release_backends
from .config import PrepareConfig
from .executor import (ExecutorOptions, Hooks, Workers, available_cores, exit_if_importing_main,
                       runs_inline)
from .merge import Merger
from .progress import Progress
from .quarantine import NothingKept, Quarantine
from .rows import row_blocks, warm_kernels
from .select import Selection, document_table, mix_record, select, split_record
from .spill import RunSpill
from .tasks import (BackendMismatch, Task, TaskResult, TaskSpec, TaskStrictError, clear_stop,
                    load_result, plan_tasks, preload, run_task, stop_tasks_after)


@dataclass
class PrepareStats:
    """What a run did: the manifest's counts plus timings (timings never enter the manifest)."""

    out: str
    counts: dict[str, Any]
    packing: dict[str, Any]
    seconds: dict[str, float]
    manifest: Manifest
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # printed even with --quiet
    # what this invocation processed itself (a resumed run reuses saved tasks): tasks,
    # resumed_tasks, text_bytes, tokens
    this_run: dict[str, int] = field(default_factory=dict)
    # MinHash method and its costs: "stream" (index_bytes, bytes_per_doc, sets_file_bytes) or
    # "shuffle" (partitions, candidate_pairs, verified_pairs, files_bytes); empty without MinHash
    near_dedupe: dict[str, Any] = field(default_factory=dict)
    # the token count of every kept document in input order, with ``collect_lengths`` (what
    # ``fastprep bench`` packs at other lengths and modes); not part of to_dict
    lengths: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "counts": self.counts, "packing": self.packing, "seconds": self.seconds,
                "near_dedupe": self.near_dedupe, "notes": self.notes, "warnings": self.warnings,
                "this_run": self.this_run}


@dataclass
class _Run:
    """The run as resolved before the first task: what every later step reads."""

    cfg: PrepareConfig
    files: list[str]
    bundle: TokenizerBundle
    out: Path
    work: Path
    tasks: list[Task]
    workers: int
    notes: list[str]
    backend: BackendChoice
    file_source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # mix source per file
    index: decontam.Builder | None = None  # --decontaminate: the index, building or saved
    warm: threading.Thread | None = None  # loading the driver's numba kernels
    this_run: dict[str, int] = field(default_factory=dict)
    lengths: np.ndarray | None = None  # kept documents' token counts (collect_lengths)

    @property
    def ids_dt(self) -> np.dtype:
        return ids_dtype(self.bundle.vocab_size)

    @property
    def seg_dt(self) -> np.dtype:
        return segment_dtype(self.cfg.recipe.pack.seq_len)

    def task_spec(self) -> TaskSpec:
        r = self.cfg.recipe
        run = self.cfg.run
        return TaskSpec(read=r.read, records=r.records, clean=r.clean, exact=r.dedupe.exact,
                        minhash=r.dedupe.minhash, tokenizer=self.bundle.spec,
                        batch_bytes=run.batch_bytes, strict=run.strict, backend=self.backend.name,
                        backend_explicit=run.tokenizer_backend != "auto",
                        spot_check=run.spot_check,
                        report_id_field=run.id_field if run.dedupe_report else None,
                        source_records=r.source_records(),
                        decontam=(decontam.display_names(decontam.eval_files(r))
                                  if r.decontaminate.enabled else None))


def _warm_args(cfg: PrepareConfig, bundle: TokenizerBundle) -> tuple[Any, ...]:
    return (cfg.recipe.pack, cfg.recipe.dedupe.exact, ids_dtype(bundle.vocab_size),
            segment_dtype(cfg.recipe.pack.seq_len))


def _import_numba() -> None:
    """Import numba in this thread before any other thread uses it. A fresh CI run once failed
    with ``module 'numba' has no attribute 'core'`` at the driver's first kernel: numba's first
    import in the kernel-loading thread had failed, silently, and left its submodules behind.
    Imported here first, the threads only load kernels (numba's compiler lock serialises
    those)."""
    import numba  # noqa: F401


def _start_warm(cfg: PrepareConfig, bundle: TokenizerBundle, pool: Workers) -> threading.Thread | None:
    """Load the driver's numba kernels (numba's import and their caches, a large share of a
    small run's fixed cost) in a thread, overlapping the gate and the tasks. Not when tasks may
    run in this process with MinHash: they launch parallel numba kernels, and numba's workqueue
    threading layer aborts on parallel launches from two threads at once; then the kernels load
    before the tasks (None)."""
    if cfg.recipe.dedupe.minhash is not None and pool.pool is None:
        return None
    _import_numba()
    warm = threading.Thread(target=warm_kernels, args=_warm_args(cfg, bundle),
                            name="fastprep-warm-kernels", daemon=True)
    warm.start()
    return warm


def _inputs(cfg: PrepareConfig) -> tuple[list[str], TokenizerBundle]:
    """The input files and the resolved tokenizer: one-line errors before anything starts."""
    recipe = cfg.recipe
    files = expand_paths(recipe.read.paths)
    bundle = TokenizerBundle(recipe.tokenize)
    if recipe.records.shape == "chat":
        bundle.renderer  # compile the chat template now: a broken one is a config error
    L, limit = recipe.pack.seq_len, bundle.max_length
    if limit is not None and L > limit and not cfg.run.exceed_model_max:
        # rows longer than the model's positions cannot be trained on as they are
        raise TokenizerError(f"--seq-len {L:,} is longer than the model's maximum of {limit:,} "
                             f"tokens ({bundle.max_length_source}); pass --seq-len {limit} or "
                             f"less, or --exceed-model-max for a context extension")
    return files, bundle


def _task_bytes(cfg: PrepareConfig, files: list[str], workers: int) -> int:
    """Input bytes per task of a fresh run: ~16 tasks per worker (1-64 MiB each). The last
    task runs alone while other workers idle, so smaller tasks shorten that tail; per-task
    cost is a few file opens."""
    total = sum(os.path.getsize(f) for f in files)
    return cfg.run.task_bytes or int(min(64 << 20, max(1 << 20, total // (workers * 16) + 1)))


def _workers(cfg: PrepareConfig, files: list[str], bundle: TokenizerBundle) -> Workers:
    """The worker processes, started now when the run has more than one task: they load the
    tokenizer (and the fast backend where it may be chosen) while the driver runs the parity
    gate and claims the output folder."""
    run = cfg.run
    opts = ExecutorOptions(kind=run.executor, workers=run.workers or available_cores(),
                           ray_address=run.ray_address, ray_cpus_per_task=run.ray_cpus_per_task)
    fast = run.tokenizer_backend != "hf" and support(bundle.config, "fastokens") is None
    if fast and importlib.util.find_spec("fastokens") is not None:
        preload_backend("fastokens", bundle.json_bytes, wait=False)  # for the gate, in a thread
    warm = functools.partial(preload, bundle.spec.file, fast, cfg.recipe.dedupe.minhash is not None,
                             cfg.recipe.decontaminate.enabled)
    early = len(plan_tasks(files, _task_bytes(cfg, files, opts.workers))) > 1
    return Workers(opts, warm, start=early)


def _resolve(cfg: PrepareConfig, files: list[str], bundle: TokenizerBundle, workers: int,
             index: decontam.Builder | None = None) -> _Run:
    """The backend and the output folder, decided before any task; the tasks planned (and the
    decontamination index, building in a thread since the run began, saved)."""
    notes: list[str] = []
    evals = decontam.eval_files(cfg.recipe)
    overlap = sorted(set(map(os.path.abspath, evals)) & set(map(os.path.abspath, files)))
    if overlap:
        raise ValueError(f"{overlap[0]} is both an input and a --decontaminate evaluation set: "
                         f"every document of it would be removed")
    fs = _file_sources(cfg, files)  # each source's paths expanded once
    backend = _choose_backend(cfg, bundle, files, notes, fs)
    fp = outdir.fingerprint(cfg, files + evals, bundle.spec)  # an edited eval set changes bytes
    task_bytes = outdir.claim(cfg, fp, notes)
    out = Path(cfg.run.out)
    work = out.resolve() / WORK_DIR  # absolute: tasks may run in another working folder
    if task_bytes is None:
        task_bytes = _task_bytes(cfg, files, workers)
        outdir.start_work(work, fp, task_bytes)
    tasks = [dataclasses.replace(t, source=int(fs[t.file])) for t in plan_tasks(files, task_bytes)]
    run = _Run(cfg, files, bundle, out, work, tasks, workers, notes, backend, fs)
    # an interrupted run may have left a stop file; gone before the index build may write one
    clear_stop(work)
    if index is not None:
        index.attach(work)  # saved there once built (the same index again on a resume)
        run.index = index
    return run


def _decontam_record(run: _Run) -> dict[str, Any]:
    """The decontamination index's manifest section (after the tasks, which needed it saved),
    with a note when some evaluation documents are too short to ever match."""
    if run.index is None:
        return {}
    rec = run.index.record()
    if rec["eval_documents_too_short"]:
        run.notes.append(f"{rec['eval_documents_too_short']:,} evaluation document(s) have "
                         f"fewer than {rec['ngram']} words and cannot be matched; a smaller "
                         f"--decontaminate-ngram reaches them")
    return rec


def _file_sources(cfg: PrepareConfig, files: list[str]) -> np.ndarray:
    """The mix source of every input file (all 0 without a mix)."""
    if not cfg.recipe.mix.on:
        return np.zeros(len(files), np.uint8)
    return assign_sources(files, cfg.recipe.mix.sources).astype(np.uint8)


def _check_template(bundle: TokenizerBundle, chats: list[Any]) -> None:
    """The data has chats: a template that does not compile, or that fails on every one of
    the first chats, is a configuration error, not a quarantine of every record."""
    if not chats:
        return
    bundle.renderer  # compiles, or raises TemplateError (a ValueError: one line)
    errors = []
    for d in chats[:32]:
        try:
            bundle.renderer.render_with_spans(d.messages)
            return
        except TemplateError as e:
            errors.append(str(e))
    raise TemplateError(f"the chat template ({bundle.chat_template_source}) fails on the first "
                        f"{len(errors)} chat records: {errors[0]}; fix it or pass --chat-template FILE")


def _choose_backend(cfg: PrepareConfig, bundle: TokenizerBundle, files: list[str],
                    notes: list[str], file_source: np.ndarray) -> BackendChoice:
    r = cfg.recipe
    notes += bundle.notes
    per_file = None
    if r.mix.on:
        by_source = r.source_records()
        per_file = [by_source[int(k)] for k in file_source]
    docs = first_documents(files, r.read, r.records, r.clean, per_file=per_file)
    _check_template(bundle, [d for d in docs if d.kind == CHAT])
    if (bundle.eos_id is None and r.tokenize.eos != "never"
            and any(d.kind != CHAT for d in docs)):
        # text and completions end with EOS so that a model learns to stop
        raise TokenizerError(f"{r.tokenize.tokenizer} defines no EOS token and none of its special "
                             f"tokens is a known one; name it with --eos-token TOKEN (or pass "
                             f"--eos never to pack documents without an end token)")
    choice = choose(cfg.run.tokenizer_backend, bundle,
                    docs if cfg.run.tokenizer_backend != "hf" else [], files)
    if choice.reason:
        notes.append(f"tokenizing with tokenizers (hf): {choice.reason}")
    return choice


def _merge_tasks(run: _Run, pool: Workers, merger: Merger, quarantine: Quarantine,
                 progress: Progress) -> None:
    """Run every task (reusing those an interrupted run saved) and merge them in task order."""
    itemsize = run.ids_dt.itemsize
    report = run.task_spec().report_id_field
    done = {t.index for t in run.tasks if load_result(t, run.work, itemsize, report) is not None}
    if done:
        run.notes.append(f"resumed an interrupted run: {len(done)} of {len(run.tasks)} tasks were "
                         f"already done")
    if not runs_inline(pool.opts, len(run.tasks) - len(done)):
        release_backends()  # the gate is done; tasks encode in the workers
    if run.warm is None:
        warm_kernels(*_warm_args(run.cfg, run.bundle))
    elif run.cfg.recipe.dedupe.minhash is not None and runs_inline(pool.opts, len(run.tasks) - len(done)):
        run.warm.join()  # inline MinHash tasks launch parallel kernels: one thread at a time
    fn = functools.partial(run_task, spec=run.task_spec(), work=str(run.work))
    progress.reading(sum(t.size for t in run.tasks), sum(t.size for t in run.tasks if t.index in done))
    # a failed task stops the later ones at once: --strict reports without waiting for them
    hooks = Hooks(done=progress.task_done, stop=functools.partial(stop_tasks_after, run.work))
    try:
        # --strict: tasks start in input order, so the first bad record is found soonest
        tasks = pool.run_in_order(fn, run.tasks, done, hooks, largest_first=not run.cfg.run.strict)
        _consume(run, tasks, done, merger, progress)
    except TaskStrictError as e:
        t = run.tasks[e.task]
        raise quarantine.strict_error(t.file, merger.line_offset[t.file] + e.line, e.reason,
                                      e.detail) from None
    except BackendMismatch as e:
        t = run.tasks[e.task]
        raise BackendError(f"--tokenizer-backend {e.backend}: its ids differ from tokenizers' "
                           f"for the document at {t.path}:{merger.line_offset[t.file] + e.line} "
                           f"(a spot check); rerun with --tokenizer-backend auto or hf") from None
    finally:
        if run.warm is not None:
            run.warm.join()  # a daemon thread inside numba must not meet the interpreter's exit
    if merger.reruns:
        r = merger.reruns[0]
        run.notes.append(f"{len(merger.reruns)} task(s) re-tokenized with tokenizers after a "
                         f"{r['backend']} spot check disagreed (first at {r['source']}:{r['line']})")
    t = time.perf_counter()
    if merger.shuffle is not None:
        progress.stage("near duplicates (band shuffle)")
    merger.finish()
    if merger.shuffle is not None:
        merger.seconds["minhash_shuffle"] = time.perf_counter() - t


def _consume(run: _Run, tasks: Iterator[Task], done: set[int], merger: Merger,
             progress: Progress) -> None:
    """Merge every task's result in task order; count what this invocation did itself (the
    rates of the bar and the summary: resumed tasks took no time now)."""
    fresh = {"tasks": len(run.tasks), "resumed_tasks": len(done), "records": 0,
             "text_bytes": 0, "tokens": 0}
    run.this_run = fresh
    report = run.task_spec().report_id_field
    for task in tasks:
        if run.warm is not None and run.warm.is_alive():
            t = time.perf_counter()
            run.warm.join()  # the kernels the merge calls: their load is no merging time
            merger.seconds["kernel_wait"] += time.perf_counter() - t
        t = time.perf_counter()
        res = _load(task, run.work, run.ids_dt.itemsize, report)
        if task.index in done:
            res.seconds = {}  # timed by the run that did it, not this one
        kept_tokens = merger.add(res)
        merger.seconds["merge"] += time.perf_counter() - t  # the driver's own per-task work
        if task.index not in done:
            fresh["records"] += res.counts.records_read
            fresh["text_bytes"] += res.counts.text_bytes
            fresh["tokens"] += kept_tokens
        progress.merged(fresh["records"], fresh["text_bytes"], fresh["tokens"])


def _load(task: Task, work: Path, itemsize: int, report: str | None) -> TaskResult:
    r = load_result(task, work, itemsize, report)
    if r is None:
        raise RuntimeError(f"the saved result of task {task.index} ({task.path}) is missing "
                           f"or inconsistent in {work}; was the folder changed during the run?")
    return r


@dataclass
class _Written:
    """What the write stage made: the training rows' plan and targets, the selection, the
    documents table, and the validation set's manifest (or None)."""

    packing: PackPlan
    targets: int
    sel: Selection
    table: np.ndarray
    val: Manifest | None = None


def _write(run: _Run, spill: RunSpill, writer: ShardWriter, block: int,
           seconds: dict[str, float], progress: Progress, docs: dict[str, np.ndarray]) -> _Written:
    """Split and mix the kept documents, plan the packing and write every row into shards
    (then the validation set's, into its own dataset)."""
    t = time.perf_counter()
    lengths, planned = spill.finish()
    doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=doc_offsets[1:])
    del lengths
    recipe = run.cfg.recipe
    sel = select(recipe, planned, doc_offsets, docs["source"].astype(np.int64))
    del doc_offsets
    table = document_table(planned, docs, sel)
    train = sel.train
    packing = plan(train.lengths, recipe.pack, train.groups)  # removed documents: length 0
    if run.cfg.run.collect_lengths:
        run.lengths = train.lengths[train.lengths > 0]
    seconds["pack"] = time.perf_counter() - t
    progress.stage("write", packing.n_rows, "rows")
    out = _Written(packing, _write_rows(run, spill, writer, packing, train.starts, block, progress),
                   sel, table)
    if sel.val is not None:
        out.val = _write_val(run, spill, sel, block, progress)
    return out


def _write_rows(run: _Run, spill: RunSpill, writer: ShardWriter, packing: PackPlan,
                starts: np.ndarray, block: int, progress: Progress) -> int:
    """Every row of ``packing`` into ``writer``; returns the rows' training targets. Two row
    buffers: one block is hashed and written (both release the GIL) while the next is read
    from the spill and filled."""
    targets = lo = 0
    with ThreadPoolExecutor(1, thread_name_prefix="fastprep-write") as pool:
        pending: Future[int] | None = None
        for rows in row_blocks(packing, starts, spill, spill.has_mask, block,
                               run.bundle.pad_id, run.ids_dt, run.seg_dt, buffers=2):
            n = len(rows["input_ids"])
            if packing.row_group is not None:
                rows = {**rows, "source": packing.row_group[lo:lo + n].astype(np.uint8)}
            lo += n
            if pending is not None:
                targets += pending.result()
            pending = pool.submit(_write_block, writer, rows)
            progress.advance(n)
        if pending is not None:
            targets += pending.result()
    return targets


def _write_val(run: _Run, spill: RunSpill, sel: Selection, block: int,
               progress: Progress) -> Manifest:
    """The validation set: a dataset of its own in ``OUT/val``, packed like the training rows
    (without repeats: every validation document once), finished before the main manifest."""
    assert sel.val is not None
    recipe = run.cfg.recipe
    out = run.out / VAL_DIR
    out.mkdir(exist_ok=True)
    packing = plan(sel.val.lengths, recipe.pack, sel.val.groups)
    writer = ShardWriter(out, recipe.pack.seq_len, _dtypes(run, spill, recipe.mix.on),
                         _shard_rows(run))
    progress.stage("write validation set", packing.n_rows, "rows")
    try:
        targets = _write_rows(run, spill, writer, packing, sel.val.starts, block, progress)
        atomic_write_bytes(out / TOKENIZER_FILE, run.bundle.json_bytes)
        names = [{"name": s.name} for s in recipe.mix.sources]
        return writer.finish(
            fastprep_version=__version__,
            tokenizer={**run.bundle.describe(), "file": TOKENIZER_FILE},
            recipe=recipe.record(), inputs=file_sizes(run.files),
            counts={**packing.counts(), "documents": int(np.count_nonzero(sel.val.lengths)),
                    "target_tokens": targets},
            packing=_pack_record(recipe.pack, packing),
            split={"role": "validation", "of": ".."}, mix={"sources": names} if names else {})
    except BaseException:
        writer.abort()
        raise


def _dtypes(run: _Run, spill: RunSpill, mixed: bool) -> dict[str, np.dtype]:
    """The arrays a dataset of this run holds, with their dtypes."""
    dtypes = {"input_ids": run.ids_dt, "segment_ids": run.seg_dt}
    if spill.has_mask:
        dtypes["loss_mask"] = np.dtype(np.uint8)
    if mixed:
        dtypes["source"] = np.dtype(np.uint8)  # a mix holds at most 255 sources
    return dtypes


def _pack_record(pack: PackConfig, packing: PackPlan) -> dict[str, Any]:
    return {"mode": pack.mode, "long_policy": pack.long_policy,
            "efficiency": round(packing.efficiency, 6),
            "dropped_token_share": round(packing.tokens_dropped / max(packing.tokens_in, 1), 6)}


def _write_block(writer: ShardWriter, rows: dict[str, np.ndarray]) -> int:
    """Write one block of rows; return its training targets: positions whose previous token
    is in the same document (a document's first token is never predicted, in whatever row its
    piece starts) and whose loss mask is 1, as the loader's labels count them."""
    seg = rows["segment_ids"]
    target = seg[:, 1:] == seg[:, :-1]
    target &= seg[:, 1:] != 0
    if "loss_mask" in rows:
        target &= rows["loss_mask"][:, 1:] != 0
    writer.add(rows)
    return int(np.count_nonzero(target))


def _counts(merger: Merger, quarantine: Quarantine, packing: PackPlan, targets: int) -> dict[str, Any]:
    """The manifest's ``counts`` section."""
    c = merger.counts
    dropped = dict(sorted(quarantine.counts.items()))
    return {
        "records_read": c["records_read"], "records_kept": int(merger.kinds.sum()),
        "dropped": dropped, "dropped_total": sum(dropped.values()),
        "exact_duplicates": c["exact_duplicates"], "near_duplicates": c["near_duplicates"],
        "blank_lines": c["blank_lines"],
        "repaired": {k[len("repaired_"):]: v for k, v in sorted(c.items()) if k.startswith("repaired_")},
        "documents_by_shape": {n: int(k) for n, k in zip(KIND_NAMES, merger.kinds) if k},
        **packing.counts(), "target_tokens": targets, "text_chars": c["text_chars"],
        "text_bytes": c["text_bytes"],
    }


def _publish(run: _Run, merger: Merger, quarantine: Quarantine, writer: ShardWriter,
             written: _Written, dedupe_out: dict[str, Any]) -> Manifest:
    """The dataset's last files (tokenizer copy, quarantine, documents, dedupe report), then
    the manifest: its rename is what makes the folder a finished dataset."""
    recipe = run.cfg.recipe
    atomic_write_bytes(run.out / TOKENIZER_FILE, run.bundle.json_bytes)
    quarantine.close()
    merger.close_report(ok=True)
    table = written.table
    atomic_write_bytes(run.out / DOCUMENTS_FILE, table.tobytes())
    documents = {"file": DOCUMENTS_FILE, "count": int(table.size),
                 "dtype": [[n, DOCUMENT_DTYPE.fields[n][0].str] for n in DOCUMENT_DTYPE.names],
                 "sha256": hashlib.sha256(table.tobytes()).hexdigest()}
    backend = {**run.backend.record(), **merger.backend_record()}
    by_source = np.bincount(merger.file_source.astype(np.int64), weights=merger.records_by_file,
                            minlength=max(len(recipe.mix.sources), 1))
    return writer.finish(fastprep_version=__version__,
                         tokenizer={**run.bundle.describe(), "file": TOKENIZER_FILE,
                                    "backend": backend},
                         recipe=recipe.record(), inputs=file_sizes(run.files),
                         counts=_counts(merger, quarantine, written.packing, written.targets),
                         packing=_pack_record(recipe.pack, written.packing), dedupe=dedupe_out,
                         mix=mix_record(written.sel, recipe, by_source),
                         split=split_record(written.sel, recipe, written.val),
                         decontamination=merger.decontam_record(), documents=documents)


def _warnings(counts: dict[str, Any], packing: PackPlan, pack: PackConfig) -> list[str]:
    """What the user should look at although the dataset is valid."""
    out = []
    if packing.n_rows and packing.efficiency < 0.5:
        mean = packing.tokens_kept / max(counts["records_kept"], 1)
        fix = ("--pack bfd packs several documents per row" if pack.mode == "pad"
               else "a smaller --seq-len wastes less compute")
        out.append(f"packing efficiency is {100 * packing.efficiency:.1f}%: most of every row is "
                   f"padding (documents average {mean:,.0f} tokens, rows hold {pack.seq_len:,}); "
                   f"{fix}")
    return out


def _shard_rows(run: _Run) -> int:
    L = run.cfg.recipe.pack.seq_len
    return run.cfg.recipe.shard_rows or max(1, (256 << 20) // (L * run.ids_dt.itemsize))


def prepare(cfg: PrepareConfig) -> PrepareStats:
    """Run the whole preparation; return the statistics the CLI prints.

    Raises ``InputError``/``TokenizerError``/``OutputError``/``StrictError``/``ValueError`` with a
    one-line message for unusable inputs or configuration, ``OSError`` for disk failures; no
    manifest is written unless the run completes, so a failed run never looks finished.
    """
    exit_if_importing_main()
    t_start = time.perf_counter()
    files, bundle = _inputs(cfg)
    work: list[Path] = []
    # the evaluation sets' index builds in a thread while the workers start and the gate runs
    if cfg.recipe.decontaminate.enabled:
        _import_numba()
    index = (decontam.Builder(cfg.recipe, functools.partial(stop_tasks_after, index=-1))
             if cfg.recipe.decontaminate.enabled else None)
    try:
        return _prepare_with(cfg, files, bundle, index, work, t_start)
    finally:
        if index is not None:
            index.join()  # a daemon thread inside numba must not meet the interpreter's exit


def _prepare_with(cfg: PrepareConfig, files: list[str], bundle: TokenizerBundle,
                  index: decontam.Builder | None, work: list[Path], t_start: float) -> PrepareStats:
    try:
        with _workers(cfg, files, bundle) as pool:
            warm = _start_warm(cfg, bundle, pool)
            try:
                run = _resolve(cfg, files, bundle, pool.opts.workers, index)
            except BaseException:
                if warm is not None:
                    warm.join()  # a daemon thread inside numba must not meet the interpreter's exit
                raise
            run.warm = warm
            work.append(run.work)
            return _execute(run, pool, t_start)
    except ValueError:
        # The input or configuration must change before a rerun: nothing worth resuming. The
        # work folder goes only once the workers are gone: its stop file is what stops them
        # (removed earlier, a running task would never see it and the pool would wait for it).
        for w in work:
            shutil.rmtree(w, ignore_errors=True)
        raise


def _execute(run: _Run, pool: Workers, t_start: float) -> PrepareStats:
    """Tasks, merge, pack and write; on failure nothing of the dataset stays visible."""
    cfg = run.cfg
    L = cfg.recipe.pack.seq_len
    quarantine = Quarantine(run.out / QUARANTINE_FILE, run.files, cfg.run.strict)
    progress = Progress(False if cfg.run.quiet else cfg.run.progress)
    spill = RunSpill()
    merger = Merger(cfg, run.files, run.work, quarantine, spill, run.file_source)
    writer: ShardWriter | None = None
    seconds: dict[str, float] = {}
    try:
        t = time.perf_counter()
        try:
            _merge_tasks(run, pool, merger, quarantine, progress)
        except BaseException:
            if run.index is not None and run.index.failed is not None:
                raise run.index.failed from None  # why the tasks were stopped
            raise
        merger.decontam = _decontam_record(run)
        seconds["tasks_wall"] = time.perf_counter() - t
        if int(merger.kinds.sum()) == 0:
            why = quarantine.why_nothing(merger.counts["records_read"])
            quarantine.close()  # kept, to read; no dataset is written
            raise NothingKept(f"no dataset written: {why}")
        dedupe_out, near_out = merger.dedupe_record(cfg)
        merger.release_indexes()
        docs = merger.documents()
        progress.stage("pack")
        t = time.perf_counter()
        shard_rows = _shard_rows(run)
        writer = ShardWriter(run.out, L, _dtypes(run, spill, cfg.recipe.mix.on), shard_rows)
        # ~4M tokens per block (2,048 rows at L = 2048), at most one shard
        written = _write(run, spill, writer, max(1, min(shard_rows, (4 << 20) // L)),
                         seconds, progress, docs)
        spill.close()
        packing = written.packing
        manifest = _publish(run, merger, quarantine, writer, written, dedupe_out)
        seconds.update(merger.seconds)
        seconds["write"] = time.perf_counter() - t - seconds["pack"]
        seconds["total"] = time.perf_counter() - t_start
        seconds["workers"] = run.workers
        progress.close()
        shutil.rmtree(run.work, ignore_errors=True)
        return PrepareStats(out=str(run.out), counts=manifest.counts, packing=manifest.packing,
                            seconds={k: round(v, 3) for k, v in seconds.items()},
                            manifest=manifest, notes=run.notes, near_dedupe=near_out,
                            warnings=_warnings(manifest.counts, packing, cfg.recipe.pack),
                            this_run=run.this_run, lengths=run.lengths)
    except BaseException:
        progress.close()
        quarantine.abort()
        spill.close()
        merger.close_report(ok=False)
        if writer is not None:
            writer.abort()
        # A ValueError (input or configuration) discards the work folder in prepare(); other
        # failures (disk full, interrupt, crash) keep the finished tasks there, and the next run
        # with the same recipe and inputs resumes from them.
        raise
