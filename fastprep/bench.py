"""``fastprep bench``: how fast *your* corpus, tokenizer and sequence lengths go, and where the
time goes, measured side by side in one run on a sample of your data.

    fastprep bench data/*.jsonl --tokenizer model/ --seq-len 2048 4096 --mb 100 --json bench.json

Sections (each a key of the JSON report, :data:`SCHEMA`):

- ``sample``: the first ``--mb`` MB of the inputs (``--sample first``) or a seeded sample
  (``--sample seeded``: each file its share of ``--mb``; in uncompressed JSON Lines, runs of
  whole records from seeded 1 MiB slots of the file, in file order; elsewhere records chosen
  by a seeded hash, reading the file from the start until its share is full), copied into a temporary folder in the
  inputs' own formats (compressed files are decompressed); the user's folders are only read.
- ``backends``: the tokenizer engines on the sample's texts in memory (text, prompt and
  completion, message contents; special strings kept as text), each in a subprocess of its own
  on one thread and on all cores: MB/s, tokens/s, and whether every document's ids equal those
  of ``tokenizers`` on one thread (the reference).
- ``prepare``: the whole ``fastprep prepare`` of the sample with the recipe given (dedupe,
  cleaning, record mapping, first ``--seq-len``) into a temporary dataset: wall time, rates,
  driver and worker CPU, and the stage split (worker stages summed over workers, driver stages
  as they ran), with the stage that limits the run named.
- ``packing``: for each ``--seq-len``, the kept documents' token counts packed by ``bfd``,
  ``concat`` and ``pad``: efficiency, rows, documents split, padding share.
- ``loader``: the training loader over the prepared dataset (first ``--seq-len``): batches/s and
  real tokens per batch (needs ``fastprep[train]``; otherwise the section says it was skipped).
- ``machine``: CPU, cores, memory, load average before and after, and the versions that matter.

Nothing is written outside the temporary folder (``--work-dir``, default the system's) and the
``--json`` file; the temporary folder is removed at the end, also after an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .pipeline.config import PrepareConfig
from .stages.read import ReadConfig, expand_paths, file_kind, is_compressed, open_binary

SCHEMA = "fastprep.bench/1"
"""The report's ``schema``. Its keys (every one always present; a skipped measurement says why):

- ``machine``: ``cpu``, ``cores``, ``memory_gib``, ``platform``, ``python``, ``load_before``,
  ``load_after`` (1/5/15-minute load averages), ``versions`` (package -> version or null)
- ``sample``: ``mode``, ``seed``, ``target_mb``, ``files``, ``bytes`` (the records' bytes,
  decompressed; Arrow bytes for Parquet), ``records``, ``documents``, ``text_bytes`` (UTF-8 of
  the texts: the MB of every MB/s), ``decompressed`` (files that were compressed),
  ``too_large`` (records over ``--max-record-bytes``, skipped unread)
- ``backends``: list of ``backend``, ``threads``, ``supported``, ``reason`` (why not, or
  null), ``seconds``, ``mb_s``, ``tokens``, ``tokens_per_s``, ``ids_match`` (null when not run)
- ``prepare``: ``backend``, ``seq_len``, ``workers``, ``dedupe``, ``wall_s``, ``mb_s``,
  ``tokens_per_s``, ``documents_kept``, ``tokens``, ``driver_cpu_s``, ``workers_cpu_s``,
  ``stages`` (list of ``stage``, ``where`` = workers | driver (inline) | driver, ``seconds``,
  ``wall_s`` = seconds over the processes that ran worker stages; the driver rows add up to
  ``wall_s``), ``limit`` (the stage with the largest ``wall_s``)
- ``packing``: list of ``seq_len``, ``mode``, ``efficiency``, ``rows``, ``documents_split``,
  ``documents_truncated``, ``padding_share``, ``plan_s``
- ``loader``: ``skipped`` (null or why), ``seq_len``, ``batch_size``, ``batches``,
  ``batches_per_s``, ``real_tokens_per_batch``, ``tokens_per_s``
"""

class BenchError(ValueError):
    """A benchmark that cannot run on this sample (a one-line error, exit status 2)."""


RUN_MIB = 1 << 20   # --sample seeded: consecutive bytes read at each seeded position
PACK_MODES = ("bfd", "concat", "pad")
VERSIONED = ("fastprep", "tokenizers", "fastokens", "numpy", "numba", "pyarrow", "orjson", "torch")
# stages of the task phase (summed over workers) and of the driver, in pipeline order
WORKER_STAGES = ("read", "clean", "exact_hash", "minhash_signatures", "tokenize", "spot_check",
                 "spill", "decontaminate", "decontaminate_wait")
DRIVER_STAGES = ("kernel_wait", "merge", "minhash_shuffle", "task_phase_other", "pack", "write",
                 "start_up_and_tail")


@dataclass(frozen=True)
class BenchOptions:
    """What ``fastprep bench`` measures beyond the prepare recipe."""

    seq_lens: tuple[int, ...] = (2048,)
    mb: float = 100.0
    sample: str = "first"
    seed: int = 0
    batch_size: int = 8
    loader_batches: int = 200
    work_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not (self.mb > 0 and math.isfinite(self.mb)):
            raise ValueError(f"--mb must be a positive size in MB, got {self.mb!r}")
        if self.sample not in ("first", "seeded"):
            raise ValueError(f"--sample must be first or seeded, not {self.sample!r}")
        if not self.seq_lens:
            raise ValueError("--seq-len needs at least one length")
        if self.batch_size < 1 or self.loader_batches < 1:
            raise ValueError("--batch-size and --loader-batches must be positive")


# ---- the sample -------------------------------------------------------------------------------

def _sample_name(index: int, path: str) -> str:
    name = os.path.basename(path)
    low = name.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if low.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{index:04d}-{name}"


def _chosen(seed: int, file_index: int, record: int, p: float) -> bool:
    h = hashlib.blake2b(f"{seed}:{file_index}:{record}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < p * 2.0 ** 64


def _groups(stream: BinaryIO, kind: str, unit: str, limit: int) -> Any:
    """The raw bytes of each record of a line-based file: a JSONL line, a text line, a
    paragraph with the blank lines after it, or a whole text file. A record over ``limit``
    bytes (``--max-record-bytes``: ``prepare`` would quarantine it) is skipped unread, so memory
    stays bounded; it yields None in its place."""
    if kind == "text" and unit == "file":
        data = stream.read(limit + 1)
        yield data if len(data) <= limit else None
        return
    para: list[bytes] = []
    size = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            break
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # the rest of the oversized line, not kept
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            line = None
        if kind == "jsonl" or unit == "line":
            yield line
        elif line is not None and line.strip():
            if para and not para[-1].strip():
                yield b"".join(para) if size <= limit else None
                para, size = [], 0
            para.append(line)
            size += len(line)
        elif line is not None:
            para.append(line)
    if para:
        yield b"".join(para) if size <= limit else None


def _copy_lines(src: str, dst: Path, kind: str, read: ReadConfig, budget: int,
                opts: BenchOptions, file_index: int, p: float) -> tuple[int, int, int]:
    """(bytes, records, records skipped as too large) of a line-based file copied into the
    sample (blank lines are copied but are no records)."""
    n = records = large = 0
    seeded = opts.sample == "seeded" and not (kind == "text" and read.text_unit == "file")
    with open_binary(src) as stream, open(dst, "wb") as out:
        for i, group in enumerate(_groups(stream, kind, read.text_unit, read.max_record_bytes)):
            if n >= budget:
                break
            if seeded and not _chosen(opts.seed, file_index, i, p):
                continue
            if group is None:
                large += 1
                continue
            out.write(group)
            n += len(group)
            records += bool(group.strip())
    return n, records, large


def _copy_runs(src: str, dst: Path, budget: int, opts: BenchOptions, file_index: int,
               limit: int) -> tuple[int, int, int]:
    """``--sample seeded`` of an uncompressed JSONL file: runs of whole lines from seeded
    positions, in file order (no run overlaps the one before); (bytes, records, lines over
    ``limit`` skipped unread)."""
    size = os.path.getsize(src)
    rng = np.random.default_rng([opts.seed, file_index])
    # distinct 1 MiB slots of the file, one more than the budget needs (a run at the end of
    # the file may be short), read in file order
    slots = -(-size // RUN_MIB)
    k = min(slots, -(-budget // RUN_MIB) + 1)
    starts = np.sort(rng.choice(slots, size=k, replace=False)) * RUN_MIB
    n = records = large = 0
    end = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        lines = (lambda: _groups(f, "jsonl", "line", limit))
        for start in starts:
            if n >= budget:
                break
            f.seek(max(int(start), end))
            if f.tell() > 0 and f.tell() != end:
                next(lines(), None)  # finish the line the position fell into: whole records only
            run = 0
            it = lines()
            while run < RUN_MIB and n < budget:
                line = next(it, False)
                if line is False:
                    break
                if line is None:
                    large += 1
                    continue
                out.write(line)
                run += len(line)
                n += len(line)
                records += 1
            end = f.tell()
    return n, records, large


def _copy_parquet(src: str, dst: Path, budget: int, opts: BenchOptions, file_index: int
                  ) -> tuple[int, int]:
    """(Arrow bytes, rows) of a Parquet file copied into the sample: the first rows, or rows
    chosen by a seeded hash with the probability that fills ``budget``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src)
    taken: list[Any] = []
    n = records = row = 0
    p = None
    for batch in pf.iter_batches(batch_size=1024):
        if n >= budget:
            break
        if opts.sample == "seeded":
            if p is None:  # the share of rows that fills the budget, at the first batch's size
                per_row = max(batch.nbytes / max(batch.num_rows, 1), 1.0)
                p = min(1.0, budget / per_row / max(pf.metadata.num_rows, 1))
            keep = [_chosen(opts.seed, file_index, row + i, p) for i in range(batch.num_rows)]
            row += batch.num_rows
            batch = batch.filter(pa.array(keep))
        per_row = batch.nbytes / max(batch.num_rows, 1)
        rows = min(batch.num_rows, max(1, int((budget - n) / max(per_row, 1.0)) + 1))
        taken.append(batch.slice(0, rows))
        n += taken[-1].nbytes
        records += rows
        if rows < batch.num_rows:
            break  # the budget ends inside this batch: no gap before a later one
    pq.write_table(pa.Table.from_batches(taken, schema=pf.schema_arrow), dst)
    return n, records


def _content_size(path: str) -> int:
    """The file's size once decompressed, estimated from its first MiB for ``.gz``/``.zst``."""
    size = os.path.getsize(path)
    if not is_compressed(path):
        return size
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    try:
        if path.lower().endswith(".gz"):
            import zlib

            out = zlib.decompressobj(47).decompress(head, 64 << 20)
        else:
            import zstandard

            out = zstandard.ZstdDecompressor().decompressobj().decompress(head)
    except Exception:  # noqa: BLE001 - a damaged file: the reader reports it; guess no ratio
        return size
    return int(size * len(out) / max(len(head), 1))


def make_sample(paths: tuple[str, ...], read: ReadConfig, opts: BenchOptions, folder: Path
                ) -> tuple[ReadConfig, dict[str, Any]]:
    """Copy a sample of the inputs into ``folder``; the ReadConfig that reads it, and its stats.
    ``bytes`` counts what the records hold (decompressed; Arrow bytes for Parquet)."""
    files = expand_paths(paths)
    budget = int(opts.mb * 1e6)
    if opts.sample == "seeded" and read.text_unit == "file":
        # whole files as records: a seeded order of the files, taken until the budget is full
        files.sort(key=lambda f: hashlib.blake2b(f"{opts.seed}:{f}".encode(),
                                                 digest_size=8).digest())
    sizes = [_content_size(f) if file_kind(f) != "parquet" else os.path.getsize(f) for f in files]
    total = max(sum(sizes), 1)
    p = min(1.0, budget / total)
    folder.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    stats = {"mode": opts.sample, "seed": opts.seed, "target_mb": opts.mb, "files": 0,
             "bytes": 0, "records": 0, "decompressed": 0, "too_large": 0}
    for i, (src, size) in enumerate(zip(files, sizes)):
        left = budget - stats["bytes"]
        if left <= 0:
            break
        kind = file_kind(src)
        # first (and whole text files, seeded): fill the budget in file order; seeded: each
        # file its share of the budget
        whole = opts.sample == "first" or (kind == "text" and read.text_unit == "file")
        share = left if whole else max(1, int(budget * size / total))
        dst = folder / _sample_name(i, src)
        large = 0
        if kind == "parquet":
            n, records = _copy_parquet(src, dst, min(share, left), opts, i)
        elif opts.sample == "seeded" and kind == "jsonl" and not is_compressed(src):
            n, records, large = _copy_runs(src, dst, min(share, left), opts, i,
                                           read.max_record_bytes)
        else:
            n, records, large = _copy_lines(src, dst, kind or "text", read, min(share, left),
                                            opts, i, p)
        stats["too_large"] += large
        if records == 0:
            dst.unlink()
            continue
        out.append(str(dst))
        stats["files"] += 1
        stats["bytes"] += n
        stats["records"] += records
        stats["decompressed"] += int(is_compressed(src))
    if not out:
        raise ValueError(f"the sample of {', '.join(paths)} is empty: no records found "
                         f"(--sample {opts.sample}, --mb {opts.mb})")
    return dataclasses.replace(read, paths=tuple(out)), stats


def sample_texts(cfg: PrepareConfig) -> list[str]:
    """The texts the tokenizer encodes for the sample's usable documents."""
    from .pipeline.backend import usable_documents
    from .stages.clean import Cleaner
    from .stages.read import read_all
    from .stages.records import RecordMapper

    raws = read_all(list(cfg.recipe.read.paths), cfg.recipe.read)
    docs = usable_documents(raws, RecordMapper(cfg.recipe.records), Cleaner(cfg.recipe.clean))
    return [t for doc in docs for t in doc.texts()]


# ---- tokenizer engines on texts in memory ------------------------------------------------------

def _encode_main() -> None:
    """Subprocess: encode the texts of argv[1] (JSON list) with backend argv[3] of tokenizer
    file argv[2] in ~argv[4]-character batches; print one JSON line."""
    import orjson

    from .stages.backends import FastokensBackend, HFBackend
    from .stages.tokenize import load_tokenizer

    texts_path, tok_path, name, batch_chars = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    texts = orjson.loads(Path(texts_path).read_bytes())
    raw = Path(tok_path).read_bytes()
    backend = (HFBackend(load_tokenizer(raw, Path(tok_path))) if name == "hf"
               else FastokensBackend(raw.decode("utf-8")))
    batches: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if size >= batch_chars:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    backend.encode(batches[0][:64] if batches else [])  # warm-up: pools, caches
    digest = hashlib.blake2b(digest_size=16)
    tokens = 0
    t0 = time.perf_counter()
    for b in batches:
        ids, offsets = backend.encode(b)
        digest.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
        digest.update(np.ascontiguousarray(offsets, dtype="<i8").tobytes())
        tokens += len(ids)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "tokens": tokens, "digest": digest.hexdigest()}))


def bench_backends(texts_path: Path, tokenizer_file: Path, text_bytes: int, cores: int,
                   batch_chars: int, fast_reason: str | None, step: Any) -> list[dict[str, Any]]:
    """Each engine on one thread and on all cores, in a subprocess each; ids compared with
    tokenizers on one thread."""
    from .pipeline.executor import worker_env

    rows: list[dict[str, Any]] = []
    reference: str | None = None
    for name in ("hf", "fastokens"):
        for threads in (1, cores):
            row: dict[str, Any] = {"backend": name, "threads": threads, "supported": True,
                                   "reason": None, "seconds": None, "mb_s": None, "tokens": None,
                                   "tokens_per_s": None, "ids_match": None}
            rows.append(row)
            step(f"{name}, {threads} thread(s)")
            if name != "hf" and fast_reason is not None:
                row.update(supported=False, reason=fast_reason)
                continue
            env = {**os.environ, **worker_env(threads)} if threads == 1 else {
                k: v for k, v in os.environ.items()
                if k not in ("RAYON_NUM_THREADS", "FASTOKENS_BPE_THREADS")}
            cmd = [sys.executable, "-c", "from fastprep.bench import _encode_main; _encode_main()",
                   str(texts_path), str(tokenizer_file), name, str(batch_chars)]
            # run from the temporary folder: ``-c`` puts the working folder first on sys.path,
            # and a user's own tokenizers.py there must not stand in for the library
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  cwd=texts_path.parent)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                if name == "hf":
                    raise BenchError(f"tokenizers failed on the sample's texts: {last}")
                row.update(supported=False, reason=last)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if reference is None:
                reference = res["digest"]  # tokenizers on one thread: the first case
            secs = max(res["seconds"], 1e-9)
            row.update(seconds=round(secs, 4), mb_s=round(text_bytes / 1e6 / secs, 3),
                       tokens=res["tokens"], tokens_per_s=round(res["tokens"] / secs),
                       ids_match=res["digest"] == reference)
    return rows


# ---- prepare, packing, loader ------------------------------------------------------------------

def _cpu() -> tuple[float, float]:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def stage_split(seconds: dict[str, float], processes: int, wall: float) -> list[dict[str, Any]]:
    """The stages of a run's ``seconds``. Worker stages are summed over the ``processes`` that
    ran the tasks (``wall_s`` divides by them; 1 when the tasks ran in the driver). The task
    phase's time in no stage (worker start-up, loads, waiting) is ``task_phase_other``;
    ``start_up_and_tail`` is the wall time outside the task phase, packing and writing. The
    ``wall_s`` of the driver rows and of ``task_phase_other`` add up to the wall time."""
    rows = []
    busy = 0.0
    for name in WORKER_STAGES:
        s = float(seconds.get(name, 0.0))
        busy += s / max(processes, 1)
        rows.append({"stage": name, "where": "workers" if processes > 1 else "driver (inline)",
                     "seconds": round(s, 4), "wall_s": round(s / max(processes, 1), 4)})
    in_tasks = sum(float(seconds.get(k, 0.0)) for k in ("merge", "kernel_wait", "minhash_shuffle"))
    tasks_wall = float(seconds.get("tasks_wall", 0.0))
    other = tasks_wall - in_tasks - (busy if processes == 1 else 0.0)
    tail = wall - tasks_wall - float(seconds.get("pack", 0.0)) - float(seconds.get("write", 0.0))
    for name in DRIVER_STAGES:
        s = {"start_up_and_tail": tail, "task_phase_other": other}.get(
            name, float(seconds.get(name, 0.0)))
        s = max(s, 0.0)
        rows.append({"stage": name, "where": "driver", "seconds": round(s, 4), "wall_s": round(s, 4)})
    return rows


def bench_prepare(cfg: PrepareConfig) -> tuple[dict[str, Any], Any]:
    """One ``prepare`` in this process (its workers are its children: their CPU is measured
    apart from the driver's); the report section and the run's statistics."""
    from .pipeline.run import prepare

    cpu0 = _cpu()
    t0 = time.perf_counter()
    stats = prepare(cfg)
    wall = time.perf_counter() - t0
    cpu1 = _cpu()
    from .pipeline.executor import ExecutorOptions, runs_inline

    secs = stats.seconds
    workers = int(secs.get("workers", 1))
    tasks = stats.this_run.get("tasks", 1) - stats.this_run.get("resumed_tasks", 0)
    inline = runs_inline(ExecutorOptions(kind="local", workers=workers), tasks)
    stages = stage_split(secs, 1 if inline else min(workers, max(tasks, 1)), wall)
    backend = stats.manifest.tokenizer.get("backend", {})
    dedupe = ("minhash" if cfg.recipe.dedupe.minhash is not None
              else "exact" if cfg.recipe.dedupe.exact else "none")
    name = backend.get("name")
    reruns = backend.get("spot_checks", {}).get("tasks_rerun_on_hf", 0)
    if reruns:
        name = f"{name} ({reruns} task(s) rerun on hf)"
    out = {"backend": name, "seq_len": cfg.recipe.pack.seq_len, "workers": workers,
           "dedupe": dedupe, "wall_s": round(wall, 4),
           "mb_s": round(stats.counts["text_bytes"] / 1e6 / max(wall, 1e-9), 3),
           "tokens_per_s": round(stats.counts["tokens"] / max(wall, 1e-9)),
           "documents_kept": stats.counts["records_kept"], "tokens": stats.counts["tokens"],
           "driver_cpu_s": round(cpu1[0] - cpu0[0], 3), "workers_cpu_s": round(cpu1[1] - cpu0[1], 3),
           "stages": stages, "limit": max(stages, key=lambda r: r["wall_s"])["stage"]}
    return out, stats


def bench_packing(lengths: np.ndarray, cfg: PrepareConfig, seq_lens: tuple[int, ...]
                  ) -> list[dict[str, Any]]:
    from .stages.pack import plan

    rows = []
    for L in seq_lens:
        for mode in PACK_MODES:
            pc = dataclasses.replace(cfg.recipe.pack, seq_len=L, mode=mode)
            t = time.perf_counter()
            p = plan(lengths, pc)
            secs = time.perf_counter() - t
            rows.append({"seq_len": L, "mode": mode, "efficiency": round(p.efficiency, 6),
                         "rows": p.n_rows, "documents_split": p.docs_split,
                         "documents_truncated": p.docs_truncated,
                         "padding_share": round(p.padding / (p.n_rows * L), 6) if p.n_rows else 0.0,
                         "plan_s": round(secs, 4)})
    return rows


def bench_loader(dataset: str, seq_len: int, batch_size: int, max_batches: int) -> dict[str, Any]:
    out: dict[str, Any] = {"skipped": None, "seq_len": seq_len, "batch_size": batch_size,
                           "batches": 0, "batches_per_s": None, "real_tokens_per_batch": None,
                           "tokens_per_s": None}
    try:
        from .train.loader import PackedLoader, PackedRows
    except ImportError as e:
        out["skipped"] = f"needs torch ({e}): pip install 'fastprep[train]'"
        return out
    rows = PackedRows(dataset)
    out["batch_size"] = batch_size = min(batch_size, max(len(rows), 1))
    loader = PackedLoader(rows, batch_size=batch_size, seed=0)
    if len(loader) == 0:
        out["skipped"] = f"the sample packs into {len(rows)} rows: fewer than one batch"
        return out
    n = tokens = 0
    it = iter(loader)
    next(it)  # the first batch starts the prefetch threads
    t = time.perf_counter()
    for batch in it:
        n += 1
        tokens += int(batch["n_tokens"])
        if n >= max_batches:
            break
    secs = time.perf_counter() - t
    if n == 0:
        out.update(skipped="one batch only: nothing left to time after the first")
        return out
    out.update(batches=n, batches_per_s=round(n / max(secs, 1e-9), 2),
               real_tokens_per_batch=round(tokens / n, 1),
               tokens_per_s=round(tokens / max(secs, 1e-9)))
    return out


# ---- machine -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        mem = None
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    from .pipeline.executor import available_cores

    return {"cpu": cpu, "cores": available_cores(), "memory_gib": None if mem is None else round(mem, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_before": list(os.getloadavg()), "load_after": None, "versions": versions}


# ---- the command -------------------------------------------------------------------------------

def run_bench(cfg: PrepareConfig, opts: BenchOptions) -> dict[str, Any]:
    """Every section of the report (see :data:`SCHEMA`) for the recipe of ``cfg`` (its inputs,
    tokenizer, record mapping, cleaning, dedupe) on a sample of its inputs."""
    import orjson
    from tqdm import tqdm

    from .stages.backends import support
    from .stages.tokenize import TokenizerBundle

    for L in opts.seq_lens:
        dataclasses.replace(cfg.recipe.pack, seq_len=L)  # each length checked before any work
    report: dict[str, Any] = {"schema": SCHEMA, "machine": machine()}
    cores = report["machine"]["cores"]
    bar = tqdm(total=8, desc="fastprep bench", disable=not opts.progress, leave=False,
               file=sys.stderr, unit="step")

    def step(what: str) -> None:
        bar.set_postfix_str(what, refresh=False)
        bar.update(1)

    tmp = Path(tempfile.mkdtemp(prefix="fastprep-bench-", dir=opts.work_dir))
    try:
        step("sample")
        read, sample = make_sample(cfg.recipe.read.paths, cfg.recipe.read, opts, tmp / "sample")
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, read=read))
        report["sample"] = sample
        # prepare first: a sample with nothing usable fails before the engines run
        step("prepare")
        out = tmp / "dataset"
        run = dataclasses.replace(cfg.run, out=str(out), quiet=True, progress=False,
                                  collect_lengths=True, overwrite=True, dedupe_report=None)
        recipe = dataclasses.replace(cfg.recipe, pack=dataclasses.replace(cfg.recipe.pack,
                                                                           seq_len=opts.seq_lens[0]))
        pcfg = PrepareConfig(recipe=recipe, run=run)
        report["prepare"], stats = _prepare_sample(pcfg, out)
        sample["documents"] = stats.counts["records_kept"]
        bundle = TokenizerBundle(cfg.recipe.tokenize)
        texts = sample_texts(cfg)
        sample["text_bytes"] = text_bytes = sum(len(t.encode("utf-8", "surrogatepass"))
                                                for t in texts)
        texts_path = tmp / "texts.json"
        texts_path.write_bytes(orjson.dumps(texts))
        del texts
        tok_file = tmp / "tokenizer.json"
        tok_file.write_bytes(bundle.json_bytes)
        fast_reason = support(bundle.json_bytes.decode("utf-8"), "fastokens")
        report["backends"] = bench_backends(texts_path, tok_file, text_bytes, cores,
                                            cfg.run.batch_bytes, fast_reason, step)
        texts_path.unlink()
        step("packing")
        report["packing"] = bench_packing(stats.lengths, pcfg, opts.seq_lens)
        step("loader")
        report["loader"] = bench_loader(str(out), opts.seq_lens[0], opts.batch_size,
                                        opts.loader_batches)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report["machine"]["load_after"] = list(os.getloadavg())
    return report


def _prepare_sample(cfg: PrepareConfig, out: Path) -> tuple[dict[str, Any], Any]:
    """:func:`bench_prepare`, with "nothing usable" said about the sample: its quarantine file
    goes with the temporary folder, so the message does not point at it."""
    from .dataset.format import QUARANTINE_FILE
    from .pipeline.quarantine import NothingKept

    try:
        return bench_prepare(cfg)
    except NothingKept as e:
        msg = str(e).replace(f"; see {out / QUARANTINE_FILE}", "")
        raise BenchError(f"{msg} (in the sample; fastprep prepare on the inputs writes "
                         f"{QUARANTINE_FILE})") from None


def render(report: dict[str, Any]) -> str:
    """The report as terminal tables."""
    m, s = report["machine"], report["sample"]
    lines = [f"fastprep bench: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
             f"python {m['python']}, load {' '.join(f'{x:.2f}' for x in m['load_before'])} -> "
             f"{' '.join(f'{x:.2f}' for x in m['load_after'] or [])}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
             f"sample ({s['mode']}{', seed ' + str(s['seed']) if s['mode'] == 'seeded' else ''}): "
             f"{s['files']} file(s), {s['records']:,} records, {s['bytes'] / 1e6:.1f} MB read, "
             f"{s['text_bytes'] / 1e6:.1f} MB of text, {s['documents']:,} documents kept", "",
             "tokenizer engines on the sample's texts in memory",
             f"{'backend':<12}{'threads':>8}{'MB/s':>10}{'Mtok/s':>9}{'x hf 1t':>9}  ids = tokenizers"]
    ref = report["backends"][0]["mb_s"]
    for b in report["backends"]:
        if b["mb_s"] is None:
            lines.append(f"{b['backend']:<12}{b['threads']:>8}  not run: {b['reason']}")
            continue
        lines.append(f"{b['backend']:<12}{b['threads']:>8}{b['mb_s']:>10.2f}"
                     f"{b['tokens_per_s'] / 1e6:>9.2f}{b['mb_s'] / ref:>9.1f}  "
                     f"{'yes' if b['ids_match'] else 'NO'}")
    p = report["prepare"]
    lines += ["", f"fastprep prepare (backend {p['backend']}, dedupe {p['dedupe']}, {p['workers']} "
              f"worker(s), L {p['seq_len']}): {p['wall_s']:.2f} s, {p['mb_s']:.2f} MB/s, "
              f"{p['tokens_per_s']:,} tokens/s; driver CPU {p['driver_cpu_s']:.2f} s, workers "
              f"CPU {p['workers_cpu_s']:.2f} s",
              f"{'stage':<20}{'where':<9}{'seconds':>9}{'wall s':>9}"]
    for st in p["stages"]:
        mark = "  <- limits the run" if st["stage"] == p["limit"] else ""
        lines.append(f"{st['stage']:<20}{st['where']:<9}{st['seconds']:>9.3f}{st['wall_s']:>9.3f}{mark}")
    lines += ["", "packing the kept documents",
              f"{'L':>7}  {'mode':<7}{'efficiency':>11}{'rows':>10}{'split':>8}{'padding':>9}"]
    for r in report["packing"]:
        lines.append(f"{r['seq_len']:>7}  {r['mode']:<7}{100 * r['efficiency']:>10.2f}%"
                     f"{r['rows']:>10,}{r['documents_split']:>8,}{100 * r['padding_share']:>8.2f}%")
    ld = report["loader"]
    lines.append("")
    if ld["skipped"]:
        lines.append(f"loader: skipped: {ld['skipped']}")
    else:
        lines.append(f"loader (L {ld['seq_len']}, batch {ld['batch_size']}): "
                     f"{ld['batches_per_s']:,.1f} batches/s, {ld['real_tokens_per_batch']:,.0f} real "
                     f"tokens per batch, {ld['tokens_per_s']:,} tokens/s over {ld['batches']} batches")
    return "\n".join(lines)
