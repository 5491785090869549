"""Tokenizer backends: one small interface over Hugging Face ``tokenizers`` and exact fast engines.

A backend encodes a batch of texts to **one flat id array plus offsets into it** (no Python
object per document or per token) from the same ``tokenizer.json``. ``tokenizers`` (``hf``) is
the reference: its ids define what a dataset holds. ``fastokens`` encodes the same files with
identical ids several times faster per core (``benchmarks/README.md``, "Tokenizer backends"), so
fastprep runs it whenever it is proven exact for the tokenizer at hand:

- a static support check of the tokenizer's parts (:func:`support`): model, normalizer,
  pre-tokenizer, decoder and added-token flags it is known to reproduce; anything else stays on
  the reference;
- a parity gate at start (:func:`parity_gate`: a built-in adversarial probe set plus the run's
  first documents, ids compared with ``tokenizers``);
- deterministic spot checks during the run (the task function re-encodes a sample of
  documents with the reference, :func:`spot_sample`).

Every backend call encodes with special-token strings kept as text (``tokenizers``'
``encode_special_tokens``, fastokens' ``split_special_tokens``); non-special added tokens
match as usual. The special tokens a chat template's markup produces are placed by the encoder
(:mod:`fastprep.stages.tokenize`), never found in data. With ``special=True`` (only for
``--special-tokens-in-text``) special strings in the text become their ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

BACKENDS = ("hf", "fastokens")
FAST = ("fastokens",)


class BackendError(ValueError):
    """A backend that cannot run this tokenizer, or that disagrees with the reference."""


class Backend(Protocol):
    name: str
    version: str

    def encode(self, texts: Sequence[str], special: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint32 [tokens], offsets int64 [len(texts) + 1]): text i's ids are
        ``ids[offsets[i]:offsets[i + 1]]``."""
        ...


def _version(dist: str) -> str:
    from importlib import metadata  # a costly import: only when a version is asked for

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _flat(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    import itertools

    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.uint32, count=int(offsets[-1]))
    return ids, offsets


class HFBackend:
    """The reference: ``tokenizers``' ``encode_batch_fast`` (no offsets)."""

    name = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.version = _version("tokenizers")

    def encode(self, texts: Sequence[str], special: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.uint32), np.zeros(1, np.int64)
        self.tok.encode_special_tokens = not special
        try:
            encs = self.tok.encode_batch_fast(list(texts), add_special_tokens=False)
        finally:
            self.tok.encode_special_tokens = False
        return _flat([e.ids for e in encs])

    def encode_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
        """Ids and character offsets ``[tokens, 2]`` per text (special strings stay text): the
        slow path for tokenizers whose token byte lengths do not map onto the text."""
        self.tok.encode_special_tokens = True
        try:
            encs = self.tok.encode_batch(list(texts), add_special_tokens=False)
        finally:
            self.tok.encode_special_tokens = False
        return [(e.ids, np.array(e.offsets, dtype=np.int64).reshape(-1, 2)) for e in encs]


class FastokensBackend:
    """``fastokens``' ``encode_batch_flat``: two buffers per batch, no per-token objects."""

    name = "fastokens"

    def __init__(self, json_text: str) -> None:
        try:
            import fastokens
        except ImportError as e:
            raise BackendError(f"fastokens is not installed ({e}): pip install fastokens") from None
        try:
            self.tok = fastokens.Tokenizer.from_json_str(json_text)
        except Exception as e:  # noqa: BLE001 - its loader raises plain exceptions on refusal
            raise BackendError(f"fastokens cannot load this tokenizer.json ({e})") from None
        for off in ("no_padding", "no_truncation"):
            getattr(self.tok, off)()
        self.version = _version("fastokens")

    def encode(self, texts: Sequence[str], special: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, np.uint32), np.zeros(1, np.int64)
        ids, offsets = self.tok.encode_batch_flat(list(texts), add_special_tokens=False,
                                                  split_special_tokens=not special)
        return (np.frombuffer(ids, dtype="<u4"),
                np.frombuffer(offsets, dtype="<u8").astype(np.int64))


# ---- the static support check ---------------------------------------------------------------

# Parts of a tokenizer.json that fastokens reproduces exactly (checked against tokenizers on the
# probe set and real corpora; benchmarks/README.md): anything else stays on the reference.
_FAST_MODELS = {"BPE"}
_FAST_NORMALIZERS = {None, "NFC", "NFKC", "NFD", "NFKD", "Sequence", "Prepend", "Replace",
                     "Lowercase", "Strip"}
_FAST_PRE_TOKENIZERS = {None, "ByteLevel", "Split", "Sequence", "Digits", "Metaspace",
                        "Punctuation", "Whitespace", "WhitespaceSplit"}


def pipeline_types(node: Any, key: str) -> list[str | None]:
    """The ``type`` of a pipeline element and of every element of a ``Sequence`` in it."""
    if node is None:
        return [None]
    out = [node.get("type")]
    for child in node.get(key, []) or []:
        out += pipeline_types(child, key)
    return out


def support(cfg: dict[str, Any] | str, name: str) -> str | None:
    """None if backend ``name`` is expected to reproduce this tokenizer (``tokenizer.json``,
    parsed or as text) exactly, else why not (one line for the run's notice)."""
    if name == "hf":
        return None
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    model = cfg.get("model") or {}
    if model.get("type") not in _FAST_MODELS:
        return f"model {model.get('type')} (only BPE is supported)"
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout (not deterministic)"
    for t in pipeline_types(cfg.get("normalizer"), "normalizers"):
        if t not in _FAST_NORMALIZERS:
            return f"normalizer {t}"
    for t in pipeline_types(cfg.get("pre_tokenizer"), "pretokenizers"):
        if t not in _FAST_PRE_TOKENIZERS:
            return f"pre-tokenizer {t}"
    for pattern in _split_patterns(cfg.get("pre_tokenizer")):
        # fastokens' regex engine (PCRE2) and tokenizers' (Rust regex) disagree on what a word
        # character is in some scripts (Devanagari vowel signs): \w, \W, \b stay on the reference
        if re.search(r"\\[wWbB]", pattern):
            return f"Split regex with \\w or \\b ({pattern[:40]!r})"
    return None


def _split_patterns(node: Any) -> list[str]:
    if node is None:
        return []
    out = []
    if node.get("type") == "Split":
        pat = node.get("pattern") or {}
        out.append(pat.get("Regex") or "")
    for child in node.get("pretokenizers", []) or []:
        out += _split_patterns(child)
    return out


# ---- the parity gate and spot checks --------------------------------------------------------

def probe_texts() -> list[str]:
    """The built-in adversarial probe set: every kind of text a byte-level BPE pipeline can get
    wrong (whitespace runs, CRLF, control characters, digits, contractions, scripts written
    without spaces, combining marks, emoji and ZWJ sequences, invalid-looking sequences, very
    long words, special-token strings inside text)."""
    base = [
        "", " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n ", "a", " a", "a ", "hello world",
        "Hello, World!", "don't can't I'm we've you'll he'd it's", "DON'T CAN'T", "'s 't 're",
        "1234567890", "3.14159 2.5e-10 1,000,000", "ab12cd34", "$$$ %%% ^^^", "a\u00a0b",
        "naïve café résumé", "nai\u0308ve cafe\u0301", "Ǆ ǅ ǆ ﬁ ﬂ", "ＡＢＣ１２３", "Straße ΣΊΣΥΦΟΣ",
        "日本語のテキスト", "中文文本没有空格", "한국어 텍스트입니다", "ภาษาไทยไม่มีช่องว่าง",
        "مرحبا بالعالم", "שלום עולם", "Привет, мир!", "Ελληνικά", "हिन्दी पाठ",
        "😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈", "\u200b\u200c\u200d\u2060\ufeff", "\ufffd\ufffd", "\x00\x01\x1f\x7f",
        "e\u0301\u0301\u0301", "def f(x):\n    return x ** 2\n", "if (a && b) { return; }",
        "<html><body class=\"x\">Hi</body></html>", "SELECT * FROM t WHERE id = 1;",
        "https://example.com/path?q=1&r=2#frag", "user@example.com", "#hashtag @mention",
        "<|endoftext|>", "a<|endoftext|>b", "<s> </s> <unk> <pad>", "<|im_start|>user\nhi<|im_end|>",
        "<|begin_of_text|><|eot_id|>", "[CLS] [SEP] [MASK]", "<think>x</think>", "    indented",
        "trailing   ", "\n\n\nthree newlines", "mixed \t\r\n whitespace \u3000 ideographic",
        "a" * 1000, "ab" * 700, " " * 300, "\n" * 200, "9" * 500, "😀" * 100, "-" * 400,
        "ÿ" * 200, "a\nb\nc\n", "A.B.C. e.g. i.e.", "C++ C# F# .NET", "x=1;y=2;z=x+y",
    ]
    out = list(base)
    for a in base[:40]:
        for b in ("\n", " ", "", "<|endoftext|>"):
            out.append(a + b + base[(len(a) * 7) % len(base)])
    return out


@dataclass
class ParityReport:
    """What a parity gate or a run's spot checks compared."""

    texts: int = 0
    tokens: int = 0
    mismatches: int = 0
    first: str | None = None  # where the first mismatch was (for the error or notice)

    def to_json(self) -> dict[str, Any]:
        return {"texts": self.texts, "tokens": self.tokens, "mismatches": self.mismatches}


def compare(backend: Backend, reference: Backend, texts: Sequence[str], special: bool = False,
            names: Sequence[str] | None = None, report: ParityReport | None = None) -> ParityReport:
    """Encode ``texts`` with both and count the texts whose ids differ."""
    report = report or ParityReport()
    a_ids, a_off = backend.encode(texts, special)
    b_ids, b_off = reference.encode(texts, special)
    report.texts += len(texts)
    report.tokens += int(b_off[-1])
    if a_off.shape == b_off.shape and np.array_equal(a_off, b_off) and np.array_equal(a_ids, b_ids):
        return report
    for i in range(len(texts)):
        if not np.array_equal(a_ids[a_off[i]:a_off[i + 1]], b_ids[b_off[i]:b_off[i + 1]]):
            report.mismatches += 1
            if report.first is None:
                report.first = names[i] if names is not None else repr(texts[i][:60])
    return report


def spot_sample(text: str, rate: float) -> bool:
    """Whether a document is spot-checked: a hash of its first characters and its length, so
    the sample is the same whatever the workers, task sizes and batches."""
    if rate <= 0:
        return False
    import zlib

    h = zlib.crc32(text[:256].encode("utf-8", "surrogatepass"), len(text) & 0xFFFFFFFF)
    return h < rate * (1 << 32)
