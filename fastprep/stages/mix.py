"""Which documents go where: weighted mixing of sources by token share, and the validation split.

Full fine-tuning on a narrow domain makes a model forget what it knew; the usual guard is to
mix general data back in at a chosen share. Here a *source* is a named group of input paths
with a weight, and weights are **shares of output tokens** (not of documents or files: a
source of long documents would otherwise crowd out one of short ones).

:func:`mix_plan` decides, over the kept documents' token counts, how often each document is
used: a source with more tokens than its share is down-sampled (a seeded random subset of
whole documents), one with fewer is repeated (whole epochs, then a seeded subset for the
rest) up to ``--max-repeat`` epochs; beyond that the run stops with a message naming the
source, its tokens and what the weights would need. Each source's realised tokens are within
one document of its target, so its share is exact up to one document.

:func:`validation_split` takes a seeded, document-level validation set, stratified by source,
from the same kept documents (after exact and near deduplication, so no copy of a validation
document stays in training).

Both are pure functions of the per-document arrays and the seed, so they do not depend on
the number of workers, and a resumed run decides the same. Cost: O(documents) numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..flags import option
from .read import expand_paths
from .records import RecordConfig


@dataclass(frozen=True)
class Source:
    """One input source of a mix: its name, paths and weight (a share of output tokens), and
    optionally its own record mapping (a recipe file's per-source shape and field names)."""

    name: str
    paths: tuple[str, ...]
    weight: float
    records: RecordConfig | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a mix source needs a name")
        if not self.paths:
            raise ValueError(f"mix source {self.name!r} has no paths")
        if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) \
                or not np.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"mix source {self.name!r}: weight must be a positive number "
                             f"(a share of output tokens), got {self.weight!r}")


@dataclass(frozen=True)
class MixConfig:
    """Weighted mixing of sources (``--mix PATH=WEIGHT ...`` or ``--recipe FILE``)."""

    sources: tuple[Source, ...] = option((), cli=False)
    tokens: int = option(0, "output tokens of a --mix (0: as many as its sources hold after "
                         "cleaning and dedupe)", flag="--mix-tokens")
    max_repeat: float = option(4.0, "most epochs a --mix source may be repeated to reach its "
                               "share", flag="--max-repeat")
    seed: int = option(0, "seed of the document sampling: the mix's subsets and the "
                       "validation split", flag="--mix-seed")

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, int) or self.tokens < 0:
            raise ValueError(f"--mix-tokens must be >= 0 (0 = the sources' own size), got "
                             f"{self.tokens!r}")
        if not 1 <= self.max_repeat <= 1000:
            raise ValueError(f"--max-repeat must be between 1 and 1000 (epochs of a source), "
                             f"got {self.max_repeat!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--mix-seed must be a non-negative integer, got {self.seed!r}")
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"mix source names must be unique: {', '.join(dup)} appear twice")
        if len(self.sources) > 255:
            raise ValueError(f"a mix holds at most 255 sources, got {len(self.sources)}")

    @property
    def on(self) -> bool:
        return bool(self.sources)


@dataclass(frozen=True)
class SplitConfig:
    """A validation set taken out of the kept documents (written to ``OUT/val``)."""

    fraction: float = option(0.0, "share of the kept documents that form a validation set in "
                             "OUT/val (never sharing a document or a duplicate with training)",
                             flag="--val-fraction")
    docs: int = option(0, "documents in the validation set (instead of --val-fraction)",
                       flag="--val-docs")

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.fraction!r}")
        if not isinstance(self.docs, int) or self.docs < 0:
            raise ValueError(f"--val-docs must be >= 0, got {self.docs!r}")
        if self.fraction and self.docs:
            raise ValueError("give --val-fraction or --val-docs, not both")

    @property
    def on(self) -> bool:
        return bool(self.fraction or self.docs)


def assign_sources(files: list[str], sources: tuple[Source, ...]) -> np.ndarray:
    """The source index of each input file (files as :func:`expand_paths` lists them); a file
    that two sources both name is an error (its share would be ambiguous)."""
    import os

    where = {os.path.abspath(f): i for i, f in enumerate(files)}
    out = np.full(len(files), -1, np.int64)
    for s, src in enumerate(sources):
        for f in expand_paths(src.paths):
            i = where[os.path.abspath(f)]
            if out[i] not in (-1, s):
                raise ValueError(f"{f} is in two mix sources, {sources[int(out[i])].name!r} and "
                                 f"{src.name!r}; give each file to one source")
            out[i] = s
    return out


def parse_mix(item: str) -> tuple[str, float]:
    """``--mix PATH=WEIGHT`` as (path, weight); the path may itself hold ``=``."""
    path, sep, weight = item.rpartition("=")
    if not sep or not path:
        raise ValueError(f"--mix {item!r}: expected PATH=WEIGHT, e.g. --mix data/general.jsonl=0.3")
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"--mix {item!r}: the weight {weight!r} is not a number") from None
    return path, value


class MixError(ValueError):
    """A mix that cannot be made from these sources (a source too short for its share)."""


@dataclass(frozen=True)
class MixPlan:
    """How often each document is used, and the order the packer sees them in."""

    uses: np.ndarray     # uint8-able int64 [docs]: 0 = not used, 1 = once, k = k times
    order: np.ndarray    # int64: document positions, each as often as it is used, epoch by epoch
    sources: list[dict[str, Any]]  # per source: what it had, what it gave (the manifest's)
    tokens: int          # the mix's target tokens


def _take(eff: np.ndarray, idx: np.ndarray, want: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded subset of documents ``idx`` whose tokens are closest to ``want`` (exact up to
    one document): a random order, cut where its running sum comes nearest."""
    if want <= 0 or not idx.size:
        return idx[:0]
    perm = idx[rng.permutation(idx.size)]
    run = np.cumsum(eff[perm])
    k = int(np.searchsorted(run, want))  # run[k-1] < want <= run[k]
    if k >= run.size:
        return perm
    below = int(run[k - 1]) if k else 0
    return perm[:k + 1] if int(run[k]) - want <= want - below else perm[:k]


def mix_plan(eff: np.ndarray, source: np.ndarray, cfg: MixConfig) -> MixPlan:
    """Document uses for the mix. ``eff``: each document's output tokens (0 = removed, or in
    the validation set); ``source``: its source index. Raises :class:`MixError` when a source
    would need more than ``max_repeat`` epochs."""
    eff = np.asarray(eff, dtype=np.int64)
    source = np.asarray(source, dtype=np.int64)
    weights = np.array([s.weight for s in cfg.sources], dtype=np.float64)
    weights /= weights.sum()
    idx_by = [np.flatnonzero((source == s) & (eff > 0)) for s in range(len(cfg.sources))]
    have = np.array([int(eff[i].sum()) for i in idx_by], dtype=np.int64)
    total = cfg.tokens or int(have.sum())
    want = np.rint(weights * total).astype(np.int64)
    _check_repeat(cfg, have, want, weights, total)
    uses = np.zeros(eff.size, dtype=np.int64)
    for s, idx in enumerate(idx_by):
        if not have[s]:
            continue
        full, rest = divmod(int(want[s]), int(have[s]))
        uses[idx] = full
        rng = np.random.default_rng([cfg.seed, s])
        uses[_take(eff, idx, rest, rng)] += 1
    order = np.concatenate([np.flatnonzero(uses > e) for e in range(int(uses.max(initial=0)))]
                           or [np.zeros(0, np.int64)])
    return MixPlan(uses=uses, order=order, sources=_source_stats(cfg, eff, uses, idx_by, weights),
                   tokens=total)


def _check_repeat(cfg: MixConfig, have: np.ndarray, want: np.ndarray, weights: np.ndarray,
                  total: int) -> None:
    for s, src in enumerate(cfg.sources):
        if want[s] and not have[s]:
            raise MixError(f"mix source {src.name!r} has no documents left after cleaning, "
                           f"dedupe and the validation split, but its weight asks for "
                           f"{int(want[s]):,} tokens; check its paths ({', '.join(src.paths)}), "
                           f"the quarantine and --val-docs/--val-fraction")
        epochs = want[s] / have[s] if have[s] else 0.0
        if epochs > cfg.max_repeat + 1e-9:
            share = cfg.max_repeat * have[s] / total
            raise MixError(
                f"mix source {src.name!r} holds {int(have[s]):,} tokens; its weight "
                f"{weights[s]:.4g} of {total:,} tokens needs {int(want[s]):,}, {epochs:.2f} "
                f"epochs, more than --max-repeat {cfg.max_repeat:g}: lower its share to "
                f"{share:.4g} or less, raise --max-repeat to {np.ceil(epochs * 100) / 100:g}, "
                f"or set --mix-tokens {int(cfg.max_repeat * have[s] / weights[s]):,} or less")


def _source_stats(cfg: MixConfig, eff: np.ndarray, uses: np.ndarray, idx_by: list[np.ndarray],
                  weights: np.ndarray) -> list[dict[str, Any]]:
    used_total = int((eff * uses).sum())
    out = []
    for s, (src, idx) in enumerate(zip(cfg.sources, idx_by)):
        u, e = uses[idx], eff[idx]
        tokens, used = int(e.sum()), int((e * u).sum())
        out.append({"name": src.name, "paths": list(src.paths), "weight": round(float(weights[s]), 6),
                    "documents": int(idx.size), "tokens": tokens,
                    "documents_used": int(np.count_nonzero(u)), "tokens_used": used,
                    "documents_repeated": int(np.count_nonzero(u > 1)),
                    "repeated_uses": int(np.maximum(u - 1, 0).sum()),
                    "epochs": round(used / tokens, 6) if tokens else 0.0,
                    "share": round(used / used_total, 6) if used_total else 0.0})
    return out


def validation_split(eff: np.ndarray, source: np.ndarray, n_sources: int, cfg: SplitConfig,
                     seed: int) -> np.ndarray:
    """A bool mask of the documents that form the validation set: per source, a seeded random
    subset of its kept documents (``eff > 0``) in proportion to its document count, so that
    each source has validation documents in the share it has in the data."""
    eff = np.asarray(eff, dtype=np.int64)
    source = np.asarray(source, dtype=np.int64)
    idx_by = [np.flatnonzero((source == s) & (eff > 0)) for s in range(n_sources)]
    counts = np.array([i.size for i in idx_by], dtype=np.int64)
    kept = int(counts.sum())
    n_val = cfg.docs if cfg.docs else round(cfg.fraction * kept)
    if n_val == 0:
        raise MixError(f"--val-fraction {cfg.fraction:g} of {kept:,} kept documents is no "
                       f"document; raise it or give --val-docs N")
    if n_val >= kept:
        raise MixError(f"the validation set would take {n_val:,} of the {kept:,} kept documents "
                       f"and leave nothing to train on; lower --val-docs / --val-fraction")
    # largest remainder: the per-source counts add up to n_val exactly
    exact = counts * (n_val / kept) if kept else counts * 0.0
    take = np.floor(exact).astype(np.int64)
    short = n_val - int(take.sum())
    if short:
        take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    val = np.zeros(eff.size, dtype=np.bool_)
    for s, idx in enumerate(idx_by):
        rng = np.random.default_rng([seed, 1 << 20, s])  # apart from the mix's streams
        val[idx[rng.permutation(idx.size)[:take[s]]]] = True
    return val


def effective_tokens(lengths: np.ndarray, seq_len: int, truncate: bool) -> np.ndarray:
    """The tokens each document puts into rows: all of them, or at most ``seq_len`` when long
    documents are truncated. Shares are of these."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.minimum(lengths, seq_len) if truncate else lengths
