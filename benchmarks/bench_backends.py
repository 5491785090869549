"""Tokenizer backends side by side: tokenizers (the reference) against fastokens on the same texts.

    python benchmarks/bench_backends.py --mb 50 --repeats 3
    python benchmarks/bench_backends.py --huge-mib 50        # also one 50 MiB document

Two measurements, each case in a fresh subprocess (so thread variables apply and memory is its
own), interleaved over ``--repeats`` rounds, medians shown:

- **texts in memory**: the corpus's ``text`` fields (:mod:`corpus`, the 32k byte-level BPE) in
  ~1 MB batches through each backend's batch call (``tokenizers`` ``encode_batch_fast``,
  fastokens ``encode_batch_flat``), special strings kept as text, on one thread
  (``RAYON_NUM_THREADS=1``, ``FASTOKENS_BPE_THREADS=1``) and with each library's own pool. The
  ids of every document are hashed: the table says whether each backend's hash equals the
  reference's.
- **one huge document** (``--huge-mib``): a single JSONL record of that many MiB of the corpus'
  text through the whole ``fastprep prepare --workers 1`` with each ``--tokenizer-backend``:
  wall time and the process's peak RSS (``VmHWM``), and whether the shards are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prepare as bp  # noqa: E402  (measuring helpers: subprocess, VmHWM, versions)
import corpus as corpus_mod  # noqa: E402

ONE = {"RAYON_NUM_THREADS": "1", "FASTOKENS_BPE_THREADS": "1"}
CASES = [("tokenizers", "1t", ONE), ("fastokens", "1t", ONE), ("tokenizers", "mt", {}),
         ("fastokens", "mt", {})]


def child(backend: str, path: str, tok: str) -> dict[str, Any]:
    import numpy as np
    import orjson

    with open(path, "rb") as f:
        texts = [orjson.loads(line)["text"] for line in f if line.strip()]
    batches: list[list[str]] = [[]]
    size = 0
    for t in texts:
        batches[-1].append(t)
        size += len(t)
        if size >= 1 << 20:
            batches.append([])
            size = 0
    raw = (Path(tok) / "tokenizer.json").read_text()
    if backend == "fastokens":
        import fastokens

        ft = fastokens.Tokenizer.from_json_str(raw)

        def encode(b: list[str]) -> tuple[bytes, np.ndarray]:
            ids, off = ft.encode_batch_flat(b, add_special_tokens=False, split_special_tokens=True)
            return ids, np.frombuffer(off, np.uint64)
    else:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_str(raw)
        tk.encode_special_tokens = True

        def encode(b: list[str]) -> tuple[bytes, np.ndarray]:
            encs = tk.encode_batch_fast(b, add_special_tokens=False)
            lens = np.array([0] + [len(e.ids) for e in encs], np.uint64)
            ids = np.fromiter((i for e in encs for i in e.ids), np.uint32, int(lens.sum()))
            return ids.tobytes(), np.cumsum(lens)
    encode(texts[:64])
    h = hashlib.sha256()
    tokens = 0
    t0 = time.perf_counter()
    for b in batches:
        ids, off = encode(b)
        h.update(ids)
        h.update(off.tobytes())
        tokens += int(off[-1])
    dt = time.perf_counter() - t0
    mb = sum(len(t.encode()) for t in texts) / 1e6
    return {"seconds": dt, "mb": mb, "tokens": tokens, "sha256": h.hexdigest()}


def huge(mib: float, tok: str, work: Path) -> list[dict[str, Any]]:
    import orjson

    src = corpus_mod.build(50) / "text.jsonl"
    parts, n = [], 0
    with open(src, "rb") as f:
        for line in f:
            t = orjson.loads(line)["text"]
            parts.append(t)
            n += len(t.encode())
            if n >= mib * 2**20:
                break
    doc = work / f"huge-{mib:g}.jsonl"
    doc.write_bytes(orjson.dumps({"text": "\n".join(parts)}) + b"\n")
    out = []
    for backend in ("fastokens", "hf"):
        wd = Path(tempfile.mkdtemp(dir=work))
        cmd = [sys.executable, "-c", bp.FASTPREP, "prepare", str(doc), "--tokenizer", tok, "--out",
               str(wd / "out"), "--workers", "1", "--tokenizer-backend", backend, "--no-progress",
               "--json"]
        r = bp.run_cmd(cmd, dict(os.environ))
        shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted((wd / "out").glob("shard-*"))}
        out.append({"backend": backend, "seconds": r["wall"], "maxrss_mb": r["maxrss_mb"],
                    "shards": shards})
        subprocess.run(["rm", "-rf", str(wd)], check=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--huge-mib", type=float, default=0, help="also one document of this size")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--input", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.input, a.tokenizer)))
        print(f"VMHWM_KB {bp.vmhwm_kb()}", file=sys.stderr, flush=True)
        return
    tok = str(corpus_mod.tokenizer_dir())
    folder = corpus_mod.build(a.mb)
    path = str(folder / "text.jsonl")
    print(f"# bench_backends: {bp.cores()} cores ({bp.cpu_model()}), load {bp.loadavg()}")
    print("# " + ", ".join(f"{k} {v}" for k, v in bp.versions().items()))
    runs: dict[str, list[dict[str, Any]]] = {f"{b}-{t}": [] for b, t, _ in CASES}
    for r in range(a.repeats):
        for b, t, env in CASES:
            cmd = [sys.executable, __file__, "--child", b, "--input", path, "--tokenizer", tok]
            m = bp.run_cmd(cmd, {**os.environ, **env})
            m.update(json.loads(m.pop("stdout").strip().splitlines()[-1]))
            runs[f"{b}-{t}"].append(m)
            print(f"#   round {r + 1} {b}-{t:<3} {m['mb'] / m['seconds']:8.1f} MB/s  load {bp.loadavg()}",
                  flush=True)
    ref = runs["tokenizers-1t"][0]["sha256"]
    base = statistics.median(m["mb"] / m["seconds"] for m in runs["tokenizers-1t"])
    print(f"\n## {runs['tokenizers-1t'][0]['mb']:.1f} MB of text in memory, medians of {a.repeats}")
    print(f"{'backend':<18}{'MB/s':>9}{'Mtok/s':>9}{'x tokenizers 1t':>17}{'RSS MiB':>9}  ids = tokenizers")
    for name, ms in runs.items():
        mbs = statistics.median(m["mb"] / m["seconds"] for m in ms)
        tks = statistics.median(m["tokens"] / m["seconds"] for m in ms) / 1e6
        same = all(m["sha256"] == ref for m in ms)
        print(f"{name:<18}{mbs:>9.1f}{tks:>9.2f}{mbs / base:>17.1f}{max(m['maxrss_mb'] for m in ms):>9.0f}"
              f"  {'yes' if same else 'NO'}")
    if a.huge_mib:
        work = corpus_mod.CACHE / "runs"
        work.mkdir(parents=True, exist_ok=True)
        rows = huge(a.huge_mib, tok, work)
        print(f"\n## one {a.huge_mib:g} MiB document through fastprep prepare --workers 1")
        for r in rows:
            print(f"{r['backend']:<12}{r['seconds']:>8.1f} s{r['maxrss_mb']:>9.0f} MiB peak RSS")
        print(f"shards identical: {'yes' if rows[0]['shards'] == rows[1]['shards'] else 'NO'}")
    print(f"\n# load average after {bp.loadavg()}")


if __name__ == "__main__":
    main()
