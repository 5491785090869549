"""The band-partitioned shuffle dedupe (fastprep.dedupe.shuffle) gives exactly the streaming
MinHashDeduper's result (keep, match, similarity) whatever the number of partitions and of
producer tasks; the quadratic-bucket guard fires with a useful message; Ray equals local."""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import in_own_process, run_in_own_process

from fastprep.dedupe.shuffle import (
    ROW_DTYPE,
    ArrayStore,
    BucketTooLargeError,
    FileStore,
    candidate_pairs,
    dedupe_partition,
    local_shuffle_dedupe,
    merge_verified,
    partition_band_keys,
    partition_files,
    partition_of,
    partition_signatures,
    ray_shuffle_dedupe,
    resolve_keep_first,
    resolve_removals,
    write_doc_store,
)
from fastprep.dedupe.minhash import (
    MinHashConfig,
    MinHashDeduper,
    MinHashResult,
    signatures_and_sets,
    take_sets,
)

_wrng = random.Random(0)
WORDS = sorted({"".join(_wrng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_wrng.randint(3, 9)))
                for _ in range(5000)})


def _ids(n: int, rng: random.Random, per_file: int = 37) -> np.ndarray:
    """Strictly increasing, non-contiguous ids (file << 40) | line."""
    out, line = [], 0
    for k in range(n):
        if k % per_file == 0:
            line = 0
        line += rng.randint(1, 5)
        out.append(((k // per_file) << 40) | line)
    return np.array(out, dtype=np.int64)


def _splits(n: int, producers: int, rng: random.Random) -> list[int]:
    cuts = sorted(rng.sample(range(1, n), min(producers - 1, max(0, n - 1))))
    return [0, *cuts, n]


def _streaming(sigs: np.ndarray, sets, ids: np.ndarray, cfg: MinHashConfig,
               bounds: list[int]) -> MinHashResult:
    d = MinHashDeduper(cfg)
    parts = []
    for s, e in itertools.pairwise(bounds):
        part_sets = take_sets(sets, np.arange(s, e)) if cfg.verify == "exact" else None
        parts.append(d.add(sigs[s:e], ids[s:e], part_sets))
    return MinHashResult(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("keep", "match", "similarity")))


def _produce(sigs: np.ndarray, sets, ids: np.ndarray, cfg: MinHashConfig, bounds: list[int],
             partitions: int, work: Path) -> None:
    """What each producer task does: its band-key partitions plus its doc store."""
    for k, (s, e) in enumerate(itertools.pairwise(bounds)):
        partition_signatures(sigs[s:e], ids[s:e], cfg, partitions, work, f"task{k}")
        exact = cfg.verify == "exact"
        write_doc_store(work, f"task{k}", ids[s:e], None if exact else sigs[s:e],
                        take_sets(sets, np.arange(s, e)) if exact else None)


def _assert_same(a: MinHashResult, b: MinHashResult) -> None:
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.match, b.match)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    assert a.similarity.dtype == b.similarity.dtype == np.float32


# ---------------------------------------------------------------------------- random small cases


# a six-word vocabulary makes collisions, chains, exact duplicates and empty documents common;
# unions of two-word blocks, shingled per word, make equal similarities to several kept
# documents (the tie rule) common: "a b" and "c d" are both kept, "a b c d" is 0.5 to each
WORD_DOCS = st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=9),
                     min_size=1, max_size=40)
BLOCK_DOCS = st.lists(st.lists(st.sampled_from(["a b", "c d", "e f", "g h", "i j"]), unique=True,
                               max_size=5), min_size=1, max_size=40)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.tuples(WORD_DOCS, st.integers(1, 3)), st.tuples(BLOCK_DOCS, st.just(1))),
       st.sampled_from([0.3, 0.5, 0.7, 0.8, 1.0]), st.sampled_from(["exact", "signature"]),
       st.sampled_from([(8, 2), (4, 4), (16, 1), (5, 3)]),
       st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32), st.booleans())
def test_equals_streaming_on_random_corpora(corpus, threshold, verify, banding, partitions,
                                            producers, seed, file_store) -> None:
    docs, ngram = corpus
    rng = random.Random(seed)
    texts = [" ".join(d) for d in docs]
    bands, rows = banding
    cfg = MinHashConfig(threshold=threshold, num_perm=16, ngram=ngram, bands=bands, band_rows=rows,
                        verify=verify, seed=seed % 7)
    sigs, sets = signatures_and_sets(texts, MinHashConfig(num_perm=16, ngram=ngram, seed=seed % 7))
    ids = _ids(len(texts), rng, per_file=rng.randint(1, 9))
    bounds = _splits(len(texts), producers, rng)
    expected = _streaming(sigs, sets, ids, cfg, bounds)
    with tempfile.TemporaryDirectory() as tmp:
        _produce(sigs, sets, ids, cfg, bounds, partitions, Path(tmp))
        fetch = FileStore(tmp) if file_store else ArrayStore(ids, sigs, sets)
        got = local_shuffle_dedupe(partition_files(tmp, partitions), fetch, cfg)
    _assert_same(got.result(ids), expected)


@pytest.mark.parametrize("verify", ["exact", "signature"])
def test_tie_goes_to_the_earliest_kept_document(tmp_path: Path, verify: str) -> None:
    texts = ["x y", "a b", "c d", "a b c d", "c d a b"]
    cfg = MinHashConfig(threshold=0.5, num_perm=16, ngram=1, bands=16, band_rows=1, verify=verify)
    sigs, sets = signatures_and_sets(texts, MinHashConfig(num_perm=16, ngram=1))
    ids = np.array([3, 1 << 40, (1 << 40) + 2, (2 << 40) + 1, (2 << 40) + 7], dtype=np.int64)
    expected = _streaming(sigs, sets, ids, cfg, [0, 2, 5])
    _produce(sigs, sets, ids, cfg, [0, 2, 5], 3, tmp_path)
    got = local_shuffle_dedupe(partition_files(tmp_path, 3), FileStore(tmp_path), cfg).result(ids)
    _assert_same(got, expected)
    assert got.keep.tolist() == [True, True, True, False, False]
    # exact Jaccard 0.5 to both "a b" and "c d": the earliest kept document wins the tie (the
    # 16-value estimates need not tie; the streaming result above is the reference there)
    if verify == "exact":
        assert got.match.tolist() == [-1, -1, -1, ids[1], ids[1]]


# ---------------------------------------------------------------------------- a larger corpus


def _doc(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _subst(rng: random.Random, words: list[str], positions) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = rng.choice(WORDS)
    return out


def _planted_corpus(seed: int = 1) -> list[str]:
    """~2,600 documents: distinct ones, near duplicates, case/punctuation copies, chains
    (A ~ B ~ C, A !~ C at 0.8), documents sharing a long boilerplate (band collisions that fail
    verification), empty and very short documents; duplicates come after their originals,
    interleaved with the rest."""
    rng = random.Random(seed)
    base = [_doc(rng, rng.randint(40, 100)) for _ in range(1400)]
    early: list[str] = [" ".join(d) for d in base]
    late: list[str] = []
    for d in rng.sample(base, 300):  # 1-2 substitutions: near duplicates
        late.append(" ".join(_subst(rng, d, rng.sample(range(len(d)), rng.randint(1, 2)))))
    for d in rng.sample(base, 100):  # the same text, other case and punctuation
        late.append(" ".join(d).upper().replace(" ", " ,  "))
    for _ in range(120):  # chains: B = A + 2 substitutions, C = B + 2 more elsewhere
        a = _doc(rng, 100)
        b = _subst(rng, a, (10, 40))
        c = _subst(rng, b, (65, 90))
        early.append(" ".join(a))
        late.append(" ".join(b))
        late.append(" ".join(c))
    boiler = _doc(rng, 150)
    for _ in range(80):  # shared boilerplate, distinct bodies: Jaccard ~0.7
        early.append(" ".join(boiler + _doc(rng, 30)))
    for _ in range(40):
        late.append(" ".join(_doc(rng, 2)))
    late += ["", "  ... ", "", "!!"]
    rng.shuffle(late)
    # duplicates (late) after most originals, but interleaved with the last of them
    texts = early[:1200] + [x for pair in zip(early[1200:], late) for x in pair] \
        + late[len(early) - 1200:]
    return texts


@pytest.fixture(scope="module")
def planted() -> tuple[list[str], np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    texts = _planted_corpus()
    sigs, sets = signatures_and_sets(texts, MinHashConfig(verify="exact"))
    return texts, _ids(len(texts), random.Random(2), per_file=500), sigs, sets


@pytest.mark.parametrize("threshold, verify", [(0.8, "exact"), (0.8, "signature"), (0.7, "exact")])
def test_equals_streaming_on_planted_corpus(planted, tmp_path: Path, verify: str,
                                            threshold: float) -> None:
    texts, ids, sigs, sets = planted
    cfg = MinHashConfig(threshold=threshold, verify=verify)
    rng = random.Random(4)
    expected = None
    for partitions, producers in [(1, 1), (5, 3), (48, 6)]:
        bounds = _splits(len(texts), producers, rng)
        if expected is None:
            expected = _streaming(sigs, sets, ids, cfg, bounds)
        work = tmp_path / f"p{partitions}-t{producers}"
        _produce(sigs, sets, ids, cfg, bounds, partitions, work)
        files = partition_files(work, partitions)
        assert sum(len(f) for f in files) == partitions * producers
        store = FileStore(work)
        parts = [dedupe_partition(f, store, cfg) for f in files]
        merged = merge_verified(parts)
        removals = resolve_removals(merged.i, merged.j, merged.sim)
        _assert_same(removals.result(ids), expected)
        _assert_same(resolve_keep_first(ids, merged.i, merged.j, merged.sim), expected)
        if partitions < 10:  # the driver function, with the in-memory store
            _assert_same(local_shuffle_dedupe(files, ArrayStore(ids, sigs, sets), cfg).result(ids),
                         expected)
        # guards: the corpus exercises what equivalence is about
        removed = set(removals.doc_id.tolist())
        assert 350 < len(removed) < len(texts) // 3
        chain = [(i, j) for i, j in zip(merged.i.tolist(), merged.j.tolist())
                 if j in removed and i not in removed]
        assert chain, "no verified pair with a removed earlier partner and a kept later one"
        assert merged.candidates > len(merged)  # candidates that fail verification
        assert (removals.similarity == 1.0).sum() >= 100  # exact duplicates (and empty docs)
    assert expected is not None
    # empty documents: the first is kept, the others match it
    empty = [k for k, t in enumerate(texts) if not any(c.isalnum() for c in t)]
    assert len(empty) == 4 and expected.keep[empty].tolist() == [True, False, False, False]
    assert (expected.match[empty[1:]] == ids[empty[0]]).all()


# ---------------------------------------------------------------------------- resolution rules


def test_resolve_rules_chain_ties_and_float64() -> None:
    ids = np.array([10, 20, 30, 40, 50, 60, 70], dtype=np.int64)
    pairs = [
        (20, 10, 0.9),                      # 20 removed (matches 10)
        (30, 20, 0.95),                     # chain: 30's only partner is removed, so 30 is kept
        (40, 30, 0.85), (40, 10, 0.85),     # tie: the earliest kept wins (10)
        (50, 10, 0.8), (50, 30, 0.9), (50, 20, 0.99),  # the most similar *kept* partner (30)
        (60, 10, 0.8), (60, 30, 0.8 + 1e-12),  # equal in float32, not in float64: 30
        (70, 60, 1.0),                      # 60 is removed: 70 is kept
    ]
    i, j, s = (np.array(x) for x in zip(*pairs))
    order = np.random.default_rng(0).permutation(len(pairs))  # any input order
    res = resolve_keep_first(ids, i[order], j[order], s[order])
    assert res.keep.tolist() == [True, False, True, False, False, False, True]
    assert res.match.tolist() == [-1, 10, -1, 10, 30, 30, -1]
    np.testing.assert_array_equal(res.similarity,
                                  np.array([0, 0.9, 0, 0.85, 0.9, 0.8, 0], dtype=np.float32))
    with pytest.raises(ValueError, match="strictly increasing"):
        resolve_keep_first(ids[::-1], i, j, s)
    with pytest.raises(ValueError, match="j < i"):
        resolve_removals(j, i, s)
    with pytest.raises(ValueError, match="not in doc_ids_in_order"):
        resolve_keep_first(ids[1:], i, j, s)


# ---------------------------------------------------------------------------- files and pairs


def test_partition_files_are_sorted_atomic_and_complete(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 2**63, size=(50, 3), dtype=np.int64).astype(np.uint64)
    keys[7] = keys[3]                                  # a shared bucket in every band
    keys[9, 0] = np.uint64(2**64 - 1)                  # the extreme key lands in the last part
    ids = np.arange(50, dtype=np.int64) * 10
    paths = partition_band_keys(keys, ids, 4, tmp_path, "t0")
    assert len(paths) == 4 and sorted(tmp_path.iterdir()) == paths  # no temporary files left
    rows = [np.load(p, allow_pickle=False) for p in paths]
    assert all(r.dtype == ROW_DTYPE for r in rows) and sum(r.shape[0] for r in rows) == 150
    for p, r in enumerate(rows):
        assert (partition_of(r["key"], 4) == p).all()
        assert (np.lexsort((r["doc"], r["key"], r["band"])) == np.arange(r.shape[0])).all()
    assert partition_of(np.array([2**64 - 1], dtype=np.uint64), 4)[0] == 3
    i_ids, j_ids = (np.concatenate(x) for x in zip(*(candidate_pairs([p]) for p in paths)))
    assert sorted(set(zip(i_ids.tolist(), j_ids.tolist()))) == [(70, 30)]
    assert len(i_ids) <= 3  # once per partition holding one of the 3 shared bands
    assert candidate_pairs(paths)[0].tolist() == [70]  # deduplicated over bands


def test_duplicate_doc_ids_across_producers_are_an_error(tmp_path: Path) -> None:
    keys = np.arange(6, dtype=np.uint64).reshape(3, 2) << np.uint64(40)
    partition_band_keys(keys, np.array([1, 2, 3]), 1, tmp_path, "a")
    partition_band_keys(keys[:1], np.array([1]), 1, tmp_path, "b")
    with pytest.raises(ValueError, match="doc id 1 occurs twice"):
        candidate_pairs(partition_files(tmp_path, 1)[0])


def test_max_bucket_guard(tmp_path: Path) -> None:
    texts = ["the same boilerplate text, repeated many times over"] * 30 \
        + [" ".join(_doc(random.Random(k), 20)) for k in range(10)]
    cfg = MinHashConfig(verify="signature")
    sigs, _ = signatures_and_sets(texts, cfg)
    ids = np.arange(len(texts), dtype=np.int64)
    files = partition_signatures(sigs, ids, cfg, 1, tmp_path, "t")
    with pytest.raises(BucketTooLargeError, match=r"bucket of 30 documents .* max_bucket=10:.* "
                       r"all 435 pairs.*remove exact duplicates first"):
        candidate_pairs(files, max_bucket=10)
    # 18 bands x 435 pairs, counted before the pairs repeated over bands are merged
    with pytest.raises(ValueError, match=r"7,830 candidate pairs .* max_pairs=100: use more "
                       r"partitions"):
        candidate_pairs(files, max_pairs=100)
    i_ids, j_ids = candidate_pairs(files, max_bucket=30, max_pairs=18 * 435)
    assert len(i_ids) == 435 and (j_ids < i_ids).all()
    removals = local_shuffle_dedupe([files], ArrayStore(ids, sigs=sigs), cfg, max_bucket=30)
    assert removals.doc_id.tolist() == list(range(1, 30)) and (removals.match == 0).all()


def test_doc_stores_fetch_in_request_order(tmp_path: Path) -> None:
    import pickle

    texts = ["alpha beta gamma delta epsilon", "", "zeta eta theta", "a b c d e f g h i j k"]
    sigs, sets = signatures_and_sets(texts, MinHashConfig(num_perm=8))
    ids = np.array([5, 9, 1 << 40, (1 << 40) + 3], dtype=np.int64)
    write_doc_store(tmp_path, "t0", ids[:2], sigs[:2], take_sets(sets, np.arange(2)))
    write_doc_store(tmp_path, "t1", ids[2:], sigs[2:], take_sets(sets, np.arange(2, 4)))
    want = np.array([9, (1 << 40) + 3, 5], dtype=np.int64)
    rows = np.array([1, 3, 0])
    store = FileStore(tmp_path)
    for fetch in (store, ArrayStore(ids, sigs, sets)):
        got_sigs, (vals, off) = fetch(want)
        np.testing.assert_array_equal(got_sigs, sigs[rows])
        ref_vals, ref_off = take_sets(sets, rows)
        np.testing.assert_array_equal(vals, ref_vals)
        np.testing.assert_array_equal(off, ref_off)
        with pytest.raises(KeyError, match="7"):
            fetch(np.array([5, 7], dtype=np.int64))
    again = pickle.loads(pickle.dumps(store))  # ships only the folder, reopens lazily
    np.testing.assert_array_equal(again(want)[0], sigs[rows])
    # the bulk (signatures, sets) is read, not memory-mapped: it never counts in this RSS
    maps = Path("/proc/self/maps")
    if maps.exists():
        mapped = maps.read_text()
        assert "store-sigs" not in mapped and "store-setv" not in mapped
    # a truncated store is an error that names the file, not garbage
    setv = tmp_path / "t1.store-setv.npy"
    setv.write_bytes(setv.read_bytes()[:-4])
    with pytest.raises(OSError, match="t1.store-setv.npy"):
        FileStore(tmp_path)(np.array([(1 << 40) + 3], dtype=np.int64))


# ---------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_equals_local_in_own_process() -> None:
    run_in_own_process("tests/dedupe/test_shuffle.py::test_ray_equals_local")


@in_own_process
def test_ray_equals_local(ray_local, planted, tmp_path: Path) -> None:
    texts, ids, sigs, sets = planted
    cfg = MinHashConfig(threshold=0.7, verify="exact")
    bounds = [0, 900, len(texts)]
    _produce(sigs, sets, ids, cfg, bounds, 3, tmp_path)
    files = partition_files(tmp_path, 3)
    local = local_shuffle_dedupe(files, FileStore(tmp_path), cfg)
    remote = ray_shuffle_dedupe(files, FileStore(tmp_path), cfg, max_in_flight=2)
    for f in ("doc_id", "match", "similarity"):
        np.testing.assert_array_equal(getattr(remote, f), getattr(local, f))
    assert (remote.candidates, remote.verified) == (local.candidates, local.verified)
    assert len(remote.doc_id) > 350  # guard: it removed the planted duplicates
    _assert_same(remote.result(ids), _streaming(sigs, sets, ids, cfg, bounds))
    with pytest.raises(BucketTooLargeError, match="max_bucket=1"):
        ray_shuffle_dedupe(files, FileStore(tmp_path), cfg, max_bucket=1)



# ---- the kernels against their pure-Python twins (fastprep.kernels.shuffle) ------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=2, max_size=7), max_size=6))
def test_emit_pair_codes_equals_twin(runs: list[list[int]]) -> None:
    from fastprep.kernels import shuffle as kernels

    runs = [sorted(set(r)) for r in runs if len(set(r)) >= 2]
    rank = np.array([x for r in runs for x in r], dtype=np.int64)
    lens = np.array([len(r) for r in runs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if runs else lens
    npairs = lens * (lens - 1) // 2
    off = np.concatenate([[0], np.cumsum(npairs)[:-1]]).astype(np.int64) if runs else lens
    out = np.empty(int(npairs.sum()), dtype=np.int64)
    kernels.emit_pair_codes(rank, starts, lens, off, 31, out)
    assert out.tolist() == kernels.emit_pair_codes_reference(rank, starts, lens, 31)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 12), max_size=8), min_size=2, max_size=8), st.data())
def test_verify_pairs_equals_twin(sets: list[list[int]], data: st.DataObject) -> None:
    from fastprep.kernels import shuffle as kernels

    uniq = [sorted(set(s)) for s in sets]
    vals = np.array([x for s in uniq for x in s], dtype=np.uint32)
    off = np.concatenate([[0], np.cumsum([len(s) for s in uniq])]).astype(np.int64)
    sigs = np.array([[min(s, default=99) + k for k in range(4)] for s in uniq], dtype=np.uint32)
    n = len(uniq)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20))
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    for exact in (True, False):
        sim = np.empty(len(pairs), np.float64)
        ok = np.empty(len(pairs), np.bool_)
        kernels.verify_pairs(a, b, exact, 0.5, 2, sigs, vals, off, sim, ok)
        want_sim, want_ok = kernels.verify_pairs_reference(a, b, exact, 0.5, 2, sigs, vals, off)
        np.testing.assert_allclose(sim, want_sim)
        assert ok.tolist() == want_ok.tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 15), st.integers(0, 14), st.sampled_from([0.5, 0.8, 1.0])),
                max_size=30))
def test_resolve_pairs_equals_twin(raw: list[tuple[int, int, float]]) -> None:
    from fastprep.kernels import shuffle as kernels

    pairs = sorted({(i, j): s for i, j, s in raw if j < i}.items())
    ri = np.array([p[0][0] for p in pairs], dtype=np.int64)
    rj = np.array([p[0][1] for p in pairs], dtype=np.int64)
    sim = np.array([p[1] for p in pairs], dtype=np.float64)
    keep = np.ones(16, np.bool_)
    best_j = np.full(16, -1, np.int64)
    best_sim = np.zeros(16, np.float64)
    kernels.resolve_pairs(ri, rj, sim, keep, best_j, best_sim)
    want = kernels.resolve_pairs_reference(ri, rj, sim, 16)
    assert keep.tolist() == want[0].tolist() and best_j.tolist() == want[1].tolist()
    np.testing.assert_array_equal(best_sim, want[2])
