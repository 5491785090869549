"""Evaluation decontamination: the kernels equal their pure-Python twins; planted overlaps are
found with the right evaluation document and nothing else is; no n-gram spans two documents
or is lost at a block boundary; the index survives a save/load round trip through a memory map."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprep.dedupe import decontam
from fastprep.dedupe.decontam import DecontamConfig, NgramIndex
from fastprep.dedupe.minhash import utf8_buffer
from fastprep.kernels import ngrams as kernels

# ASCII letters/digits/punctuation/whitespace/control, Latin-1, Hangul, CJK, emoji, Cyrillic
_ALPHABET = st.sampled_from(
    list("abcXYZ019 .,;!?'-_\t\n\x00\x7f") + list("\u00e9\u00c9\u00df\u00a0")
    + list("\ud55c\uad6d\uc5b4\u4e2d\u6587\u3001\u3000\U0001f600\U0001f44d\u0416\u0436"))
TEXT = st.text(alphabet=_ALPHABET, max_size=80)
TEXTS = st.lists(TEXT, min_size=1, max_size=8)
SETTINGS = settings(max_examples=80, deadline=None)

_wrng = random.Random(0)
WORDS = sorted({"".join(_wrng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_wrng.randint(2, 11)))
                for _ in range(20000)})


def _doc(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(n)]


def _reference_table(eval_texts: list[str], n: int) -> dict[int, int]:
    hashes: list[int] = []
    docs: list[int] = []
    for d, t in enumerate(eval_texts):
        hs = kernels.ngram_hashes_reference(t, n)
        hashes += hs
        docs += [d] * len(hs)
    return kernels.build_table_reference(hashes, docs)


def _grams(text: str, n: int) -> set[tuple[bytes, ...]]:
    """The word n-grams of a text as tuples of words (no hashing: the independent check)."""
    words = kernels.words_reference(text.encode("utf-8", "surrogatepass"))
    return {tuple(words[k:k + n]) for k in range(len(words) - n + 1)}


def _noisy(words: list[str], rng: random.Random) -> str:
    """The words with changed case and punctuation/whitespace runs between them."""
    seps = [" ", ", ", " -- ", "\n", "; ", " (", ") ", "...", "\t", "!? "]
    out = []
    for w in words:
        style = rng.randrange(3)
        out.append(w.upper() if style == 0 else w.title() if style == 1 else w)
        out.append(rng.choice(seps))
    return "".join(out)


# ---------------------------------------------------------------------------- kernels vs twins


def test_words_rule() -> None:
    """Letters lower-cased, digits kept, every byte >= 0x80 a word byte, the rest separators."""
    data = "Hello, World! 2019-2023 caf\u00e9 \u00c9t\u00e9 \ud55c\uad6d\uc5b4\U0001f600x a_b".encode()
    assert kernels.words_reference(data) == [
        b"hello", b"world", b"2019", b"2023", "caf\u00e9".encode(), "\u00c9t\u00e9".encode(),
        "\ud55c\uad6d\uc5b4\U0001f600x".encode(), b"a", b"b"]
    assert kernels.ngram_hashes_reference("Hello, World!", 2) == \
        kernels.ngram_hashes_reference("hello world", 2)


@SETTINGS
@given(TEXTS, st.integers(1, 5))
def test_ngram_hashes_match_reference(texts: list[str], n: int) -> None:
    buf, off = utf8_buffer(texts)
    hashes, counts = kernels.ngram_hashes(buf, off, n)
    assert hashes.dtype == np.uint64 and counts.shape == (len(texts),)
    starts = np.concatenate([[0], np.cumsum(counts)])
    assert starts[-1] == hashes.shape[0]
    for d, text in enumerate(texts):
        ref = kernels.ngram_hashes_reference(text, n)
        assert hashes[starts[d]:starts[d + 1]].tolist() == ref
        nwords = len(kernels.words_reference(text.encode("utf-8")))
        assert counts[d] == max(0, nwords - n + 1)
    assert not np.any(hashes == 0)  # 0 is the table's empty marker


@SETTINGS
@given(TEXTS, TEXTS, st.integers(1, 3), st.booleans())
def test_first_matches_match_reference(eval_texts: list[str], texts: list[str], n: int,
                                       prefilter: bool) -> None:
    """Small n and a small alphabet: many hits, so the first one (in text order) is tested."""
    index = NgramIndex.build(eval_texts, n, prefilter=prefilter)
    got = index.match(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts),)
    assert got.tolist() == kernels.first_matches_reference(texts, n, _reference_table(eval_texts, n))


@SETTINGS
@given(st.lists(st.integers(0, 40), max_size=60), st.lists(st.integers(0, 60), max_size=30))
def test_table_matches_reference(keys: list[int], queries: list[int]) -> None:
    """First document wins for repeated keys; key 0 (the empty marker) is stored and found."""
    hashes = np.array(keys, dtype=np.uint64)
    docs = np.arange(len(keys), dtype=np.int32) * 3
    bits = kernels.table_bits(len(keys))
    tk, tv, distinct = kernels.build_table(hashes, docs, bits)
    ref = kernels.build_table_reference(keys, docs.tolist())
    assert distinct == len(ref) == len(set(keys))
    q = np.array(queries, dtype=np.uint64)
    found = kernels.table_find(tk, tv, q)
    assert found.tolist() == [ref.get(h or int(kernels.ZERO_KEY), -1) for h in queries]


def test_zero_key_is_stored_and_found() -> None:
    """The guard for 0 as the empty marker, at both places it lives."""
    assert kernels.gram_key(np.uint64(0)) == kernels.ZERO_KEY != 0
    assert kernels.gram_key(np.uint64(7)) == 7
    tk, tv, distinct = kernels.build_table(np.array([0, 5], dtype=np.uint64),
                                           np.array([4, 9], dtype=np.int32), 4)
    assert distinct == 2
    assert kernels.table_find(tk, tv, np.array([0, 5, 6], dtype=np.uint64)).tolist() == [4, 9, -1]


def test_long_documents_and_words_across_blocks() -> None:
    """Documents many blocks long, words longer than a block, a word ending exactly at the
    buffer's end: the block-by-block scan equals the twin (it sees the text whole)."""
    rng = random.Random(1)
    block = kernels.BLOCK
    texts = [" ".join(_doc(rng, 4 * block // 6)),
             "x" * (block + 17) + " " + " ".join(_doc(rng, 40)) + " " + "y" * (2 * block),
             " ".join(_doc(rng, 30)) + "!" * block + " ".join(_doc(rng, 30)),
             "\ud55c" * block + " tail"]
    for n in (1, 13):
        buf, off = utf8_buffer(texts)
        hashes, _ = kernels.ngram_hashes(buf, off, n)
        assert hashes.tolist() == [h for t in texts for h in kernels.ngram_hashes_reference(t, n)]
    # every byte position of a window against a block boundary
    eval_words = _doc(rng, 13)
    index = NgramIndex.build([" ".join(eval_words)], 13)
    window = " ".join(eval_words)
    docs = [("a " * ((block - shift) // 2)) + window + " z" for shift in range(0, 2 * len(window), 3)]
    assert np.all(index.match(docs) == 0)


def test_buffer_tail_words() -> None:
    """Words within 8 bytes of the buffer's end take the byte-by-byte path."""
    for text in ["a", "ab cd", "Hello WORLD", "abcdefghi", "x abcdefghijklmno", "\u00e9\u00e9"]:
        data = text.encode()
        buf = np.frombuffer(data, dtype=np.uint8)
        hashes, _ = kernels.ngram_hashes(buf, np.array([0, len(data)], dtype=np.int64), 1)
        assert hashes.tolist() == kernels.ngram_hashes_reference(text, 1)


# ---------------------------------------------------------------------------- planted data


@pytest.fixture(scope="module")
def eval_set() -> list[list[str]]:
    rng = random.Random(2)
    return [_doc(rng, rng.randint(20, 120)) for _ in range(300)]


def test_planted_windows_are_found_with_their_document(eval_set: list[list[str]]) -> None:
    rng = random.Random(3)
    index = NgramIndex.build([" ".join(d) for d in eval_set], 13)
    texts: list[str] = []
    want: list[int] = []
    for i in range(600):
        words = _doc(rng, rng.randint(30, 400))
        if i % 3 == 0:
            e = rng.randrange(len(eval_set))
            k = rng.randrange(len(eval_set[e]) - 12)
            at = rng.randint(0, len(words))
            words[at:at] = eval_set[e][k:k + 13]
            want.append(e)
        else:
            want.append(-1)
        texts.append(_noisy(words, rng))
    got = index.match(texts)
    assert sum(w >= 0 for w in want) == 200  # guard: the check saw real contamination
    assert got.tolist() == want
    assert got.tolist() == kernels.first_matches_reference(texts, 13, _reference_table(
        [" ".join(d) for d in eval_set], 13))


def test_clean_control_is_not_flagged(eval_set: list[list[str]]) -> None:
    """The evaluation vocabulary, shuffled: no 13-gram coincides (checked on the words
    themselves, without hashing), and none is reported."""
    rng = random.Random(4)
    pool = [w for d in eval_set for w in d]
    eval_grams = set().union(*(_grams(" ".join(d), 13) for d in eval_set))
    texts = []
    for _ in range(200):
        rng.shuffle(pool)
        texts.append(_noisy(pool[:rng.randint(13, 300)], rng))
    assert not any(_grams(t, 13) & eval_grams for t in texts)
    assert len(pool) > 10000 and len(eval_grams) > 10000  # guard: a real vocabulary
    index = NgramIndex.build([" ".join(d) for d in eval_set], 13)
    assert np.all(index.match(texts) == -1)


def test_twelve_word_overlap_needs_n_12(eval_set: list[list[str]]) -> None:
    rng = random.Random(5)
    texts = [" ".join(_doc(rng, 50) + d[3:15] + _doc(rng, 50)) for d in eval_set[:40]]
    evals = [" ".join(d) for d in eval_set]
    assert np.all(NgramIndex.build(evals, 13).match(texts) == -1)
    assert NgramIndex.build(evals, 12).match(texts).tolist() == list(range(40))


def test_no_gram_spans_two_documents(eval_set: list[list[str]]) -> None:
    """An evaluation window cut between two consecutive training documents (same batch) is
    not a match; the same words in one document are."""
    rng = random.Random(6)
    index = NgramIndex.build([" ".join(d) for d in eval_set], 13)
    texts = []
    for e in range(30):
        cut = rng.randint(1, 12)
        window = eval_set[e][:13]
        texts += [" ".join(_doc(rng, 20) + window[:cut]), " ".join(window[cut:] + _doc(rng, 20))]
    assert np.all(index.match(texts) == -1)
    joined = [texts[2 * i] + " " + texts[2 * i + 1] for i in range(30)]
    assert index.match(joined).tolist() == list(range(30))


def test_first_gram_in_text_order_and_first_eval_document_wins() -> None:
    rng = random.Random(7)
    a, b = _doc(rng, 13), _doc(rng, 13)
    evals = [" ".join(_doc(rng, 20)), " ".join(b), " ".join(a + _doc(rng, 5)), " ".join(b)]
    index = NgramIndex.build(evals, 13)
    assert index.grams == 8 + 1 + 6  # b is indexed once: eval document 3 repeats it
    text = " ".join(_doc(rng, 10) + a + _doc(rng, 10) + b)
    assert index.match([text, " ".join(b + a)]).tolist() == [2, 1]


def test_byte_offsets_with_multibyte_text(eval_set: list[list[str]]) -> None:
    """Multi-byte characters before a contaminated document: offsets are bytes, not
    characters; a lone surrogate does not stop the batch."""
    index = NgramIndex.build([" ".join(d) for d in eval_set], 13)
    window = " ".join(eval_set[9][:13])
    texts = ["\ud55c\uad6d\uc5b4 " * 400, "\U0001f600" * 333 + " " + window, "bad \ud800 surrogate",
             "caf\u00e9 " + window.upper()]
    assert index.match(texts).tolist() == [-1, 9, -1, 9]
    assert index.match([]).shape == (0,)


def test_counts_and_first_gram(eval_set: list[list[str]]) -> None:
    evals = [" ".join(d) for d in eval_set] + ["too short", ""]
    index = NgramIndex.build(iter(evals), 13)  # any iterable
    assert index.eval_docs == len(evals) and index.too_short == 2
    assert index.grams == len(set().union(*(_grams(t, 13) for t in evals)))
    assert index.nbytes == index.keys.nbytes + index.values.nbytes + index.filter.nbytes
    rng = random.Random(8)
    window = eval_set[4][5:18]
    text = _noisy(_doc(rng, 30) + window + _doc(rng, 30), rng)
    assert index.first_gram(text) == " ".join(window)
    assert index.first_gram(" ".join(_doc(rng, 100))) is None
    kor = "\ud55c\uad6d\uc5b4 \ubb38\uc7a5 \ud558\ub098 \ub458 \uc14b \ub137 \ub2e4\uc12f \uc5ec\uc12f"
    k_index = NgramIndex.build([kor], 4)
    assert k_index.first_gram("Prefix: " + kor + "!") == " ".join(kor.split()[:4])


def test_build_does_not_depend_on_batching(eval_set: list[list[str]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    evals = [" ".join(d) for d in eval_set]
    whole = NgramIndex.build(evals, 13)
    monkeypatch.setattr(decontam, "BATCH_DOCS", 7)
    batched = NgramIndex.build(evals, 13)
    for name in ("keys", "values", "filter"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(batched, name))
    assert (whole.grams, whole.eval_docs, whole.too_short) == \
        (batched.grams, batched.eval_docs, batched.too_short)


# ---------------------------------------------------------------------------- file and config


def test_save_load_round_trip_is_memory_mapped(eval_set: list[list[str]], tmp_path: Path) -> None:
    rng = random.Random(9)
    index = NgramIndex.build([" ".join(d) for d in eval_set], 13)
    path = tmp_path / "decontam.idx"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["decontam.idx"]  # no temporary left behind
    loaded = NgramIndex.load(path)
    assert isinstance(loaded.keys, np.memmap) and not loaded.keys.flags.writeable
    for name in ("keys", "values", "filter"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(index, name))
    assert loaded.header() == index.header() and loaded.nbytes == index.nbytes
    texts = [" ".join(_doc(rng, 40) + (d[:13] if i % 2 else [])) for i, d in enumerate(eval_set)]
    assert np.array_equal(loaded.match(texts), index.match(texts))
    assert (loaded.match(texts) >= 0).sum() == len(eval_set) // 2


def test_load_refuses_a_damaged_file(eval_set: list[list[str]], tmp_path: Path) -> None:
    path = tmp_path / "i.idx"
    NgramIndex.build([" ".join(d) for d in eval_set[:5]], 13).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        NgramIndex.load(tmp_path / "cut.idx")
    (tmp_path / "junk.idx").write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="not a fastprep n-gram index"):
        NgramIndex.load(tmp_path / "junk.idx")
    grams = NgramIndex.load(path).grams
    other = grams - 1 if grams % 10 else grams + 1  # same number of digits: same layout
    lie = data.replace(f'"grams": {grams},'.encode(), f'"grams": {other},'.encode())
    assert lie != data
    (tmp_path / "lie.idx").write_bytes(lie)
    with pytest.raises(ValueError, match="rebuild the index"):
        NgramIndex.load(tmp_path / "lie.idx")


def test_arrays_are_checked() -> None:
    """The kernel trusts the arrays (no bounds checks): a wrong shape is refused up front."""
    good = NgramIndex.build(["a b c d"], 2)
    fields = {f: getattr(good, f) for f in ("n", "keys", "values", "eval_docs", "grams",
                                            "too_short", "filter", "filter_bits")}
    NgramIndex(**fields)
    for bad in ({"filter": good.filter[:1]}, {"filter_bits": 0}, {"keys": good.keys[:3]},
                {"values": good.values.astype(np.int64)}, {"n": 0}):
        with pytest.raises(ValueError, match="NgramIndex"):
            NgramIndex(**{**fields, **bad})


def test_empty_evaluation_set_matches_nothing(tmp_path: Path) -> None:
    index = NgramIndex.build([], 13)
    assert (index.eval_docs, index.grams, index.too_short) == (0, 0, 0)
    index.save(tmp_path / "e.idx")
    assert NgramIndex.load(tmp_path / "e.idx").match(["a b c " * 20]).tolist() == [-1]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "13"])
def test_config_names_the_flag(bad: object) -> None:
    with pytest.raises(ValueError, match="--decontaminate-ngram"):
        DecontamConfig(ngram=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--decontaminate-ngram"):
        NgramIndex.build(["a b c"], bad)  # type: ignore[arg-type]


def test_config_paths() -> None:
    cfg = DecontamConfig(paths=["eval/a.jsonl", Path("eval/b")])  # type: ignore[arg-type]
    assert cfg.paths == ("eval/a.jsonl", "eval/b") and cfg.enabled and cfg.ngram == 13
    assert not DecontamConfig().enabled
    with pytest.raises(ValueError, match="--decontaminate"):
        DecontamConfig(paths="eval.jsonl")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one string"):
        NgramIndex.build("one document", 13)  # type: ignore[arg-type]
