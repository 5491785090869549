"""After the merge, before packing: which kept documents the training rows hold, how often, and
which form the validation set (:mod:`fastprep.stages.mix` decides; this applies it to the spill).

The packer sees a list of documents, each a token count and a spill offset. Without a mix or a
split that list is the spill itself (removed documents at length 0), exactly as before. A split
zeroes the validation documents out of it and packs them on their own; a mix replaces it with
the documents in mix order, a repeated one listed once per use, grouped by source so that
every row holds one source (the rows' ``source`` array).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset.format import DOCUMENT_DTYPE, VAL_DIR, Manifest
from ..stages.mix import MixPlan, effective_tokens, mix_plan, validation_split
from .config import Recipe


@dataclass
class Packable:
    """Documents as the packer takes them: token counts, spill offsets and (a mix) sources."""

    lengths: np.ndarray        # int64 per listed document (0: no piece)
    starts: np.ndarray         # int64 spill offset of its first token
    groups: np.ndarray | None  # int64 source of each, when rows must not mix sources


@dataclass
class Selection:
    train: Packable
    val: Packable | None
    uses: np.ndarray           # int64 per spill document: how often the training rows hold it
    is_val: np.ndarray | None  # bool per spill document
    mix: MixPlan | None


def select(recipe: Recipe, planned: np.ndarray, doc_offsets: np.ndarray,
           source: np.ndarray) -> Selection:
    """Split and mix the spill's documents (``planned``: their tokens, 0 for removed ones)."""
    starts = doc_offsets[:-1]
    pack = recipe.pack
    grouped = recipe.mix.on
    is_val = val = None
    train_len = planned
    if recipe.split.on:
        is_val = validation_split(planned, source, max(len(recipe.mix.sources), 1), recipe.split,
                                  recipe.mix.seed)
        idx = np.flatnonzero(is_val)
        val = Packable(planned[idx], starts[idx], source[idx].astype(np.int64) if grouped else None)
        train_len = np.where(is_val, 0, planned)
    if not grouped:
        return Selection(Packable(train_len, starts, None), val, (train_len > 0).astype(np.int64),
                         is_val, None)
    eff = effective_tokens(train_len, pack.seq_len,
                           pack.mode != "concat" and pack.long_policy == "truncate")
    mp = mix_plan(eff, source, recipe.mix)
    order = mp.order
    return Selection(Packable(planned[order], starts[order], source[order].astype(np.int64)),
                     val, mp.uses, is_val, mp)


def document_table(planned: np.ndarray, docs: dict[str, np.ndarray], sel: Selection) -> np.ndarray:
    """``documents.bin``'s records: every kept document (``planned > 0``), in input order."""
    kept = np.flatnonzero(planned > 0)
    table = np.zeros(kept.size, DOCUMENT_DTYPE)
    table["tokens"] = np.minimum(planned[kept], np.iinfo(np.uint32).max)
    for name in ("chars", "targets", "source"):
        table[name] = docs[name][kept]
    table["kind"] = docs["kind"][kept]
    table["uses"] = sel.uses[kept]
    if sel.is_val is not None:
        table["split"] = sel.is_val[kept]
    return table


def split_record(sel: Selection, recipe: Recipe, val: Manifest | None) -> dict[str, Any]:
    """The manifest's ``split`` section (empty without a validation set)."""
    if sel.is_val is None or val is None:
        return {}
    return {"val_dir": VAL_DIR, "val_documents": int(sel.is_val.sum()), "val_rows": val.rows,
            "val_tokens": int(val.counts["tokens_kept"]), "fraction": recipe.split.fraction,
            "docs": recipe.split.docs, "seed": recipe.mix.seed}


def mix_record(sel: Selection, recipe: Recipe, records_read: np.ndarray) -> dict[str, Any]:
    """The manifest's ``mix`` section: per source what it had and what it gave."""
    if sel.mix is None:
        return {}
    sources = [{**s, "records_read": int(records_read[i])} for i, s in enumerate(sel.mix.sources)]
    return {"tokens": sel.mix.tokens, "max_repeat": recipe.mix.max_repeat,
            "seed": recipe.mix.seed, "sources": sources}
