"""Tokenization with Hugging Face fast tokenizers, BOS/EOS policy and exact loss masks.

A tokenizer comes from a ``tokenizer.json`` file or a local model folder as ``transformers`` saves
it (``tokenizer.json`` plus ``tokenizer_config.json`` / ``special_tokens_map.json`` for the
BOS/EOS/pad tokens and the chat template). Padding/truncation settings stored in the file are
switched off: fastprep decides lengths itself (packing), and a stored ``max_length`` would
silently cut documents.

Texts are encoded with ``add_special_tokens=False`` and BOS/EOS are added here, once, by policy
(a special token's string inside text, such as ``"<|endoftext|>"``, stays text unless
``special_tokens_in_text``; only chat templates produce special tokens):

- BOS (``auto``): added when the tokenizer has a BOS token distinct from EOS and the model expects
  it (``add_bos_token`` in ``tokenizer_config.json``, or a post-processor that adds it, as
  Llama's does). GPT-2-style tokenizers (BOS == EOS) get only the EOS separator.
- EOS (``auto``): added after text and prompt/completion documents (so the model learns to stop);
  not after chat, whose template already closes every turn.
- Never doubled: a document whose ids already start with BOS (e.g. a chat template that renders
  ``{{ bos_token }}``) or end with EOS gets no second one.

Text and prompt/completion documents go through one ``encode_batch_fast`` call per batch (Rust,
all cores, GIL released, no offsets). Prompt and completion are encoded separately, as at
inference time the prompt is tokenized alone; the loss mask is then exact by construction: 0 on
BOS and prompt, 1 on completion and EOS. Chat documents need character spans, so they use
``encode_batch`` with offsets: a token is a target iff it holds a character of an assistant
span (:mod:`fastprep.chat`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .chat import DEFAULT_CHAT_TEMPLATE, ChatRenderer, TemplateError
from .records import PROMPT, TEXT, Doc


class TokenizerError(ValueError):
    """A tokenizer path that cannot be loaded or a BOS/EOS policy it cannot satisfy."""


@dataclass(frozen=True)
class TokenizeConfig:
    """CLI: --tokenizer, --bos, --eos, --chat-template.

    tokenizer: a ``tokenizer.json`` file or a local model folder holding one.
    bos / eos: ``auto`` (see module docstring), ``always`` or ``never``.
    chat_template: a Jinja file that overrides the tokenizer's template.
    special_tokens_in_text: let text, prompts and completions that contain a special token's
        string (``"<|endoftext|>"``, ``"<s>"``) become that special token. Off by default, as in
        nanoGPT's ``encode_ordinary``: data that merely mentions such a string must not inject
        document boundaries. Chat templates always produce special tokens.
    """

    tokenizer: str
    bos: Literal["auto", "always", "never"] = "auto"
    eos: Literal["auto", "always", "never"] = "auto"
    chat_template: str | None = None
    special_tokens_in_text: bool = False

    def __post_init__(self) -> None:
        for flag, v in (("--bos", self.bos), ("--eos", self.eos)):
            if v not in ("auto", "always", "never"):
                raise ValueError(f"{flag} must be auto, always or never, not {v!r}")


def _token_str(value: Any) -> str | None:
    """Special tokens are saved as strings or as AddedToken dicts ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: unreadable ({e})") from None
    return data if isinstance(data, dict) else {}


def _chat_template_from(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        return template
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = _read_json(folder / "chat_template.json").get("chat_template")
    return tpl if isinstance(tpl, str) and tpl else None


class TokenizerBundle:
    """A loaded tokenizer with its special tokens, chat template and resolved BOS/EOS policy."""

    def __init__(self, cfg: TokenizeConfig) -> None:
        from tokenizers import Tokenizer

        src = Path(cfg.tokenizer)
        if src.is_dir():
            folder, tok_file = src, src / "tokenizer.json"
            if not tok_file.is_file():
                raise TokenizerError(f"{src}: no tokenizer.json in this folder; fastprep needs a fast "
                                     f"tokenizer (save one with transformers' save_pretrained or "
                                     f"tokenizers' Tokenizer.save)")
        elif src.is_file():
            folder, tok_file = src.parent, src
        else:
            raise TokenizerError(f"{src}: no such tokenizer file or model folder (downloads are not "
                                 f"supported: pass a local tokenizer.json or a folder)")
        raw = tok_file.read_bytes()
        try:
            self.tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise TokenizerError(f"{tok_file}: not a valid tokenizer.json ({e})") from None
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.source = str(src)
        self.special_in_text = cfg.special_tokens_in_text
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.json_bytes = raw

        config = _read_json(folder / "tokenizer_config.json") if src.is_dir() else {}
        special = _read_json(folder / "special_tokens_map.json") if src.is_dir() else {}
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(self.tokenizer.get_vocab_size(with_added_tokens=True),
                              max(vocab.values(), default=-1) + 1)

        def token(name: str) -> tuple[str | None, int | None]:
            tok = _token_str(config.get(name)) or _token_str(special.get(name))
            tid = self.tokenizer.token_to_id(tok) if tok else None
            return (tok, tid) if tid is not None else (None, None)

        self.bos_token, self.bos_id = token("bos_token")
        self.eos_token, self.eos_id = token("eos_token")
        pad_token, pad_id = token("pad_token")
        # The pad value never reaches attention or loss (segment_ids mark padding); EOS is the
        # common choice when a tokenizer defines no pad token.
        self.pad_id = pad_id if pad_id is not None else (self.eos_id if self.eos_id is not None else 0)

        if cfg.bos == "always" and self.bos_id is None:
            raise TokenizerError(f"--bos always, but {src} defines no bos_token "
                                 f"(tokenizer_config.json / special_tokens_map.json)")
        if cfg.eos == "always" and self.eos_id is None:
            raise TokenizerError(f"--eos always, but {src} defines no eos_token")
        probe_plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        probe_special = self.tokenizer.encode("a", add_special_tokens=True).ids
        post_adds_bos = (self.bos_id is not None and len(probe_special) > len(probe_plain)
                         and probe_special[0] == self.bos_id)
        wants_bos = bool(config.get("add_bos_token", False)) or post_adds_bos
        self.add_bos = self.bos_id is not None and (
            cfg.bos == "always" or (cfg.bos == "auto" and wants_bos and self.bos_id != self.eos_id))
        self.add_eos = self.eos_id is not None and cfg.eos != "never"
        self.eos_after_chat = self.eos_id is not None and cfg.eos == "always"

        if cfg.chat_template is not None:
            try:
                template = Path(cfg.chat_template).read_text(encoding="utf-8")
            except OSError as e:
                raise TokenizerError(f"--chat-template {cfg.chat_template}: {e.strerror}") from None
            self.chat_template_source = cfg.chat_template
        else:
            template = _chat_template_from(folder, config) if src.is_dir() else None
            self.chat_template_source = "tokenizer" if template else "default (ChatML)"
            template = template or DEFAULT_CHAT_TEMPLATE
        self.chat_template = template
        self._renderer: ChatRenderer | None = None

    @property
    def renderer(self) -> ChatRenderer:
        """Compiled on first use, so a broken template only matters to datasets with chat."""
        if self._renderer is None:
            self._renderer = ChatRenderer(self.chat_template, self.bos_token, self.eos_token)
        return self._renderer

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id,
            "bos_token": self.bos_token, "eos_token": self.eos_token,
            "add_bos": self.add_bos, "add_eos": self.add_eos, "eos_after_chat": self.eos_after_chat,
            "chat_template": self.chat_template_source,
            "chat_template_sha256": hashlib.sha256(self.chat_template.encode()).hexdigest(),
        }


@dataclass
class Encoded:
    """One batch of documents as flat arrays (documents back to back, in batch order)."""

    ids: np.ndarray            # uint32 [tokens]
    lengths: np.ndarray        # int64 [docs]
    loss_mask: np.ndarray | None  # uint8 [tokens]; None when every document is plain text
    keep: np.ndarray           # bool [batch docs]: False where the document failed (see errors)
    errors: list[tuple[int, str, str]]  # (index in batch, reason, detail)


class Encoder:
    """Callable: ``list[Doc] -> Encoded``."""

    def __init__(self, bundle: TokenizerBundle) -> None:
        self.b = bundle

    def __call__(self, docs: list[Doc]) -> Encoded:
        b = self.b
        tok = b.tokenizer
        errors: list[tuple[int, str, str]] = []
        keep = np.ones(len(docs), dtype=np.bool_)
        # One encode_batch_fast call for all text, prompt and completion strings of the batch.
        fast_inputs: list[str] = []
        chat_idx: list[int] = []
        chat_texts: list[str] = []
        chat_spans: list[list[tuple[int, int]]] = []
        for i, d in enumerate(docs):
            if d.kind == TEXT:
                fast_inputs.append(d.text)
            elif d.kind == PROMPT:
                fast_inputs.append(d.prompt)
                fast_inputs.append(d.completion)
            else:
                try:
                    text, spans = b.renderer.render_with_spans(d.messages)
                except TemplateError as e:
                    keep[i] = False
                    errors.append((i, "template_error", str(e)))
                    continue
                chat_idx.append(i)
                chat_texts.append(text)
                chat_spans.append(spans)
        tok.encode_special_tokens = not b.special_in_text  # "<s>" in data stays text
        fast = tok.encode_batch_fast(fast_inputs, add_special_tokens=False) if fast_inputs else []
        tok.encode_special_tokens = False  # the template's markers must be special tokens
        chat = tok.encode_batch(chat_texts, add_special_tokens=False) if chat_texts else []

        if not chat_texts and not keep.size - keep.sum() and all(d.kind == TEXT for d in docs):
            return self._text_only(fast, keep)
        bos = [b.bos_id] if b.add_bos else []
        parts: list[list[int]] = []     # every document's final ids, in order
        mask_parts: list[np.ndarray] | None = None
        need_mask = any(d.kind != TEXT for d in docs)
        if need_mask:
            mask_parts = []
        f = 0
        c = 0
        for i, d in enumerate(docs):
            if d.kind == TEXT:
                ids = fast[f].ids
                f += 1
                head = bos if bos and not (ids and ids[0] == b.bos_id) else []
                tail = [b.eos_id] if b.add_eos and not (ids and ids[-1] == b.eos_id) else []
                full = head + ids + tail
                if mask_parts is not None:
                    # All ones, as when no mask is stored at all: the bytes must not depend on
                    # which documents share a batch. (A document's first token is never a label.)
                    mask_parts.append(np.ones(len(full), dtype=np.uint8))
            elif d.kind == PROMPT:
                p, comp = fast[f].ids, fast[f + 1].ids
                f += 2
                head = bos if bos and not (p and p[0] == b.bos_id) else []
                tail = [b.eos_id] if b.add_eos and not (comp and comp[-1] == b.eos_id) else []
                full = head + p + comp + tail
                m = np.zeros(len(full), dtype=np.uint8)
                m[len(head) + len(p):] = 1
                assert mask_parts is not None
                mask_parts.append(m)
            else:
                if not keep[i]:
                    continue
                enc = chat[c]
                spans = chat_spans[c]
                c += 1
                ids = enc.ids
                # list of (start, end) tuples -> array in C; no per-token Python code
                offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
                m = np.zeros(len(ids), dtype=np.uint8)
                for s, e in spans:
                    # A token is a target iff it holds a character of the span: a byte-level BPE
                    # token such as " beta" straddling the header's last space is what the
                    # model generates, so it counts.
                    m[(offsets[:, 1] > s) & (offsets[:, 0] < e)] = 1
                head = bos if bos and not (ids and ids[0] == b.bos_id) else []
                tail = ([b.eos_id] if b.eos_after_chat and not (ids and ids[-1] == b.eos_id) else [])
                full = head + ids + tail
                m = np.concatenate([np.zeros(len(head), np.uint8), m, np.ones(len(tail), np.uint8)])
                assert mask_parts is not None
                mask_parts.append(m)
            parts.append(full)
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.uint32, count=total)
        loss = None
        if mask_parts is not None:
            loss = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.uint8)
        return Encoded(ids=flat, lengths=lengths, loss_mask=loss, keep=keep, errors=errors)


    def _text_only(self, fast: list[Any], keep: np.ndarray) -> Encoded:
        """The hot path (a batch of plain text): ids straight into one array, BOS/EOS placed with
        vectorised index arithmetic instead of per-document list concatenation."""
        b = self.b
        ids_lists = [e.ids for e in fast]
        n = len(ids_lists)
        lens = np.fromiter(map(len, ids_lists), dtype=np.int64, count=n)
        flat = np.fromiter(itertools.chain.from_iterable(ids_lists), dtype=np.uint32, count=int(lens.sum()))
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        ne = np.flatnonzero(lens)
        add_b = np.zeros(n, dtype=np.int64)
        add_e = np.zeros(n, dtype=np.int64)
        if b.add_bos:  # never doubled: a document already starting with BOS gets none
            add_b[:] = 1
            add_b[ne[flat[starts[ne]] == b.bos_id]] = 0
        if b.add_eos:
            add_e[:] = 1
            add_e[ne[flat[starts[ne] + lens[ne] - 1] == b.eos_id]] = 0
        if not add_b.any() and not add_e.any():
            return Encoded(ids=flat, lengths=lens, loss_mask=None, keep=keep, errors=[])
        out_lens = lens + add_b + add_e
        out_starts = np.zeros(n, dtype=np.int64)
        np.cumsum(out_lens[:-1], out=out_starts[1:])
        out = np.empty(int(out_lens.sum()), dtype=np.uint32)
        out[np.repeat(out_starts + add_b - starts, lens) + np.arange(len(flat))] = flat
        if b.add_bos:
            out[out_starts[add_b == 1]] = b.bos_id
        if b.add_eos:
            out[(out_starts + out_lens - 1)[add_e == 1]] = b.eos_id
        return Encoded(ids=out, lengths=out_lens, loss_mask=None, keep=keep, errors=[])
