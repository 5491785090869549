"""Executors: run :func:`fastprep.tasks.run_task` over all tasks and yield results in task order.

- ``local`` (default): ``--workers N`` spawned processes (never a fork of a parent that may
  hold tokenizer threads), each with a tokenizer/numba pool of ``cores / N`` threads, fed
  largest task first; with one worker, tasks run inline.
- ``ray``: the same task function as Ray tasks (``--executor ray --address auto``), each
  reserving ``--ray-cpus-per-task`` CPUs and sizing its thread pools to match. Inputs and the
  output folder (whose ``.fastprep-work`` holds the task spills) must be on storage every node
  sees; the driver merges in task order exactly like the local executor, so the bytes are the
  same.

Either way the parent consumes results strictly in task order, so deduplication, line numbers
and output do not depend on the executor or its size.

Many cores: processes, not one big tokenizer pool, because each process has its own interpreter
and rayon pool and shares nothing but the input files. The serial part is the parent, which
touches every document once (dedupe in input order, spill, pack, write);
``benchmarks/bench_stages.py`` measures its CPU per MB against a worker's, which gives the number
of workers one parent keeps busy. Beyond that, ``--executor ray`` moves MinHash out of the parent
(:mod:`fastprep.lsh_shuffle`).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tasks import Task, TaskResult, init_worker, run_task

if TYPE_CHECKING:
    from .prepare import PrepareConfig


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _largest_first(tasks: list[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: (-t.size, t.index))


def _run_saved(task: Task, cfg: PrepareConfig, work: str) -> int:
    """Run a task in a worker; its result goes to the work folder (as it always does, for resume),
    not back through the pool's pipe."""
    run_task(task, cfg, work)
    return task.index


def runs_inline(cfg: PrepareConfig, workers: int, n_todo: int) -> bool:
    """Whether the tasks run in this process (one worker, or at most one task left to run)."""
    return cfg.executor == "local" and (workers == 1 or n_todo <= 1)


def local_results(tasks: list[Task], cfg: PrepareConfig, work: Path, workers: int,
                  done: set[int], load: Callable[[Task], TaskResult]) -> Iterator[TaskResult]:
    """Workers run tasks largest first but the parent consumes them in task order, so finished
    results wait. They wait on disk (the task's saved .npz/.json, in the page cache) and are
    loaded one at a time when their turn comes: the parent's memory does not grow with the number
    of tasks finished early (signatures and shingle sets are ~0.5-1 KB per document)."""
    todo = [t for t in tasks if t.index not in done]
    if runs_inline(cfg, workers, len(todo)):
        for t in tasks:
            yield load(t) if t.index in done else run_task(t, cfg, str(work))
        return
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, available_cores() // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                               initargs=(threads, os.getpid()))
    try:
        futures = {t.index: pool.submit(_run_saved, t, cfg, str(work)) for t in _largest_first(todo)}
        for t in tasks:
            if t.index not in done:
                futures.pop(t.index).result()
            yield load(t)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray_task(task: Task, cfg: PrepareConfig, work: str) -> TaskResult:
    return run_task(task, cfg, work)


def ray_results(tasks: list[Task], cfg: PrepareConfig, work: Path, done: set[int],
                load: Callable[[Task], TaskResult]) -> Iterator[TaskResult]:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'fastprep[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, log_to_driver=False)
    threads = str(cfg.ray_cpus_per_task)
    remote: Any = ray.remote(num_cpus=cfg.ray_cpus_per_task, max_retries=2, runtime_env={
        "env_vars": {"RAYON_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads,
                     "TOKENIZERS_PARALLELISM": "true"}})(_ray_task)
    refs = {t.index: remote.remote(t, cfg, str(work)) for t in _largest_first(
        [t for t in tasks if t.index not in done])}
    try:
        for t in tasks:
            if t.index in done:
                yield load(t)
                continue
            try:
                yield ray.get(refs.pop(t.index))
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, Exception) else e) from None
    finally:
        for ref in refs.values():
            ray.cancel(ref)


def task_results(tasks: list[Task], cfg: PrepareConfig, work: Path, workers: int,
                 done: set[int], load: Callable[[Task], TaskResult]) -> Iterator[TaskResult]:
    """Results strictly in task order (``done``: tasks whose results an interrupted run saved,
    read with ``load``)."""
    if cfg.executor == "ray":
        return ray_results(tasks, cfg, work, done, load)
    return local_results(tasks, cfg, work, workers, done, load)
