"""Decontamination: ``NgramIndex.match`` throughput per core, against a Python set of n-gram
tuples (the usual approach of evaluation-decontamination scripts, GPT-3 / lm-eval-harness style).

    python benchmarks/bench_decontam.py                       # 50 MB corpus, 10 MB evaluation set
    python benchmarks/bench_decontam.py --mb 200 --eval-mb 10 --peer-mb 2

Evaluation set: ``--eval-mb`` MB of generated English-like prose (words drawn with the benchmark
corpus's own word frequencies; sentences with capitals, commas and full stops; seeded).
Training text, each timed on its own:

- ``corpus``: the ``text`` fields of the benchmark corpus (:mod:`corpus`, ``--mb`` MB: the
  standard library's prose and code), the text every other benchmark uses;
- ``prose``: the same amount of generated prose (other seed), the case the issue's budget is
  stated for (English prose, about 6 bytes per word).

One training document in ``PLANT_EVERY`` gets a 13-word window of a random evaluation document,
re-cased and re-punctuated; before anything is timed, the planted documents must all be found
with their evaluation document and nothing else may be flagged (the generated words cannot form
a 13-gram of the evaluation set by chance).

Timing: ``match`` over batches of 1 MiB of text (``--batch-bytes`` of ``fastprep prepare``),
one untimed pass first (compilation, page cache), then ``--rounds`` passes; the median is
reported, as MB/s per core from the thread's CPU time (the machine is shared; the call runs on
one thread) and from wall time. The peer builds its set from the whole evaluation set and checks
``--peer-mb`` MB of the corpus text; its flags must equal fastprep's on that text.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod

from fastprep.dedupe.decontam import NgramIndex

N = 13
PLANT_EVERY = 200
BATCH_BYTES = 1 << 20
WORD = re.compile(rb"[a-z0-9\x80-\xff]+")  # fastprep's word rule, on ASCII-lower-cased bytes


def rss_mb() -> float:
    """Resident set size of this process, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def corpus_texts(mb: float) -> list[str]:
    folder = corpus_mod.build(mb)
    with open(folder / "text.jsonl", "rb") as f:
        return [orjson.loads(line)["text"] for line in f]


def vocabulary(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Words of the corpus and their frequencies (a Zipf-like English-ish distribution)."""
    counts = collections.Counter(re.findall(r"[A-Za-z]+", " ".join(texts[:4000])))
    words = sorted(counts)
    freq = np.array([counts[w] for w in words], dtype=np.float64)
    return words, freq / freq.sum()


def prose(words: list[str], p: np.ndarray, mb: float, seed: int) -> list[str]:
    """Documents of 2-6 paragraphs of 3-8 sentences of 6-24 words, about ``mb`` MB; every
    eighth word or so ends with a comma."""
    rng = np.random.default_rng(seed)
    vocab = np.array(words, dtype=object)
    stream = vocab[rng.choice(len(vocab), size=int(mb * 1e6 / 5) + 100_000, p=p)].tolist()
    commas = set(rng.choice(len(stream), size=len(stream) // 8, replace=False).tolist())
    pos = 0
    docs: list[str] = []
    total = 0
    while total < mb * 1e6:
        paras = []
        for _ in range(int(rng.integers(2, 7))):
            sents = []
            for _ in range(int(rng.integers(3, 9))):
                n = int(rng.integers(6, 25))
                if pos + n > len(stream):
                    pos = 0
                ws = [w + "," if pos + j in commas and j < n - 1 else w
                      for j, w in enumerate(stream[pos:pos + n])]
                pos += n
                ws[0] = ws[0].capitalize()
                sents.append(" ".join(ws) + ".")
            paras.append(" ".join(sents))
        docs.append("\n\n".join(paras))
        total += len(docs[-1])
    return docs


def plant(texts: list[str], evals: list[str], seed: int) -> tuple[list[str], list[int]]:
    """A copy of ``texts`` where every PLANT_EVERY-th document holds a re-cased, re-punctuated
    13-word window of a random evaluation document; the expected match per document."""
    rng = np.random.default_rng(seed)
    out, want = list(texts), [-1] * len(texts)
    for i in range(0, len(texts), PLANT_EVERY):
        e = int(rng.integers(len(evals)))
        words = evals[e].split()
        k = int(rng.integers(len(words) - N + 1))
        window = " -- ".join(w.upper() if j % 3 == 0 else w for j, w in enumerate(words[k:k + N]))
        at = texts[i].find(" ", len(texts[i]) // 2)
        at = len(texts[i]) if at < 0 else at
        out[i] = texts[i][:at] + " (" + window + ") " + texts[i][at:]
        want[i] = e
    return out, want


def batches(texts: list[str]) -> list[list[str]]:
    out, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if size >= BATCH_BYTES:
            out.append(cur)
            cur, size = [], 0
    return out + ([cur] if cur else [])


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median (CPU seconds of this thread, wall seconds) over ``rounds`` calls after one burn-in."""
    fn()
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def peer_words(text: str) -> list[bytes]:
    return WORD.findall(text.encode("utf-8", "surrogatepass").lower())


def peer_build(evals: Sequence[str]) -> set[tuple[bytes, ...]]:
    grams: set[tuple[bytes, ...]] = set()
    for t in evals:
        w = peer_words(t)
        grams.update(tuple(w[k:k + N]) for k in range(len(w) - N + 1))
    return grams


def peer_match(grams: set[tuple[bytes, ...]], texts: Sequence[str]) -> list[bool]:
    out = []
    for t in texts:
        w = peer_words(t)
        out.append(any(tuple(w[k:k + N]) in grams for k in range(len(w) - N + 1)))
    return out


def run_case(name: str, index: NgramIndex, texts: list[str], want: list[int], rounds: int) -> float:
    """Check, then time, ``index.match`` over one training set; returns MB/s per core."""
    mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    parts = batches(texts)
    got = np.concatenate([index.match(b) for b in parts])
    planted = sum(w >= 0 for w in want)
    if got.tolist() != want:
        bad = int(np.flatnonzero(got != np.array(want))[0])
        raise SystemExit(f"{name}: document {bad} gave {got[bad]}, expected {want[bad]}")
    cpu, wall = timed(lambda: [index.match(b) for b in parts], rounds)
    print(f"{name:7s} {mb:7.1f} MB, {len(texts):,} docs ({planted} planted, all found, no other "
          f"flagged): {mb / cpu:6.0f} MB/s per core (CPU), {mb / wall:6.0f} MB/s wall "
          f"(median of {rounds}, {len(parts)} batches of 1 MiB)")
    return mb / cpu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50, help="benchmark corpus size (MB of text)")
    ap.add_argument("--eval-mb", type=float, default=10, help="evaluation set size (MB)")
    ap.add_argument("--peer-mb", type=float, default=2, help="corpus text the peer checks (MB)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    corpus = corpus_texts(args.mb)
    words, p = vocabulary(corpus)
    evals = prose(words, p, args.eval_mb, seed=1)
    train_prose = prose(words, p, sum(map(len, corpus)) / 1e6, seed=2)
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"n = {N}")

    NgramIndex.build(evals[:10], N)  # load the compiled kernels: not part of the build's cost
    t0 = time.perf_counter()
    index = NgramIndex.build(evals, N)
    build_s = time.perf_counter() - t0
    eval_mb = sum(map(len, evals)) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decontam.idx"
        index.save(path)
        t0 = time.perf_counter()
        index = NgramIndex.load(path)
        load_s = time.perf_counter() - t0
        file_mb = path.stat().st_size / 1e6
        print(f"index: {eval_mb:.1f} MB of evaluation text, {index.eval_docs:,} docs, "
              f"{index.grams:,} distinct {N}-grams; build {build_s:.2f} s "
              f"({eval_mb / build_s:.1f} MB/s); {index.nbytes / 1e6:.1f} MB "
              f"(table {index.keys.nbytes + index.values.nbytes >> 20} MiB + filter "
              f"{index.filter.nbytes >> 20} MiB), file {file_mb:.1f} MB, load (memory map) "
              f"{load_s * 1e3:.1f} ms")
        rates = {}
        for name, texts in (("corpus", corpus), ("prose", train_prose)):
            planted, want = plant(texts, evals, seed=3)
            rates[name] = run_case(name, index, planted, want, args.rounds)

        r0 = rss_mb()
        t0 = time.perf_counter()
        grams = peer_build(evals)
        peer_build_s = time.perf_counter() - t0
        peer_rss = rss_mb() - r0
        print(f"peer    set of {len(grams):,} {N}-word tuples: build {peer_build_s:.1f} s, "
              f"+{peer_rss:.0f} MB RSS")
        for name, texts in (("corpus", corpus), ("prose", train_prose)):
            subset = head_mb(plant(texts, evals, seed=3)[0], args.peer_mb)
            mb = sum(len(t.encode("utf-8", "surrogatepass")) for t in subset) / 1e6
            ours = (index.match(subset) >= 0).tolist()
            cpu, _ = timed(lambda s=subset: peer_match(grams, s), 1)
            if peer_match(grams, subset) != ours:
                raise SystemExit(f"{name}: the peer and fastprep disagree")
            print(f"peer    {name:7s} {mb:.1f} MB ({sum(ours)} flagged, as by fastprep): "
                  f"{mb / cpu:.1f} MB/s per core; fastprep {rates[name] / (mb / cpu):.0f}x")
        print(f"peer    fastprep builds {peer_build_s / build_s:.1f}x faster, in "
              f"{peer_rss / (index.nbytes / 1e6):.1f}x less memory")


def head_mb(texts: list[str], mb: float) -> list[str]:
    """The first documents of ``texts`` up to about ``mb`` MB."""
    out, size = [], 0
    for t in texts:
        if size >= mb * 1e6:
            break
        out.append(t)
        size += len(t)
    return out

if __name__ == "__main__":
    main()
