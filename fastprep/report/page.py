"""The report as one self-contained HTML page: inline CSS, plots as base64 PNG ``data:``
URIs, the figures' numbers in a ``<script type="application/json" id="figures">`` block; no
script runs and nothing is fetched when it is viewed. Every string that comes from the data
(decoded tokens, excerpts, file names, terms) goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em; margin-top: 2em; }
p.caption { color: #444; font-size: .93em; max-width: 70em; }
p.na { color: #a33; font-style: italic; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; vertical-align: top; }
th { background: #eef2f8; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; }
.row { font-family: ui-monospace, monospace; font-size: .85em; white-space: pre-wrap;
       word-break: break-all; border: 1px solid #ccc; padding: .6em; line-height: 1.7; }
.row span { border-bottom: 3px solid #b9c6e0; }
.row span.odd { border-bottom-color: #f0c08a; }
.row span.g { background: #b6e3b6; }
.row span.s { color: #777; font-style: italic; background: #eee; }
.excerpt { font-family: ui-monospace, monospace; font-size: .85em; color: #333; text-align: left; }
.legend span { padding: 0 .4em; margin-right: 1em; }
"""


CONTENTS = ('<p>Sections: <a href="#lengths">1. document lengths</a> · <a href="#packing">2. '
            'packing</a> · <a href="#counts">3. counts</a> · <a href="#loss">4. loss</a> · '
            '<a href="#balance">5. data balance</a> · the numbers: the JSON block '
            '<code>#figures</code> at the end of this file</p>')


def esc(value: Any) -> str:
    """Text from the data, safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def num(value: Any) -> str:
    """A number as people read it (thousands separators), anything else escaped."""
    if isinstance(value, bool) or value is None:
        return esc("-" if value is None else value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return esc(value)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def table(header: list[str] | None, rows: list[list[Any]], left: int = 1) -> str:
    """A table (no header row for ``None``); the first ``left`` columns are text
    (left-aligned), the rest numbers."""
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="l"' if i < left else ""
        return f"<{tag}{cls}>{v if tag == 'th' else num(v) if i >= left else esc(v)}</{tag}>"

    head = ("<tr>" + "".join(cell("th", i, esc(h)) for i, h in enumerate(header)) + "</tr>"
            if header is not None else "")
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def image(pngs: dict[str, bytes], name: str, alt: str) -> str:
    """The plot inline as a ``data:`` URI (nothing to fetch), or nothing if it was not drawn."""
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def unavailable(reason: str | None) -> str:
    return f'<p class="na">{esc(reason)}</p>'


def header(f: dict[str, Any]) -> str:
    """The dataset, how much of it the text figures decoded, and its sources."""
    d, s = f["dataset"], f["sample"]
    sampled = (f"The text figures (script mix, flag terms) decode all {s['rows_total']:,} rows."
               if s["all_rows"] else
               f"The text figures (script mix, flag terms) decode a seeded sample of "
               f"{s['rows_sampled']:,} of the {s['rows_total']:,} rows (seed {s['seed']}, "
               f"--sample-rows {s['sample_rows_option']:,}); every other figure uses all rows.")
    rows = [[k, v] for k, v in (("rows", d["rows"]), ("row length L", d["seq_len"]),
                                ("shards", d["shards"]), ("vocabulary", d["vocab_size"]),
                                ("arrays", ", ".join(f"{a} {d['dtypes'][a]}" for a in d["arrays"])),
                                ("prepared by fastprep", d["prepared_by"] or "-"),
                                ("documents.bin", "yes" if d["documents_file"] else "no"))]
    val = d["validation"]
    if val.get("role") == "validation":
        rows.append(["validation set", f"this dataset is the validation set of {val.get('of', '..')}"])
    elif val:
        where = f"{val.get('val_dir', 'val')}/: {val.get('val_rows', 0):,} rows"
        rows.append(["validation set", f"{where}, {val.get('val_documents', 0):,} documents (not in these rows)"])
    src = f["sources"]
    keys = [k for k in ("weight", "share", "epochs", "documents_used", "tokens_used", "kept_documents",
                        "kept_tokens", "validation_documents", "rows") if any(k in e for e in src)]
    sources = table(["source"] + keys, [[e["name"]] + [e.get(k) for k in keys] for e in src])
    return (f"<h1>fastprep report: {esc(d['path'])}</h1>" + table(None, rows, left=2)
            + f'<p class="caption">{esc(sampled)} Made by fastprep {esc(f["fastprep_version"])} '
              f"from the dataset's manifest, its memory-mapped arrays"
              + (" and documents.bin.</p>" if d["documents_file"] else ".</p>")
            + "<h3>Sources</h3>" + sources + CONTENTS)


def lengths_section(f: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Figure 1, or why it is not available (the manifest's split counts still are)."""
    out = ["<h2 id='lengths'>1. Document lengths</h2>"]
    policy = f"long documents policy: {f['long_policy']}" if f["long_policy"] else ""
    if not f["available"]:
        out.append(unavailable(f["reason"]))
        out.append(f'<p class="caption">The manifest counts {num(f["documents_split"])} documents '
                   f'split and {num(f["documents_truncated"])} truncated ({esc(policy)}).</p>')
        return "".join(out)
    out.append(f'<p class="caption">Histograms of every kept document\'s length (each document '
               f"once, log-spaced bins; from documents.bin) in tokens (BOS/EOS included) and in "
               f"characters, per record kind and per source. The dashed line is the row length "
               f"L = {f['seq_len']:,}: {f['over_seq_len']:,} of {f['documents']:,} documents "
               f"({pct(f['over_seq_len_share'])}) are longer and are split or truncated "
               f"({esc(policy)}; the manifest counts {num(f['documents_split'])} split and "
               f"{num(f['documents_truncated'])} truncated).</p>")
    out.append(image(pngs, "lengths", "document length histograms"))
    rows = [[f"{by[3:]}: {g['name']}", g["documents"], g["tokens"]["median"], g["tokens"]["p90"],
             g["tokens"]["p99"], g["tokens"]["max"], g["chars"]["median"], pct(g["over_seq_len_share"])]
            for by in ("by_kind", "by_source") for g in f[by]]
    out.append(table(["group", "documents", "median tokens", "p90", "p99", "max", "median chars",
                      "> L"], rows))
    return "".join(out)


def packing_section(f: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Figure 2, with the recomputed efficiency next to the manifest's."""
    d = f["from_documents"]
    long_note = (f"documents.bin expects {d['full_pieces_of_long_documents']:,} full-length pieces "
                 f"of the {d['long_documents']:,} documents longer than L, plus "
                 f"{d['documents_of_exactly_seq_len']:,} uses of documents of exactly L tokens"
                 if d["available"] else d["reason"])
    rows = [["packing", f"{f['mode']} (long documents: {f['long_policy']})"],
            ["efficiency = real tokens / (rows x L)",
             f"{pct(f['efficiency'])} (manifest: {pct(f['manifest_efficiency'])})"],
            ["real tokens", f"{f['real_tokens']:,}"],
            ["padding tokens", f"{f['padding_tokens']:,} (manifest: {num(f['manifest_padding_tokens'])})"],
            ["rows without padding", f"{f['padding_per_row']['rows_without_padding']:,}"],
            ["rows holding one full-length piece (one document, L tokens)",
             f"{f['single_full_rows']:,} ({long_note})"]]
    return ("<h2 id='packing'>2. Packing</h2>"
            f'<p class="caption">From the segment ids of all {f["rows"]:,} rows: how many documents '
            f"(pieces) each row holds and how much of it is padding (segment 0).</p>"
            + image(pngs, "packing", "segments and padding per row") + table(None, rows, left=2))


def cluster_rows(c: dict[str, Any]) -> str:
    """The largest duplicate clusters, with the kept document's and a few copies' excerpts."""
    parts = []
    for cl in c["top"]:
        ex = "<br>".join(f"{esc(e['source'])}:{esc(e['line'])} ({esc(e['kind'])}, "
                         f"{esc(e['similarity'])}) {esc(e['excerpt'] or '')}" for e in cl["examples"])
        parts.append(f"<tr><td>{cl['size']:,}</td><td>{cl['exact']:,} / {cl['near']:,}</td>"
                     f"<td>{cl['min_similarity']:.3f}</td><td class=\"excerpt\">kept "
                     f"{esc(cl['kept_source'])}:{esc(cl['kept_line'])}: {esc(cl['kept_excerpt'] or '')}"
                     f"<br>removed: {ex}</td></tr>")
    return ("<table><tr><th>documents</th><th>exact / near</th><th>min similarity</th>"
            f'<th class="l">kept document and removed copies (excerpts)</th></tr>{"".join(parts)}</table>')


def counts_section(f: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Figure 3: the manifest's counts and, with a dedupe report, its clusters."""
    rows = [["records read", f["records_read"]], ["records kept", f["records_kept"]],
            ["dropped", f["dropped_total"]]]
    rows += [[f"  dropped: {k}", v] for k, v in sorted(f["dropped"].items())]
    rows += [["exact duplicates", f["exact_duplicates"]], ["near duplicates", f["near_duplicates"]],
             ["contaminated (dropped by decontamination)", f["contaminated"]]]
    rows += [[f"repaired: {k}", v] for k, v in sorted(f["repaired"].items())]
    rows += [[f"kept {k} records", v] for k, v in f["documents_by_shape"].items()]
    c = f["clusters"]
    tail = (unavailable(c["reason"]) if not c["available"] else
            f'<h3>Largest duplicate clusters</h3><p class="caption">From {esc(c["file"])}: '
            f"{c['lines']:,} removed documents ({c['exact']:,} exact, {c['near']:,} near) in "
            f"{c['clusters']:,} clusters, grouped by the kept document they duplicate; the "
            f"{len(c['top'])} largest with excerpts.</p>" + cluster_rows(c))
    return ("<h2 id='counts'>3. Counts</h2>"
            '<p class="caption">What happened to the input records, from the manifest\'s counts: '
            "read, kept, dropped by reason (quarantine.jsonl holds each), repaired by kind, "
            "exact and near duplicates removed, documents dropped as contaminated.</p>"
            + image(pngs, "counts", "record counts") + table(["", "records"], rows) + tail)


def row_html(r: dict[str, Any]) -> str:
    """One span per token: background for learned targets, underline colour per document."""
    spans = []
    for t in r["tokens"]:
        cls = " ".join(c for c, on in (("odd", t["segment"] % 2 == 1), ("g", t["target"]),
                                       ("s", t["special"])) if on)
        attr = f' class="{cls}"' if cls else ""
        spans.append(f"<span{attr}>{esc(t['text'])}</span>")
    return '<div class="row">' + "".join(spans) + "</div>"


def loss_section(f: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Figure 4: target shares and the rendered row."""
    out = ["<h2 id='loss'>4. Loss</h2>",
           f'<p class="caption">Over all rows: {pct(f["mask_share"])} of the '
           f"{f['real_tokens']:,} real tokens have loss mask 1"
           + ("" if f["has_loss_mask"] else " (no loss_mask array: every token is a target)")
           + f"; {f['learned_positions']:,} ({pct(f['learned_share'])}) are learned, i.e. also "
           f"follow a token of their own document (manifest target_tokens: "
           f"{num(f['manifest_target_tokens'])}).</p>"]
    k = f["by_kind"]
    if not k["available"]:
        out.append(unavailable(k["reason"]))
    else:
        out.append('<p class="caption">Share of tokens with loss mask 1 per record kind and per '
                   "source, from documents.bin, counted as the training rows hold them (each "
                   "document times its uses).</p>" + image(pngs, "loss", "target share per kind"))
        rows = [[f"{by}: {e['name']}", e["documents"], e["tokens_in_rows"], e["targets_in_rows"],
                 pct(e["share_in_rows"])] for by, key in (("kind", "kinds"), ("source", "sources"))
                for e in k[key]]
        out.append(table(["group", "documents", "tokens in rows", "targets", "share"], rows))
    r = f["sample_row"]
    if not r["available"]:
        return "".join(out) + unavailable(r["reason"])
    shown = (f"all {r['real_tokens']:,} real tokens" if r["shown"] >= r["real_tokens"]
             else f"the first {r['shown']:,} of {r['real_tokens']:,} real tokens")
    out.append(f"<h3>Row {r['row']:,}</h3>"
               f'<p class="caption">{r["segments"]} document(s), {shown}, each token decoded on its '
               f"own with the dataset's tokenizer.json. "
               '<span class="legend"><span style="background:#b6e3b6">learned target</span>'
               '<span style="background:#eee;font-style:italic">special token</span>'
               "underline colour alternates per document</span></p>" + row_html(r))
    return "".join(out)


def balance_section(f: dict[str, Any], sample: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """Figure 5: script mix and flag-term counts, with what they are (and are not)."""
    out = ["<h2 id='balance'>5. Data balance</h2>"]
    if not f["available"]:
        return "".join(out) + unavailable(f["reason"])
    which = ("all rows" if sample["all_rows"] else
             f"{sample['rows_sampled']:,} of {sample['rows_total']:,} rows, seeded sample (seed {sample['seed']})")
    total = f["scripts"]["total"]
    chars = max(sum(total.values()), 1)
    out.append(f'<p class="caption">Characters of the decoded text of {esc(which)}, '
               f"{f['documents']:,} documents, by Unicode script (letters by the first word of their "
               f"Unicode name, other characters by category; no model involved).</p>"
               + image(pngs, "scripts", "script mix")
               + table(["class", "characters", "share"],
                       [[k, v, pct(v / chars)] for k, v in list(total.items())[:20]]))
    t = f["flag_terms"]
    if not t["available"]:
        return "".join(out) + unavailable(t["reason"])
    names = list(t["by_source"])
    out.append(f'<h3>Flag terms: term counts, not a bias verdict</h3><p class="caption">How often '
               f"each term of {esc(t['file'])} occurs in the same decoded text, per source "
               f"(case-insensitive, whole words at the term's letter/digit ends, non-overlapping). "
               f"These are term counts, not a bias verdict: a count says nothing about how a term "
               f"is used.</p>" + image(pngs, "terms", "flag term counts")
               + table(["term"] + names, [[term] + [t["by_source"][n].get(term, 0) for n in names]
                                          for term in t["terms"]]))
    return "".join(out)


def render(figures: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The whole page."""
    data = json.dumps(figures, separators=(",", ":")).replace("<", "\\u003c")
    body = (header(figures) + lengths_section(figures["lengths"], pngs)
            + packing_section(figures["packing"], pngs) + counts_section(figures["counts"], pngs)
            + loss_section(figures["loss"], pngs)
            + balance_section(figures["balance"], figures["sample"], pngs))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>fastprep report: {esc(figures['dataset']['path'])}</title><style>{CSS}</style>"
            f"</head><body>{body}<script type=\"application/json\" id=\"figures\">{data}</script>"
            "</body></html>\n")
