"""``fastprep report DS``: one pass over the rows for the row figures, a seeded sample of rows
decoded for the text figures, then the plots, the HTML page, and the PNG/JSON files asked for.

Every input problem (no dataset, an empty ``--flag-terms`` file, a missing output folder, no
matplotlib) is found before the pass over the rows starts, and every output is written
atomically, so a failed report leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..io import atomic_write_bytes
from . import figures as fig
from .load import (
    NO_TOKENIZER,
    ReportData,
    ReportError,
    decoded_rows,
    iter_blocks,
    load_tokenizer,
    open_report_data,
    read_dedupe_report,
    read_flag_terms,
    sample_rows,
    take_rows,
)
from .text import ScriptCounter, TermCounter, render_row

SCHEMA = "fastprep.report/1"
ROW_TOKENS_SHOWN = 2048   # the rendered sample row is cut here (a long row would be a wall)
FLUSH_CHARS = 8 << 20     # decoded text buffered per source before it is counted


@dataclass(frozen=True)
class ReportOptions:
    """The ``fastprep report`` flags (see ``fastprep report --help``)."""

    out: str = "report.html"
    png_dir: str | None = None
    json: str | None = None
    flag_terms: str | None = None
    dedupe_report: str | None = None
    sample_rows: int = 20_000
    seed: int = 0
    row: int | None = None

    def __post_init__(self) -> None:
        if self.sample_rows <= 0:
            raise ReportError(f"--sample-rows {self.sample_rows}: must be positive")
        for flag, path in (("--out", self.out), ("--json", self.json)):
            if path is not None and not Path(path).resolve().parent.is_dir():
                raise ReportError(f"{flag} {path}: its folder does not exist")
        if self.png_dir is not None and Path(self.png_dir).exists() and not Path(self.png_dir).is_dir():
            raise ReportError(f"--png-dir {self.png_dir}: exists and is not a folder")


def balance_figure(data: ReportData, tokenizer: Any, rows: np.ndarray,
                   terms: list[str] | None, flag_file: str | None) -> dict[str, Any]:
    """Figure 5: the script mix of the sampled rows' decoded text per source and, with
    ``--flag-terms``, each term's count per source."""
    scripts = ScriptCounter()
    counter = TermCounter(terms) if terms else None
    buffers: dict[int, list[str]] = {}
    held = documents = 0

    def flush() -> None:
        for src, texts in buffers.items():
            scripts.add(src, "".join(texts))
            if counter is not None:  # a newline ends a word: no term spans two documents
                counter.add(src, "\n".join(texts))
        buffers.clear()

    for _, src, texts in decoded_rows(data, tokenizer, rows):
        buffers.setdefault(src, []).extend(texts)
        documents += len(texts)
        held += sum(map(len, texts))
        if held >= FLUSH_CHARS:
            flush()
            held = 0
    flush()
    by_source = scripts.by_source(data.sources)
    total: dict[str, int] = {}
    for per in by_source.values():
        for k, v in per.items():
            total[k] = total.get(k, 0) + v
    out: dict[str, Any] = {"available": True, "reason": None, "documents": documents,
                           "scripts": {"total": dict(sorted(total.items(), key=lambda kv: -kv[1])),
                                       "by_source": by_source}}
    if counter is None:
        out["flag_terms"] = {"available": False, "reason": "no --flag-terms file given"}
    else:
        out["flag_terms"] = {"available": True, "reason": None, "file": flag_file, "terms": terms,
                             "by_source": counter.by_source(data.sources),
                             "note": "term counts, not a bias verdict"}
    return out


def row_index(wanted: int, rows: int) -> int:
    """``--row`` as an index (negative counts from the end, as in Python), checked."""
    index = wanted + rows if wanted < 0 else wanted
    if not 0 <= index < rows:
        raise ReportError(f"--row {wanted}: the dataset has {rows:,} rows")
    return index


def pick_row(stats: fig.RowStats, sample: np.ndarray, wanted: int | None) -> int | None:
    """The row to render: ``--row`` if given, else the first sampled row that shows both
    targets and non-targets in several documents, else the first sampled row."""
    if wanted is not None:
        return row_index(wanted, len(stats.real))
    if not len(sample):
        return None
    mixed = (stats.learned[sample] > 0) & (stats.learned[sample] < stats.real[sample] - stats.segments[sample])
    for cond in (mixed & (stats.segments[sample] >= 2), mixed, stats.segments[sample] >= 2):
        hits = np.flatnonzero(cond)
        if len(hits):
            return int(sample[hits[0]])
    return int(sample[0])


def sample_row_figure(data: ReportData, tokenizer: Any, row: int | None) -> dict[str, Any]:
    """The rendered row of figure 4: its tokens decoded one by one, targets marked."""
    if tokenizer is None or row is None:
        return {"available": False, "reason": NO_TOKENIZER if tokenizer is None else "no rows"}
    block = take_rows(data.ds, np.array([row]), ("input_ids", "segment_ids", "loss_mask"))
    ids, seg = block["input_ids"][0], block["segment_ids"][0]
    mask = block["loss_mask"][0] if "loss_mask" in block else None
    tokens = render_row(tokenizer, ids[:ROW_TOKENS_SHOWN], seg[:ROW_TOKENS_SHOWN],
                        None if mask is None else mask[:ROW_TOKENS_SHOWN])
    return {"available": True, "reason": None, "row": row, "real_tokens": int(np.count_nonzero(seg)),
            "shown": len(tokens), "segments": int(seg.max(initial=0)), "tokens": tokens}


def compute(path: str | os.PathLike[str], opts: ReportOptions) -> dict[str, Any]:
    """Every figure's numbers, as the JSON holds them (no drawing)."""
    data = open_report_data(path)
    terms = read_flag_terms(opts.flag_terms) if opts.flag_terms else None
    dedupe = read_dedupe_report(opts.dedupe_report) if opts.dedupe_report else None
    if opts.row is not None:
        row_index(opts.row, data.rows)  # before the pass over the rows, not after it
    m = data.ds.manifest
    stats = fig.row_stats(iter_blocks(data.ds, ("segment_ids", "loss_mask")), m.has_loss_mask)
    sample = sample_rows(data.rows, opts.sample_rows, opts.seed) if data.rows else np.zeros(0, np.int64)
    tokenizer = load_tokenizer(data.ds)
    loss = fig.loss_figure(data, stats)
    loss["sample_row"] = sample_row_figure(data, tokenizer, pick_row(stats, sample, opts.row))
    balance = (balance_figure(data, tokenizer, sample, terms, opts.flag_terms)
               if tokenizer is not None else {"available": False, "reason": NO_TOKENIZER})
    return {"schema": SCHEMA, "fastprep_version": __version__,
            "dataset": {"path": str(path), "rows": data.rows, "seq_len": data.seq_len,
                        "shards": len(data.ds.shards), "arrays": list(m.arrays), "dtypes": m.dtypes,
                        "vocab_size": m.vocab_size, "prepared_by": m.fastprep_version,
                        "documents_file": data.documents is not None,
                        "row_sources": data.row_source is not None,
                        "validation": dict(data.section("split") or {})},
            "sample": {"rows_total": data.rows, "rows_sampled": len(sample), "seed": opts.seed,
                       "all_rows": len(sample) == data.rows, "sample_rows_option": opts.sample_rows,
                       "rows": sample.tolist()},
            "sources": fig.sources_table(data), "lengths": fig.lengths_figure(data),
            "packing": fig.packing_figure(data, stats),
            "counts": fig.counts_figure(data, dedupe, opts.dedupe_report),
            "loss": loss, "balance": balance}


def build_report(path: str | os.PathLike[str], opts: ReportOptions) -> dict[str, Any]:
    """Compute, draw and write the report; return ``{"figures", "files", "seconds"}``."""
    from . import draw, page

    t0 = time.perf_counter()
    draw.require_matplotlib()
    figures = compute(path, opts)
    t1 = time.perf_counter()
    pngs = draw.draw_all(figures)
    html = page.render(figures, pngs)
    files = [opts.out]
    atomic_write_bytes(Path(opts.out), html.encode("utf-8"))
    if opts.png_dir is not None:
        folder = Path(opts.png_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name in draw.FIGURES:
            target = folder / f"{name}.png"
            if name in pngs:
                atomic_write_bytes(target, pngs[name])
                files.append(str(target))
            else:  # a plot this report has no data for: no stale one from an earlier run
                target.unlink(missing_ok=True)
    if opts.json is not None:
        atomic_write_bytes(Path(opts.json), (json.dumps(figures, indent=1) + "\n").encode())
        files.append(opts.json)
    t2 = time.perf_counter()
    return {"figures": figures, "files": files,
            "seconds": {"compute": round(t1 - t0, 3), "draw_and_write": round(t2 - t1, 3),
                        "total": round(t2 - t0, 3)}}
