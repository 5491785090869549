"""Bad records: counted by reason and written to a quarantine JSONL, or, with ``--strict``, an error.

Each quarantine line: ``{"source": file, "line": n, "reason": ..., "detail": ..., "excerpt": ...}``
(the excerpt: the first 200 characters of the raw record, bytes decoded with replacement characters). The
file is written under a temporary name and renamed when the run finishes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ..io import AtomicFile

# What a user can do about each reason; --strict errors print it.
FIXES = {
    "malformed_json": "repair the JSON on that line",
    "not_an_object": "each JSON Lines line must be one object such as {\"text\": ...}",
    "invalid_utf8": "re-encode the file as UTF-8, or pass --invalid-utf8 replace to repair such bytes",
    "record_too_large": "raise --max-record-bytes, or split the record",
    "truncated_file": "the compressed file ends early: re-download or re-compress it",
    "corrupt_file": "the file's compressed stream is damaged: re-download or re-create it",
    "unreadable_file": "check the file's format and permissions",
    "unreadable_row_group": "the Parquet row group is damaged: re-write the file",
    "missing_field": "map the field with --text-field/--prompt-field/--completion-field/"
                     "--messages-field, or give a default with --fill FIELD=VALUE",
    "wrong_type": "the field must be a string; give a default with --fill FIELD=VALUE",
    "bad_messages": "messages must be a list of {\"role\", \"content\"} objects with string values",
    "no_assistant_turn": "a chat record needs at least one non-empty assistant turn",
    "template_error": "check the chat template (--chat-template) against this conversation",
    "empty": "the record is empty after cleaning",
    "too_short": "lower --min-chars",
    "too_long": "raise --max-chars (0 = no limit)",
}


def excerpt(value: Any, n: int = 200) -> str:
    """The first ``n`` characters of a bad record for the quarantine: raw bytes decoded with
    replacement characters, strings as they are, parsed values as compact JSON."""
    if isinstance(value, bytes):
        return value[:n].decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value[:n]
    try:
        return orjson.dumps(value, default=str)[:n].decode("utf-8", "replace")
    except TypeError:
        return repr(value)[:n]


class NothingKept(ValueError):
    """A run in which no record became a document: no dataset is written."""


class StrictError(ValueError):
    """Raised under ``--strict`` at the first bad record, naming file, line and fix."""


class Quarantine:
    """The run's quarantine file (``None``: count only), published when the run finishes."""

    def __init__(self, path: Path | None, files: list[str], strict: bool) -> None:
        self.path = path
        self.files = files
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}  # reason -> the first record's detail, for diagnoses
        self._f: AtomicFile | None = None

    # removed by a decision about sound records, not malformed input: --strict does not stop
    DECISIONS = frozenset({"contaminated"})

    def add(self, file: int, line: int, reason: str, detail: str, raw: Any = b"") -> None:
        source = self.files[file] if 0 <= file < len(self.files) else "?"
        if self.strict and reason not in self.DECISIONS:
            raise self.strict_error(file, line, reason, detail)
        self.counts[reason] += 1
        self.first.setdefault(reason, detail)
        if self.path is None:
            return
        if self._f is None:
            self._f = AtomicFile(self.path)
        self._f.write(orjson.dumps({"source": source, "line": line, "reason": reason,
                                    "detail": detail, "excerpt": excerpt(raw)}) + b"\n")

    def strict_error(self, file: int, line: int, reason: str, detail: str) -> StrictError:
        source = self.files[file] if 0 <= file < len(self.files) else "?"
        hint = FIXES.get(reason, "fix the record")
        return StrictError(f"{source}:{line}: {reason}: {detail}. Fix: {hint} "
                           f"(or run without --strict to skip and quarantine bad records)")

    def why_nothing(self, records: int) -> str:
        """The likeliest reason a run kept no document, in one line with its fix."""
        if records == 0:
            return "the inputs hold no records (empty files, or only blank lines)"
        reason, n = self.counts.most_common(1)[0] if self.counts else ("", 0)
        if not reason:
            return f"all {records:,} records were dropped"
        where = f"; see {self.path}" if self.path is not None and self._f is not None else ""
        detail = self.first[reason]
        fix = "" if "--" in detail else f". Fix: {FIXES.get(reason, 'fix the records')}"
        return (f"no record became a document: {n:,} of {records:,} were {reason} (first: "
                f"{detail}){fix}{where}")

    def close(self) -> None:
        """Publish the file (only when something was quarantined)."""
        if self._f is not None:
            self._f.commit()
            self._f = None

    def abort(self) -> None:
        if self._f is not None:
            self._f.discard()
            self._f = None
