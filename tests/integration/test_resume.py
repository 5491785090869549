"""Crash safety: SIGKILL `fastprep prepare` at seeded points, resume, and get byte-identical output."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_texts, write_jsonl


def hashes(folder: Path) -> dict[str, str]:
    # files only: a kill between the manifest's rename and the work folder's removal leaves a
    # finished dataset plus a stale .fastprep-work, which readers ignore; the manifest without
    # the record of which backend ran (the one part of a dataset that may differ by backend)
    def content(p: Path) -> bytes:
        if p.name != "manifest.json":
            return p.read_bytes()
        m = json.loads(p.read_text())
        m["tokenizer"].pop("backend")
        return json.dumps(m, sort_keys=True).encode()

    return {p.name: hashlib.sha256(content(p)).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sigkill_at_ten_points_then_resume_is_byte_identical(tmp_path: Path, tokenizer_dir: Path) -> None:
    recs = [{"text": t} for t in make_texts(3000, seed=4, max_words=120)]
    recs += [{"prompt": f"q{i} alpha", "completion": f" a{i} beta"} for i in range(300)]
    write_jsonl(tmp_path / "a.jsonl", recs[:1700])
    write_jsonl(tmp_path / "b.jsonl", recs[1700:] + recs[:50], raw_lines=[b"{broken"])
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]

    # The reference backend keeps runs long enough for kills to land between finished tasks;
    # the last run finishes on the fast one: results saved by either backend are the same bytes.
    def cmd(out: Path, workers: int, backend: str = "hf") -> list[str]:
        return [sys.executable, "-m", "fastprep", "prepare", *inputs, "--tokenizer", str(tokenizer_dir),
                "--seq-len", "128", "--out", str(out), "--task-bytes", "20000", "--shard-rows", "50",
                "--workers", str(workers), "--no-progress", "--tokenizer-backend", backend]

    t0 = time.perf_counter()
    subprocess.run(cmd(tmp_path / "ref", 1), check=True, capture_output=True, timeout=300)
    duration = time.perf_counter() - t0
    reference = hashes(tmp_path / "ref")

    marker = f"FASTPREP_KILL_TEST={os.getpid()}-{time.time_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    rng = random.Random(1234)
    out = tmp_path / "out"
    kills = 0
    resumed = 0
    rounds = 0
    while kills < 10:  # ten kills that land mid-run; a round that finishes first does not count
        rounds += 1
        assert rounds <= 30, f"only {kills} kills landed in 30 rounds"
        i = rounds
        workers = 2 if i % 3 == 2 else 1  # the worker count must not matter either
        log = tmp_path / f"run{i}.err"
        with open(log, "wb") as err_f:
            proc = subprocess.Popen(cmd(out, workers), stdout=subprocess.DEVNULL, stderr=err_f, env=env)
        time.sleep(rng.uniform(0.2, duration * 0.9))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=120)
        err = log.read_bytes()
        assert proc.returncode in (0, -signal.SIGKILL), err
        resumed += b"resumed" in err
        if (out / "manifest.json").exists():  # finished before the kill: compare, start afresh
            assert hashes(out) == reference
            subprocess.run(["rm", "-rf", str(out)], check=True)
    final = subprocess.run(cmd(out, 1, "auto"), capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert hashes(out) == reference
    assert resumed + (b"resumed" in final.stderr) >= 1  # some run really reused finished tasks
    time.sleep(1.5)  # the workers' parent watch polls every 0.5 s
    assert not marked_processes(marker), "worker processes outlived their killed parent"


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (children inherit it)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def test_worker_whose_parent_died_during_start_exits() -> None:
    """A pool worker gets its parent's pid from the parent: if that parent died while the worker
    was still importing, the worker exits in its initializer instead of waiting forever."""
    code = ("import os, sys\n"
            "from fastprep.pipeline.executor import setup_worker\n"
            "setup_worker(1, parent=int(sys.argv[1]))\n"
            "print('alive')\n")
    gone = subprocess.run([sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "alive" not in gone.stdout
    alive = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True,
                           text=True, timeout=60)
    assert alive.returncode == 0 and alive.stdout.strip() == "alive", alive.stderr
