"""Numba kernels for n-gram decontamination: word n-gram hashes over UTF-8 bytes, an
open-addressing table of evaluation n-grams, and the one-pass query over training text.

Every kernel takes and returns numpy arrays, does no I/O, and has a slow pure-Python twin named
``<kernel>_reference`` that the tests compare it against. The typed API lives in
:mod:`fastprep.dedupe.decontam`. Texts arrive as one UTF-8 buffer ``buf`` (uint8) plus
``offsets`` (int64 [docs + 1]); document ``d`` is ``buf[offsets[d]:offsets[d + 1]]``.

Words (byte level, no decoding): a word is a maximal run of *word bytes*: ASCII letters and
digits, and every byte >= 0x80, so every non-ASCII script (accented Latin, Cyrillic, CJK, emoji)
counts as word characters; ASCII letters are lower-cased (``b | 0x20`` for A-Z). Everything else
(ASCII punctuation, whitespace, control bytes) separates words, so "Hello, World!" and
"hello world" are the same two words. There is no Unicode case folding or normalisation: "É" and
"é" are different words, and so are the NFC and NFD spellings of one accented letter; a script
written without spaces (Chinese, Japanese, Thai) makes a whole run between ASCII separators one
word. Non-ASCII punctuation and spaces are word bytes too: curly quotes, dashes and NBSP stick
to their neighbours ("“word”" is not "word", "a—b" is one word), so an n-gram touching
one differs from its ASCII spelling (NFKC in the clean stage folds NBSP and full-width forms,
not quotes or dashes). Unlike the MinHash normalisation, digits are kept as they are: "2019"
and "2023" differ, which matters for benchmark answers.

Hashing: a word is hashed 8 bytes at a time (``h = (h ^ chunk) * C``, little-endian chunks, the
last one zero-padded: no word byte is zero, so the padding is unambiguous) and finished with
murmur3's ``fmix64``, so word hashes behave as independent uniform 64-bit values. The key of
the n-gram of words ``w_0 .. w_{n-1}`` is ``G = sum w_j * P**(n-1-j) mod 2**64`` (P odd), which
rolls in O(1) per word with a ring of the last n word hashes (``G' = G * P + w_new - w_old *
P**n``); G = 0, the table's empty marker, is replaced by a fixed non-zero constant. Two
different n-grams get one key with probability 2**-64. The twin computes G from its
definition, which checks the rolling update. A document with fewer than n words has no
n-gram; the scan state restarts at every document, so no n-gram spans two documents.

Scanning, per block of BLOCK bytes of one document: a branch-free pass records every position
where word-ness changes (a store per byte, a counter bumped by 0 or 1), then each word is
hashed from its (start, end) with one 8-byte load per chunk. Branching on word ends byte by
byte mispredicts about twice per word and was much slower (``benchmarks/README.md``).

Lookup: the distinct evaluation keys live in an open-addressing table (uint64 keys, 0 = empty;
int32 values, the first evaluation document holding the n-gram), a power of two of slots at
most half full, linear probing, slot = the key's low bits. In front of it, a blocked Bloom
filter (two bits per key in one 64-bit word picked by the key's top bits, about 8-16 bits per
key) rejects almost every absent n-gram with one read from a few MiB instead of a cache miss
in the table. The filter is tested in a branch-free pass over the block's keys that lists the
survivors; only those probe the table, in text order, so the first hit is the first in the
text. A larger filter or three bits per key cost as much in the filter pass as they saved in
probes (``benchmarks/README.md``, "Decontamination").

Cost: one pass over the bytes; per word one or two multiplies for the word, two for the rolling
key, one filter read, and a table probe for the few that pass; a document stops at its first
hit. It allocates its output and fixed scratch (BLOCK-sized), and runs on the calling thread
without the GIL: worker processes each check their own documents.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .minhash import FMIX_C1, fmix64, fmix64_reference  # one murmur3 finaliser and its twin

U64 = np.uint64
SEED = U64(0xCBF29CE484222325)         # FNV-1a offset basis: the word hash's start value
POLY = U64(0x9E3779B97F4A7C15)         # odd multiplier of the rolling polynomial
ZERO_KEY = U64(0x5BD1E9955BD1E995)     # the key an n-gram hashing to 0 (the empty marker) gets
MASK64 = (1 << 64) - 1
HIGH_BITS = U64(0x8080808080808080)
ALL_BITS = U64(MASK64)
BLOCK = 16384                          # bytes scanned per step (scratch 256 KiB, in L2)
MIN_TABLE_BITS = 4


def _word_table() -> np.ndarray:
    """Byte -> lower-cased word byte, or 0 for a separator. 0 never is a word byte, so the
    zero padding of a word's last chunk cannot make two words equal."""
    lut = np.zeros(256, dtype=np.uint8)
    for c in range(ord("a"), ord("z") + 1):
        lut[c] = c
    for c in range(ord("A"), ord("Z") + 1):
        lut[c] = c | 0x20
    for c in range(ord("0"), ord("9") + 1):
        lut[c] = c
    lut[0x80:] = np.arange(0x80, 0x100)
    return lut


WORD_BYTE = _word_table()  # a global array: numba freezes it into the compiled kernels


# --------------------------------------------------------------------------------------------
# hashing primitives


@njit(cache=True, nogil=True, inline="always")
def gram_key(g: np.uint64) -> np.uint64:
    """The table key of an n-gram's polynomial ``g``: ``g`` itself, never 0 (0 marks an empty
    slot: without the replacement that n-gram could never be found).

    No finaliser: ``g`` is a sum of fmix64 outputs times odd constants, so each of its bits is
    as uniform as theirs (the table takes the low bits, the filter the high ones), and a
    finaliser, a bijection, would not change which n-grams collide, only cost time."""
    return g if g != U64(0) else ZERO_KEY


@njit(cache=True, nogil=True, inline="always")
def load8(buf: np.ndarray, c: int) -> np.uint64:
    """buf[c:c + 8] as a little-endian uint64. Read through a slice with constant indices, so
    numba emits no negative-index wraparound per byte and LLVM merges the eight reads into one
    unaligned load."""
    b = buf[c:c + 8]
    return (U64(b[0]) | U64(b[1]) << U64(8) | U64(b[2]) << U64(16) | U64(b[3]) << U64(24)
            | U64(b[4]) << U64(32) | U64(b[5]) << U64(40) | U64(b[6]) << U64(48)
            | U64(b[7]) << U64(56))


@njit(cache=True, nogil=True, inline="always")
def word_hash(buf: np.ndarray, start: int, end: int) -> np.uint64:
    """Hash of the word ``buf[start:end]`` (all word bytes): 8 bytes per multiply, fmix64.

    A word holds only ASCII letters and digits and bytes >= 0x80, so setting bit 0x20 of every
    ASCII byte lower-cases the letters and leaves the digits (0x30-0x39) as they are: the bytes
    WORD_BYTE gives, 8 at once, without a per-byte loop whose exit the CPU cannot predict. The
    loop stays inline: a separate (called) function for long words was markedly slower."""
    h = SEED
    c = start
    size = buf.shape[0]
    while True:
        k = min(end - c, 8)
        if c + 8 <= size:
            chunk = load8(buf, c)
        else:  # the buffer's last 7 bytes
            chunk = U64(0)
            for j in range(k):
                chunk |= U64(buf[c + j]) << U64(8 * j)
        chunk |= (~chunk & HIGH_BITS) >> U64(2)
        chunk &= ALL_BITS >> U64(64 - 8 * k)
        h = (h ^ chunk) * FMIX_C1
        c += 8
        if c >= end:
            break
    return fmix64(h)


@njit(cache=True, nogil=True)
def poly_power(n: int) -> np.uint64:
    """POLY ** n mod 2**64: the weight the word leaving the ring carries."""
    p = U64(1)
    for _ in range(n):
        p *= POLY
    return p


def words_reference(data: bytes) -> list[bytes]:
    """The words of UTF-8 bytes, lower-cased (ASCII only, as ``bytes.lower`` does)."""
    out: list[bytes] = []
    cur = bytearray()
    for b in data:
        if b >= 0x80 or (chr(b).isascii() and chr(b).isalnum()):
            cur.append(b | 0x20 if 0x41 <= b <= 0x5A else b)
        elif cur:
            out.append(bytes(cur))
            cur = bytearray()
    if cur:
        out.append(bytes(cur))
    return out


def word_hash_reference(word: bytes) -> int:
    h = int(SEED)
    for k in range(0, len(word), 8):
        h = ((h ^ int.from_bytes(word[k:k + 8], "little")) * int(FMIX_C1)) & MASK64
    return fmix64_reference(h)


def gram_key_reference(word_hashes: list[int]) -> int:
    """Key of one n-gram from its n word hashes, by the polynomial's definition."""
    n = len(word_hashes)
    g = sum(w * pow(int(POLY), n - 1 - j, 1 << 64) for j, w in enumerate(word_hashes)) & MASK64
    return g or int(ZERO_KEY)


def encode_reference(text: str) -> bytes:
    """The UTF-8 bytes the face hands the kernels (lone surrogates kept, ``surrogatepass``)."""
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------------------------
# scanning: words and rolling n-gram keys, one block of a document at a time

# per-document scan state, carried from block to block (int64 [STATE]): words seen, ring position,
# start of a word still open at the block's end (-1: none), and the polynomial's bits
NW, RING, OPEN, POLY_G, STATE = 0, 1, 2, 3, 4


@njit(cache=True, nogil=True, inline="always")
def transitions(buf: np.ndarray, p: int, q: int, inword: bool, trans: np.ndarray,
                nt: int) -> int:
    """Append to ``trans`` (from index ``nt``) every position of ``buf[p:q]`` where word-ness
    changes (a word starts or ends), branch-free: a store per byte, the count bumped by 0 or 1.
    Returns the new count."""
    prev = np.int64(inword)
    b = buf[p:q]  # indices from 0 up: numba emits no negative-index wraparound test per byte
    for i in range(b.shape[0]):
        isw = np.int64(WORD_BYTE[b[i]] != 0)
        trans[nt] = p + i
        nt += isw ^ prev
        prev = isw
    return nt


@njit(cache=True, nogil=True)
def reset_state(state: np.ndarray) -> None:
    """A new document: no words, no open word. Without it n-grams would span documents."""
    state[NW] = 0
    state[RING] = 0
    state[OPEN] = -1
    state[POLY_G] = 0


@njit(cache=True, nogil=True)
def block_grams(buf: np.ndarray, p: int, q: int, last: bool, n: int, pn: np.uint64,
                ring: np.ndarray, state: np.ndarray, trans: np.ndarray, out: np.ndarray) -> int:
    """The n-gram keys completed by the words that end in ``buf[p:q]`` (a block of one
    document; ``last``: q is the document's end), into ``out``; returns how many.

    Word boundaries come first for the whole block (:func:`transitions`), then each complete
    word is hashed and rolled into the polynomial: G' = G * P + w_new - w_old * P**n, the
    leaving word read from the ring of the last n word hashes. ``trans`` needs BLOCK + 2
    entries, ``out`` BLOCK // 2 + 2."""
    nt = 0
    if state[OPEN] >= 0:  # a word continues from the previous block
        trans[0] = state[OPEN]
        nt = 1
    nt = transitions(buf, p, q, nt == 1, trans, nt)
    if last and nt & 1:
        trans[nt] = q
        nt += 1
    state[OPEN] = trans[nt - 1] if nt & 1 else -1
    nw = state[NW]
    r = U64(state[RING])  # unsigned: no wraparound test on the ring's index
    un = U64(n)
    g = U64(state[POLY_G])
    m = 0
    for j in range(nt >> 1):
        w = word_hash(buf, trans[2 * j], trans[2 * j + 1])
        old = ring[r]
        ring[r] = w
        r = r + U64(1) if r + U64(1) < un else U64(0)
        g = g * POLY + w
        nw += 1
        if nw > n:
            g -= old * pn
        out[m] = gram_key(g)
        m += 1 if nw >= n else 0
    state[NW] = nw
    state[RING] = np.int64(r)
    state[POLY_G] = np.int64(g)
    return m


# --------------------------------------------------------------------------------------------
# index side: every n-gram of every document


@njit(cache=True, nogil=True)
def gram_capacity(offsets: np.ndarray, n: int) -> int:
    """Upper bound on the n-grams of all documents: b bytes hold at most (b + 1) // 2 words."""
    total = 0
    for d in range(offsets.shape[0] - 1):
        total += max(0, (offsets[d + 1] - offsets[d] + 1) // 2 - n + 1)
    return total


@njit(cache=True, nogil=True)
def ngram_hashes(buf: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram key of every document, in text order with repeats: (keys uint64
    [total], counts int64 [docs]). A document with fewer than n words has count 0."""
    docs = offsets.shape[0] - 1
    out = np.empty(gram_capacity(offsets, n), dtype=np.uint64)
    counts = np.zeros(docs, dtype=np.int64)
    ring = np.zeros(n, dtype=np.uint64)
    state = np.zeros(STATE, dtype=np.int64)
    trans = np.empty(BLOCK + 2, dtype=np.int64)
    grams = np.empty(BLOCK // 2 + 2, dtype=np.uint64)
    pn = poly_power(n)
    o = 0
    for d in range(docs):
        reset_state(state)
        p = offsets[d]
        end = offsets[d + 1]
        while p < end:
            q = min(p + BLOCK, end)
            m = block_grams(buf, p, q, q == end, n, pn, ring, state, trans, grams)
            out[o:o + m] = grams[:m]
            o += m
            p = q
        counts[d] = max(0, state[NW] - n + 1)
    return out[:o].copy(), counts


def ngram_hashes_reference(text: str, n: int) -> list[int]:
    """Pure-Python twin of :func:`ngram_hashes` for one document."""
    ws = [word_hash_reference(w) for w in words_reference(encode_reference(text))]
    return [gram_key_reference(ws[k:k + n]) for k in range(len(ws) - n + 1)]


# --------------------------------------------------------------------------------------------
# the table


def table_bits(entries: int) -> int:
    """log2 of the slot count for ``entries`` keys: the smallest power of two >= 2 x entries
    (at most half full, so a miss usually stops at the first or second slot)."""
    return max(MIN_TABLE_BITS, int(2 * max(entries, 1) - 1).bit_length())


@njit(cache=True, nogil=True)
def build_table(hashes: np.ndarray, docs: np.ndarray, bits: int
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Insert ``hashes`` in order, the first document of a repeated key kept:
    (keys uint64 [2**bits], values int32 [2**bits], distinct keys). Slot 0 keys mark empty
    slots; a 0 in ``hashes`` (never produced by :func:`ngram_hashes`) is stored as ZERO_KEY,
    as :func:`table_find` looks it up. The caller guarantees distinct keys <= 2**bits / 2."""
    size = 1 << bits
    mask = size - 1
    keys = np.zeros(size, dtype=np.uint64)
    values = np.full(size, -1, dtype=np.int32)
    count = 0
    for i in range(hashes.shape[0]):
        h = hashes[i] if hashes[i] != U64(0) else ZERO_KEY
        slot = np.int64(h & U64(mask))
        while True:
            k = keys[slot]
            if k == U64(0):
                keys[slot] = h
                values[slot] = docs[i]
                count += 1
                break
            if k == h:
                break
            slot = (slot + 1) & mask
    return keys, values, count


@njit(cache=True, nogil=True, inline="always")
def probe(keys: np.ndarray, h: np.uint64) -> int:
    """Slot holding key ``h`` (non-zero), or -1."""
    mask = keys.shape[0] - 1
    slot = np.int64(h & U64(mask))
    while True:
        k = keys[slot]
        if k == h:
            return slot
        if k == U64(0):
            return -1
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def table_find(keys: np.ndarray, values: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """int64 [len(hashes)]: the value stored for each key, -1 where absent."""
    out = np.full(hashes.shape[0], -1, dtype=np.int64)
    for i in range(hashes.shape[0]):
        h = hashes[i] if hashes[i] != U64(0) else ZERO_KEY
        slot = probe(keys, h)
        if slot >= 0:
            out[i] = values[slot]
    return out


def build_table_reference(hashes: list[int], docs: list[int]) -> dict[int, int]:
    """Pure-Python twin of :func:`build_table` (and, with ``dict.get``, of :func:`table_find`)."""
    table: dict[int, int] = {}
    for h, d in zip(hashes, docs):
        table.setdefault(h or int(ZERO_KEY), d)
    return table


@njit(cache=True, nogil=True, inline="always")
def filter_mask(h: np.uint64) -> np.uint64:
    """The two bits key ``h`` sets in its filter word (bits 20-31 of the key; the word index
    comes from the top bits)."""
    return (U64(1) << ((h >> U64(20)) & U64(63))) | (U64(1) << ((h >> U64(26)) & U64(63)))


def filter_bits_for(grams: int) -> int:
    """log2 of the prefilter's size in bits: about 8-16 bits per key (two bits set per key in
    one 64-bit word: ~4% false positives at 10 bits per key), at least two words."""
    return max(7, int(max(grams, 1) * 8 - 1).bit_length())


@njit(cache=True, nogil=True)
def build_filter(keys: np.ndarray, bits: int) -> np.ndarray:
    """A blocked Bloom filter of 2**bits bits (uint64 words) over the non-zero ``keys``: each
    key sets :func:`filter_mask` in word ``key >> (64 - (bits - 6))`` (bits >= 7). One cache
    line read per query, no false negatives."""
    filt = np.zeros(1 << (bits - 6), dtype=np.uint64)
    shift = U64(64 - (bits - 6))
    for i in range(keys.shape[0]):
        k = keys[i]
        if k != U64(0):
            filt[k >> shift] |= filter_mask(k)
    return filt


# --------------------------------------------------------------------------------------------
# query side: the first indexed n-gram of each document


@njit(cache=True, nogil=True)
def first_hit(grams: np.ndarray, m: int, keys: np.ndarray, values: np.ndarray,
              filt: np.ndarray, filter_bits: int, cand: np.ndarray) -> int:
    """The value of the first of ``grams[:m]`` in the table, or -1.

    With a filter (``filter_bits`` > 0): a branch-free pass writes the positions whose filter
    bits are all set to ``cand`` (room for m), then only those are probed, in order. Without:
    every key is probed. The probe loop is a loop of its own, after the hashing: its iterations
    are independent, so the CPU has several table reads in flight instead of waiting for each
    cache miss in turn."""
    if filter_bits == 0:
        for j in range(m):
            slot = probe(keys, grams[j])
            if slot >= 0:
                return values[slot]
        return -1
    shift = U64(64 - (filter_bits - 6))
    nc = 0
    for j in range(m):
        h = grams[j]
        mask = filter_mask(h)
        cand[nc] = j
        nc += (filt[h >> shift] & mask) == mask
    for c in range(nc):
        slot = probe(keys, grams[cand[c]])
        if slot >= 0:
            return values[slot]
    return -1


@njit(cache=True, nogil=True)
def first_matches(buf: np.ndarray, offsets: np.ndarray, n: int, keys: np.ndarray,
                  values: np.ndarray, filt: np.ndarray, filter_bits: int) -> np.ndarray:
    """int64 [docs]: for each document, the value (evaluation document) of its first n-gram,
    in text order, present in the table; -1 if none. One pass over the bytes, BLOCK bytes at a
    time (:func:`block_grams`, then :func:`first_hit`); a document stops at its first hit.
    ``filt`` may be empty (no prefilter); else it is :func:`build_filter` of ``keys`` with
    ``filter_bits``."""
    docs = offsets.shape[0] - 1
    out = np.full(docs, -1, dtype=np.int64)
    ring = np.zeros(n, dtype=np.uint64)
    state = np.zeros(STATE, dtype=np.int64)
    trans = np.empty(BLOCK + 2, dtype=np.int64)
    grams = np.empty(BLOCK // 2 + 2, dtype=np.uint64)
    cand = np.empty(BLOCK // 2 + 2, dtype=np.int64)
    pn = poly_power(n)
    for d in range(docs):
        reset_state(state)
        p = offsets[d]
        end = offsets[d + 1]
        while p < end:
            q = min(p + BLOCK, end)
            m = block_grams(buf, p, q, q == end, n, pn, ring, state, trans, grams)
            hit = first_hit(grams, m, keys, values, filt, filter_bits, cand)
            if hit >= 0:
                out[d] = hit
                break
            p = q
    return out


def first_matches_reference(texts: list[str], n: int, table: dict[int, int]) -> list[int]:
    """Pure-Python twin of :func:`first_matches` over a ``dict`` key -> document."""
    out = []
    for text in texts:
        hit = -1
        for h in ngram_hashes_reference(text, n):
            if h in table:
                hit = table[h]
                break
        out.append(hit)
    return out
