"""The executor sees a task's failure when it happens: later tasks are cancelled or stopped, so
``--strict`` reports the first bad record without waiting for the rest of the corpus."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from conftest import make_texts, write_jsonl
from fastprep.pipeline.executor import ExecutorOptions, Hooks, Workers
from fastprep.pipeline.tasks import (STOP_FILE, TaskSpec, TaskStopped, TaskStrictError, clear_stop,
                                     plan_tasks, run_task, stop_tasks_after, task_file)
from fastprep.stages.clean import CleanConfig
from fastprep.stages.read import ReadConfig
from fastprep.stages.records import RecordConfig
from fastprep.stages.tokenize import TokenizeConfig, TokenizerBundle


def _spec(tokenizer_dir: Path, paths: tuple[str, ...], batch_bytes: int = 1 << 20) -> TaskSpec:
    bundle = TokenizerBundle(TokenizeConfig(tokenizer=str(tokenizer_dir)))
    return TaskSpec(read=ReadConfig(paths=paths), records=RecordConfig(), clean=CleanConfig(),
                    exact=True, minhash=None, tokenizer=bundle.spec, batch_bytes=batch_bytes,
                    strict=True)


def _files(tmp_path: Path, bad_first: bool) -> list[str]:
    bad = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=[b"{bad"] + [b'{"text": "x"}'] * 5)
    big = write_jsonl(tmp_path / "big.jsonl", [{"text": t} for t in make_texts(40000, max_words=60)])
    small = [write_jsonl(tmp_path / f"c{i:02d}.jsonl", [{"text": t} for t in make_texts(200, seed=i)])
             for i in range(30)]
    return [str(p) for p in ([bad, big] if bad_first else [big, bad])] + [str(p) for p in small]


@pytest.mark.parametrize("bad_first", [True, False], ids=["bad-then-big", "big-then-bad"])
def test_a_strict_failure_stops_the_later_tasks_not_the_earlier(tmp_path: Path, tokenizer_dir: Path,
                                                               bad_first: bool) -> None:
    """In task order (as --strict schedules), with two workers.

    bad-then-big: task 0 fails on its first line while task 1 (large) runs: task 1 is asked to
    stop between batches (no result saved) and the small later tasks never start.
    big-then-bad: task 1 fails while task 0 (large, earlier: it may still fail first) runs on:
    the failure is seen at once, not when task 0 is done, so the small tasks after it are
    cancelled instead of running on the free worker; task 0 finishes.

    Without the early stop every task runs to the end (bug caught: --strict reported the first
    bad line of a 280 MB file after 149 s, when every task had finished)."""
    files = _files(tmp_path, bad_first)
    bad_index = 0 if bad_first else 1
    tasks = plan_tasks(files, 1 << 30)  # one task per file
    assert [t.file for t in tasks] == list(range(32))
    work = tmp_path / "work"
    work.mkdir()
    # small batches: the big task checks for a stop often
    fn = functools.partial(run_task, spec=_spec(tokenizer_dir, tuple(files), batch_bytes=4096),
                           work=str(work))
    stops: list[int] = []
    done: list[int] = []

    def stop(k: int) -> None:
        stops.append(k)
        if bad_first:  # the running big task needs the stop file; in big-then-bad the
            stop_tasks_after(work, k)  # executor's own cancelling is what is tested

    hooks = Hooks(done=lambda t: done.append(t.index), stop=stop)
    with Workers(ExecutorOptions(workers=2)) as pool:
        with pytest.raises(TaskStrictError) as e:
            for _ in pool.run_in_order(fn, tasks, set(), hooks, largest_first=False):
                pass
    assert (e.value.task, e.value.line) == (bad_index, 1)
    assert stops[0] == bad_index
    saved = {int(p.name.split("-")[1].split(".")[0]) for p in work.glob("task-*.json")}
    if bad_first:
        assert 1 not in saved  # the big task stopped mid-way: no result saved for it
    else:
        assert 0 in saved  # the earlier task ran to its end
    small = saved - {0, 1}
    assert len(small) < 8, sorted(small)  # never started (a few may have been queued early)
    assert set(done) <= saved  # a task finishing while the run stops is saved, unreported


def test_stop_file_rules(tmp_path: Path, tokenizer_dir: Path) -> None:
    """The lowest failed index wins; a task at or below it never stops; clearing resets it."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50)])
    spec = _spec(tokenizer_dir, (str(data),))
    [task] = plan_tasks([str(data)], 1 << 30)
    stop_tasks_after(tmp_path, 5)
    stop_tasks_after(tmp_path, 9)  # a later failure does not raise the bar
    assert (tmp_path / STOP_FILE).read_text() == "5"
    run_task(task, spec, str(tmp_path))  # task 0 <= 5: runs
    assert task_file(tmp_path, task, "json").is_file()
    stop_tasks_after(tmp_path, -1)  # the caller left: everything stops
    with pytest.raises(TaskStopped):
        run_task(task, spec, str(tmp_path))
    clear_stop(tmp_path)
    run_task(task, spec, str(tmp_path))
    assert json.loads(task_file(tmp_path, task, "json").read_text())["n_lines"] == 50


def test_strict_run_keeps_the_stop_file_until_the_workers_are_gone(tmp_path: Path, tokenizer_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() discards the work folder of a failed --strict run only after the pool has shut
    down (bug caught: the folder, and the stop file in it, went first, so running tasks never
    saw the stop and the error waited for them to finish)."""
    from conftest import prep_config
    from fastprep import prepare
    from fastprep.pipeline.quarantine import StrictError
    from fastprep.pipeline import executor

    bad = write_jsonl(tmp_path / "a.jsonl", [], raw_lines=[b"{bad"])
    big = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in make_texts(3000)])
    out = tmp_path / "out"
    seen: list[tuple[bool, bool]] = []
    real_close = executor.Workers.close

    def close(self) -> None:
        if self.pool is not None:
            work = out / ".fastprep-work"
            seen.append(((work / STOP_FILE).is_file(), work.is_dir()))
        real_close(self)

    monkeypatch.setattr(executor.Workers, "close", close)
    with pytest.raises(StrictError, match="a.jsonl:1"):
        prepare(prep_config([bad, big], out, tokenizer_dir, workers=2, strict=True, task_bytes=10_000))
    assert seen == [(True, True)]
    assert not (out / ".fastprep-work").exists()  # then discarded: nothing to resume
