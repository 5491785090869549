"""Measures of decoded text, without any model: the Unicode script mix, counts of flagged
terms, and one row rendered token by token with its training targets marked.

Script mix: every code point of the planes that hold assigned letters (0..0x323FF) gets one
class, once, into a lookup table (~0.1 s): letters and marks by the first word of their Unicode
name ("LATIN SMALL LETTER A" -> Latin, "CJK UNIFIED IDEOGRAPH-4E00" -> Han), everything else by
its general category (digits, whitespace, punctuation, symbols, control). Counting a text is
then one UTF-32 encode and one ``np.bincount`` over the table, not a Python step per character.

Flag terms: case-insensitive (both sides ``casefold``-ed), non-overlapping, and whole-word at
each end of a term that is a word character there (``\\w``: letters, digits, underscore), so
``he`` does not count inside ``the`` while ``c++`` still counts in ``c++17``. They are counts
of strings, not a judgement of what the text says.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

import numpy as np

TABLE_END = 0x32400  # past the last assigned letter (CJK extension H); beyond: "other"
NON_LETTER = ("whitespace", "digits and numbers", "punctuation", "symbols", "control and other")
TWO_WORD_SCRIPTS = {"OLD", "NEW", "TAI", "LINEAR", "INSCRIPTIONAL", "IMPERIAL", "CAUCASIAN"}
WHITESPACE_CONTROLS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85"


def letter_script(ch: str) -> str:
    """The script of a letter or mark, by its Unicode name."""
    words = unicodedata.name(ch, "").split()
    if not words:
        return "other letters"
    if words[0] in ("HALFWIDTH", "FULLWIDTH") and len(words) > 1:
        words = words[1:]
    head = words[0]
    if head in ("CJK", "IDEOGRAPHIC"):
        return "Han"
    if head in ("COMBINING", "VARIATION"):
        return "combining marks"
    if head == "KATAKANA-HIRAGANA":
        return "Katakana"
    if head in TWO_WORD_SCRIPTS and len(words) > 1:
        return f"{head} {words[1]}".title()
    return head.title()


def char_class(ch: str) -> str:
    """The class a character is counted under (a script, or a non-letter kind)."""
    cat = unicodedata.category(ch)
    if cat[0] in "LM":
        return letter_script(ch)
    if cat[0] == "Z" or ch in WHITESPACE_CONTROLS:
        return "whitespace"
    if cat[0] == "N":
        return "digits and numbers"
    if cat[0] == "P":
        return "punctuation"
    if cat[0] == "S":
        return "symbols"
    return "control and other"


@functools.lru_cache(maxsize=1)
def script_table() -> tuple[np.ndarray, tuple[str, ...]]:
    """(class index per code point [0x110000] uint16, class names). Built once per process."""
    names: dict[str, int] = {n: i for i, n in enumerate(NON_LETTER)}
    table = np.full(0x110000, names["control and other"], np.uint16)
    for cp in range(TABLE_END):
        if 0xD800 <= cp < 0xE000:
            continue  # surrogates: never in decoded text
        cls = char_class(chr(cp))
        table[cp] = names.setdefault(cls, len(names))
    return table, tuple(names)


class ScriptCounter:
    """Characters per class, per source, accumulated over texts."""

    def __init__(self) -> None:
        self.table, self.names = script_table()
        self.counts: dict[int, np.ndarray] = {}

    def add(self, source: int, text: str) -> None:
        # per code point first (a bincount, no gather through the table), then per class
        per_cp = np.bincount(code_points(text), minlength=len(self.table))
        counts = np.bincount(self.table, weights=per_cp, minlength=len(self.names)).astype(np.int64)
        self.counts[source] = self.counts.get(source, 0) + counts

    def by_source(self, sources: tuple[str, ...]) -> dict[str, dict[str, int]]:
        """{source name: {class: characters}}, classes with a count only, largest first."""
        out = {}
        for src in sorted(self.counts):
            c = self.counts[src]
            order = np.argsort(-c, kind="stable")
            name = sources[src] if src < len(sources) else f"source {src}"
            out[name] = {self.names[i]: int(c[i]) for i in order.tolist() if c[i]}
        return out


WORD = re.compile(r"\w+")


def term_pattern(term: str) -> re.Pattern[str]:
    """The pattern a term is counted with, over ``casefold``-ed text (see the module doc)."""
    folded = term.casefold()
    head = r"(?<!\w)" if re.match(r"\w", folded[0]) else ""
    tail = r"(?!\w)" if re.match(r"\w", folded[-1]) else ""
    return re.compile(head + re.escape(folded) + tail)


@functools.lru_cache(maxsize=1)
def word_table() -> np.ndarray:
    """Per code point: is it a word character (``\\w``: ``str.isalnum()`` or ``_``)."""
    return np.array([chr(cp).isalnum() for cp in range(0x110000)]) | (np.arange(0x110000) == ord("_"))


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")


class TermCounter:
    """Occurrences of each flag term, per source, as :func:`term_pattern` defines them,
    by the cheapest equal count: a term of word characters only is a whole run of them, so
    the text's word runs are found once (numpy over its code points) and each such term is
    the runs of its length whose code points equal it; a term with no word character at
    either end needs no boundary, so ``str.count`` (non-overlapping) counts it; only the rest
    (a word character at one end only) is searched with its pattern, a regex pass per term."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = terms
        self.folded = [t.casefold() for t in terms]
        self.patterns = [term_pattern(t) for t in terms]
        self.words = {i: code_points(t) for i, t in enumerate(self.folded) if WORD.fullmatch(t)}
        self.by_length: dict[int, list[int]] = {}
        for i, t in self.words.items():
            self.by_length.setdefault(len(t), []).append(i)
        self.counts: dict[int, list[int]] = {}

    def word_counts(self, folded: str) -> dict[int, int]:
        """{term index: whole-word occurrences} for the word terms: the word runs of each
        term's length, gathered once per length as fixed-width byte strings, compared with
        the term's."""
        cps = code_points(folded)
        w = np.zeros(len(cps) + 2, np.int8)
        w[1:-1] = word_table()[cps]
        edges = np.diff(w)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        out = {}
        for k, group in self.by_length.items():
            cand = starts[lengths == k]
            runs = cps[cand[:, None] + np.arange(k)].view(f"V{4 * k}").ravel()
            for i in group:
                out[i] = int(np.count_nonzero(runs == self.words[i].view(f"V{4 * k}")[0]))
        return out

    def add(self, source: int, text: str) -> None:
        """Count in ``text`` (documents joined by newlines, which end a word)."""
        folded = text.casefold()
        words = self.word_counts(folded) if self.words else {}
        row = self.counts.setdefault(source, [0] * len(self.terms))
        for i, (term, pattern) in enumerate(zip(self.folded, self.patterns)):
            if i in words:
                row[i] += words[i]
            elif pattern.pattern == re.escape(term):
                row[i] += folded.count(term)
            else:
                row[i] += sum(1 for _ in pattern.finditer(folded))

    def by_source(self, sources: tuple[str, ...]) -> dict[str, dict[str, int]]:
        """{source name: {term: count}} for every source seen, every term (zeros included)."""
        return {(sources[s] if s < len(sources) else f"source {s}"): dict(zip(self.terms, c))
                for s, c in sorted(self.counts.items())}


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds, in order, for one document: a token that ends inside a
    multi-byte character adds "" and the one completing it adds the character (streamed
    decoding), so joining them gives the document's decoded text without U+FFFD pieces.
    Special tokens are kept (they show where BOS/EOS sit)."""
    try:
        from tokenizers.decoders import DecodeStream
    except ImportError:  # tokenizers < 0.21: each token on its own
        return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    stream = DecodeStream(skip_special_tokens=False)
    return [stream.step(tokenizer, i) or "" for i in ids]


def render_row(tokenizer: Any, ids: np.ndarray, seg: np.ndarray,
               mask: np.ndarray | None) -> list[dict[str, Any]]:
    """One row as tokens ``{"text", "segment", "target", "special"}`` (real tokens only).
    ``target`` is what training learns at that position: the token follows another of the
    same document and its loss mask is 1 (a document's first token is never predicted)."""
    real = int(np.count_nonzero(seg))
    special = {int(i) for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out: list[dict[str, Any]] = []
    start = 0
    while start < real:
        end = start
        while end < real and seg[end] == seg[start]:
            end += 1
        piece = ids[start:end].tolist()
        for k, (tok, text) in enumerate(zip(piece, token_texts(tokenizer, piece))):
            pos = start + k
            learned = k > 0 and (mask is None or bool(mask[pos]))
            out.append({"text": text, "segment": int(seg[pos]), "target": learned,
                        "special": tok in special})
        start = end
    return out
