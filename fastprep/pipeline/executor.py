"""Executors: run a task function over all tasks and hand the tasks back in task order.

The executor knows the work only as ``fn(task)``, a picklable callable whose result goes to the
work folder (the resume unit; :mod:`fastprep.pipeline.tasks` saves it); it yields each task, in
task order, once its result is there, and the caller loads it. It owns worker start-up: thread
counts, the parent watch and numba's BLAS probe (:func:`worker_env`, :func:`setup_worker`), the
same for local processes and Ray tasks.

- ``local`` (default): ``workers`` spawned processes (never a fork of a parent that may hold
  tokenizer threads), each with a tokenizer/numba pool of ``cores / workers`` threads, fed
  largest task first; with one worker, or one task left, tasks run inline.
- ``ray``: the same function as Ray tasks, each reserving ``ray_cpus_per_task`` CPUs and
  sizing its thread pools to match. Inputs and the work folder must be on storage every node
  sees.

Either way the caller consumes results strictly in task order, so deduplication, line numbers
and output do not depend on the executor or its size.

Many cores: processes, not one big tokenizer pool, because each process has its own interpreter
and Rust pool and shares nothing but the input files. The serial part is the driver, which
touches every document once; ``benchmarks/bench_stages.py`` measures how many workers one driver
keeps busy (``benchmarks/README.md``). Beyond that, ``--executor ray`` moves MinHash out of the
driver (:mod:`fastprep.dedupe.shuffle`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ExecutorOptions:
    """Where tasks run (the run options' executor fields; no configuration beyond these)."""

    kind: Literal["local", "ray"] = "local"
    workers: int = 1
    ray_address: str | None = None
    ray_cpus_per_task: int = 1


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker with ``threads`` threads for the tokenizers' Rust pools
    (``tokenizers``, ``fastokens``) and numba's kernels (MinHash signatures); set before any is
    first used there."""
    env = {"TOKENIZERS_PARALLELISM": "true"}
    if threads > 0:
        env.update(RAYON_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
                   FASTOKENS_BPE_THREADS=str(threads))
    return env


def setup_worker(threads: int, parent: int | None = None) -> None:
    """Start-up of a worker process (a pool initializer, or the first thing a Ray task does).

    Sets :func:`worker_env`. Refuses numba's BLAS probe: numba's first compile or cache load in
    a process imports ``scipy.linalg`` to look for a BLAS, a large share of MinHash's fixed
    start-up per worker where scipy is installed; fastprep's kernels use no BLAS and a worker
    runs only fastprep's tasks, so numba records "no BLAS" and compiles everything else as
    before. With ``parent`` (local processes), exits when the parent dies: a pool worker
    blocked on its queue would otherwise outlive a parent killed with SIGKILL, holding its task
    files and the terminal's pipes. ``parent`` must come from the parent: one killed while this
    worker was still starting has already been replaced by the reaper by the time this runs,
    and a watch that took ``os.getppid()`` here would wait for a change that never comes."""
    os.environ.update(worker_env(threads))
    sys.modules.setdefault("scipy.linalg", None)  # type: ignore[arg-type]
    if parent is None:
        return
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="fastprep-parent-watch", daemon=True).start()


def runs_inline(opts: ExecutorOptions, n_todo: int) -> bool:
    """Whether the tasks run in this process (one local worker, or at most one task to run)."""
    return opts.kind == "local" and (opts.workers == 1 or n_todo <= 1)


def _largest_first(tasks: list[Any]) -> list[Any]:
    return sorted(tasks, key=lambda t: (-t.size, t.index))


def _call(fn: Callable[[Any], Any], task: Any) -> int:
    """Run a task in a worker; its result goes to the work folder, not back through the pipe
    (results wait there until their turn, so the driver's memory does not grow with the number
    of tasks finished early)."""
    fn(task)
    return task.index


def _init(threads: int, parent: int, warm: Callable[[], None] | None) -> None:
    setup_worker(threads, parent)
    if warm is not None:
        try:
            warm()
        except Exception:  # noqa: BLE001 - a warm-up is an optimisation: the task redoes it
            pass


class Workers:
    """Local worker processes, started before the tasks are known so their start-up (the
    interpreter, imports, and ``warm``: loading the run's tokenizer) overlaps the driver's own
    preparation (the parity gate, the output folder). ``warm`` must be picklable and must not
    raise (a failure is ignored). Use as a context manager."""

    def __init__(self, opts: ExecutorOptions, warm: Callable[[], None] | None = None,
                 start: bool = True) -> None:
        self.opts, self.warm = opts, warm
        self.pool: ProcessPoolExecutor | None = None
        if start:
            self._start()

    def _start(self) -> None:
        if self.pool is not None or self.opts.kind != "local" or self.opts.workers < 2:
            return
        threads = max(1, available_cores() // self.opts.workers)
        self.pool = ProcessPoolExecutor(
            max_workers=self.opts.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init, initargs=(threads, os.getpid(), self.warm))
        for _ in range(self.opts.workers):  # spawn them now: a pool starts workers lazily
            self.pool.submit(int)

    def run_in_order(self, fn: Callable[[Any], Any], tasks: list[Any],
                     done: set[int]) -> Iterator[Any]:
        """Run ``fn`` on every task not in ``done`` and yield every task in task order once
        its result is saved (tasks in ``done`` at once: an interrupted run saved them)."""
        if self.opts.kind == "ray":
            return _ray(fn, tasks, done, self.opts)
        return self._local(fn, tasks, done)

    def _local(self, fn: Callable[[Any], Any], tasks: list[Any], done: set[int]) -> Iterator[Any]:
        todo = [t for t in tasks if t.index not in done]
        if runs_inline(self.opts, len(todo)):
            for t in tasks:
                if t.index not in done:
                    fn(t)
                yield t
            return
        self._start()
        assert self.pool is not None
        futures = {t.index: self.pool.submit(_call, fn, t) for t in _largest_first(todo)}
        try:
            for t in tasks:
                if t.index not in done:
                    futures.pop(t.index).result()
                yield t
        finally:
            for f in futures.values():
                f.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _ray_call(fn: Callable[[Any], Any], task: Any, threads: int) -> int:
    setup_worker(threads)
    return _call(fn, task)


def _ray(fn: Callable[[Any], Any], tasks: list[Any], done: set[int],
         opts: ExecutorOptions) -> Iterator[Any]:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'fastprep[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=opts.ray_address, log_to_driver=False)
    threads = opts.ray_cpus_per_task
    remote: Any = ray.remote(num_cpus=threads, max_retries=2,
                             runtime_env={"env_vars": worker_env(threads)})(_ray_call)
    fn_ref = ray.put(fn)
    refs = {t.index: remote.remote(fn_ref, t, threads)
            for t in _largest_first([t for t in tasks if t.index not in done])}
    try:
        for t in tasks:
            if t.index in refs:
                try:
                    ray.get(refs.pop(t.index))
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else e) from None
            yield t
    finally:
        for ref in refs.values():
            ray.cancel(ref)


def run_in_order(fn: Callable[[Any], Any], tasks: list[Any], done: set[int],
                 opts: ExecutorOptions) -> Iterator[Any]:
    """:meth:`Workers.run_in_order` with workers started for this call alone."""
    with Workers(opts) as workers:
        yield from workers.run_in_order(fn, tasks, done)
