"""Numba kernels of the MinHash band shuffle (numpy in, numpy out, no I/O), each with a twin.

The typed API and the proof that the shuffle gives the streaming index's decision live in
:mod:`fastprep.dedupe.shuffle`. In pipeline order:

- :func:`emit_pair_codes` - every pair of every run of documents sharing a (band, key), as one
  int64 code ``rank_i * U + rank_j`` per pair (ranks: dense positions in doc-id order, so a
  pair is one integer and one sort deduplicates pairs found through several bands).
- :func:`verify_pairs` - per candidate pair, its similarity and whether it verifies, by exactly
  the rules of the streaming kernel :func:`fastprep.kernels.minhash.lsh_dedupe_batch` (exact
  Jaccard ``>= threshold``, or at least ``need`` equal signature values).
- :func:`resolve_pairs` - the keep-first decision over verified pairs sorted by (i, j): ``i`` is
  removed iff a verified partner ``j < i`` is kept; its match is the most similar kept partner,
  ties the smallest rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .minhash import jaccard_sorted_range


@njit(cache=True, nogil=True)
def emit_pair_codes(rank: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                    pair_off: np.ndarray, universe: int, out: np.ndarray) -> None:
    """For each run (start, len >= 2) of ascending ranks: every pair as ``rank_i * U + rank_j``
    (i the later), written from ``pair_off[run]``."""
    for r in range(starts.shape[0]):
        s = starts[r]
        m = lens[r]
        o = pair_off[r]
        for a in range(1, m):
            hi = rank[s + a] * universe
            for b in range(a):
                out[o] = hi + rank[s + b]
                o += 1


def emit_pair_codes_reference(rank: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                              universe: int) -> list[int]:
    """Pure-Python twin of :func:`emit_pair_codes`: the codes of every run, in order."""
    out = []
    for s, m in zip(starts.tolist(), lens.tolist()):
        run = rank[s:s + m].tolist()
        out.extend(run[a] * universe + run[b] for a in range(1, m) for b in range(a))
    return out


@njit(cache=True, nogil=True)
def verify_pairs(a: np.ndarray, b: np.ndarray, exact: bool, threshold: float, need: int,
                 sigs: np.ndarray, vals: np.ndarray, off: np.ndarray,
                 sim: np.ndarray, ok: np.ndarray) -> None:
    """Per pair (a[k], b[k]) of row indexes: the similarity and whether it verifies. Exact mode
    compares the shingle sets ``vals[off[x]:off[x + 1]]``; signature mode the rows of ``sigs``."""
    num_perm = sigs.shape[1]
    for k in range(a.shape[0]):
        x = a[k]
        y = b[k]
        if exact:
            s = jaccard_sorted_range(vals, off[x], off[x + 1], vals, off[y], off[y + 1])
            sim[k] = s
            ok[k] = s >= threshold
        else:
            eq = 0
            for c in range(num_perm):
                eq += sigs[x, c] == sigs[y, c]
            sim[k] = eq / num_perm
            ok[k] = eq >= need


def verify_pairs_reference(a: np.ndarray, b: np.ndarray, exact: bool, threshold: float,
                           need: int, sigs: np.ndarray, vals: np.ndarray, off: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Pure-Python twin of :func:`verify_pairs`: (similarity float64, verified bool)."""
    sim = np.zeros(a.shape[0], dtype=np.float64)
    ok = np.zeros(a.shape[0], dtype=np.bool_)
    for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        if exact:
            sx = set(vals[off[x]:off[x + 1]].tolist())
            sy = set(vals[off[y]:off[y + 1]].tolist())
            s = (1.0 if sx == sy else 0.0) if not sx or not sy else len(sx & sy) / len(sx | sy)
            sim[k], ok[k] = s, s >= threshold
        else:
            eq = int((sigs[x] == sigs[y]).sum())
            sim[k], ok[k] = eq / sigs.shape[1], eq >= need
    return sim, ok


@njit(cache=True, nogil=True)
def resolve_pairs(ri: np.ndarray, rj: np.ndarray, sim: np.ndarray, keep: np.ndarray,
                  best_j: np.ndarray, best_sim: np.ndarray) -> None:
    """Pairs sorted by (ri, rj) (ranks in id order, rj < ri). Ranks are decided in increasing
    order, so every keep[rj] is final when ri is decided."""
    m = ri.shape[0]
    k = 0
    while k < m:
        i = ri[k]
        best = -1
        bs = -1.0
        while k < m and ri[k] == i:
            j = rj[k]
            s = sim[k]
            if keep[j] and (s > bs or (s == bs and j < best)):
                best = j
                bs = s
            k += 1
        if best >= 0:
            keep[i] = False
            best_j[i] = best
            best_sim[i] = bs


def resolve_pairs_reference(ri: np.ndarray, rj: np.ndarray, sim: np.ndarray, n: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure-Python twin of :func:`resolve_pairs` over ``n`` ranks: (keep, best_j, best_sim)."""
    partners: dict[int, list[tuple[int, float]]] = {}
    for i, j, s in zip(ri.tolist(), rj.tolist(), sim.tolist()):
        partners.setdefault(i, []).append((j, s))
    keep = np.ones(n, dtype=np.bool_)
    best_j = np.full(n, -1, dtype=np.int64)
    best_sim = np.zeros(n, dtype=np.float64)
    for i in sorted(partners):
        kept = [(j, s) for j, s in partners[i] if keep[j]]
        if kept:
            j, s = max(kept, key=lambda p: (p[1], -p[0]))
            keep[i], best_j[i], best_sim[i] = False, j, s
    return keep, best_j, best_sim
