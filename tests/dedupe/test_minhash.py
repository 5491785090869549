"""Near-duplicate removal: kernels equal their pure-Python twins; the estimate tracks exact Jaccard;
planted duplicates are found and nothing else is; the keep policy is deterministic and does not
depend on batch boundaries or the number of threads."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprep.kernels import minhash as kernels
from fastprep.dedupe.minhash import (
    MinHashConfig,
    MinHashDeduper,
    permutations,
    utf8_buffer,
    candidate_probability,
    choose_bands,
    concat_sets,
    jaccard_exact,
    shingle_sets,
    signatures,
    signatures_and_sets,
    take_sets,
)

# ASCII, Latin-1 (letters, punctuation, × ÷), General Punctuation, ideographic space, CJK, emoji
_ALPHABET = st.sampled_from(
    list("abcXYZ019 .,;!?'-_\t\n") + list("\u00a0\u00aa\u00b5\u00c0\u00c9\u00d7\u00de\u00df\u00e9\u00f7")
    + list("\u2014\u201c\u201d\u2026\u200b\u2070\u3000\u3001\u4e2d\u6587\ufeff\U0001f600\u0416\u0436"))
TEXT = st.text(alphabet=_ALPHABET, max_size=60)
TEXTS = st.lists(TEXT, min_size=1, max_size=8)
SETTINGS = settings(max_examples=60, deadline=None)

# letters only: digits fold to 0 in normalisation, so "w1" and "w2" would be one word
_wrng = random.Random(0)
WORDS = sorted({"".join(_wrng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_wrng.randint(3, 9)))
                for _ in range(20000)})


def _doc(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


# ---------------------------------------------------------------------------- kernels vs twins


@SETTINGS
@given(TEXTS)
def test_normalize_matches_reference(texts: list[str]) -> None:
    buf, off = utf8_buffer(texts)
    out, out_off = kernels.normalize(buf, off)
    for d, text in enumerate(texts):
        got = bytes(out[out_off[d]:out_off[d + 1]])
        assert got == kernels.normalize_reference(text)
        assert not got.startswith(b" ") and not got.endswith(b" ") and b"  " not in got


@SETTINGS
@given(TEXTS, st.integers(1, 6), st.booleans())
def test_shingle_hashes_match_reference(texts: list[str], ngram: int, char_ngrams: bool) -> None:
    buf, off = utf8_buffer(texts)
    hashes, hoff = kernels.shingle_hashes(buf, off, ngram, char_ngrams)
    for d, text in enumerate(texts):
        ref = kernels.shingle_hashes_reference(text, ngram, char_ngrams)
        assert hashes[hoff[d]:hoff[d + 1]].tolist() == ref
        # every document with a token has at least one shingle: short ones are not lost
        assert (len(ref) > 0) == (len(kernels.normalize_reference(text)) > 0)


@SETTINGS
@given(TEXTS, st.integers(1, 6), st.booleans())
def test_shingle_sets_match_reference(texts: list[str], ngram: int, char_ngrams: bool) -> None:
    """The sets (built by the kernel fused with the signatures, which workers use; shingle_sets
    runs it without permutations) equal the twin: sorted distinct high halves of the shingle
    hashes, and building them leaves the signatures unchanged."""
    cfg = MinHashConfig(num_perm=8, ngram=ngram, char_ngrams=char_ngrams, verify="exact")
    vals, off = shingle_sets(texts, cfg)
    sigs, fused = signatures_and_sets(texts, cfg)
    assert vals.dtype == np.uint32 and off.dtype == np.int64 and off.shape == (len(texts) + 1,)
    np.testing.assert_array_equal(fused[0], vals)
    np.testing.assert_array_equal(fused[1], off)
    np.testing.assert_array_equal(sigs, signatures(texts, cfg))
    for d, text in enumerate(texts):
        # a set is the distinct high 32 bits of the shingle hashes, sorted
        ref = sorted({h >> 32 for h in kernels.shingle_hashes_reference(text, ngram, char_ngrams)})
        assert vals[off[d]:off[d + 1]].tolist() == ref
    # signature verification needs no sets
    assert signatures_and_sets(texts, MinHashConfig(num_perm=8, ngram=ngram, char_ngrams=char_ngrams,
                                                    verify="signature"))[1] is None


@given(st.lists(st.lists(st.integers(0, 9), max_size=6), max_size=12), st.data())
def test_take_and_concat_sets(docs: list[list[int]], data: st.DataObject) -> None:
    off = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=off[1:])
    sets = (np.array([v for d in docs for v in d], dtype=np.uint32), off)
    idx = data.draw(st.lists(st.integers(0, max(len(docs) - 1, 0)), max_size=len(docs))) if docs else []
    vals, new_off = take_sets(sets, np.array(idx, dtype=np.int64))
    assert [vals[new_off[i]:new_off[i + 1]].tolist() for i in range(len(idx))] == [docs[i] for i in idx]
    cut = len(docs) // 2
    a = take_sets(sets, np.arange(cut))
    b = take_sets(sets, np.arange(cut, len(docs)))
    both = concat_sets([a, b])
    np.testing.assert_array_equal(both[0], sets[0])
    np.testing.assert_array_equal(both[1], sets[1])


@SETTINGS
@given(TEXTS, st.integers(1, 5), st.booleans(), st.integers(0, 2**64 - 1))
def test_signatures_match_reference(texts: list[str], ngram: int, char_ngrams: bool, seed: int) -> None:
    cfg = MinHashConfig(num_perm=16, ngram=ngram, char_ngrams=char_ngrams, seed=seed)
    a, b = permutations(16, seed)
    got = signatures(texts, cfg)
    assert got.dtype == np.uint32 and got.shape == (len(texts), 16)
    np.testing.assert_array_equal(got, kernels.minhash_signatures_reference(texts, ngram, char_ngrams, a, b))


@SETTINGS
@given(st.integers(1, 20), st.integers(1, 6), st.integers(1, 5), st.integers(0, 1000))
def test_band_keys_match_reference(n: int, bands: int, rows: int, seed: int) -> None:
    sigs = np.random.default_rng(seed).integers(0, 2**32, (n, bands * rows), dtype=np.uint32)
    np.testing.assert_array_equal(kernels.band_keys(sigs, bands, rows), kernels.band_keys_reference(sigs, bands, rows))


@SETTINGS
@given(st.lists(st.integers(0, 30), max_size=25), st.lists(st.integers(0, 30), max_size=25))
def test_jaccard_sorted_matches_reference(x: list[int], y: list[int]) -> None:
    xs = np.array(sorted(set(x)), dtype=np.uint64)
    ys = np.array(sorted(set(y)), dtype=np.uint64)
    assert kernels.jaccard_sorted(xs, ys) == pytest.approx(kernels.jaccard_sorted_reference(xs, ys))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=9), min_size=1,
                max_size=30), st.sampled_from([0.5, 0.7, 0.8, 1.0]), st.booleans())
def test_index_matches_reference(docs: list[list[str]], threshold: float, exact: bool) -> None:
    # a six-word vocabulary makes collisions, chains and verified/unverified candidates common
    texts = [" ".join(d) for d in docs]
    cfg = MinHashConfig(threshold=threshold, num_perm=16, ngram=2, bands=8, band_rows=2,
                        verify="exact" if exact else "signature")
    res = MinHashDeduper(cfg)(texts, np.arange(len(texts)) + 100)
    sets = None
    if exact:
        vals, off = shingle_sets(texts, cfg)
        sets = [set(vals[off[i]:off[i + 1]].tolist()) for i in range(len(texts))]
    keep, match, sim = kernels.lsh_dedupe_reference(signatures(texts, cfg), 8, 2, threshold,
                                              math.ceil(threshold * 16 - 1e-9), sets)
    np.testing.assert_array_equal(res.keep, keep)
    np.testing.assert_array_equal(res.match, np.where(match >= 0, match + 100, -1))
    np.testing.assert_allclose(res.similarity, sim, rtol=1e-6)


# ---------------------------------------------------------------------------- statistics


def test_estimate_tracks_exact_jaccard() -> None:
    rng = random.Random(7)
    cfg = MinHashConfig(num_perm=128)
    pairs = []
    for i in range(240):
        base = _doc(rng, 150)
        other = list(base)
        for _ in range(int(150 * (i % 40) / 50)):  # substitute 0..78% of the words
            other[rng.randrange(150)] = rng.choice(WORDS)
        pairs.append((" ".join(base), " ".join(other)))
    sigs = signatures([t for p in pairs for t in p], cfg)
    errs, spread = [], []
    for i, (x, y) in enumerate(pairs):
        j = jaccard_exact(x, y, cfg)
        est = float((sigs[2 * i] == sigs[2 * i + 1]).mean())
        se = max(math.sqrt(j * (1 - j) / cfg.num_perm), 1.0 / cfg.num_perm)
        assert abs(est - j) <= 4 * se, (i, j, est)
        errs.append(est - j)
        spread.append(j)
    assert min(spread) < 0.2 and max(spread) == 1.0  # guard: the pairs covered the range
    # no bias: the mean error is within 4 standard errors of the mean (sd <= 0.045 per pair)
    assert abs(np.mean(errs)) <= 4 * 0.045 / math.sqrt(len(errs))


# ---------------------------------------------------------------------------- band selection


@pytest.mark.parametrize("threshold", [0.7, 0.8, 0.9])
def test_band_selection_recall(threshold: float) -> None:
    bands, rows = choose_bands(threshold, 128)
    assert bands * rows <= 128
    assert candidate_probability(threshold, bands, rows) >= 0.95
    # and far fewer candidates well below the threshold
    assert candidate_probability(threshold - 0.4, bands, rows) < 0.2


def test_band_selection_defaults_and_override() -> None:
    assert choose_bands(0.8, 128) == (18, 7)
    assert candidate_probability(0.8, 18, 7) == pytest.approx(0.9855, abs=1e-3)
    cfg = MinHashConfig(bands=16, band_rows=8)
    assert cfg.banding() == (16, 8)
    assert (cfg.params()["bands"], cfg.params()["band_rows"]) == (16, 8)
    assert MinHashConfig().params()["band_rows"] == 7


@pytest.mark.parametrize("kwargs, flag", [
    ({"threshold": 0.0}, "--threshold"), ({"threshold": 1.5}, "--threshold"),
    ({"num_perm": 0}, "--num-perm"), ({"ngram": 0}, "--ngram"),
    ({"bands": 4}, "--bands/--band-rows"), ({"bands": 20, "band_rows": 7}, "--bands/--band-rows"),
    ({"verify": "maybe"}, "--verify"),
])
def test_config_errors_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        MinHashConfig(**kwargs)


# ---------------------------------------------------------------------------- planted corpus


def _planted_corpus() -> tuple[list[str], np.ndarray, list[tuple[int, int]]]:
    """Distinct documents plus planted near-duplicates; returns texts, the expected keep mask and
    the (duplicate, original) pairs."""
    rng = random.Random(3)
    texts: list[str] = []
    keep: list[bool] = []
    dup_pairs: list[tuple[int, int]] = []
    boiler = _doc(rng, 60)
    for k in range(40):
        paras = [_doc(rng, 100) for _ in range(4)]
        orig = len(texts)
        texts.append("\n\n".join(" ".join(p) for p in paras))
        keep.append(True)
        kind = k % 5
        if kind == 0:    # exact copy, with different case/punctuation/whitespace
            variant = texts[orig].upper().replace(" ", " ,  ")
        elif kind == 1:  # 1% of the words substituted
            words = [w for p in paras for w in p]
            for i in rng.sample(range(len(words)), 4):
                words[i] = rng.choice(WORDS)
            variant = " ".join(words)
        elif kind == 2:  # paragraphs reordered
            variant = "\n\n".join(" ".join(p) for p in reversed(paras))
        elif kind == 3:  # 40% of the words substituted: a different document
            words = [w for p in paras for w in p]
            for i in rng.sample(range(len(words)), 160):
                words[i] = rng.choice(WORDS)
            variant = " ".join(words)
        else:            # distinct documents sharing boilerplate
            texts[orig] = " ".join(boiler) + "\n" + texts[orig]
            variant = " ".join(boiler) + "\n" + " ".join(_doc(rng, 400))
        texts.append(variant)
        is_dup = kind in (0, 1, 2)
        keep.append(not is_dup)
        if is_dup:
            dup_pairs.append((len(texts) - 1, orig))
    return texts, np.array(keep), dup_pairs


@pytest.mark.parametrize("verify", ["signature", "exact"])
def test_planted_duplicates(verify: str) -> None:
    texts, expected, dup_pairs = _planted_corpus()
    cfg = MinHashConfig(verify=verify)
    # guard: the planted labels are far from the threshold in exact Jaccard
    for i in range(0, len(texts), 2):
        j = jaccard_exact(texts[i], texts[i + 1], cfg)
        assert (j >= 0.9) if not expected[i + 1] else (j <= 0.6), (i, j)
    dedupe = MinHashDeduper(cfg)
    res = dedupe(texts, np.arange(len(texts), dtype=np.int64))
    np.testing.assert_array_equal(res.keep, expected)
    assert len(dup_pairs) == 24 and (~res.keep).sum() == 24  # guard: real duplicates were found
    for dup, orig in dup_pairs:
        assert res.match[dup] == orig
        assert res.similarity[dup] >= 0.8
        if verify == "exact":
            assert res.similarity[dup] == pytest.approx(jaccard_exact(texts[dup], texts[orig], cfg))
    assert (res.match[res.keep] == -1).all() and (res.similarity[res.keep] == 0).all()
    assert dedupe.docs_indexed == int(expected.sum())
    assert 0 < dedupe.nbytes and dedupe.nbytes / dedupe.docs_indexed < 64 * 1024


def test_chain_semantics() -> None:
    """A kept, B ~ A removed, C ~ B but not ~ A: C is kept (it is compared with kept docs only)."""
    rng = random.Random(11)
    a = _doc(rng, 400)
    b = list(a)
    c = list(a)
    for i in range(0, 40, 10):  # B: 4 substitutions in the first tenth
        b[i] = c[i] = rng.choice(WORDS)
    for i in range(200, 240, 10):  # C: B plus 4 more substitutions
        c[i] = rng.choice(WORDS)
    texts = [" ".join(a), " ".join(b), " ".join(c)]
    cfg = MinHashConfig(threshold=0.85, verify="exact")
    assert jaccard_exact(texts[0], texts[1], cfg) >= 0.85 and jaccard_exact(texts[1], texts[2], cfg) >= 0.85
    assert jaccard_exact(texts[0], texts[2], cfg) < 0.85
    res = MinHashDeduper(cfg)(texts, np.array([10, 11, 12]))
    assert res.keep.tolist() == [True, False, True]
    assert res.match.tolist() == [-1, 10, -1]


# ---------------------------------------------------------------------------- determinism


def test_batch_boundaries_and_threads_do_not_change_the_result() -> None:
    texts, _, _ = _planted_corpus()
    ids = np.arange(len(texts), dtype=np.int64) * 3
    cfg = MinHashConfig(seed=5)
    whole = MinHashDeduper(cfg)(texts, ids)
    again = MinHashDeduper(cfg)(texts, ids)
    for size in (1, 7, 33):
        d = MinHashDeduper(cfg)
        parts = [d(texts[s:s + size], ids[s:s + size]) for s in range(0, len(texts), size)]
        for field in ("keep", "match", "similarity"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, field) for p in parts]),
                                          getattr(whole, field))
    for field in ("keep", "match", "similarity"):
        np.testing.assert_array_equal(getattr(again, field), getattr(whole, field))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = signatures(texts, cfg)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(one, signatures(texts, cfg))
    # Arrow input is the same as a list of str
    np.testing.assert_array_equal(signatures(pa.chunked_array([texts[:5], texts[5:]]), cfg), one)


def test_index_growth_keeps_everything() -> None:
    rng = random.Random(5)
    texts = [" ".join(_doc(rng, 12)) for _ in range(3000)]  # > initial capacity: forces rehash
    d = MinHashDeduper(MinHashConfig())
    first = d(texts, np.arange(3000))
    assert first.keep.all() and d.docs_indexed == 3000
    again = d(texts[::-1], np.arange(3000, 6000))  # every one is now an exact duplicate
    assert not again.keep.any()
    np.testing.assert_array_equal(again.match, np.arange(3000)[::-1])
    assert (again.similarity == 1.0).all()


# ---------------------------------------------------------------------------- short and empty


def test_short_and_empty_documents() -> None:
    cfg = MinHashConfig()
    texts = ["", "hello world", "Hello, World!", "hello there", "   ...  ", None, "hello",
             "x \ud800 y"]  # None (Arrow null) is empty; a lone surrogate must not crash
    sigs = signatures(texts, cfg)
    empty = np.full(cfg.num_perm, 0xFFFFFFFF, dtype=np.uint32)
    for i in (0, 4, 5):
        np.testing.assert_array_equal(sigs[i], empty)
    for i in (1, 2, 3, 6, 7):  # short documents get a real signature that cannot equal empty's
        assert (sigs[i] < 0xFFFFFFFF).all()
    res = MinHashDeduper(cfg)(texts, np.arange(len(texts)))
    assert res.keep.tolist() == [True, True, False, True, False, False, True, True]
    assert res.match.tolist() == [-1, -1, 1, -1, 0, 0, -1, -1]
    assert jaccard_exact("", "", cfg) == 1.0 and jaccard_exact("", "a", cfg) == 0.0
    assert jaccard_exact("a b c", "A, B; C!", cfg) == 1.0
    # a short document is one shingle: it does not match a long one that contains it
    assert jaccard_exact("alpha beta", "alpha beta gamma delta epsilon zeta", cfg) == 0.0


def test_char_ngrams() -> None:
    # scripts without spaces: one "word" per sentence, so character n-grams are the useful mode
    cfg = MinHashConfig(char_ngrams=True, ngram=3, threshold=0.7, verify="exact")
    texts = ["数据去重是重要的步骤之一", "数据去重是重要的步骤之二", "完全不同的中文句子内容"]
    assert jaccard_exact(texts[0], texts[1], cfg) == pytest.approx(9 / 11)  # 10 grams, 9 shared
    res = MinHashDeduper(cfg)(texts, np.arange(3))
    assert res.keep.tolist() == [True, False, True]


def test_params_are_json() -> None:
    p = MinHashConfig(threshold=0.7).params()
    assert json.loads(json.dumps(p)) == p
    assert p == {"threshold": 0.7, "num_perm": 128, "ngram": 5, "char_ngrams": False,
                 "bands": 25, "band_rows": 5, "seed": 0, "verify": "exact"}


@pytest.mark.parametrize("verify", ["signature", "exact"])
def test_add_precomputed_signatures_equals_call(verify: str) -> None:
    """The pipeline computes signatures in workers and indexes them with ``add``."""
    texts, _, _ = _planted_corpus()
    ids = np.arange(len(texts), dtype=np.int64) + 7
    cfg = MinHashConfig(verify=verify)
    direct = MinHashDeduper(cfg)(texts, ids)
    d = MinHashDeduper(cfg)
    sigs, sets = signatures_and_sets(texts, cfg)
    if verify == "exact":
        with pytest.raises(ValueError, match="sets"):
            d.add(sigs[:10], ids[:10])
        with pytest.raises(ValueError, match="uint32 values"):
            d.add(sigs[:2], ids[:2], (sets[0].astype(np.uint64), sets[1][:3]))
    parts = [d.add(sigs[s:s + 25], ids[s:s + 25],
                   take_sets(sets, np.arange(s, min(s + 25, len(texts)))) if sets else None)
             for s in range(0, len(texts), 25)]
    np.testing.assert_array_equal(np.concatenate([p.keep for p in parts]), direct.keep)
    np.testing.assert_array_equal(np.concatenate([p.match for p in parts]), direct.match)
    np.testing.assert_array_equal(np.concatenate([p.similarity for p in parts]), direct.similarity)
    with pytest.raises(ValueError, match="uint32"):
        d.add(sigs.astype(np.uint64), ids)


def test_sets_file_equals_memory(tmp_path: Path) -> None:
    """Kept sets in a memory-mapped file (what prepare uses) give the same result as in RAM, also
    when the file grows many times, and are not counted as index RAM."""
    texts, _, _ = _planted_corpus()
    ids = np.arange(len(texts), dtype=np.int64)
    cfg = MinHashConfig(verify="exact")

    class Small(MinHashDeduper):
        _INITIAL_SET_VALUES = 4  # grow (and remap the file) many times

    ram = Small(cfg)
    on_disk = Small(cfg, sets_file=tmp_path / "sets.u32")
    for s in range(0, len(texts), 10):
        r1 = ram(texts[s:s + 10], ids[s:s + 10])
        r2 = on_disk(texts[s:s + 10], ids[s:s + 10])
        np.testing.assert_array_equal(r1.keep, r2.keep)
        np.testing.assert_array_equal(r1.match, r2.match)
    used = on_disk.sets_file_bytes
    assert used > 0 and (tmp_path / "sets.u32").stat().st_size >= used
    assert ram.nbytes - on_disk.nbytes == ram._kept_sets.nbytes
    assert MinHashDeduper(MinHashConfig(verify="signature"), sets_file=tmp_path / "x").sets_file_bytes == 0
    assert not (tmp_path / "x").exists()


def test_worker_process_kernels_without_scipy_import() -> None:
    """Worker processes refuse numba's scipy.linalg BLAS probe (a startup cost); the kernels
    must still load and give the same signatures and sets there."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "from fastprep.pipeline.executor import setup_worker\n"
        "setup_worker(1)\n"
        "from fastprep.dedupe.minhash import MinHashConfig, signatures_and_sets\n"
        "sigs, (vals, off) = signatures_and_sets(['a b c d e f g', 'x'], MinHashConfig())\n"
        "assert sys.modules.get('scipy.linalg') is None\n"
        "print(json.dumps([sigs.tolist(), vals.tolist(), off.tolist()]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    sigs, (vals, off) = signatures_and_sets(["a b c d e f g", "x"], MinHashConfig())
    assert json.loads(out.stdout) == [sigs.tolist(), vals.tolist(), off.tolist()]
