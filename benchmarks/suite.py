"""Helpers of the pytest-benchmark suite (``test_bench_*.py``): sizes, inputs, the checked
measurement, and id arrays to compare encodings with.

Kept out of ``conftest.py`` so that the test modules can import them by name: the tests folder
has a ``conftest.py`` too, and ``import conftest`` would get whichever was loaded last.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import corpus as corpus_mod

BENCH_HINT = "pip install 'fastprep[bench]'"
TRAIN_HINT = "pip install 'fastprep[train]'"
TINY_TEXT_BYTES = 500_000
TINY_VOCAB = 2000
BATCH_CHARS = 1 << 20        # text per tokenizer call, as fastprep's --batch-bytes (1 MiB)


@dataclass(frozen=True)
class Sizes:
    """What every benchmark processes in this session (``conftest.pytest_configure``)."""

    timed: bool
    full: bool
    mb: float                 # corpus text of the full mode
    pack_docs: int
    pack_seq_len: int
    loader_docs: int
    loader_seq_len: int
    loader_batch: int
    rounds: int
    prepare_workers: int      # 0 = one per core; 1 runs in-process

    @classmethod
    def of(cls, timed: bool, tiny: bool, mb: float, pack_docs: int, rounds: int) -> Sizes:
        full = timed and not tiny
        return cls(timed=timed, full=full, mb=mb, pack_docs=pack_docs if full else 2000,
                   pack_seq_len=2048 if full else 256, loader_docs=20_000 if full else 300,
                   loader_seq_len=2048 if full else 256, loader_batch=8 if full else 4,
                   rounds=max(1, rounds) if timed else 1, prepare_workers=0 if full else 1)


def measure(benchmark: Any, sizes: Sizes, target: Callable[..., Any], check: Callable[[Any], None],
            *, setup: Callable[[], tuple[Any, ...]] | None = None,
            teardown: Callable[..., None] | None = None, role: str = "fastprep",
            pair: str = "", **info: Any) -> Any:
    """Run ``target`` under pytest-benchmark with its output checked before anything is timed.

    Timed mode: one burn-in run (JIT compilation, caches, page faults) whose output goes to
    ``check``, then the timed rounds (``setup`` builds each round's arguments outside the clock,
    ``teardown`` cleans up after it); the last round's output is checked again unless a
    teardown removed it. Rounds: ``sizes.rounds``, or as many as fit in ~1 s (at most 50) for a
    case whose warm run (a second untimed run, made when the burn-in took under 1 s) took under
    0.2 s. Tiny mode: one untimed run, checked.

    ``role`` is ``"fastprep"`` or ``"peer"``; the cases of one ``pair`` (default: the whole
    group) are compared with its peer in the summary; ``info`` (sizes) goes to ``extra_info``.
    """
    benchmark.extra_info.update(role=role, pair=pair, **info)

    def args() -> tuple[Any, ...]:
        return setup() if setup is not None else ()

    if not sizes.timed:
        benchmark.disabled = True  # as --benchmark-disable, even where the conftest came late
        a = args()
        out = benchmark.pedantic(target, args=a)
        check(out)
        if teardown is not None:
            teardown(*a)
        return out
    def once() -> tuple[Any, float]:
        a = args()
        t0 = time.perf_counter()
        out = target(*a)
        seconds = time.perf_counter() - t0
        return (out, a), seconds

    (out, a), seconds = once()
    check(out)
    if teardown is not None:
        teardown(*a)
    del out
    if seconds < 1.0:  # the burn-in may hold a JIT compilation: time a warm run to size rounds
        (out, a), seconds = once()
        if teardown is not None:
            teardown(*a)
        del out
    rounds = sizes.rounds
    if seconds < 0.2:
        rounds = max(rounds, min(50, math.ceil(1.0 / max(seconds, 1e-4))))
    out = benchmark.pedantic(target, setup=lambda: (args(), {}), teardown=teardown, rounds=rounds)
    if teardown is None:  # (a teardown has removed what the output points to)
        check(out)
    return out


class Bench:
    """The ``bench`` fixture: :func:`measure` bound to one test's ``benchmark`` fixture, and
    that test's ``extra_info`` (a check may add what it found, e.g. a recall)."""

    def __init__(self, benchmark: Any, sizes: Sizes) -> None:
        self.benchmark = benchmark
        self.sizes = sizes

    @property
    def info(self) -> dict[str, Any]:
        return self.benchmark.extra_info

    def __call__(self, target: Callable[..., Any], check: Callable[[Any], None], **kw: Any) -> Any:
        return measure(self.benchmark, self.sizes, target, check, **kw)


def batches_of(n: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of ``size`` covering ``range(n)``."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


# ---------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Corpus:
    """The texts every corpus-based benchmark reads, and the tokenizer they share."""

    path: Path                 # JSONL, one {"text": ...} per line, the texts below in order
    texts: list[str]
    tokenizer: Path            # model folder (tokenizer.json, tokenizer_config.json)
    kind: str                  # "benchmark corpus" or "tiny"

    @property
    def mb(self) -> float:
        """MB of UTF-8 text (the denominator of every MB/s)."""
        return sum(len(t.encode("utf-8", "surrogatepass")) for t in self.texts) / 1e6

    @property
    def tokenizer_json(self) -> str:
        return (self.tokenizer / "tokenizer.json").read_text(encoding="utf-8")

    def batches(self) -> list[list[str]]:
        """~1 MiB batches of texts in corpus order (what one tokenizer call of prepare gets)."""
        out: list[list[str]] = [[]]
        size = 0
        for t in self.texts:
            out[-1].append(t)
            size += len(t)
            if size >= BATCH_CHARS:
                out.append([])
                size = 0
        return [b for b in out if b]


def tiny_corpus(folder: Path) -> Corpus:
    """~0.5 MB of the standard library (shuffled units) and a 2,000-entry byte-level BPE trained
    on it in-process, written under ``folder``."""
    import orjson

    from fastprep.sample import stdlib_units, train_tokenizer

    units = [text for _, _, text in stdlib_units(TINY_TEXT_BYTES)]
    random.Random(0).shuffle(units)
    path = folder / "text.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in units))
    tok = train_tokenizer(units, folder / "tokenizer", vocab_size=TINY_VOCAB)
    return Corpus(path=path, texts=units, tokenizer=tok, kind="tiny")


def full_corpus(mb: float) -> Corpus:
    """:mod:`corpus`'s benchmark corpus of ``mb`` MB and its 32k tokenizer (cached)."""
    import orjson

    folder = corpus_mod.build(mb)
    tok = corpus_mod.tokenizer_dir()
    path = folder / "text.jsonl"
    with open(path, "rb") as f:
        texts = [orjson.loads(line)["text"] for line in f if line.strip()]
    return Corpus(path=path, texts=texts, tokenizer=tok, kind="benchmark corpus")


@dataclass(frozen=True)
class Ids:
    """Token ids of many documents: document ``i`` is ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray        # uint32
    offsets: np.ndarray    # int64 [n + 1]

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def docs(self) -> int:
        return self.offsets.size - 1

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> Ids:
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((i for x in lists for i in x), dtype=np.uint32, count=int(offsets[-1]))
        return cls(flat, offsets)

    @classmethod
    def concat(cls, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> Ids:
        """Join per-batch ``(ids, offsets)`` pairs (as a fastprep backend returns them)."""
        ids = np.concatenate([np.asarray(p[0], dtype=np.uint32) for p in parts])
        offs, base = [np.zeros(1, np.int64)], 0
        for _, off in parts:
            offs.append(np.asarray(off[1:], dtype=np.int64) + base)
            base += int(off[-1])
        return cls(ids, np.concatenate(offs))

    def with_eos(self, eos: int, keep: np.ndarray | None = None) -> np.ndarray:
        """One flat stream: every (kept) document followed by ``eos``, in order."""
        keep = np.ones(self.docs, bool) if keep is None else keep
        lengths = np.diff(self.offsets)
        out_len = np.where(keep, lengths + 1, 0)
        out = np.full(int(out_len.sum()), eos, dtype=np.uint32)
        starts = np.concatenate([[0], np.cumsum(out_len)[:-1]])
        src = np.flatnonzero(np.repeat(keep, lengths))            # token indices of kept docs
        doc_of = np.repeat(np.arange(self.docs), lengths)[src]
        out[starts[doc_of] + (src - self.offsets[doc_of])] = self.ids[src]
        return out

    def equals(self, other: Ids) -> bool:
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.ids, other.ids)

    def first_difference(self, other: Ids) -> str:
        """Where two encodings of the same documents first differ (for assertion messages)."""
        for i in range(min(self.docs, other.docs)):
            a, b = self.doc(i), other.doc(i)
            if not np.array_equal(a, b):
                k = next((j for j in range(min(a.size, b.size)) if a[j] != b[j]), min(a.size, b.size))
                return (f"document {i}: token {k} differs ({a[k:k + 5].tolist()} vs "
                        f"{b[k:k + 5].tolist()}; lengths {a.size} vs {b.size})")
        return f"document counts {self.docs} vs {other.docs}"


def reference_encode(corpus: Corpus) -> Ids:
    """The corpus encoded by ``tokenizers`` (the reference; special strings kept as text)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(corpus.tokenizer_json)
    tk.encode_special_tokens = True
    lists: list[list[int]] = []
    for b in corpus.batches():
        lists.extend(e.ids for e in tk.encode_batch_fast(b, add_special_tokens=False))
    return Ids.from_lists(lists)


def first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    """Where two flat arrays first differ (for assertion messages)."""
    n = min(a.size, b.size)
    k = int(np.flatnonzero(a[:n] != b[:n])[0]) if n and not np.array_equal(a[:n], b[:n]) else n
    return f"sizes {a.size} vs {b.size}, first difference at {k}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
