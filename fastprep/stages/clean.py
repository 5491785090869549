"""Cleaning: repair what is broken, drop what is unusable, and say why.

Repairs, in order, each optional: CRLF/CR newlines to LF; removal of control characters (C0 except
tab and newline, DEL, C1) and of stray byte-order marks / non-characters; Unicode normalisation
(NFC by default, NFKC on request); stripping of leading and trailing whitespace (of the whole record: a prompt keeps
its trailing and a completion its leading whitespace, which belong to the boundary the model learns). Then filters:
documents whose cleaned size is below ``min_chars`` or above ``max_chars`` are dropped (``empty``,
``too_short``, ``too_long``); chat records with no non-empty assistant turn are dropped
(``no_assistant_turn``), prompt records with an empty completion too (``empty``).

Every step is a C-level ``str`` method (``replace``, ``translate``, ``unicodedata``), with a fast
path that skips normalisation for text ``unicodedata.is_normalized`` accepts.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from ..flags import option

from .records import CHAT, PROMPT, TEXT, Doc, RecordError

# C0 controls except \t (9) and \n (10); \r (13) is handled by the newline repair; DEL; C1 controls;
# U+FEFF (BOM / zero-width no-break space inside text is almost always a concatenation artefact);
# the non-characters U+FFFE / U+FFFF.
_CONTROL = {c: None for c in (*range(0, 9), 11, 12, *range(14, 32), 127, *range(128, 160),
                              0xFEFF, 0xFFFE, 0xFFFF)}
# str.translate with a dict walks non-ASCII text character by character in Python-object
# terms; a compiled class finds the (rare) hit first, so clean text skips it.
CONTROL_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL) + "]")


@dataclass(frozen=True)
class CleanConfig:
    """Text repair and length filters."""

    unicode: Literal["NFC", "NFKC", "none"] = option(
        "NFC", "Unicode normalisation: NFC composes and never changes meaning; NFKC also folds "
        "compatibility forms (full-width letters, ligatures)")
    fix_newlines: bool = option(True, "CRLF and lone CR become LF")
    strip_control: bool = option(True, "keep control characters (other than tab and newline)",
                                 flag="--keep-control", invert=True)
    strip: bool = option(True, "remove leading and trailing whitespace")
    min_chars: int = option(1, "drop documents shorter than this after cleaning")
    max_chars: int = option(0, "drop documents longer than this after cleaning (0 = no limit)")

    def __post_init__(self) -> None:
        if self.unicode not in ("NFC", "NFKC", "none"):
            raise ValueError(f"--unicode must be NFC, NFKC or none, not {self.unicode!r}")
        if self.min_chars < 0:
            raise ValueError("--min-chars must be >= 0")
        if self.max_chars < 0:
            raise ValueError("--max-chars must be >= 0 (0 = no limit)")
        if self.max_chars and self.max_chars < self.min_chars:
            raise ValueError("--max-chars must be >= --min-chars")


_ASCII = re.compile(r"[\x00-\x7f]")


def normalize(form: str, s: str, chunk: int = 1 << 16) -> str:
    """``unicodedata.normalize(form, s)``, chunk by chunk where ``s`` is long, normalising only
    the chunks that need it (``normalize`` runs at a few tens of MB/s; a long document usually
    has a few spots that are not in the form). Chunks end before an ASCII character, where no
    normal form composes or reorders across: ASCII characters are starters that are never the
    second element of a composition."""
    if len(s) <= 4 * chunk:
        return unicodedata.normalize(form, s)
    parts = []
    start = 0
    while start < len(s):
        m = _ASCII.search(s, start + chunk) if start + chunk < len(s) else None
        end = m.start() if m is not None else len(s)
        piece = s[start:end]
        parts.append(piece if unicodedata.is_normalized(form, piece) else unicodedata.normalize(form, piece))
        start = end
    return "".join(parts)


# The ASCII control bytes, for the fast check of ASCII text (bytes.translate runs in C at
# several times the speed of a regex search; benchmarks/README.md, "Component figures").
_ASCII_CONTROL = bytes(c for c in _CONTROL if c < 128)

REPAIRS = ("newlines", "control", "unicode", "strip")
"""The kinds of repair :class:`Cleaner` counts (``counts.repaired`` in the manifest)."""


class Cleaner:
    """Callable: cleans a :class:`Doc` in place; returns the kinds of repair that changed it
    (a subset of :data:`REPAIRS`, empty when nothing changed).

    Raises :class:`RecordError` for a document to drop.
    """

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self._form = None if cfg.unicode == "none" else cfg.unicode

    def text(self, s: str, strip: bool | None = None, repairs: set[str] | None = None) -> str:
        """``s`` repaired; each repair that changed it is added to ``repairs``."""
        cfg = self.cfg
        found = repairs if repairs is not None else set()
        if cfg.fix_newlines and "\r" in s:
            s = s.replace("\r\n", "\n").replace("\r", "\n")
            found.add("newlines")
        if cfg.strip_control and self.has_control(s):
            s = s.translate(_CONTROL)
            found.add("control")
        # ASCII text is in every normal form: only the rest needs the (fast, C) check
        if self._form is not None and not s.isascii() and not unicodedata.is_normalized(self._form, s):
            s = normalize(self._form, s)
            found.add("unicode")
        if (cfg.strip if strip is None else strip) and s and (s[0].isspace() or s[-1].isspace()):
            s = s.strip()
            found.add("strip")
        return s

    @staticmethod
    def has_control(s: str) -> bool:
        if s.isascii():  # O(1) in CPython: the string's own flag
            b = s.encode("ascii")
            return len(b.translate(None, _ASCII_CONTROL)) != len(b)
        return CONTROL_RE.search(s) is not None

    def _check_size(self, n: int) -> None:
        if n == 0:
            raise RecordError("empty", "document is empty after cleaning")
        if n < self.cfg.min_chars:
            raise RecordError("too_short", f"{n} characters < --min-chars {self.cfg.min_chars}")
        if self.cfg.max_chars and n > self.cfg.max_chars:
            raise RecordError("too_long", f"{n} characters > --max-chars {self.cfg.max_chars}")

    def __call__(self, doc: Doc) -> set[str]:
        found: set[str] = set()
        if doc.kind == TEXT:
            doc.text = self.text(doc.text, repairs=found)
            self._check_size(len(doc.text))
            return found
        if doc.kind == PROMPT:
            # Only the outer ends are stripped: the whitespace where prompt meets completion
            # (" answer" after "A:") is part of what the model must learn to produce.
            p = self.text(doc.prompt, strip=False, repairs=found)
            c = self.text(doc.completion, strip=False, repairs=found)
            if self.cfg.strip:
                p2, c2 = p.lstrip(), c.rstrip()
                if len(p2) != len(p) or len(c2) != len(c):
                    found.add("strip")
                p, c = p2, c2
            doc.prompt, doc.completion = p, c
            if not c.strip():
                raise RecordError("empty", "completion is empty after cleaning: nothing to learn")
            self._check_size(len(p) + len(c))
            return found
        assert doc.kind == CHAT
        doc.messages = [(r, self.text(c, repairs=found)) for r, c in doc.messages]
        if not any(r == "assistant" and c for r, c in doc.messages):
            raise RecordError("no_assistant_turn", "chat has no non-empty assistant turn: nothing to learn")
        self._check_size(sum(len(c) for _, c in doc.messages))
        return found
