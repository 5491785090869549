"""Encoding: a batch of documents to flat token ids, lengths and exact loss masks.

Every string of a batch goes through one backend call (:mod:`fastprep.stages.backends`), which
returns one flat id array; documents are then assembled with vectorised index arithmetic (BOS,
the document's ranges, EOS), never with per-token Python.

- text: BOS and EOS by the resolved policy (:mod:`fastprep.stages.tokenize`), never doubled: a
  document whose ids already start with BOS or end with EOS gets no second one. All its tokens
  are targets.
- prompt/completion: prompt and completion are encoded separately, as at inference time the
  prompt is tokenized alone, so the loss mask is exact by construction: 0 on BOS and prompt, 1 on
  the completion and EOS.
- chat: the conversation is rendered with its template (:mod:`fastprep.stages.chat`); only the
  template's own markup may produce special tokens. The special-token strings of the rendered
  text are found (leftmost-longest, with the tokens' ``lstrip``/``rstrip``/``single_word``
  rules, as ``tokenizers`` matches them); those inside message content stay text. The text
  between markup specials is encoded with special strings kept as text and the markup ids are
  put between the pieces: for a conversation whose content holds no special string this is
  exactly what ``tokenizers`` gives for the whole rendered text, because it too encodes the
  text between special tokens piece by piece. A token is a target iff it holds a character of
  an assistant span; for byte-level BPE a token's place in the text follows from the byte
  lengths of the tokens before it, so chat needs no offset-producing encode. Where byte lengths
  do not add up to the text (a normalizer that changed it, a prefix space, byte fallback), the
  offsets come from ``tokenizers`` instead: slower, same result.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import Backend, HFBackend, pipeline_types
from .chat import TemplateError
from .records import PROMPT, TEXT, Doc
from .tokenize import TokenizerBundle

# Rust's char::is_whitespace (Unicode White_Space), which tokenizers uses for lstrip/rstrip;
# Python's str.isspace also accepts U+001C..U+001F.
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                        "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


class BackendDisagreement(ValueError):
    """The backend's ids for a document differ from tokenizers' (found where both are at hand:
    the offset path of chat); ``index`` is the document's place in its batch."""

    def __init__(self, index: int, backend: str) -> None:
        super().__init__(index, backend)
        self.index, self.backend = index, backend


@dataclass
class Encoded:
    """One batch of documents as flat arrays (documents back to back, in batch order)."""

    ids: np.ndarray            # uint32 [tokens]
    lengths: np.ndarray        # int64 [docs]
    loss_mask: np.ndarray | None  # uint8 [tokens]; None when every document is plain text
    keep: np.ndarray           # bool [batch docs]: False where the document failed (see errors)
    errors: list[tuple[int, str, str]]  # (index in batch, reason, detail)


def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _byte_lengths(cfg: dict[str, Any], vocab_size: int) -> np.ndarray | None:
    """Byte length of each token of a byte-level BPE vocabulary (None for other models)."""
    model = cfg.get("model") or {}
    if (model.get("type") != "BPE" or model.get("byte_fallback")
            or "ByteLevel" not in pipeline_types(cfg.get("pre_tokenizer"), "pretokenizers")):
        return None
    # every character of the byte-level alphabet stands for one byte; anything else (added
    # tokens are raw text) counts its UTF-8 bytes
    drop = {ord(ch): None for ch in byte_alphabet()}
    out = np.zeros(vocab_size, dtype=np.int64)
    for token, i in (model.get("vocab") or {}).items():
        if i < vocab_size:
            rest = token.translate(drop)
            out[i] = len(token) - len(rest) + len(rest.encode("utf-8", "surrogatepass"))
    for t in cfg.get("added_tokens") or []:
        if int(t["id"]) < vocab_size:
            out[int(t["id"])] = len(t["content"].encode("utf-8", "surrogatepass"))
    return out


class SpecialTokens:
    """The tokenizer's special added tokens as ``tokenizers`` matches them in raw text."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        added = [t for t in cfg.get("added_tokens") or [] if t.get("special")]
        self.ids = {t["content"]: int(t["id"]) for t in added}
        self.flags = {t["content"]: (bool(t.get("lstrip")), bool(t.get("rstrip")),
                                     bool(t.get("single_word"))) for t in added}
        contents = sorted(self.ids, key=len, reverse=True)  # longest first: leftmost-longest
        self.pattern = re.compile("|".join(map(re.escape, contents))) if contents else None

    def occurs(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None

    def find(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, id) of every special token in ``text``, the whitespace its
        ``lstrip``/``rstrip`` absorb included."""
        if self.pattern is None:
            return []
        out: list[tuple[int, int, int]] = []
        last = 0
        for m in self.pattern.finditer(text):
            s, e = m.span()
            lstrip, rstrip, single = self.flags[m.group()]
            if single and ((s > 0 and _word(text[s - 1])) or (e < len(text) and _word(text[e]))):
                continue
            if lstrip:
                while s > last and text[s - 1] in _WHITESPACE:
                    s -= 1
            if rstrip:
                while e < len(text) and text[e] in _WHITESPACE:
                    e += 1
            out.append((s, e, self.ids[m.group()]))
            last = e
        return out


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _neutral(text: str, specials: SpecialTokens) -> str:
    """``text`` with every special-token string replaced by private-use characters of the same
    length: plain text that matches no token rule."""
    assert specials.pattern is not None
    return specials.pattern.sub(lambda m: "\ue000" * len(m.group()), text)


SPLIT_CHARS = 1 << 18   # tokenizers (hf): longer texts are encoded in pieces of about this size
SPLIT_WINDOW = 1 << 12  # characters on each side of a cut that verify it
SPLIT_GROUP = 32        # pieces encoded per call: bounds tokenizers' per-token objects in memory
# one newline between a visible character and a printable ASCII one (after two newlines the
# regexes keep "\n\n" whole at the end of a piece but split it in the whole text)
CUT_PLACE = re.compile(r"(?<=\S)\n(?=[!-~])")


class Splitter:
    """Cuts for encoding a long text in pieces with exactly the ids of the whole.

    ``tokenizers`` encodes one text on one thread and keeps Python-visible per-token objects
    for all of it (gigabytes for a 50 MiB document); fast backends need none of this. A cut is
    made only where the pre-tokenizer cannot merge across: just after a single newline and
    before a printable ASCII character (a pre-token boundary for the byte-level regexes of
    GPT-2, Llama-3 and Qwen, and a place no NFC/NFKC composition crosses), and only after the
    text around it encodes the same whole and in two parts (``SPLIT_WINDOW`` characters each
    side).
    Other pre-tokenizers (Metaspace and its prefix rules) and normalizers are never cut.
    """

    def __init__(self, cfg: dict[str, Any], reference: HFBackend) -> None:
        pre = pipeline_types(cfg.get("pre_tokenizer"), "pretokenizers")
        norms = {t for t in pipeline_types(cfg.get("normalizer"), "normalizers") if t not in (None, "Sequence")}
        self.reference = reference
        self.ok = ((cfg.get("model") or {}).get("type") == "BPE" and "ByteLevel" in pre
                   and "Metaspace" not in pre and norms <= {"NFC", "NFKC"})

    def _safe(self, text: str, p: int, special: bool) -> bool:
        w = text[max(0, p - SPLIT_WINDOW):p + SPLIT_WINDOW]
        k = p - max(0, p - SPLIT_WINDOW)
        ids, off = self.reference.encode([w, w[:k], w[k:]], special)
        return np.array_equal(ids[off[0]:off[1]], ids[off[1]:off[3]])

    def pieces(self, text: str, special: bool) -> list[str]:
        """``text`` cut at verified places about every ``SPLIT_CHARS`` characters."""
        if not self.ok or len(text) <= SPLIT_CHARS:
            return [text]
        out, start = [], 0
        while len(text) - start > SPLIT_CHARS:
            cut = None
            for m in itertools.islice(CUT_PLACE.finditer(text, start + SPLIT_CHARS // 2), 32):
                if self._safe(text, m.end(), special):
                    cut = m.end()
                    break
            if cut is None:  # no safe place near here: leave the rest whole
                break
            out.append(text[start:cut])
            start = cut
        out.append(text[start:])
        return out


class Encoder:
    """Callable: ``list[Doc] -> Encoded`` with the bundle's tokenizer and a backend."""

    def __init__(self, bundle: TokenizerBundle, backend: Backend | None = None) -> None:
        self.b = bundle
        self.reference = HFBackend(bundle.tokenizer)
        self.backend: Backend = backend or self.reference
        cfg = bundle.config
        self.specials = SpecialTokens(cfg)
        self._token_bytes: np.ndarray | None | bool = False  # computed at the first chat
        # Byte lengths place tokens in the text only where the normalizer left it unchanged:
        # none, or Unicode forms the text already has (checked per chat).
        norms = [t for t in pipeline_types(cfg.get("normalizer"), "normalizers") if t not in (None, "Sequence")]
        self.unicode_forms = norms if set(norms) <= {"NFC", "NFD", "NFKC", "NFKD"} else None
        self.chat_paths: Counter[str] = Counter()  # chats placed by byte lengths / by offsets
        self.splitter = Splitter(cfg, self.reference)

    @property
    def token_bytes(self) -> np.ndarray | None:
        """UTF-8 byte length of every token id for byte-level BPE (None otherwise): what lets
        chat find its tokens in the text without an offset-producing encode. Built at the first
        chat (a text-only run never pays for it)."""
        if self._token_bytes is False:
            self._token_bytes = _byte_lengths(self.b.config, self.b.vocab_size)
        return self._token_bytes  # type: ignore[return-value]

    @token_bytes.setter
    def token_bytes(self, value: np.ndarray | None) -> None:
        self._token_bytes = value

    def __call__(self, docs: list[Doc]) -> Encoded:
        keep = np.ones(len(docs), dtype=np.bool_)
        errors: list[tuple[int, str, str]] = []
        texts: list[str] = []     # text, prompt and completion strings, in batch order
        for d in docs:
            if d.kind == TEXT:
                texts.append(d.text)
            elif d.kind == PROMPT:
                texts += (d.prompt, d.completion)
        ids, off = self._encode(texts, special=self.b.special_in_text)
        chats = [(i, d) for i, d in enumerate(docs) if d.kind != TEXT and d.kind != PROMPT]
        chat_ids, chat_mask, chat_off = self._chats(chats, keep, errors)
        return self._assemble(docs, keep, errors, ids, off, chat_ids, chat_mask, chat_off)

    def _encode(self, texts: list[str], special: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The backend's flat ids; on tokenizers, long texts go in verified pieces, a bounded
        number per call (:class:`Splitter`)."""
        if self.backend.name != "hf" or all(len(t) <= SPLIT_CHARS for t in texts):
            return self.backend.encode(texts, special)
        pieces: list[str] = []
        counts = np.zeros(len(texts), np.int64)
        for i, t in enumerate(texts):
            cut = self.splitter.pieces(t, special)
            pieces += cut
            counts[i] = len(cut)
        parts = [self.backend.encode(pieces[k:k + SPLIT_GROUP], special)
                 for k in range(0, len(pieces), SPLIT_GROUP)]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.uint32)
        piece_off = np.concatenate([[0]] + [p[1][1:] + base for p, base in zip(
            parts, np.cumsum([0] + [len(p[0]) for p in parts[:-1]]))]).astype(np.int64)
        ends = np.cumsum(counts)
        return ids, piece_off[np.concatenate([[0], ends])]

    # ---- chat ------------------------------------------------------------------------------

    def _render(self, d: Doc) -> tuple[str, list[tuple[int, int]], list[tuple[int, int, int]]]:
        """The rendered conversation, its assistant spans, and the special tokens of its markup
        (those inside message content stay text)."""
        text, spans = self.b.renderer.render_with_spans(d.messages)
        found = self.specials.find(text)
        if not found or not any(self.specials.occurs(c) for _, c in d.messages):
            return text, spans, found
        neutral = [(r, _neutral(c, self.specials)) for r, c in d.messages]
        other = self.b.renderer.render(neutral)
        if len(other) != len(text):
            raise TemplateError("a message holds a special-token string and the chat template "
                                "rewrites that message, so markup and content cannot be told "
                                "apart")
        # a special token of the content is where the neutral rendering holds placeholders
        markup = [f for f in found if other[f[0]:f[1]] == text[f[0]:f[1]]]
        return text, spans, markup

    def _chats(self, chats: list[tuple[int, Doc]], keep: np.ndarray,
               errors: list[tuple[int, str, str]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Every kept chat's ids and loss mask, back to back; offsets per chat in ``chats``
        order (a failed chat has an empty range)."""
        rendered = []
        pieces: list[str] = []
        for i, d in chats:
            try:
                text, spans, markup = self._render(d)
            except TemplateError as e:
                keep[i] = False
                errors.append((i, "template_error", str(e)))
                rendered.append(None)
                continue
            bounds = [0] + [x for s, e, _ in markup for x in (s, e)] + [len(text)]
            cut = [text[bounds[k]:bounds[k + 1]] for k in range(0, len(bounds), 2)]
            rendered.append((i, text, spans, markup, len(pieces)))
            pieces += cut
        ids, off = self._encode(pieces)
        out_ids, out_mask, out_off = [], [], [0]
        for r in rendered:
            if r is not None:
                t_ids, t_mask = self._chat_tokens(*r[1:], ids, off, pieces)
                if t_ids is None:
                    raise BackendDisagreement(r[0], self.backend.name)
                out_ids.append(t_ids)
                out_mask.append(t_mask)
            out_off.append(out_off[-1] + (len(out_ids[-1]) if r is not None else 0))
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
        return cat(out_ids, np.uint32), cat(out_mask, np.uint8), out_off

    def _chat_tokens(self, text: str, spans: list[tuple[int, int]],
                     markup: list[tuple[int, int, int]], first: int, ids: np.ndarray,
                     off: np.ndarray, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """One chat's ids (pieces and markup specials interleaved) and its loss mask."""
        n = len(markup) + 1
        parts: list[np.ndarray] = []
        for k in range(n):
            parts.append(ids[off[first + k]:off[first + k + 1]])
            if k < len(markup):
                parts.append(np.array([markup[k][2]], dtype=np.uint32))
        chat_ids = np.concatenate(parts)
        m = np.zeros(len(chat_ids), dtype=np.uint8)
        if len(chat_ids):
            extents = self._token_extents(text, markup, parts, pieces[first:first + n])
            if extents is None:
                return None, m
            starts, ends = extents
            for s, e in self._byte_spans(text, spans):
                # A token is a target iff it holds a byte of the span: a byte-level BPE token
                # such as " beta" straddling the header's last space is what the model generates.
                m[(ends > s) & (starts < e)] = 1
        return chat_ids, m

    def _token_extents(self, text: str, markup: list[tuple[int, int, int]],
                       parts: list[np.ndarray], pieces: list[str]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
        """Byte range ``[start, end)`` in ``text`` of every token (None: the backend's ids
        differ from the reference's offsets path, which sees both)."""
        total = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if self.token_bytes is not None and self.unicode_forms is not None and all(
                unicodedata.is_normalized(form, text) for form in self.unicode_forms):
            lens = self.token_bytes[np.concatenate(parts).astype(np.int64)]
            pos = 0
            for k, p in enumerate(parts):
                pos += len(p)
                if k % 2 == 1:  # a markup special, with the whitespace lstrip/rstrip absorbed
                    s, e, _ = markup[k // 2]
                    lens[pos - 1] = len(text[s:e].encode("utf-8", "surrogatepass"))
            if int(lens.sum()) == total:
                self.chat_paths["bytes"] += 1
                ends = np.cumsum(lens)
                return ends - lens, ends
        self.chat_paths["offsets"] += 1
        return self._extents_from_offsets(text, markup, parts)

    def _extents_from_offsets(self, text: str, markup: list[tuple[int, int, int]],
                              got: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """The slow path: ``tokenizers``' character offsets of each piece, in bytes of ``text``."""
        char_bytes = _char_byte_offsets(text)
        bounds = [0] + [x for s, e, _ in markup for x in (s, e)] + [len(text)]
        pieces = [text[bounds[k]:bounds[k + 1]] for k in range(0, len(bounds), 2)]
        parts: list[np.ndarray] = []
        base = 0
        for k, (ids, offsets) in enumerate(self.reference.encode_offsets(pieces)):
            if ids != got[2 * k].tolist():
                return None
            parts.append(char_bytes[base + offsets] if len(ids) else np.zeros((0, 2), np.int64))
            if k < len(markup):
                s, e, _ = markup[k]
                parts.append(np.array([[char_bytes[s], char_bytes[e]]], dtype=np.int64))
                base = e
        ext = np.concatenate(parts)
        return ext[:, 0], ext[:, 1]

    @staticmethod
    def _byte_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if text.isascii():  # one byte per character
            return spans
        char_bytes = _char_byte_offsets(text)
        return [(int(char_bytes[s]), int(char_bytes[e])) for s, e in spans]

    # ---- assembly --------------------------------------------------------------------------

    def _assemble(self, docs: list[Doc], keep: np.ndarray, errors: list[tuple[int, str, str]],
                  ids: np.ndarray, off: np.ndarray, chat_ids: np.ndarray, chat_mask: np.ndarray,
                  chat_off: list[int]) -> Encoded:
        """BOS, each document's ranges, EOS: one gather for the whole batch."""
        b = self.b
        n_fast = len(ids)
        # one buffer holding every id a document can take: backend ids, chat ids, BOS, EOS
        bos_pos, eos_pos = n_fast + len(chat_ids), n_fast + len(chat_ids) + 1
        buf = np.concatenate([ids.astype(np.uint32, copy=False), chat_ids,
                              np.array([b.bos_id or 0, b.eos_id or 0], dtype=np.uint32)])
        mbuf = np.concatenate([np.zeros(n_fast, np.uint8), chat_mask, np.zeros(2, np.uint8)])
        slots = _Slots(len(docs))
        f = c = 0
        for i, d in enumerate(docs):
            if d.kind == TEXT:
                slots.set(i, 1, off[f], off[f + 1] - off[f], 1)
                f += 1
            elif d.kind == PROMPT:
                slots.set(i, 1, off[f], off[f + 1] - off[f], 0)
                slots.set(i, 2, off[f + 1], off[f + 2] - off[f + 1], 1)
                f += 2
            else:
                if keep[i]:
                    slots.set(i, 1, n_fast + chat_off[c], chat_off[c + 1] - chat_off[c], 2)
                c += 1
        return slots.gather(docs, keep, errors, buf, mbuf, bos_pos, eos_pos, b)


def _char_byte_offsets(text: str) -> np.ndarray:
    """Byte offset of every character of ``text`` in its UTF-8 form, plus the total at the end."""
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    starts = np.flatnonzero((raw & 0xC0) != 0x80)
    return np.append(starts, len(raw)).astype(np.int64)


class _Slots:
    """Per document four ranges into the batch buffer: BOS, main, second (completion), EOS,
    each with a mask mode (0: not a target, 1: target, 2: the buffer's own mask)."""

    def __init__(self, n: int) -> None:
        self.start = np.zeros((n, 4), np.int64)
        self.len = np.zeros((n, 4), np.int64)
        self.mode = np.zeros((n, 4), np.int64)

    def set(self, i: int, slot: int, start: int, length: int, mode: int) -> None:
        self.start[i, slot], self.len[i, slot], self.mode[i, slot] = start, length, mode

    def gather(self, docs: list[Doc], keep: np.ndarray, errors: list[tuple[int, str, str]],
               buf: np.ndarray, mbuf: np.ndarray, bos_pos: int, eos_pos: int,
               b: TokenizerBundle) -> Encoded:
        kinds = np.fromiter((d.kind for d in docs), dtype=np.int64, count=len(docs))
        is_text, is_prompt = kinds == TEXT, kinds == PROMPT
        first_len = self.len[:, 1]
        first_tok = np.where(first_len > 0, buf[np.minimum(self.start[:, 1], len(buf) - 1)], -1)
        last_slot = np.where(is_prompt, 2, 1)
        rows = np.arange(len(docs))
        last_len = self.len[rows, last_slot]
        last_tok = np.where(last_len > 0, buf[np.maximum(self.start[rows, last_slot] + last_len - 1, 0)], -1)
        if b.add_bos:  # never doubled: a document already starting with BOS gets none
            add = keep & (first_tok != b.bos_id)
            self.start[add, 0], self.len[add, 0] = bos_pos, 1
            self.mode[add, 0] = np.where(is_text[add], 1, 0)  # a text document is all targets
        eos_wanted = np.where(kinds == TEXT, b.add_eos, np.where(is_prompt, b.add_eos, b.eos_after_chat))
        if b.eos_id is not None:
            add = keep & eos_wanted & (last_tok != b.eos_id)
            self.start[add, 3], self.len[add, 3], self.mode[add, 3] = eos_pos, 1, 1
        self.len[~keep] = 0
        lengths = self.len.sum(axis=1)[keep]
        flat_len, flat_start, flat_mode = (a.reshape(-1) for a in (self.len, self.start, self.mode))
        nz = flat_len > 0
        flat_len, flat_start, flat_mode = flat_len[nz], flat_start[nz], flat_mode[nz]
        total = int(flat_len.sum())
        masked = not bool(is_text.all())
        if total > 64 * len(flat_len):
            # long ranges (long documents): slice copies, no per-token index array
            out_ids = np.concatenate([buf[a:a + n] for a, n in zip(flat_start.tolist(), flat_len.tolist())]
                                     or [np.zeros(0, np.uint32)])
            mask = None
            if masked:
                mask = np.concatenate([mbuf[a:a + n] if m == 2 else np.full(n, m, np.uint8)
                                       for a, n, m in zip(flat_start.tolist(), flat_len.tolist(),
                                                          flat_mode.tolist())])
            return Encoded(ids=out_ids, lengths=lengths.astype(np.int64), loss_mask=mask,
                           keep=keep, errors=errors)
        pos = np.zeros(len(flat_len), np.int64)
        np.cumsum(flat_len[:-1], out=pos[1:])
        idx = np.repeat(flat_start - pos, flat_len) + np.arange(total, dtype=np.int64)
        out_ids = buf[idx]
        mask = None
        if masked:
            mode = np.repeat(flat_mode, flat_len)
            mask = np.where(mode == 2, mbuf[idx], mode).astype(np.uint8)
        return Encoded(ids=out_ids, lengths=lengths.astype(np.int64), loss_mask=mask, keep=keep,
                       errors=errors)
