"""Numba kernels for near-duplicate detection: normalisation, shingling, MinHash, LSH banding, and
a streaming LSH index built from flat numpy arrays.

Every kernel takes and returns numpy arrays, does no I/O, and has a slow pure-Python twin named
``<kernel>_reference`` that the tests compare it against. The typed API lives in
:mod:`fastprep.dedupe.minhash`; read its docstring for the algorithm as a whole.

Texts arrive as one UTF-8 buffer ``buf`` (uint8) plus ``offsets`` (int64 [n + 1]); document ``d``
is ``buf[offsets[d]:offsets[d + 1]]``.

Normalisation (byte level, on valid UTF-8; what the reference twin does on code points):

- ASCII letters are lower-cased, ASCII digits fold to ``0`` (so "2023" and "1999" are one token);
- ASCII punctuation, whitespace and control characters are word *separators*: runs of them
  collapse into one space, leading and trailing separators disappear ("don't" -> "don t");
- Latin-1: U+0080..U+00BF (C1 controls, NBSP, Latin-1 punctuation and symbols) are separators
  except the letters ª µ º; U+00C0..U+00DE (upper-case Latin-1 letters) are lower-cased
  (É -> é); × and ÷ are separators;
- U+2000..U+206F (General Punctuation: Unicode spaces, dashes, curly quotes, ellipsis, zero-width
  spaces), U+3000..U+3002 (ideographic space, comma, full stop) and U+FEFF (BOM) are separators;
- every other code point is copied verbatim as part of a word: other scripts keep their case and
  accents. Scripts written without spaces (Chinese, Japanese, Thai) then form very long "words";
  use character n-grams (``char_ngrams=True``) for them.

Stray bytes that are not valid UTF-8 (impossible from ``str.encode``, but lone surrogates are
encoded with ``surrogatepass``) are copied verbatim.

Shingle hashing: a word is hashed 8 bytes at a time (``h = (h ^ chunk) * C``, little-endian
chunks, the last zero-padded, the length mixed into the start value) and finished with murmur3's
``fmix64``; byte-wise FNV-1a was latency-bound at 1.4 ns/byte. A word n-gram combines its word
hashes with ``s = (s ^ w) * 0x9E3779B97F4A7C15`` and finishes with ``fmix64(s ^ n)``. A character
n-gram (n code points of the normalised text, spaces included) is hashed like a word. A document
with fewer than n tokens gets exactly one shingle: all its tokens; a document with no token at
all (empty, or only separators) has no shingle.

Permutations: ``h_i(x) = ((a_i * x + b_i) mod 2**64) >> 32`` with odd random 64-bit ``a_i`` and
random ``b_i`` (multiply-add-shift). The input ``x`` is already an fmix64 output, so a linear
map per permutation is enough: over 1,500 trials per point the estimator's standard deviation
was within 4% of the binomial sqrt(J(1-J)/K) at J = 0.5/0.8/0.9 and its bias under 0.002, the
same as a full fmix64 per permutation, at less than half the cost (44-76 ns vs 94-118 ns per
shingle for K = 128 on this AVX2 machine; a Mersenne-prime (a*x+b) mod (2**61-1) needs 128-bit
products numba does not vectorise). Signatures are uint32: 512 bytes per document at K = 128.
A non-empty document's minima are clamped to ``2**32 - 2`` so the all-``0xFFFFFFFF`` signature
of an empty document can never share a value with a non-empty one: empty documents never match
non-empty ones, and they match each other (two empty sets are identical).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

U64 = np.uint64
FNV_OFFSET = U64(0xCBF29CE484222325)
GOLDEN = U64(0x9E3779B97F4A7C15)
FMIX_C1 = U64(0xFF51AFD7ED558CCD)
FMIX_C2 = U64(0xC4CEB9FE1A85EC53)
SHIFT33 = U64(33)
SHIFT32 = U64(32)
EMPTY_MIN = np.uint32(0xFFFFFFFF)   # signature value of an empty document (no shingle)
MAX_NONEMPTY = np.uint32(0xFFFFFFFE)  # largest value a non-empty document's signature can hold
MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# hashing primitives


@njit(cache=True, nogil=True, inline="always")
def fmix64(h: np.uint64) -> np.uint64:
    h ^= h >> SHIFT33
    h *= FMIX_C1
    h ^= h >> SHIFT33
    h *= FMIX_C2
    h ^= h >> SHIFT33
    return h


@njit(cache=True, nogil=True, inline="always")
def _hash_bytes(buf: np.ndarray, start: int, end: int) -> np.uint64:
    # 8 bytes per multiply (little-endian chunks, the last one zero-padded, the length mixed in
    # first): most words are one chunk, so this is one multiply plus fmix64 per word; byte-wise
    # FNV-1a was latency-bound at 1.4 ns/byte
    h = FNV_OFFSET ^ U64(end - start)
    acc = U64(0)
    shift = U64(0)
    for i in range(start, end):
        acc |= U64(buf[i]) << shift
        shift += U64(8)
        if shift == U64(64):
            h = (h ^ acc) * FMIX_C1
            acc = U64(0)
            shift = U64(0)
    if shift != U64(0):
        h = (h ^ acc) * FMIX_C1
    return fmix64(h)


def fmix64_reference(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    h ^= h >> 33
    return h


def hash_bytes_reference(data: bytes) -> int:
    h = 0xCBF29CE484222325 ^ len(data)
    for k in range(0, len(data), 8):
        chunk = int.from_bytes(data[k:k + 8], "little")
        h = ((h ^ chunk) * 0xFF51AFD7ED558CCD) & MASK64
    return fmix64_reference(h)


def combine_reference(hashes: list[int]) -> int:
    s = 0
    for w in hashes:
        s = ((s ^ w) * 0x9E3779B97F4A7C15) & MASK64
    return fmix64_reference(s ^ len(hashes))


# --------------------------------------------------------------------------------------------
# normalisation


def _ascii_table() -> np.ndarray:
    """Byte -> normalised ASCII byte; 0 = separator; 0xFF = part of a multi-byte sequence."""
    lut = np.zeros(256, dtype=np.uint8)
    for c in range(ord("a"), ord("z") + 1):
        lut[c] = c
    for c in range(ord("A"), ord("Z") + 1):
        lut[c] = c + 32
    lut[ord("0"):ord("9") + 1] = ord("0")
    lut[0x80:] = 0xFF
    return lut


_ASCII = _ascii_table()  # a global array: numba freezes it into the compiled kernel


@njit(cache=True, nogil=True)
def _normalize_doc(buf: np.ndarray, start: int, end: int, out: np.ndarray) -> int:
    """Normalise ``buf[start:end]`` into ``out`` (room for end - start bytes); return the length."""
    o = 0
    pending = False  # a separator was seen since the last emitted byte
    i = start
    while i < end:
        c = buf[i]
        v = _ASCII[c]
        if v != 0xFF:
            # ASCII, branch-free: a word byte after separators first writes the one space (the
            # speculative write is in bounds: o <= i - start); table lookups replace a chain of
            # range tests that ran at 5-7 ns/byte on real text
            word = v != 0
            out[o] = 0x20
            o += 1 if (word and pending and o > 0) else 0
            out[o] = v
            o += 1 if word else 0
            pending = not word
            i += 1
            continue
        # multi-byte sequence (or a stray byte): find its length, clamped to the document
        if c >= 0xF0:
            ln = 4
        elif c >= 0xE0:
            ln = 3
        elif c >= 0xC0:
            ln = 2
        else:
            ln = 1
        if i + ln > end:
            ln = end - i
        sep = False
        lower = False
        if ln == 2 and c == 0xC2:
            c1 = buf[i + 1]
            sep = c1 != 0xAA and c1 != 0xB5 and c1 != 0xBA
        elif ln == 2 and c == 0xC3:
            c1 = buf[i + 1]
            if c1 == 0x97 or c1 == 0xB7:
                sep = True
            elif 0x80 <= c1 <= 0x9E:
                lower = True
        elif ln == 3 and c == 0xE2:
            c1 = buf[i + 1]
            sep = c1 == 0x80 or (c1 == 0x81 and buf[i + 2] <= 0xAF)
        elif ln == 3 and c == 0xE3:
            sep = buf[i + 1] == 0x80 and buf[i + 2] <= 0x82
        elif ln == 3 and c == 0xEF:
            sep = buf[i + 1] == 0xBB and buf[i + 2] == 0xBF
        if sep:
            pending = True
            i += ln
            continue
        if pending and o > 0:
            out[o] = 0x20
            o += 1
        pending = False
        for j in range(ln):
            out[o] = buf[i + j]
            o += 1
        if lower:
            out[o - 1] = out[o - 1] + 0x20
        i += ln
    return o


@njit(cache=True, nogil=True)
def normalize(buf: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise every document: returns (out_buf uint8, out_offsets int64 [n + 1])."""
    n = offsets.shape[0] - 1
    out = np.empty(offsets[n] - offsets[0], dtype=np.uint8)
    out_off = np.empty(n + 1, dtype=np.int64)
    out_off[0] = 0
    o = 0
    for d in range(n):
        ln = _normalize_doc(buf, offsets[d], offsets[d + 1], out[o:])
        o += ln
        out_off[d + 1] = o
    return out[:o].copy(), out_off


def _is_separator_cp(cp: int) -> bool:
    if cp < 0x80:
        return not (0x61 <= cp <= 0x7A or 0x41 <= cp <= 0x5A or 0x30 <= cp <= 0x39)
    if 0x80 <= cp <= 0xBF:
        return cp not in (0xAA, 0xB5, 0xBA)
    if cp in (0xD7, 0xF7):
        return True
    return 0x2000 <= cp <= 0x206F or 0x3000 <= cp <= 0x3002 or cp == 0xFEFF


def normalize_reference(text: str) -> bytes:
    """Pure-Python twin of :func:`normalize` for one document, on code points."""
    words: list[str] = []
    cur: list[str] = []
    for ch in text:
        cp = ord(ch)
        if _is_separator_cp(cp):
            if cur:
                words.append("".join(cur))
                cur = []
            continue
        if 0x41 <= cp <= 0x5A or 0xC0 <= cp <= 0xDE:
            ch = chr(cp + 0x20)
        elif 0x30 <= cp <= 0x39:
            ch = "0"
        cur.append(ch)
    if cur:
        words.append("".join(cur))
    return " ".join(words).encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------------------
# shingles


@njit(cache=True, nogil=True)
def _doc_shingles(norm: np.ndarray, ln: int, ngram: int, char_ngrams: bool,
                  tmp: np.ndarray, out: np.ndarray) -> int:
    """Shingle hashes of one normalised document ``norm[:ln]`` into ``out``; returns the count.
    ``tmp`` (int64 or uint64 scratch, >= ln + 1 entries) holds word hashes or code-point starts."""
    if ln == 0:
        return 0
    if char_ngrams:
        # tmp[k] = byte position of the k-th code point; tmp[nc] = ln
        nc = 0
        for i in range(ln):
            if (norm[i] & 0xC0) != 0x80:
                tmp[nc] = U64(i)
                nc += 1
        tmp[nc] = U64(ln)
        if nc < ngram:
            out[0] = _hash_bytes(norm, 0, ln)
            return 1
        for k in range(nc - ngram + 1):
            out[k] = _hash_bytes(norm, np.int64(tmp[k]), np.int64(tmp[k + ngram]))
        return nc - ngram + 1
    # word n-grams: the normalised text is words separated by single spaces
    nw = 0
    s = 0
    for i in range(ln + 1):
        if i == ln or norm[i] == 0x20:
            tmp[nw] = _hash_bytes(norm, s, i)
            nw += 1
            s = i + 1
    m = min(ngram, nw)
    count = nw - m + 1
    for k in range(count):
        h = U64(0)
        for j in range(m):
            h = (h ^ tmp[k + j]) * GOLDEN
        out[k] = fmix64(h ^ U64(m))
    return count


DOCS_PER_TASK = 16  # documents per parallel task: scratch buffers are allocated once per task


@njit(cache=True, nogil=True)
def _max_doc_bytes(offsets: np.ndarray, d0: int, d1: int) -> int:
    m = 0
    for d in range(d0, d1):
        m = max(m, offsets[d + 1] - offsets[d])
    return m


@njit(cache=True, nogil=True)
def _set_capacity(offsets: np.ndarray, char_ngrams: bool) -> np.ndarray:
    """Prefix sums of the per-document shingle bound: b bytes give at most b character
    shingles or (b + 1) // 2 word shingles."""
    n = offsets.shape[0] - 1
    cap = np.empty(n + 1, dtype=np.int64)
    cap[0] = 0
    for d in range(n):
        b = offsets[d + 1] - offsets[d]
        cap[d + 1] = cap[d] + (b if char_ngrams else (b + 1) // 2)
    return cap


@njit(cache=True, nogil=True, parallel=True)
def shingle_hashes(buf: np.ndarray, offsets: np.ndarray, ngram: int,
                   char_ngrams: bool) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes, in text order with repeats: (hashes uint64, hash_offsets int64 [n + 1]).
    A document of b bytes has at most b character shingles, (b + 1) // 2 word shingles; that
    bound sizes the first (parallel) pass."""
    n = offsets.shape[0] - 1
    counts = np.zeros(n + 1, dtype=np.int64)
    cap = _set_capacity(offsets, char_ngrams)
    tmp_out = np.empty(cap[n], dtype=np.uint64)
    tasks = (n + DOCS_PER_TASK - 1) // DOCS_PER_TASK
    for t in prange(tasks):
        d0 = t * DOCS_PER_TASK
        d1 = min(n, d0 + DOCS_PER_TASK)
        maxb = _max_doc_bytes(offsets, d0, d1)
        norm = np.empty(maxb, dtype=np.uint8)
        tmp = np.empty(maxb + 1, dtype=np.uint64)
        for d in range(d0, d1):
            ln = _normalize_doc(buf, offsets[d], offsets[d + 1], norm)
            counts[d + 1] = _doc_shingles(norm, ln, ngram, char_ngrams, tmp,
                                          tmp_out[cap[d]:cap[d + 1]])
    hoff = np.cumsum(counts)
    out = np.empty(hoff[n], dtype=np.uint64)
    for d in prange(n):
        out[hoff[d]:hoff[d + 1]] = tmp_out[cap[d]:cap[d] + counts[d + 1]]
    return out, hoff


def shingle_hashes_reference(text: str, ngram: int, char_ngrams: bool) -> list[int]:
    """Pure-Python twin of :func:`shingle_hashes` for one document."""
    norm = normalize_reference(text)
    if not norm:
        return []
    if char_ngrams:
        chars = [ch.encode("utf-8", "surrogatepass")
                 for ch in norm.decode("utf-8", "surrogatepass")]
        if len(chars) < ngram:
            return [hash_bytes_reference(norm)]
        return [hash_bytes_reference(b"".join(chars[k:k + ngram]))
                for k in range(len(chars) - ngram + 1)]
    words = [hash_bytes_reference(w) for w in norm.split(b" ")]
    m = min(ngram, len(words))
    return [combine_reference(words[k:k + m]) for k in range(len(words) - m + 1)]


# --------------------------------------------------------------------------------------------
# MinHash signatures


@njit(cache=True, nogil=True, inline="always")
def _minhash_into(hashes: np.ndarray, count: int, a: np.ndarray, b: np.ndarray,
                  sig: np.ndarray) -> None:
    num_perm = a.shape[0]
    for k in range(num_perm):
        sig[k] = EMPTY_MIN
    # shingles outer, permutations inner: the inner loop is branch-free (min) so LLVM vectorises
    # it; an `if h < sig[k]` version was 4x slower
    for i in range(count):
        x = hashes[i]
        for k in range(num_perm):
            sig[k] = min(sig[k], np.uint32((a[k] * x + b[k]) >> SHIFT32))
    if count > 0:
        for k in range(num_perm):
            sig[k] = min(sig[k], MAX_NONEMPTY)


_INSERTION_MAX = 48  # shorter runs are sorted by insertion: radix passes cost 4 x 256 counts


@njit(cache=True, nogil=True)
def _sort_u32(a: np.ndarray, n: int, scratch: np.ndarray, hist: np.ndarray) -> None:
    """Sort ``a[:n]`` in place without allocating (the kernels run it per document on every
    thread, where an allocation per document stopped two threads from scaling): insertion sort
    for short runs, else an LSD radix sort, 4 passes of 8 bits through ``scratch``."""
    if n <= _INSERTION_MAX:
        for i in range(1, n):
            v = a[i]
            j = i - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
        return
    src = a
    dst = scratch
    for shift in range(0, 32, 8):
        hist[:] = 0
        for i in range(n):
            hist[(src[i] >> shift) & 0xFF] += 1
        total = 0
        for k in range(256):
            c = hist[k]
            hist[k] = total
            total += c
        for i in range(n):
            k = (src[i] >> shift) & 0xFF
            dst[hist[k]] = src[i]
            hist[k] += 1
        src, dst = dst, src
    # four passes: the sorted run is back in ``a``


@njit(cache=True, nogil=True)
def _sorted_set_into(hashes: np.ndarray, count: int, out: np.ndarray, scratch: np.ndarray,
                     hist: np.ndarray) -> int:
    """Write the distinct high 32 bits of ``hashes[:count]``, ascending, to ``out``; returns how
    many. ``scratch`` (uint32, >= count) and ``hist`` (int64 [256]) are caller-owned scratch.

    A shingle is identified by the high 32 bits of its 64-bit hash. Two distinct shingles
    collide with probability 2**-32, so for two documents of 10k shingles each the expected
    spurious matches are 10k * 10k / 2**32 = 0.02, a Jaccard error of ~1e-6; half the bytes of
    64-bit sets, which the worker processes ship and the driver keeps."""
    if count == 0:
        return 0
    for i in range(count):
        out[i] = np.uint32(hashes[i] >> SHIFT32)
    _sort_u32(out, count, scratch, hist)
    m = 1
    for i in range(1, count):
        if out[i] != out[m - 1]:
            out[m] = out[i]
            m += 1
    return m


@njit(cache=True, nogil=True, parallel=True)
def minhash_signatures(buf: np.ndarray, offsets: np.ndarray, ngram: int, char_ngrams: bool,
                       a: np.ndarray, b: np.ndarray, bands: int = 0, rows: int = 0,
                       want_sets: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(uint32 [n, K] MinHash signatures, uint64 [n, bands] band keys (bands = 0: none),
    shingle sets as uint32 values + int64 offsets [n + 1] (empty unless ``want_sets``)).

    Parallel over tasks of DOCS_PER_TASK documents, each with its own scratch (threads share only
    the read-only input; a per-document allocation of 8 bytes per input byte cost more than the
    hashing on long documents). Band keys and the sets come
    from the same pass over the text: on a busy machine every extra parallel region costs a
    scheduler time slice to gather threads, and the shingles are hashed once.
    """
    n = offsets.shape[0] - 1
    sigs = np.empty((n, a.shape[0]), dtype=np.uint32)
    keys = np.empty((n, bands), dtype=np.uint64)
    cap = _set_capacity(offsets, char_ngrams) if want_sets else np.zeros(n + 1, dtype=np.int64)
    set_tmp = np.empty(cap[n], dtype=np.uint32)
    counts = np.zeros(n + 1, dtype=np.int64)
    tasks = (n + DOCS_PER_TASK - 1) // DOCS_PER_TASK
    for t in prange(tasks):
        d0 = t * DOCS_PER_TASK
        d1 = min(n, d0 + DOCS_PER_TASK)
        maxb = _max_doc_bytes(offsets, d0, d1)
        norm = np.empty(maxb, dtype=np.uint8)
        tmp = np.empty(maxb + 1, dtype=np.uint64)
        hashes = np.empty(maxb + 1, dtype=np.uint64)
        scratch = np.empty(maxb + 1 if want_sets else 0, dtype=np.uint32)
        hist = np.empty(256, dtype=np.int64)
        for d in range(d0, d1):
            ln = _normalize_doc(buf, offsets[d], offsets[d + 1], norm)
            count = _doc_shingles(norm, ln, ngram, char_ngrams, tmp, hashes)
            _minhash_into(hashes, count, a, b, sigs[d])
            _band_keys_into(sigs[d], bands, rows, keys[d])
            if want_sets:
                counts[d + 1] = _sorted_set_into(hashes, count, set_tmp[cap[d]:cap[d + 1]],
                                                 scratch, hist)
    set_off = np.cumsum(counts)
    set_vals = np.empty(set_off[n], dtype=np.uint32)
    if want_sets:
        for d in range(n):
            set_vals[set_off[d]:set_off[d + 1]] = set_tmp[cap[d]:cap[d] + counts[d + 1]]
    return sigs, keys, set_vals, set_off


def minhash_signatures_reference(texts: list[str], ngram: int, char_ngrams: bool,
                                 a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pure-Python twin of :func:`minhash_signatures`."""
    a_list = [int(v) for v in a]
    b_list = [int(v) for v in b]
    out = np.empty((len(texts), len(a_list)), dtype=np.uint32)
    for d, text in enumerate(texts):
        shingles = shingle_hashes_reference(text, ngram, char_ngrams)
        if not shingles:
            out[d] = 0xFFFFFFFF
            continue
        for k, (ak, bk) in enumerate(zip(a_list, b_list)):
            m = min((((ak * x + bk) & MASK64) >> 32) for x in shingles)
            out[d, k] = min(m, 0xFFFFFFFE)
    return out


# --------------------------------------------------------------------------------------------
# LSH band keys


@njit(cache=True, nogil=True, inline="always")
def _band_keys_into(sig: np.ndarray, bands: int, rows: int, out: np.ndarray) -> None:
    for j in range(bands):
        h = U64(j + 1) * GOLDEN
        for r in range(rows):
            h = (h ^ U64(sig[j * rows + r])) * FMIX_C1
        out[j] = fmix64(h)


@njit(cache=True, nogil=True)
def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 [n, bands]: band j hashes signature values [j*rows, (j+1)*rows). The band number is
    mixed in so equal row values in different bands give different keys."""
    n = sigs.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    for d in range(n):
        _band_keys_into(sigs[d], bands, rows, out[d])
    return out


def band_keys_reference(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Pure-Python twin of :func:`band_keys`."""
    out = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    for d in range(sigs.shape[0]):
        for j in range(bands):
            h = ((j + 1) * 0x9E3779B97F4A7C15) & MASK64
            for r in range(rows):
                h = ((h ^ int(sigs[d, j * rows + r])) * 0xFF51AFD7ED558CCD) & MASK64
            out[d, j] = fmix64_reference(h)
    return out


# --------------------------------------------------------------------------------------------
# exact Jaccard on sorted unique shingle sets


@njit(cache=True, nogil=True, inline="always")
def jaccard_sorted_range(x: np.ndarray, xs: int, xe: int, y: np.ndarray, ys: int, ye: int) -> float:
    """Exact Jaccard of the sorted unique runs ``x[xs:xe]`` and ``y[ys:ye]`` (1.0 for two empty
    runs): one merge, no allocation. The twin is :func:`jaccard_sorted_reference`."""
    nx = xe - xs
    ny = ye - ys
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0
    i = xs
    j = ys
    inter = 0
    while i < xe and j < ye:
        if x[i] == y[j]:
            inter += 1
            i += 1
            j += 1
        elif x[i] < y[j]:
            i += 1
        else:
            j += 1
    return inter / (nx + ny - inter)


@njit(cache=True, nogil=True)
def jaccard_sorted(x: np.ndarray, y: np.ndarray) -> float:
    """Exact Jaccard of two sorted unique uint64 arrays (1.0 for two empty sets)."""
    return jaccard_sorted_range(x, 0, x.shape[0], y, 0, y.shape[0])


def jaccard_sorted_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Pure-Python twin of :func:`jaccard_sorted`."""
    sx = set(x.tolist())
    sy = set(y.tolist())
    if not sx or not sy:
        return 1.0 if sx == sy else 0.0
    return len(sx & sy) / len(sx | sy)


# --------------------------------------------------------------------------------------------
# the streaming LSH index
#
# Per band an open-addressing table: tab_keys[band, t] (uint64 band key) -> tab_heads[band, t]
# (int32 slot of the newest kept document with that key, -1 = empty cell). Kept documents sharing
# a band key are chained through nexts[slot, band] (int32, -1 = end), so a bucket never holds a
# Python list and an insert is O(1). Slots number kept documents 0, 1, 2... in keep order;
# kept_sigs[slot] is the signature used for verification (signature mode only; exact mode
# passes a kept_sigs with no columns and verifies on kept_sets).


@njit(cache=True, nogil=True)
def _table_find(keys: np.ndarray, heads: np.ndarray, band: int, key: np.uint64) -> int:
    """Cell of ``key`` in band ``band``, or -(empty cell) - 1 where it would be inserted."""
    mask = keys.shape[1] - 1
    t = np.int64(key & U64(mask))
    while heads[band, t] != -1:
        if keys[band, t] == key:
            return t
        t = (t + 1) & mask
    return -t - 1


@njit(cache=True, nogil=True)
def rehash_tables(keys: np.ndarray, heads: np.ndarray, new_cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy every (key, head) into fresh tables of ``new_cap`` cells (a power of two)."""
    nb = keys.shape[0]
    nkeys = np.zeros((nb, new_cap), dtype=np.uint64)
    nheads = np.full((nb, new_cap), -1, dtype=np.int32)
    for band in range(nb):
        for t in range(keys.shape[1]):
            if heads[band, t] != -1:
                c = _table_find(nkeys, nheads, band, keys[band, t])
                c = -c - 1
                nkeys[band, c] = keys[band, t]
                nheads[band, c] = heads[band, t]
    return nkeys, nheads


@njit(cache=True, nogil=True)
def lsh_dedupe_batch(sigs: np.ndarray, keys: np.ndarray, need: int, threshold: float,
                     exact: bool, sets: np.ndarray, set_off: np.ndarray,
                     n_kept: int, kept_sigs: np.ndarray, tab_keys: np.ndarray,
                     tab_heads: np.ndarray, nexts: np.ndarray, stamp: np.ndarray,
                     stamp_base: int, kept_sets: np.ndarray, kept_set_off: np.ndarray,
                     keep: np.ndarray, match_slot: np.ndarray, similarity: np.ndarray) -> int:
    """Process one batch in input order; returns the new number of kept documents.

    Document i is a candidate pair with every kept document sharing one of its band keys; each
    candidate is verified (signature agreement >= ``need`` of K, or exact Jaccard of the sorted
    shingle sets >= ``threshold`` when ``exact``). Verified: i is removed, ``match_slot[i]`` is the
    slot of the most similar verified kept document (ties: the earliest) and ``similarity[i]`` its
    similarity. Otherwise i is kept and inserted, so later documents of the batch see it.

    The caller guarantees room for the whole batch: kept arrays hold n_kept + n slots, tables
    have at least 2 * (n_kept + n) cells, kept_sets (exact mode) has room for all of ``sets``;
    stamp_base + n < 2**31. ``stamp[slot]`` marks the query that already verified a slot, so a
    candidate found through several bands is verified once.
    """
    n = sigs.shape[0]
    num_perm = sigs.shape[1]
    nbands = keys.shape[1]
    for i in range(n):
        q = stamp_base + i
        best = -1
        best_sim = -1.0
        for band in range(nbands):
            c = _table_find(tab_keys, tab_heads, band, keys[i, band])
            if c < 0:
                continue
            slot = tab_heads[band, c]
            while slot != -1:
                if stamp[slot] != q:
                    stamp[slot] = q
                    if exact:
                        sim = jaccard_sorted_range(sets, set_off[i], set_off[i + 1], kept_sets,
                                              kept_set_off[slot], kept_set_off[slot + 1])
                        ok = sim >= threshold
                    else:
                        eq = 0
                        for k in range(num_perm):
                            eq += sigs[i, k] == kept_sigs[slot, k]
                        sim = eq / num_perm
                        ok = eq >= need
                    if ok and (sim > best_sim or (sim == best_sim and slot < best)):
                        best = slot
                        best_sim = sim
                slot = nexts[slot, band]
        if best >= 0:
            keep[i] = False
            match_slot[i] = best
            similarity[i] = best_sim
            continue
        keep[i] = True
        match_slot[i] = -1
        similarity[i] = 0.0
        slot = n_kept
        n_kept += 1
        if not exact:  # exact mode verifies on the sets: kept_sigs has no columns there
            kept_sigs[slot] = sigs[i]
        stamp[slot] = -1
        if exact:
            s = kept_set_off[slot]
            ln = set_off[i + 1] - set_off[i]
            kept_sets[s:s + ln] = sets[set_off[i]:set_off[i + 1]]
            kept_set_off[slot + 1] = s + ln
        for band in range(nbands):
            key = keys[i, band]
            c = _table_find(tab_keys, tab_heads, band, key)
            if c >= 0:
                nexts[slot, band] = tab_heads[band, c]
            else:
                c = -c - 1
                tab_keys[band, c] = key
                nexts[slot, band] = -1
            tab_heads[band, c] = slot
    return n_kept


def lsh_dedupe_reference(sigs: np.ndarray, bands: int, rows: int, threshold: float,
                         need: int, sets: list[set[int]] | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure-Python twin of the whole index (one batch from an empty index), with a ``dict`` of
    lists per band. Returns (keep, match index into the batch or -1, similarity)."""
    n, num_perm = sigs.shape
    key_arr = band_keys_reference(sigs, bands, rows)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    kept: list[int] = []
    keep = np.zeros(n, dtype=np.bool_)
    match = np.full(n, -1, dtype=np.int64)
    sim_out = np.zeros(n, dtype=np.float32)
    for i in range(n):
        cands: set[int] = set()
        for band in range(bands):
            cands.update(buckets[band].get(int(key_arr[i, band]), []))
        best, best_sim = -1, -1.0
        for slot in sorted(cands):
            j = kept[slot]
            if sets is not None:
                sim = jaccard_sorted_reference(np.array(sorted(sets[i]), dtype=np.uint64),
                                               np.array(sorted(sets[j]), dtype=np.uint64))
                ok = sim >= threshold
            else:
                eq = int((sigs[i] == sigs[j]).sum())
                sim = eq / num_perm
                ok = eq >= need
            if ok and sim > best_sim:
                best, best_sim = j, sim
        if best >= 0:
            match[i] = best
            sim_out[i] = best_sim
            continue
        keep[i] = True
        for band in range(bands):
            buckets[band].setdefault(int(key_arr[i, band]), []).append(len(kept))
        kept.append(i)
    return keep, match, sim_out
