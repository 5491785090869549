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
and output do not depend on the executor or its size. A local task's failure is acted on when
it happens (Ray's: when the driver next waits), not when its turn comes: the later tasks,
useless now, are cancelled or asked to stop (:class:`Hooks`), so ``--strict`` reports the first
bad record once the tasks before it are done.

Many cores: processes, not one big tokenizer pool, because each process has its own interpreter
and Rust pool and shares nothing but the input files. The serial part is the driver, which
touches every document once; ``benchmarks/bench_stages.py`` measures how many workers one driver
keeps busy (``benchmarks/README.md``). Beyond that, ``--executor ray`` moves MinHash out of the
driver (:mod:`fastprep.dedupe.shuffle`).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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


class WorkerDied(RuntimeError):
    """A local worker process ended without finishing its task (killed, crashed, or a script
    without a ``__main__`` guard)."""


_GUARD = re.compile(r"""^\s*if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.M)


def main_script_without_guard() -> str | None:
    """The main script's path when it has no ``if __name__ == "__main__":`` guard: spawned
    workers re-import it, and its top-level call starts the run again in every one. None for
    ``python -m pkg`` (multiprocessing does not re-run a ``__main__`` module, as
    ``multiprocessing.spawn`` decides by the module's spec), ``-c`` and interactive sessions."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not path or not str(path).endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return None if _GUARD.search(source) else str(path)


def _worker_died() -> WorkerDied:
    script = main_script_without_guard()
    if script is not None:
        return WorkerDied(f"worker processes could not start: {script} calls fastprep at its top "
                          f"level without an `if __name__ == \"__main__\":` guard, and spawned "
                          f"workers import it again; put the call under that guard")
    return WorkerDied("a worker process died before finishing its task (killed by the system, "
                      "e.g. out of memory, or crashed); finished tasks are kept: run the same "
                      "command again to resume")


def exit_if_importing_main() -> None:
    """Called first by a run: in a worker that is still importing the parent's main script
    (one without a ``__main__`` guard), exit quietly instead of starting a second run; the
    parent reports it (:class:`WorkerDied`)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(1)


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


@dataclass
class Hooks:
    """What the caller hears while tasks run: ``done(task)`` as each finishes (in any order:
    progress), ``stop(k)`` when tasks after index ``k`` are no longer wanted (the tasks must
    check for it themselves: a process pool cannot interrupt a running call)."""

    done: Callable[[Any], None] = lambda task: None
    stop: Callable[[int], None] = lambda index: None


def _tell(hook: Callable[[Any], None], arg: Any) -> None:
    """Call a hook without letting its failure replace the error being handled (a stop hook
    writes a file, and a full disk may be why a task failed)."""
    try:
        hook(arg)
    except Exception:  # noqa: BLE001 - the run's own error is the one to report
        pass


class _Watch:
    """Completions of a pool's futures. A failure is acted on in the pool's own callback
    thread the moment it happens, whatever the driver is doing: the later tasks' futures
    are cancelled and ``stop(k)``. Successes go through a queue to the driver's thread, which
    calls ``done`` (O(1) per completion whatever the number of tasks)."""

    def __init__(self, futures: dict[int, Future[Any]], tasks: dict[int, Any], hooks: Hooks) -> None:
        self.futures, self.tasks, self.hooks = futures, tasks, hooks
        self.index = {f: i for i, f in futures.items()}
        self.finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self.failed: int | None = None
        self._lock = threading.Lock()
        for f in list(futures.values()):
            f.add_done_callback(self._completed)

    def _completed(self, f: Future[Any]) -> None:
        # Not for a broken pool: its management thread is then setting an error on every
        # future in turn, and one cancelled meanwhile makes that thread die (InvalidStateError)
        # with the rest never completing. Every task has failed anyway.
        error = None if f.cancelled() else f.exception()
        if error is not None and not isinstance(error, BrokenProcessPool):
            self._fail(self.index[f])
        self.finished.put(f)

    def _fail(self, i: int) -> None:
        with self._lock:
            if self.failed is not None and self.failed <= i:
                return
            self.failed = i
        for j, g in list(self.futures.items()):
            if j > i:
                g.cancel()
        _tell(self.hooks.stop, i)

    def until_done(self, index: int) -> None:
        """Take completions until task ``index``'s is among them."""
        target = self.futures[index]
        while target in self.index:
            f = self.finished.get()
            i = self.index.pop(f, None)
            if i is not None and not f.cancelled() and f.exception() is None:
                _tell(self.hooks.done, self.tasks[i])


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

    def run_in_order(self, fn: Callable[[Any], Any], tasks: list[Any], done: set[int],
                     hooks: Hooks | None = None, largest_first: bool = True) -> Iterator[Any]:
        """Run ``fn`` on every task not in ``done`` and yield every task in task order once
        its result is saved (tasks in ``done`` at once: an interrupted run saved them).

        The caller consumes in task order, so when task ``k`` fails every later task is
        wasted work: those not started are cancelled at once and ``hooks.stop(k)`` asks the
        running ones to stop, while the earlier ones still run (one of them may fail first
        in input order). ``hooks.stop(-1)`` when the caller leaves early.

        Tasks start largest first (the shortest tail), or in task order with
        ``largest_first=False`` (``--strict``: the first bad record in input order is found
        soonest)."""
        hooks = hooks or Hooks()
        order = _largest_first if largest_first else list
        if self.opts.kind == "ray":
            return _ray(fn, tasks, done, self.opts, hooks, order)
        return self._local(fn, tasks, done, hooks, order)

    def _local(self, fn: Callable[[Any], Any], tasks: list[Any], done: set[int],
               hooks: Hooks, order: Callable[[list[Any]], list[Any]]) -> Iterator[Any]:
        todo = [t for t in tasks if t.index not in done]
        if runs_inline(self.opts, len(todo)):
            for t in tasks:
                if t.index not in done:
                    fn(t)
                    hooks.done(t)
                yield t
            return
        self._start()
        assert self.pool is not None
        futures: dict[int, Future[Any]] = {}
        try:
            for t in order(todo):
                futures[t.index] = self.pool.submit(_call, fn, t)
            watch = _Watch(futures, {t.index: t for t in todo}, hooks)
            for t in tasks:
                if t.index in futures:
                    watch.until_done(t.index)
                    futures.pop(t.index).result()  # raises the task's error
                yield t
        except BrokenProcessPool:
            raise _worker_died() from None
        finally:
            if futures:
                for f in futures.values():
                    f.cancel()
                _tell(hooks.stop, -1)

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


RAY_WINDOW = 512


def _ray(fn: Callable[[Any], Any], tasks: list[Any], done: set[int], opts: ExecutorOptions,
         hooks: Hooks, order: Callable[[list[Any]], list[Any]]) -> Iterator[Any]:
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
    by_index = {t.index: t for t in tasks if t.index not in done}
    refs = {t.index: remote.remote(fn_ref, t, threads) for t in order(list(by_index.values()))}
    index = {ref: i for i, ref in refs.items()}
    failed: int | None = None

    def seen(ref: Any) -> None:
        nonlocal failed
        i = index.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return
        except Exception:  # noqa: BLE001 - raised again when the caller reaches task i
            if failed is None or i < failed:
                failed = i
                for j, later in refs.items():
                    if j > i:
                        ray.cancel(later)
                _tell(hooks.stop, i)
            return
        _tell(hooks.done, by_index[i])

    try:
        for t in tasks:
            if t.index in refs:
                while refs[t.index] in index:  # not seen yet: take completions as they come
                    # the next RAY_WINDOW pending tasks in task order: ray.wait's cost grows
                    # with the refs it is given
                    window = [r for _, r in zip(range(RAY_WINDOW), index)]
                    ready, _ = ray.wait(window, num_returns=1)
                    seen(ready[0])
                try:
                    ray.get(refs.pop(t.index))
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, Exception) else e) from None
            yield t
    finally:
        if refs:
            for ref in refs.values():
                ray.cancel(ref)
            _tell(hooks.stop, -1)
