"""Where `fastprep prepare` spends its time, per stage and per process, and what that implies for
machines with many more cores than this one.

    python benchmarks/bench_stages.py --mb 50,200 --workers 1,2 --dedupe exact,minhash

For every (corpus size, workers, dedupe) case, one run of ``python -m fastprep prepare ... --json``
in a fresh subprocess (default options otherwise, ``--no-progress``) and, from it:

- the stage seconds the command reports (``seconds`` in its JSON: the task phase wall time, the
  tokenizer seconds and the MinHash signature seconds summed over workers, packing, writing);
- CPU seconds of the driver process alone (``RUSAGE_SELF`` of a small wrapper that runs the CLI
  in-process) and of its workers (``RUSAGE_CHILDREN``), so the driver's sequential share per
  document is measured, not guessed: deduplication in input order, the token spill, packing
  and writing all run there;
- the driver's CPU microseconds per document and per MB; and, split by when it happens, the
  driver's merge during the task phase (what must keep up with the workers: the number of
  workers it keeps fed is the workers' CPU per MB over the merge's seconds per MB) and the pack
  and write stage after the last task (a serial tail, given as MB/s). These decide whether a
  64-core machine is served by one driver.

The corpus and tokenizer come from :mod:`corpus` (cached in ``benchmarks/.cache``). One run per
case: the machine is shared, so read the ratios, not single seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod

WRAPPER = r"""
import atexit, json, resource, sys, runpy


def report():  # at exit: fastprep's CLI ends a finished prepare with os._exit after atexit
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # VmHWM, not ru_maxrss: that one starts from the parent's peak at the fork (see bench_prepare)
    with open("/proc/self/status") as f:
        hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    print("RUSAGE " + json.dumps({"self": s.ru_utime + s.ru_stime, "children": c.ru_utime + c.ru_stime,
                                  "self_maxrss_mb": hwm / 1024}), file=sys.stderr, flush=True)


atexit.register(report)
sys.argv = ["fastprep"] + sys.argv[1:]
runpy.run_module("fastprep", run_name="__main__")
"""


def run_case(text: Path, tokenizer: Path, workers: int, dedupe: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", WRAPPER, "prepare", str(text), "--tokenizer", str(tokenizer),
               "--out", f"{tmp}/out", "--workers", str(workers), "--dedupe", dedupe,
               "--no-progress", "--json"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"prepare failed:\n{p.stderr[-2000:]}")
    stats = json.loads(p.stdout)
    usage = json.loads(next(line for line in p.stderr.splitlines() if line.startswith("RUSAGE "))[7:])
    return {"wall": wall, "stats": stats, **usage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", default="50", help="comma-separated corpus sizes (MB of text)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--dedupe", default="exact,minhash", help="comma-separated dedupe modes")
    args = ap.parse_args()
    tok = corpus_mod.tokenizer_dir()
    rows = []
    for mb in [float(x) for x in args.mb.split(",")]:
        folder = corpus_mod.build(mb)
        text = folder / "text.jsonl"
        text_mb = corpus_mod.load_meta(folder)["text"]["text_bytes"] / 1e6
        for dedupe in args.dedupe.split(","):
            for w in [int(x) for x in args.workers.split(",")]:
                r = run_case(text, tok, w, dedupe)
                sec = r["stats"]["seconds"]
                docs = r["stats"]["counts"]["records_read"]
                # with one worker the tasks run inline in the driver: no split is possible
                worker_cpu = r["children"] if w > 1 else float("nan")
                driver_cpu = r["self"]
                row = {"mb": text_mb, "dedupe": dedupe, "workers": w, "wall": r["wall"],
                       "mb_s": text_mb / r["wall"], "tasks_wall": sec.get("tasks_wall", 0.0),
                       "tokenize": sec.get("tokenize", 0.0),
                       "signatures": sec.get("minhash_signatures", 0.0),
                       "pack": sec.get("pack", 0.0), "write": sec.get("write", 0.0),
                       "merge": sec.get("merge", 0.0),
                       "driver_cpu": driver_cpu, "worker_cpu": worker_cpu, "docs": docs,
                       "driver_us_per_doc": driver_cpu / docs * 1e6,
                       "driver_mb_s": text_mb / driver_cpu,
                       "worker_mb_s": text_mb / worker_cpu * w if w > 1 else float("nan"),
                       "driver_maxrss_mb": r["self_maxrss_mb"]}
                rows.append(row)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                      flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    print("| text MB | dedupe | workers | wall s | MB/s | task phase s | tokenize s (sum) | "
          "signatures s (sum) | pack s | write s | driver CPU s | workers CPU s | "
          "driver µs/doc | driver RSS MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        wc = "inline" if r["workers"] == 1 else f"{r['worker_cpu']:.1f}"
        print(f"| {r['mb']:.1f} | {r['dedupe']} | {r['workers']} | {r['wall']:.1f} | {r['mb_s']:.2f} | "
              f"{r['tasks_wall']:.1f} | {r['tokenize']:.1f} | {r['signatures']:.1f} | {r['pack']:.2f} | "
              f"{r['write']:.2f} | {r['driver_cpu']:.1f} | {wc} | {r['driver_us_per_doc']:.0f} | "
              f"{r['driver_maxrss_mb']:.0f} |")
    # Marginal costs between the smallest and the largest corpus: start-up (interpreter, imports,
    # tokenizer and numba loads) cancels out, what is left grows with the corpus.
    print("\nmarginal cost per MB of text, between the smallest and largest corpus (start-up "
          "cancels out), and the workers one driver can feed at that rate:")
    for dedupe in args.dedupe.split(","):
        for w in sorted({r["workers"] for r in rows if r["workers"] > 1}):
            case = sorted((r for r in rows if r["dedupe"] == dedupe and r["workers"] == w),
                          key=lambda r: r["mb"])
            if len(case) < 2:
                continue
            lo, hi = case[0], case[-1]
            d_mb = hi["mb"] - lo["mb"]
            drv = (hi["driver_cpu"] - lo["driver_cpu"]) / d_mb
            wrk = (hi["worker_cpu"] - lo["worker_cpu"]) / d_mb
            per_doc = (hi["driver_cpu"] - lo["driver_cpu"]) / (hi["docs"] - lo["docs"]) * 1e6
            merge = (hi["merge"] - lo["merge"]) / d_mb
            tail = (hi["pack"] + hi["write"] - lo["pack"] - lo["write"]) / d_mb
            merge_doc = (hi["merge"] - lo["merge"]) / (hi["docs"] - lo["docs"]) * 1e6
            print(f"  {dedupe}, {w} workers: driver {drv:.3f} CPU-s/MB ({per_doc:.0f} µs/doc) in "
                  f"all, workers {wrk:.3f} CPU-s/MB")
            # during the task phase the driver only merges (in task order): that is what must
            # keep up with the workers; packing and writing come after the last task
            print(f"    merge during the task phase {merge:.4f} s/MB ({merge_doc:.1f} µs/doc) -> "
                  f"keeps ~{wrk / max(merge, 1e-9):.0f} workers fed; pack + write after the "
                  f"tasks {tail:.4f} s/MB (a serial tail of ~{1 / max(tail, 1e-9):.0f} MB/s)")


if __name__ == "__main__":
    main()
