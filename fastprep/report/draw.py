"""The report's plots, drawn with matplotlib from the figures' numbers (never from the data
itself, so a plot shows exactly what the JSON says).

matplotlib is the ``report`` extra and imported only here, lazily; figures are built as
``matplotlib.figure.Figure`` objects saved as PNG (the Agg renderer) without pyplot, so a
report touches no global plotting state, never opens a window and needs no display.
"""

from __future__ import annotations

import io
from typing import Any

from .load import ReportError

DPI = 100
FIGURES = ("lengths", "packing", "counts", "loss", "scripts", "terms")  # the PNG files' names
TOP_SCRIPTS = 8
TOP_TERMS = 25
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
          "#8c8c8c", "#ccb974", "#64b5cd")


def require_matplotlib() -> Any:
    """matplotlib's Figure class, or a one-line error naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ReportError(f"fastprep report needs matplotlib ({e}): pip install 'fastprep[report]'") from None
    return Figure


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    """A figure of ``width`` x ``height`` inches and its axes grid (always 2-D)."""
    figure = require_matplotlib()(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, figure.subplots(nrows, ncols, squeeze=False)


def to_png(figure: Any) -> bytes:
    """PNG bytes without a software/date stamp, so the same numbers give the same file."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def length_panel(ax: Any, groups: list[dict[str, Any]], edges: list[int], key: str,
                 title: str, seq_len: int | None) -> None:
    """One histogram per group as steps (groups overlap), log x, L marked when given."""
    for i, g in enumerate(groups):
        ax.stairs(g[key]["counts"], edges, label=f"{g['name']} ({g['documents']:,})",
                  color=COLORS[i % len(COLORS)], linewidth=1.5)
    if seq_len is not None:
        ax.axvline(seq_len, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"L = {seq_len:,}", (seq_len, 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("documents")
    ax.set_title(title, fontsize=10)
    if groups:
        ax.legend(fontsize=7)


def draw_lengths(f: dict[str, Any]) -> bytes | None:
    """Figure 1: tokens and characters per kind, and per source when there are several."""
    if not f["available"]:
        return None
    panels = [("by_kind", "per record kind")]
    if len(f["by_source"]) > 1:
        panels.append(("by_source", "per source"))
    figure, axes = new_figure(11, 3.6 * len(panels), ncols=2, nrows=len(panels))
    for r, (group, label) in enumerate(panels):
        length_panel(axes[r][0], f[group], f["tokens_edges"], "tokens",
                     f"document length in tokens, {label}", f["seq_len"])
        length_panel(axes[r][1], f[group], f["chars_edges"], "chars",
                     f"document length in characters, {label}", None)
    return to_png(figure)


def draw_packing(f: dict[str, Any]) -> bytes:
    """Figure 2: documents per row and padding per row."""
    figure, axes = new_figure(11, 3.6, ncols=2)
    seg = f["segments_per_row"]
    axes[0][0].bar(seg["values"], seg["counts"], color=COLORS[0])
    axes[0][0].set_xlabel("documents (segments) per row")
    axes[0][0].set_ylabel("rows")
    axes[0][0].set_title(f"segments per row (mean {seg['mean']:.2f})", fontsize=10)
    pad = f["padding_per_row"]
    axes[0][1].stairs(pad["counts"], pad["edges"], fill=True, color=COLORS[1])
    axes[0][1].set_xlabel(f"padding tokens per row (of L = {f['seq_len']:,})")
    axes[0][1].set_ylabel("rows")
    axes[0][1].set_title(f"padding per row (efficiency {100 * f['efficiency']:.2f}%)", fontsize=10)
    return to_png(figure)


def draw_counts(f: dict[str, Any]) -> bytes:
    """Figure 3: one bar per outcome: kept and removed blue, dropped red, repaired green."""
    items = [("records read", f["records_read"]), ("records kept", f["records_kept"]),
             ("exact duplicates", f["exact_duplicates"]), ("near duplicates", f["near_duplicates"]),
             ("contaminated", f["contaminated"])]
    items += [(f"dropped: {k}", v) for k, v in sorted(f["dropped"].items()) if k != "contaminated"]
    items += [(f"repaired: {k}", v) for k, v in sorted(f["repaired"].items())]
    items = [(k, int(v or 0)) for k, v in items]
    figure, axes = new_figure(11, 0.8 + 0.28 * len(items))
    ax = axes[0][0]
    ax.barh(range(len(items)), [v for _, v in items],
            color=[COLORS[0] if not k.startswith(("dropped", "repaired")) else
                   COLORS[3] if k.startswith("dropped") else COLORS[2] for k, _ in items])
    ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    for i, (_, v) in enumerate(items):
        ax.annotate(f"{v:,}", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("records")
    ax.set_title("records by outcome (manifest counts)", fontsize=10)
    return to_png(figure)


def draw_loss(f: dict[str, Any]) -> bytes | None:
    """Figure 4: the target share per record kind, as the training rows hold them."""
    if not f["by_kind"]["available"]:
        return None
    kinds = f["by_kind"]["kinds"]
    figure, axes = new_figure(6, 0.9 + 0.45 * len(kinds))
    ax = axes[0][0]
    ax.barh([k["name"] for k in kinds], [k["share_in_rows"] for k in kinds], color=COLORS[2])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    for i, k in enumerate(kinds):
        ax.annotate(f"{100 * k['share_in_rows']:.1f}%", (k["share_in_rows"], i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("share of tokens with loss mask 1")
    ax.set_title("targets per record kind (documents.bin)", fontsize=10)
    return to_png(figure)


def draw_scripts(f: dict[str, Any]) -> bytes | None:
    """Figure 5a: each source's characters as shares of the largest classes, stacked."""
    if not f["available"] or not f["scripts"]["total"]:
        return None
    top = list(f["scripts"]["total"])[:TOP_SCRIPTS]
    by_source = f["scripts"]["by_source"]
    figure, axes = new_figure(11, 1.2 + 0.45 * len(by_source))
    ax = axes[0][0]
    names = list(by_source)
    left = [0.0] * len(names)
    for i, cls in enumerate(top + ["other"]):
        shares = []
        for name in names:
            c = by_source[name]
            total = max(sum(c.values()), 1)
            v = sum(n for k, n in c.items() if k not in top) if cls == "other" else c.get(cls, 0)
            shares.append(v / total)
        ax.barh(names, shares, left=left, label=cls, color=COLORS[i % len(COLORS)])
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of characters")
    ax.legend(fontsize=7, ncols=min(len(top) + 1, 5), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title("script mix of the sampled rows' text", fontsize=10)
    return to_png(figure)


def draw_terms(f: dict[str, Any]) -> bytes | None:
    """Figure 5b: the most frequent flag terms, one bar per source."""
    if not f["available"] or not f["flag_terms"]["available"]:
        return None
    by_source = f["flag_terms"]["by_source"]
    totals = {t: sum(c.get(t, 0) for c in by_source.values()) for t in f["flag_terms"]["terms"]}
    terms = sorted(totals, key=lambda t: -totals[t])[:TOP_TERMS]
    figure, axes = new_figure(11, 1.2 + 0.3 * len(terms) * max(1, min(len(by_source), 3)))
    ax = axes[0][0]
    height = 0.8 / max(len(by_source), 1)
    for i, (name, c) in enumerate(by_source.items()):
        ax.barh([j + i * height for j in range(len(terms))], [c.get(t, 0) for t in terms],
                height=height, label=name, color=COLORS[i % len(COLORS)])
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(terms))], terms, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("occurrences in the sampled rows")
    ax.legend(fontsize=7)
    ax.set_title("flag-term counts per source (term counts, not a bias verdict)", fontsize=10)
    return to_png(figure)


def draw_all(figures: dict[str, Any]) -> dict[str, bytes]:
    """{figure name: PNG bytes} for every figure that has data."""
    drawn = {"lengths": draw_lengths(figures["lengths"]), "packing": draw_packing(figures["packing"]),
             "counts": draw_counts(figures["counts"]), "loss": draw_loss(figures["loss"]),
             "scripts": draw_scripts(figures["balance"]), "terms": draw_terms(figures["balance"])}
    assert tuple(drawn) == FIGURES
    return {k: v for k, v in drawn.items() if v is not None}
