"""The tokenizer: loading, its special tokens, the BOS/EOS policy and the chat template, resolved once.

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

The encoding itself (one backend call per batch, documents assembled with BOS/EOS, exact loss
masks) is :mod:`fastprep.stages.encode`; the backends are :mod:`fastprep.stages.backends`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..flags import option
from .chat import DEFAULT_CHAT_TEMPLATE, ChatRenderer


class TokenizerError(ValueError):
    """A tokenizer path that cannot be loaded or a BOS/EOS policy it cannot satisfy."""


@dataclass(frozen=True)
class TokenizeConfig:
    """Which tokenizer, and where BOS/EOS go (see the module docstring)."""

    tokenizer: str = option(help="tokenizer.json or a local model folder holding one",
                            required=True)
    bos: Literal["auto", "always", "never"] = option(
        "auto", "BOS before each document: auto = when the model expects it (Llama-style)")
    eos: Literal["auto", "always", "never"] = option(
        "auto", "EOS after each document: auto = after text and completions (chat templates "
        "close their own turns)")
    chat_template: str | None = option(None, "a Jinja file that overrides the tokenizer's chat "
                                       "template")
    bos_token: str | None = option(None, "the BOS token (its string, or its id), instead of the "
                                   "tokenizer's configuration or what is inferred from a bare "
                                   "tokenizer.json")
    eos_token: str | None = option(None, "the EOS token (its string, or its id); a bare "
                                   "tokenizer.json's is inferred from its special tokens")
    pad_token: str | None = option(None, "the pad token (its string, or its id); default: the "
                                   "configured one, else EOS")
    special_tokens_in_text: bool = option(
        False, "let '<|endoftext|>'-like strings in text, prompts and completions become special "
        "tokens (off: they stay text, as nanoGPT's encode_ordinary; data that merely mentions "
        "such a string must not inject document boundaries)")

    def __post_init__(self) -> None:
        for flag, v in (("--bos", self.bos), ("--eos", self.eos)):
            if v not in ("auto", "always", "never"):
                raise ValueError(f"{flag} must be auto, always or never, not {v!r}")


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer as the driver resolved it, shipped to every worker instead of the config:
    the file and its hash, the special-token ids and policy, the chat template. A worker builds
    its :class:`TokenizerBundle` from this and refuses a file that no longer matches."""

    file: str                 # absolute path of the tokenizer.json
    sha256: str               # of the file's bytes
    vocab_size: int
    bos_token: str | None
    eos_token: str | None
    bos_id: int | None
    eos_id: int | None
    pad_id: int
    add_bos: bool
    add_eos: bool
    eos_after_chat: bool
    special_in_text: bool
    chat_template: str
    chat_template_source: str
    source: str               # what the user passed (--tokenizer)


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


def _tokenizer_file(src: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer.json) of what ``--tokenizer`` names."""
    if src.is_dir():
        tok_file = src / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"{src}: no tokenizer.json in this folder; fastprep needs a fast "
                                 f"tokenizer (save one with transformers' save_pretrained or "
                                 f"tokenizers' Tokenizer.save)")
        return src, tok_file
    if src.is_file():
        return src.parent, src
    raise TokenizerError(f"{src}: no such tokenizer file or model folder (downloads are not "
                         f"supported: pass a local tokenizer.json or a folder)")


_LOADED: dict[str, Any] = {}  # sha256 -> Tokenizer: the driver and inline tasks share one load


def load_tokenizer(raw: bytes, where: Path) -> Any:
    """A ``tokenizers.Tokenizer`` of the file's bytes, padding and truncation off; the last one
    loaded is cached by content (the driver, inline tasks and a worker's warm-up share it)."""
    from tokenizers import Tokenizer

    key = hashlib.sha256(raw).hexdigest()
    if key in _LOADED:
        return _LOADED[key]
    try:
        tok = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise TokenizerError(f"{where}: not a valid tokenizer.json ({e})") from None
    tok.no_padding()  # fastprep decides lengths itself (packing); a stored max_length would
    tok.no_truncation()  # silently cut documents
    _LOADED.clear()  # one tokenizer per process is what a run needs
    _LOADED[key] = tok
    return tok


def _vocab_size(tok: Any, cfg: dict[str, Any]) -> int:
    """One past the largest id: the model's vocabulary may have holes and an added token may
    sit past ``get_vocab_size``."""
    model_vocab = (cfg.get("model") or {}).get("vocab")
    model_max = max(model_vocab.values(), default=-1) if isinstance(model_vocab, dict) else -1
    return max(tok.get_vocab_size(with_added_tokens=True), model_max + 1,
               max(tok.get_added_tokens_decoder(), default=-1) + 1)


# transformers writes this (int(1e30)) for "no known limit"; real limits are far below 1e7
_NO_LIMIT = 10_000_000
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def model_max_length(folder: Path, config: dict[str, Any]) -> tuple[int | None, str]:
    """(the longest sequence the model takes, where that was read), or (None, "") when the
    folder does not say: ``model_max_length`` in ``tokenizer_config.json`` and the position
    limit in the model's ``config.json`` (one with ``model_type`` or ``architectures``:
    ``max_position_embeddings``, GPT-2's ``n_positions``, ...), the smaller of the two when
    both are known."""
    def limit(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < _NO_LIMIT

    found: list[tuple[int, str]] = []
    m = config.get("model_max_length")
    if limit(m):
        found.append((int(m), "model_max_length in tokenizer_config.json"))
    try:
        model = _read_json(folder / "config.json")
    except TokenizerError:  # not the model's: the tokenizer does not need it
        model = {}
    if "model_type" in model or "architectures" in model:  # a model's config, not any config.json
        for key in _POSITION_KEYS:
            if limit(model.get(key)):
                found.append((int(model[key]), f"{key} in config.json"))
                break
    return min(found) if found else (None, "")


# Well-known special tokens of bare tokenizer.json files, most specific first: what EOS and BOS
# are when no tokenizer_config.json / special_tokens_map.json names them (GPT-2 and Qwen2
# <|endoftext|>, Llama-3 <|end_of_text|>, Llama-2/Mistral </s>, Gemma <eos>).
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>",
                  "<|end|>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")


class TokenizerBundle:
    """A loaded tokenizer with its special tokens, chat template and resolved BOS/EOS policy.

    Built from a :class:`TokenizeConfig` once, in the driver; :attr:`spec` is what workers get,
    and :meth:`from_spec` rebuilds the same bundle there.
    """

    tokenizer: Any
    spec: TokenizerSpec

    def __init__(self, cfg: TokenizeConfig) -> None:
        src = Path(cfg.tokenizer)
        folder, tok_file = _tokenizer_file(src)
        raw = tok_file.read_bytes()
        self.tokenizer = load_tokenizer(raw, tok_file)
        self.json_bytes = raw
        self.notes: list[str] = []  # what was inferred, for the run's summary
        # the folder's configuration whether --tokenizer names the folder or its tokenizer.json:
        # both must give the same dataset
        config = _read_json(folder / "tokenizer_config.json")
        special = _read_json(folder / "special_tokens_map.json")
        bos_token, bos_id = self._special("bos", cfg.bos_token, config, special, BOS_CANDIDATES)
        eos_token, eos_id = self._special("eos", cfg.eos_token, config, special, EOS_CANDIDATES)
        _, pad_id = self._special("pad", cfg.pad_token, config, special, ())
        if cfg.bos == "always" and bos_id is None:
            raise TokenizerError(f"--bos always, but {src} defines no BOS token and none could be "
                                 f"inferred; name it with --bos-token")
        if cfg.eos == "always" and eos_id is None:
            raise TokenizerError(f"--eos always, but {src} defines no EOS token and none could be "
                                 f"inferred; name it with --eos-token")
        probe_plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        probe_special = self.tokenizer.encode("a", add_special_tokens=True).ids
        post_adds_bos = (bos_id is not None and len(probe_special) > len(probe_plain)
                         and probe_special[0] == bos_id)
        wants_bos = bool(config.get("add_bos_token", False)) or post_adds_bos or (
            cfg.bos_token is not None)
        template, template_source = self._template(cfg, folder, config)
        self.max_length, self.max_length_source = model_max_length(folder, config)
        self.spec = TokenizerSpec(
            file=str(tok_file.resolve()), sha256=hashlib.sha256(raw).hexdigest(),
            vocab_size=_vocab_size(self.tokenizer, self.config), bos_token=bos_token, eos_token=eos_token,
            bos_id=bos_id, eos_id=eos_id,
            # The pad value never reaches attention or loss (segment_ids mark padding); EOS is
            # the common choice when a tokenizer defines no pad token.
            pad_id=pad_id if pad_id is not None else (eos_id if eos_id is not None else 0),
            add_bos=bos_id is not None and (
                cfg.bos == "always" or (cfg.bos == "auto" and wants_bos and bos_id != eos_id)),
            add_eos=eos_id is not None and cfg.eos != "never",
            eos_after_chat=eos_id is not None and cfg.eos == "always",
            special_in_text=cfg.special_tokens_in_text, chat_template=template,
            chat_template_source=template_source, source=str(src))
        self._renderer: ChatRenderer | None = None

    def _special(self, role: str, given: str | None, config: dict[str, Any],
                 special: dict[str, Any], candidates: tuple[str, ...]) -> tuple[str | None, int | None]:
        """(token, id) of the BOS/EOS/pad token: ``--<role>-token``, else the folder's
        configuration, else (BOS/EOS) the first well-known special token the file carries."""
        tok = self.tokenizer
        if given is not None:
            if given.isdigit():
                name = tok.id_to_token(int(given))
                if name is None:
                    raise TokenizerError(f"--{role}-token {given}: no such token id in this tokenizer")
                return name, int(given)
            tid = tok.token_to_id(given)
            if tid is None:
                raise TokenizerError(f"--{role}-token {given!r}: not a token of this tokenizer "
                                     f"(pass its exact string or its id)")
            return given, tid
        name = _token_str(config.get(f"{role}_token")) or _token_str(special.get(f"{role}_token"))
        if name and tok.token_to_id(name) is not None:
            return name, tok.token_to_id(name)
        if f"{role}_token" in config or f"{role}_token" in special or not candidates:
            return None, None  # configured (a null included: "this model has none")
        specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        for name in candidates:
            if name in specials:
                self.notes.append(f"{role.upper()} token {name!r} (id {tok.token_to_id(name)}) "
                                  f"inferred from the tokenizer's special tokens (no configuration "
                                  f"names one); --{role}-token chooses another")
                return name, tok.token_to_id(name)
        return None, None

    @staticmethod
    def _template(cfg: TokenizeConfig, folder: Path, config: dict[str, Any]) -> tuple[str, str]:
        """(chat template, where it came from)."""
        if cfg.chat_template is not None:
            try:
                return Path(cfg.chat_template).read_text(encoding="utf-8"), cfg.chat_template
            except OSError as e:
                raise TokenizerError(f"--chat-template {cfg.chat_template}: {e.strerror}") from None
        template = _chat_template_from(folder, config)
        if template:
            return template, "tokenizer"
        return DEFAULT_CHAT_TEMPLATE, "default (ChatML)"

    @classmethod
    def from_spec(cls, spec: TokenizerSpec) -> TokenizerBundle:
        """The driver's bundle, rebuilt in a worker from its spec; a :class:`TokenizerError` if
        the file changed since the driver read it or resolves to other ids here."""
        try:
            raw = Path(spec.file).read_bytes()
        except OSError as e:
            raise TokenizerError(f"{spec.file}: unreadable in this worker ({e.strerror}); the "
                                 f"tokenizer must be on storage every worker can read") from None
        if hashlib.sha256(raw).hexdigest() != spec.sha256:
            raise TokenizerError(f"{spec.file} changed while the run was going (its SHA-256 "
                                 f"differs from the driver's); rerun with a fixed tokenizer")
        self = cls.__new__(cls)
        self.tokenizer = load_tokenizer(raw, Path(spec.file))
        self.json_bytes = raw
        self.spec = spec
        self.notes = []
        self._renderer = None
        self.max_length, self.max_length_source = None, ""  # the driver checked it
        got = (_vocab_size(self.tokenizer, self.config),
               self.tokenizer.token_to_id(spec.bos_token) if spec.bos_token else None,
               self.tokenizer.token_to_id(spec.eos_token) if spec.eos_token else None)
        if got != (spec.vocab_size, spec.bos_id, spec.eos_id):
            raise TokenizerError(f"{spec.file} resolves to vocab/BOS/EOS {got} in this worker, "
                                 f"the driver resolved {(spec.vocab_size, spec.bos_id, spec.eos_id)}")
        return self

    # the resolved values, read by the encoder and the manifest
    vocab_size = property(lambda self: self.spec.vocab_size)
    bos_id = property(lambda self: self.spec.bos_id)
    eos_id = property(lambda self: self.spec.eos_id)
    pad_id = property(lambda self: self.spec.pad_id)
    bos_token = property(lambda self: self.spec.bos_token)
    eos_token = property(lambda self: self.spec.eos_token)
    add_bos = property(lambda self: self.spec.add_bos)
    add_eos = property(lambda self: self.spec.add_eos)
    eos_after_chat = property(lambda self: self.spec.eos_after_chat)
    special_in_text = property(lambda self: self.spec.special_in_text)
    chat_template = property(lambda self: self.spec.chat_template)
    chat_template_source = property(lambda self: self.spec.chat_template_source)
    source = property(lambda self: self.spec.source)
    sha256 = property(lambda self: self.spec.sha256)

    @property
    def config(self) -> dict[str, Any]:
        """The parsed ``tokenizer.json``."""
        cfg = getattr(self, "_config", None)
        if cfg is None:
            import orjson

            cfg = self._config = orjson.loads(self.json_bytes)
        return cfg

    @property
    def renderer(self) -> ChatRenderer:
        """Compiled on first use, so a broken template only matters to datasets with chat."""
        if self._renderer is None:
            self._renderer = ChatRenderer(self.chat_template, self.bos_token, self.eos_token)
        return self._renderer

    def describe(self) -> dict[str, Any]:
        """The manifest's ``tokenizer`` section."""
        s = self.spec
        return {
            "source": s.source, "sha256": s.sha256, "vocab_size": s.vocab_size,
            "bos_id": s.bos_id, "eos_id": s.eos_id, "pad_id": s.pad_id,
            "bos_token": s.bos_token, "eos_token": s.eos_token,
            "add_bos": s.add_bos, "add_eos": s.add_eos, "eos_after_chat": s.eos_after_chat,
            "chat_template": s.chat_template_source,
            "chat_template_sha256": hashlib.sha256(s.chat_template.encode()).hexdigest(),
            # what decides the ids: the file and every special-token and template choice made
            "resolved_sha256": self.resolved_sha256(),
        }

    def resolved_sha256(self) -> str:
        """Hash of the file's bytes and every setting resolved from it or its folder (BOS/EOS/pad
        and their policy, the chat template): two datasets with the same value were tokenized
        alike."""
        s = self.spec
        blob = json.dumps([s.sha256, s.bos_id, s.eos_id, s.pad_id, s.add_bos, s.add_eos,
                           s.eos_after_chat, s.special_in_text, s.chat_template], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()
