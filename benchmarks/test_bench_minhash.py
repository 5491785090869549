"""MinHash near-duplicate detection: fastprep against ``datasketch`` on the same documents.

The documents are the corpus's texts followed by planted copies of some of them (seeded):
exact copies, and near copies made with :func:`fastprep.sample.edit_words` with as many words
changed as a word 5-gram Jaccard of 0.97, 0.93, 0.9 or 0.85 takes, each pair's exact Jaccard
computed beforehand (untimed). Two pairs of
cases, K = 128 permutations, threshold 0.8:

- ``signatures``: fastprep :func:`fastprep.dedupe.minhash.signatures` (text in, a
  ``[n, 128]`` uint32 array out, on every core; ``verify="signature"``, so no shingle sets are
  kept) against ``datasketch.MinHash.bulk`` (its bulk path) over the same shingles: fastprep's
  own word 5-gram hashes of each document (``fastprep.kernels.minhash.shingle_hashes``, distinct
  values, as 8-byte strings), computed before the clock starts, which favours datasketch: its
  normalisation and shingling are not timed.
- ``dedupe``: the whole keep-first pass, a keep flag per document: fastprep
  :class:`~fastprep.dedupe.minhash.MinHashDeduper` (default ``verify="exact"``) in batches of
  10,000 documents, against datasketch ``MinHash.bulk`` + ``MinHashLSH(threshold=0.8)``, a
  document dropped when the index returns any kept document (how it is used).

Checked before timing: both sides get the same documents; equal documents get equal
signatures, and each planted near pair's estimated Jaccard is within 0.2 of the exact one (the
standard error at K = 128 is <= 0.045); fastprep removes every exact copy and every near copy
of Jaccard >= 0.9 whose source it kept (its bands find such a pair with probability
> 0.99999), and every removal it reports has a verified similarity >= 0.8; datasketch removes
every exact copy. The share of planted near copies each side finds is in ``extra_info``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from suite import BENCH_HINT, Bench, Corpus, batches_of

pytestmark = pytest.mark.benchmark(group="minhash")

THRESHOLD = 0.8
NUM_PERM = 128
BATCH = 10_000
NEAR_TARGETS = (0.97, 0.93, 0.9, 0.85)   # Jaccard the near copies are made for
MUST_FIND = 0.9       # near copies at or above this Jaccard must be found (P(miss) < 1e-5)


@dataclass(frozen=True)
class Planted:
    """The corpus's texts plus planted copies at the end (after every source)."""

    texts: list[str]
    exact: list[tuple[int, int]]                 # (source, copy)
    near: list[tuple[int, int, float]]           # (source, copy, exact Jaccard)

    @property
    def mb(self) -> float:
        return sum(len(t.encode("utf-8", "surrogatepass")) for t in self.texts) / 1e6


@pytest.fixture(scope="module")
def planted(corpus: Corpus) -> Planted:
    from fastprep.dedupe.minhash import MinHashConfig, jaccard_exact
    from fastprep.sample import edit_words

    rng = random.Random(0)
    texts = list(corpus.texts)
    long_docs = [i for i, t in enumerate(texts) if len(t.split()) >= 50]
    k = max(20, len(texts) // 50)
    sources = rng.sample(long_docs, 2 * k)
    cfg = MinHashConfig(threshold=THRESHOLD, num_perm=NUM_PERM)
    exact, near = [], []
    for j, s in enumerate(sources):
        copy = len(texts)
        if j < k:
            texts.append(texts[s])
            exact.append((s, copy))
        else:
            # e words changed touch ~5e of the S word 5-grams: J ~ (S - 5e) / (S + 5e); a
            # "word" here may hold several of the shingler's tokens, so e shrinks until J is
            # near the target
            target = NEAR_TARGETS[j % len(NEAR_TARGETS)]
            n_words = len(texts[s].split(" "))
            e = max(1, round((n_words - 4) * (1 - target) / (5 * (1 + target))))
            while True:
                text = edit_words(texts[s], rng, (e + 0.5) / n_words)
                jac = jaccard_exact(texts[s], text, cfg)
                if jac >= target - 0.02 or e == 1:
                    break
                e = max(1, e * 2 // 3)
            texts.append(text)
            near.append((s, copy, jac))
    return Planted(texts=texts, exact=exact, near=near)


@pytest.fixture(scope="module")
def shingles(planted: Planted) -> list[list[bytes]]:
    """Each document's distinct word 5-gram hashes (fastprep's), as datasketch takes them."""
    from fastprep.dedupe.minhash import utf8_buffer
    from fastprep.kernels.minhash import shingle_hashes

    buf, off = utf8_buffer(planted.texts)
    hashes, hoff = shingle_hashes(buf, off, 5, False)
    return [[h.tobytes() for h in np.unique(hashes[hoff[d]:hoff[d + 1]])]
            for d in range(len(planted.texts))]


def _sizes(planted: Planted, shingles: list[list[bytes]] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"mb": round(planted.mb, 2), "documents": len(planted.texts),
                            "planted_exact": len(planted.exact), "planted_near": len(planted.near)}
    if shingles is not None:
        info["shingles"] = sum(map(len, shingles))
    return info


def _check_estimates(planted: Planted, jaccard: Any, equal: Any, who: str) -> float:
    """Equal documents, equal signatures; estimates near the exact Jaccard. Returns the mean
    absolute error over the near pairs."""
    for s, c in planted.exact:
        assert equal(s, c), f"{who}: documents {s} and {c} are equal but their signatures differ"
    errors = [abs(jaccard(s, c) - j) for s, c, j in planted.near]
    assert planted.near and max(errors) <= 0.2, (
        f"{who}: a Jaccard estimate is {max(errors):.3f} off the exact value")
    return float(np.mean(errors))


def _datasketch() -> Any:
    return pytest.importorskip("datasketch", reason=f"datasketch is not installed: {BENCH_HINT}")


@pytest.mark.parametrize("case", ["fastprep", "datasketch"])
def test_signatures(bench: Bench, planted: Planted, shingles: list[list[bytes]], case: str) -> None:
    assert len(shingles) == len(planted.texts)  # both sides get the same documents
    if case == "fastprep":
        from fastprep.dedupe.minhash import MinHashConfig, signatures

        cfg = MinHashConfig(threshold=THRESHOLD, num_perm=NUM_PERM, verify="signature")

        def run() -> np.ndarray:
            return signatures(planted.texts, cfg)

        def check(sigs: np.ndarray) -> None:
            assert sigs.shape == (len(planted.texts), NUM_PERM) and sigs.dtype == np.uint32
            err = _check_estimates(planted, lambda a, b: float((sigs[a] == sigs[b]).mean()),
                                   lambda a, b: np.array_equal(sigs[a], sigs[b]), case)
            bench.info["estimate_error"] = round(err, 4)
    else:
        ds = _datasketch()

        def run() -> list[Any]:
            return ds.MinHash.bulk(shingles, num_perm=NUM_PERM)

        def check(mhs: list[Any]) -> None:
            assert len(mhs) == len(planted.texts)
            err = _check_estimates(planted, lambda a, b: mhs[a].jaccard(mhs[b]),
                                   lambda a, b: np.array_equal(mhs[a].hashvalues, mhs[b].hashvalues),
                                   case)
            bench.info["estimate_error"] = round(err, 4)
    bench(run, check, role="fastprep" if case == "fastprep" else "peer", pair="signatures",
          num_perm=NUM_PERM, **_sizes(planted, shingles))


def _check_removals(planted: Planted, keep: np.ndarray, who: str, strict_near: bool) -> dict[str, Any]:
    assert keep.shape == (len(planted.texts),) and keep.dtype == np.bool_
    missed = [c for _, c in planted.exact if keep[c]]
    assert not missed, f"{who} kept {len(missed)} exact copies, e.g. document {missed[0]}"
    must = [c for s, c, j in planted.near if j >= MUST_FIND and keep[s]]
    if strict_near:
        kept = [c for c in must if keep[c]]
        assert must and not kept, (f"{who} kept {len(kept)} of {len(must)} near copies of "
                                   f"Jaccard >= {MUST_FIND}, e.g. document {kept[:1]}")
    above = [c for s, c, j in planted.near if j >= THRESHOLD]
    return {"removed": int((~keep).sum()),
            "near_found": f"{sum(not keep[c] for c in above)}/{len(above)} (J >= {THRESHOLD})"}


@pytest.mark.parametrize("case", ["fastprep", "datasketch"])
def test_dedupe(bench: Bench, planted: Planted, shingles: list[list[bytes]], case: str) -> None:
    assert len(shingles) == len(planted.texts)  # both sides get the same documents
    if case == "fastprep":
        from fastprep.dedupe.minhash import MinHashConfig, MinHashDeduper

        cfg = MinHashConfig(threshold=THRESHOLD, num_perm=NUM_PERM)

        def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            d = MinHashDeduper(cfg)
            parts = [d(planted.texts[lo:hi], np.arange(lo, hi))
                     for lo, hi in batches_of(len(planted.texts), BATCH)]
            return (np.concatenate([r.keep for r in parts]),
                    np.concatenate([r.match for r in parts]),
                    np.concatenate([r.similarity for r in parts]))

        def check(out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            keep, match, sim = out
            bench.info.update(_check_removals(planted, keep, case, strict_near=True))
            gone = np.flatnonzero(~keep)
            assert np.all(keep[match[gone]]) and np.all(match[gone] < gone), \
                "a removed document must match an earlier kept one"
            assert np.all(sim[gone] >= THRESHOLD - 1e-6), "a removal below the threshold"
    else:
        ds = _datasketch()

        def run() -> tuple[np.ndarray]:
            lsh = ds.MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
            keep = np.zeros(len(shingles), dtype=bool)
            for d, m in enumerate(ds.MinHash.generator(shingles, num_perm=NUM_PERM)):
                if not lsh.query(m):
                    lsh.insert(d, m)
                    keep[d] = True
            return (keep,)

        def check(out: tuple[np.ndarray]) -> None:
            bench.info.update(_check_removals(planted, out[0], case, strict_near=False))
    bench(run, check, role="fastprep" if case == "fastprep" else "peer", pair="dedupe",
          threshold=THRESHOLD, num_perm=NUM_PERM, **_sizes(planted, shingles))
