"""How many cores' worth of tokenization this machine really delivers.

Runs raw ``Tokenizer.encode_batch_fast`` with ``RAYON_NUM_THREADS=1`` (texts already in memory,
~1 MB batches) in one process alone, then in N processes started at once, and prints each
process's MB/s and the aggregate against N x the single-process figure. On a VM whose vCPUs share
a physical core, N processes give less than N x one: then "cores x single-thread speed" is not a
reachable limit, and the default multi-threaded pool is the practical ceiling.

    python benchmarks/bench_scaling.py                 # corpus/tokenizer from benchmarks/.cache
    python benchmarks/bench_scaling.py --procs 2 --mb 12
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def child(tokenizer: str, corpus: str, mb: float) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    texts, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode())
            if size >= mb * 1e6:
                break
    batches, cur, n = [], [], 0
    for t in texts:
        cur.append(t)
        n += len(t)
        if n > 1 << 20:
            batches.append(cur)
            cur, n = [], 0
    batches.append(cur)
    tok.encode_batch_fast(batches[0])  # burn-in
    t0 = time.perf_counter()
    for b in batches:
        tok.encode_batch_fast(b)
    print(json.dumps({"mb": size / 1e6, "seconds": time.perf_counter() - t0}))


def run(n: int, args: argparse.Namespace) -> list[float]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--tokenizer", args.tokenizer, "--corpus", args.corpus,
           "--mb", str(args.mb)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env) for _ in range(n)]
    rates = []
    for p in procs:
        out = json.loads(p.communicate()[0])
        rates.append(out["mb"] / out["seconds"])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--mb", type=float, default=12.0, help="text per process")
    ap.add_argument("--tokenizer", default=next(iter(sorted(glob.glob(f"{CACHE}/tokenizer-*/tokenizer.json"))), ""))
    ap.add_argument("--corpus", default=next(iter(sorted(glob.glob(f"{CACHE}/corpus-*/text.jsonl"))), ""))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.tokenizer or not args.corpus:
        sys.exit("build the corpus first: python benchmarks/corpus.py --mb 20")
    if args.child:
        child(args.tokenizer, args.corpus, args.mb)
        return
    alone = run(1, args)[0]
    together = run(args.procs, args)
    print(f"one process alone:        {alone:.2f} MB/s")
    print(f"{args.procs} processes at once:     " + ", ".join(f"{r:.2f}" for r in together) + " MB/s")
    print(f"aggregate / (N x alone):  {sum(together) / (args.procs * alone):.2f}  "
          f"(1.00 = perfect scaling; rates overlap only partly, so this is an upper bound)")


if __name__ == "__main__":
    main()
