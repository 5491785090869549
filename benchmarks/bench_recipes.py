"""What data recipes cost: ``prepare`` with ``--decontaminate`` (a 10 MB evaluation set) and with
``--mix`` + ``--val-fraction``, side by side with the same ``prepare`` without them.

    python benchmarks/bench_recipes.py --mb 50 --eval-mb 10 --repeats 3

The corpus and the 32k tokenizer come from :mod:`corpus` (cached in ``benchmarks/.cache``): its
``text.jsonl``, ``instruct.jsonl`` and ``chat.jsonl``. The evaluation set is made from another
seed's corpus with every document's words shuffled: the same vocabulary, next to no shared
13-gram, so the measured cost is the check itself, not a smaller output (the number of
documents it removed is printed). Cases, each the whole command in a fresh process
(``python -m fastprep prepare ... --workers N --quiet --json``), after one burn-in round, timed
rounds interleaved (A, B, C, A, B, C, ...); the table shows medians and the ratio to ``base``:

- ``base``: exact dedupe, the defaults;
- ``decontam``: the same plus ``--decontaminate eval.jsonl`` (the index built by the driver,
  every document checked by the workers);
- ``mix+val``: the three files as ``--mix`` sources (weights 0.5/0.3/0.2) with
  ``--val-fraction 0.01`` (the validation set written as a second dataset).

The issue's target: ``decontam`` costs at most 10% of the throughput (ratio >= 0.90).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus  # noqa: E402


def eval_set(path: Path, mb: float, seed: int = 1) -> Path:
    """``mb`` MB of evaluation documents: another seed's texts with their words shuffled."""
    if path.is_file():
        return path
    src = corpus.build(max(mb * 1.2, 2.0), seed=seed) / "text.jsonl"
    rng = random.Random(seed)
    out, size = [], 0
    with open(src, encoding="utf-8") as f:
        for line in f:
            words = json.loads(line).get("text", "").split()
            rng.shuffle(words)
            rec = json.dumps({"text": " ".join(words)}) + "\n"
            out.append(rec)
            size += len(rec.encode())
            if size >= mb * 1e6:
                break
    path.write_text("".join(out), encoding="utf-8")
    return path


def run(cmd: list[str]) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall, json.loads(p.stdout)


def cases(c: Path, ev: Path) -> dict[str, list[str]]:
    files = [str(c / n) for n in ("text.jsonl", "instruct.jsonl", "chat.jsonl")]
    mix = [f"{f}={w}" for f, w in zip(files, (0.5, 0.3, 0.2))]
    return {"base": files, "decontam": [*files, "--decontaminate", str(ev)],
            "mix+val": ["--mix", *mix, "--val-fraction", "0.01"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--eval-mb", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    c = corpus.build(a.mb)
    tok = corpus.tokenizer_dir()
    ev = eval_set(c.parent / f"eval-shuffled-mb{a.eval_mb:g}.jsonl", a.eval_mb)
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--tokenizer", str(tok), "--workers", str(a.workers), "--quiet", "--json",
                  "--overwrite"]
        cmds = {k: [sys.executable, "-m", "fastprep", "prepare", *v, *common, "--out",
                    str(Path(tmp) / k)] for k, v in cases(c, ev).items()}
        for cmd in cmds.values():  # burn-in: imports, numba caches, page cache
            run(cmd)
        walls: dict[str, list[float]] = {k: [] for k in cmds}
        stats: dict[str, dict[str, Any]] = {}
        for _ in range(a.repeats):
            for k, cmd in cmds.items():
                w, stats[k] = run(cmd)
                walls[k].append(w)
    text_bytes = stats["base"]["counts"]["text_bytes"]
    print(f"corpus {c.name}: {text_bytes / 1e6:.1f} MB of text; eval set {ev.stat().st_size / 1e6:.1f} MB; "
          f"{a.workers} workers; load {os.getloadavg()[0]:.2f}; medians of {a.repeats}")
    base = statistics.median(walls["base"])
    for k, w in walls.items():
        m = statistics.median(w)
        extra = ""
        if k == "decontam":
            extra = f"  contaminated {stats[k]['counts']['dropped'].get('contaminated', 0):,}"
        print(f"{k:<10} {m:7.2f} s  {text_bytes / 1e6 / m:7.2f} MB/s  throughput x{base / m:.3f}"
              f"  (runs {', '.join(f'{x:.2f}' for x in w)}){extra}")


if __name__ == "__main__":
    main()
