"""The numbers behind every figure of a report, numpy only (no plotting, no decoding): what
the JSON holds and what the tests compare with the manifest and the arrays.

Row-level figures use every row: one pass over the memory-mapped segment ids and loss mask in
blocks gives, per row, its real tokens, documents (pieces), loss-mask ones and learned
positions (:class:`RowStats`, 16 bytes per row), and every histogram is a ``bincount`` of
those. Document-level figures come from ``documents.bin`` (one record per kept document) and
say "not available" for datasets prepared before it existed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stages.records import KIND_NAMES
from .load import ReportData

HIST_BINS = 40       # document length histograms (log-spaced)
PADDING_BINS = 64    # padding-per-row histogram (linear over 0..L)
TOP_CLUSTERS = 10


@dataclass(frozen=True)
class RowStats:
    """Per row: real tokens, documents (segments), loss-mask ones among real tokens (None
    without a loss mask) and learned positions (a token following one of its own document,
    loss mask 1: what the manifest's ``target_tokens`` counts)."""

    real: np.ndarray
    segments: np.ndarray
    mask_ones: np.ndarray | None
    learned: np.ndarray


def row_stats(blocks: Iterable[dict[str, np.ndarray]], has_mask: bool) -> RowStats:
    """:class:`RowStats` from blocks ``{segment_ids, loss_mask?: [n, L]}`` of every row."""
    real, segs, ones, learned = [], [], [], []
    for b in blocks:
        seg = b["segment_ids"]
        nz = seg != 0
        real.append(np.count_nonzero(nz, axis=1))
        segs.append(seg.max(axis=1) if seg.shape[1] else np.zeros(len(seg), seg.dtype))
        same = seg[:, 1:] == seg[:, :-1]
        same &= nz[:, 1:]
        if has_mask:
            m = b["loss_mask"] != 0
            ones.append(np.count_nonzero(m & nz, axis=1))
            same &= m[:, 1:]
        learned.append(np.count_nonzero(same, axis=1))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    return RowStats(real=cat(real), segments=cat(segs), mask_ones=cat(ones) if has_mask else None,
                    learned=cat(learned))


def log_edges(top: int, bins: int = HIST_BINS) -> np.ndarray:
    """Integer bin edges from 1 to past ``top``, spaced evenly on a log scale (document
    lengths span orders of magnitude), duplicates removed."""
    edges = np.unique(np.round(np.geomspace(1, max(int(top), 1) + 1, bins + 1)).astype(np.int64))
    return edges if len(edges) > 1 else np.array([1, 2], np.int64)


def describe(values: np.ndarray) -> dict[str, float | int]:
    """count, mean, median, p90, p99, min, max of a length array (zeros when empty)."""
    v = np.asarray(values, dtype=np.int64)
    if not v.size:
        return {"count": 0, "mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0, "min": 0, "max": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "mean": round(float(v.mean()), 3), "median": float(p50),
            "p90": float(p90), "p99": float(p99), "min": int(v.min()), "max": int(v.max())}


def length_group(name: str, docs: np.ndarray, tok_edges: np.ndarray, char_edges: np.ndarray,
                 seq_len: int) -> dict[str, Any]:
    """One histogram group (a record kind or a source): its documents' lengths."""
    over = int(np.count_nonzero(docs["tokens"] > seq_len))
    return {"name": name, "documents": len(docs),
            "tokens": {"counts": np.histogram(docs["tokens"], tok_edges)[0].tolist(),
                       **describe(docs["tokens"])},
            "chars": {"counts": np.histogram(docs["chars"], char_edges)[0].tolist(),
                      **describe(docs["chars"])},
            "over_seq_len": over, "over_seq_len_share": round(over / max(len(docs), 1), 6)}


def lengths_figure(data: ReportData) -> dict[str, Any]:
    """Figure 1: document lengths in tokens and characters per record kind and per source,
    with L, and how many documents are longer than L (split or truncated)."""
    counts, packing, L = data.section("counts"), data.section("packing"), data.seq_len
    out: dict[str, Any] = {"seq_len": L, "long_policy": packing.get("long_policy"),
                           "documents_split": counts.get("documents_split"),
                           "documents_truncated": counts.get("documents_truncated")}
    docs = data.documents
    if docs is None:
        return {"available": False, "reason": data.no_documents, **out}
    tok_edges = log_edges(max(int(docs["tokens"].max(initial=0)), L))
    char_edges = log_edges(int(docs["chars"].max(initial=0)))
    by_kind = [length_group(n, docs[docs["kind"] == k], tok_edges, char_edges, L)
               for k, n in enumerate(KIND_NAMES) if np.any(docs["kind"] == k)]
    by_source = [length_group(data.sources[s] if s < len(data.sources) else f"source {s}",
                              docs[docs["source"] == s], tok_edges, char_edges, L)
                 for s in np.unique(docs["source"]).tolist()]
    over = int(np.count_nonzero(docs["tokens"] > L))
    return {"available": True, "reason": None, **out, "documents": len(docs),
            "tokens_edges": tok_edges.tolist(), "chars_edges": char_edges.tolist(),
            "by_kind": by_kind, "by_source": by_source, "over_seq_len": over,
            "over_seq_len_share": round(over / max(len(docs), 1), 6)}


def long_pieces(data: ReportData) -> dict[str, Any]:
    """What ``documents.bin`` says the single-piece full rows should be: pieces of L tokens
    cut from documents longer than L (each use of a document in the training rows counts),
    and documents of exactly L tokens, which fill a row alone too."""
    docs, seq_len, packing = data.documents, data.seq_len, data.section("packing")
    if docs is None:
        return {"available": False, "reason": data.no_documents}
    if packing.get("mode") == "concat":
        return {"available": False, "reason": "concat packing cuts the token stream at row "
                "boundaries, so pieces do not follow from document lengths alone"}
    train = docs[docs["split"] == 0]
    uses = train["uses"].astype(np.int64)
    tokens = train["tokens"].astype(np.int64)
    long = tokens > seq_len
    per_doc = np.ones_like(tokens) if packing.get("long_policy") == "truncate" else tokens // seq_len
    return {"available": True, "reason": None,
            "long_documents": int(np.count_nonzero(docs["tokens"] > seq_len)),
            "full_pieces_of_long_documents": int((per_doc[long] * uses[long]).sum()),
            "documents_of_exactly_seq_len": int(uses[tokens == seq_len].sum())}


def packing_figure(data: ReportData, stats: RowStats) -> dict[str, Any]:
    """Figure 2: packing efficiency, documents per row, padding per row, and rows that hold
    one full-length piece of a document longer than L."""
    L, rows = data.seq_len, len(stats.real)
    packing, counts = data.section("packing"), data.section("counts")
    real = int(stats.real.sum())
    padding = L - stats.real
    edges = (np.arange(L + 2) if L < PADDING_BINS
             else np.unique(np.round(np.linspace(0, L + 1, PADDING_BINS + 1)).astype(np.int64)))
    seg_counts = np.bincount(stats.segments, minlength=1)
    single_full = int(np.count_nonzero((stats.segments == 1) & (stats.real == L)))
    return {"rows": rows, "seq_len": L, "mode": packing.get("mode"),
            "long_policy": packing.get("long_policy"),
            "real_tokens": real, "padding_tokens": int(padding.sum()),
            "efficiency": round(real / (rows * L), 6) if rows else 0.0,
            "manifest_efficiency": packing.get("efficiency"),
            "manifest_padding_tokens": counts.get("padding_tokens"),
            "segments_per_row": {"values": list(range(len(seg_counts))),
                                 "counts": seg_counts.tolist(),
                                 "mean": round(float(stats.segments.mean()), 4) if rows else 0.0},
            "padding_per_row": {"edges": edges.tolist(),
                                "counts": np.histogram(padding, edges)[0].tolist(),
                                "rows_without_padding": int(np.count_nonzero(padding == 0))},
            "single_full_rows": single_full,
            "from_documents": long_pieces(data)}


def clusters(lines: list[dict[str, Any]], top: int = TOP_CLUSTERS) -> list[dict[str, Any]]:
    """The largest duplicate clusters of a dedupe report: removed documents grouped by the
    kept document they matched (the report already follows chains to it), largest first."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in lines:
        groups.setdefault((str(row.get("matched_source")), int(row["matched_line"])), []).append(row)
    order = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    out = []
    for (src, line), members in order[:top]:
        sims = [float(m.get("similarity", 1.0)) for m in members]
        out.append({"kept_source": src, "kept_line": line, "kept_id": members[0].get("matched_id"),
                    "kept_excerpt": members[0].get("matched_excerpt"), "size": len(members) + 1,
                    "removed": len(members),
                    "exact": sum(m.get("kind") == "exact" for m in members),
                    "near": sum(m.get("kind") == "near" for m in members),
                    "min_similarity": min(sims), "mean_similarity": round(sum(sims) / len(sims), 4),
                    "examples": [{"source": m.get("source"), "line": m.get("line"),
                                  "id": m.get("id"), "kind": m.get("kind"),
                                  "similarity": m.get("similarity"), "excerpt": m.get("excerpt")}
                                 for m in members[:3]]})
    return out


def counts_figure(data: ReportData, dedupe_lines: list[dict[str, Any]] | None,
                  dedupe_file: str | None) -> dict[str, Any]:
    """Figure 3: records read, kept, dropped by reason, repaired by kind, duplicates and
    contaminated documents (the manifest's counts), plus the top clusters of a dedupe report."""
    c = data.section("counts")
    dropped = dict(c.get("dropped", {}))
    contaminated = dropped.get("contaminated", c.get("contaminated", 0))
    out: dict[str, Any] = {
        "records_read": c.get("records_read"), "records_kept": c.get("records_kept"),
        "dropped": dropped, "dropped_total": c.get("dropped_total", sum(dropped.values())),
        "repaired": dict(c.get("repaired", {})), "exact_duplicates": c.get("exact_duplicates"),
        "near_duplicates": c.get("near_duplicates"), "contaminated": contaminated,
        "documents_by_shape": dict(c.get("documents_by_shape", {})),
        "decontamination": dict(data.section("decontamination") or {}),
    }
    if dedupe_lines is None:
        out["clusters"] = {"available": False, "reason": "no --dedupe-report file given"}
    else:
        out["clusters"] = {"available": True, "reason": None, "file": dedupe_file,
                           "lines": len(dedupe_lines),
                           "exact": sum(r.get("kind") == "exact" for r in dedupe_lines),
                           "near": sum(r.get("kind") == "near" for r in dedupe_lines),
                           "clusters": len({(str(r.get("matched_source")), int(r["matched_line"]))
                                            for r in dedupe_lines}),
                           "top": clusters(dedupe_lines)}
    return out


def share_rows(docs: np.ndarray, field: str, names: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """Tokens and loss-mask targets per value of ``field``, over every kept document and
    weighted by its uses in the training rows."""
    out = []
    for v in np.unique(docs[field]).tolist():
        d = docs[docs[field] == v]
        uses = d["uses"].astype(np.int64)
        tok, tgt = d["tokens"].astype(np.int64), d["targets"].astype(np.int64)
        name = names[v] if names is not None and v < len(names) else f"{field} {v}"
        out.append({"name": name, "documents": len(d), "tokens": int(tok.sum()),
                    "targets": int(tgt.sum()), "share": round(float(tgt.sum() / max(tok.sum(), 1)), 6),
                    "tokens_in_rows": int((tok * uses).sum()), "targets_in_rows": int((tgt * uses).sum()),
                    "share_in_rows": round(float((tgt * uses).sum() / max((tok * uses).sum(), 1)), 6)})
    return out


def loss_figure(data: ReportData, stats: RowStats) -> dict[str, Any]:
    """Figure 4: the share of tokens that are training targets, from the rows (all of them)
    and per record kind and source from ``documents.bin``."""
    real = int(stats.real.sum())
    ones = int(stats.mask_ones.sum()) if stats.mask_ones is not None else real
    learned = int(stats.learned.sum())
    docs = data.documents
    out: dict[str, Any] = {
        "has_loss_mask": stats.mask_ones is not None, "real_tokens": real,
        "loss_mask_ones": ones, "mask_share": round(ones / max(real, 1), 6),
        "learned_positions": learned, "learned_share": round(learned / max(real, 1), 6),
        "manifest_target_tokens": data.section("counts").get("target_tokens"),
    }
    if docs is None:
        out.update(by_kind={"available": False, "reason": data.no_documents})
        return out
    out["by_kind"] = {"available": True, "reason": None,
                      "kinds": share_rows(docs, "kind", KIND_NAMES),
                      "sources": share_rows(docs, "source", data.sources)}
    return out


def sources_table(data: ReportData) -> list[dict[str, Any]]:
    """One entry per source: the mix's own figures (weight, share, epochs, ...) when the
    dataset was mixed, and its kept documents and tokens from ``documents.bin``."""
    mix = (data.section("mix") or {}).get("sources") or []
    out = []
    for i, name in enumerate(data.sources):
        entry: dict[str, Any] = {"name": name, **(mix[i] if i < len(mix) else {})}
        if data.documents is not None:
            d = data.documents[data.documents["source"] == i]
            entry["kept_documents"] = len(d)
            entry["kept_tokens"] = int(d["tokens"].astype(np.int64).sum())
            entry["validation_documents"] = int(np.count_nonzero(d["split"] == 1))
        if data.row_source is not None:
            entry["rows"] = int(np.count_nonzero(data.row_source == i))
        out.append(entry)
    return out
