"""Record shapes: map a raw JSON object / Parquet row / text to one of three document kinds.

- ``text``: pre-training style; every token is a target.
- ``prompt``: ``prompt`` + ``completion`` (instruction, QA, summarization, translation, paraphrase,
  code); loss only on the completion.
- ``chat``: ``messages``, a list of ``{role, content}`` (also ShareGPT's ``conversations`` of
  ``{from, value}`` with human/gpt roles); optional system/persona turn; loss only on assistant
  turns.

The shape is detected per record from the fields present (``messages``, then ``prompt`` +
``completion``, then ``text``) unless ``shape`` forces one. Field names are mapped by the user;
dotted names reach into nested objects (``meta.body``), and a prompt field may be a template over
several fields (``"{instruction}\\n\\n{input}"``, Alpaca style). A missing or null field is filled
from ``defaults`` when the user gave one, otherwise the record is dropped with a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..flags import option

TEXT, PROMPT, CHAT = 0, 1, 2
KIND_NAMES = ("text", "prompt", "chat")
ROLES = ("system", "user", "assistant", "tool")
_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass(slots=True)
class Doc:
    """One document, cleaned later. Exactly the fields of its kind are set."""

    kind: int
    file: int
    line: int
    text: str = ""
    prompt: str = ""
    completion: str = ""
    messages: list[tuple[str, str]] = field(default_factory=list)
    chars: int = 0  # characters after cleaning (set by the task that reads it): batch sizing

    def texts(self) -> list[str]:
        """The texts the tokenizer encodes: the text, prompt and completion, or every message's
        content."""
        if self.kind == 0:
            return [self.text]
        if self.kind == 1:
            return [self.prompt, self.completion]
        return [c for _, c in self.messages]


class RecordError(Exception):
    """A record that cannot become a document; ``reason`` feeds the counts."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_fill(item: str) -> tuple[str, str]:
    """``--fill FIELD=VALUE`` as a (field, value) pair."""
    if "=" not in item:
        raise ValueError(f"--fill {item!r}: expected FIELD=VALUE")
    name, value = item.split("=", 1)
    return name, value


@dataclass(frozen=True)
class RecordConfig:
    """How raw records map to documents."""

    shape: Literal["auto", "text", "prompt", "chat"] = option(
        "auto", "record shape; auto detects messages / prompt+completion / text per record")
    text_field: str = option("text", "field holding text (dotted for nested keys)")
    prompt_field: str = option(
        "prompt", "prompt field, or a template over fields such as '{instruction}\\n\\n{input}'")
    completion_field: str = option("completion", "field holding the completion")
    messages_field: str = option("messages", "field holding the chat messages")
    system_prompt: str | None = option(None, "system turn for chats that have none")
    defaults: tuple[tuple[str, str], ...] = option(
        (), "default for a missing/null field (repeatable), e.g. --fill input=", flag="--fill",
        metavar="FIELD=VALUE", repeat=True, parse=parse_fill)

    def __post_init__(self) -> None:
        if self.shape not in ("auto", "text", "prompt", "chat"):
            raise ValueError(f"--shape must be auto, text, prompt or chat, not {self.shape!r}")
        for name, value in (("--text-field", self.text_field), ("--prompt-field", self.prompt_field),
                            ("--completion-field", self.completion_field),
                            ("--messages-field", self.messages_field)):
            if not value:
                raise ValueError(f"{name} must not be empty")


class RecordMapper:
    """Callable: ``(raw value, file, line) -> Doc`` or raises :class:`RecordError`."""

    def __init__(self, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self.defaults = dict(cfg.defaults)
        self._prompt_fields = _TEMPLATE_FIELD.findall(cfg.prompt_field)
        # The common record, {"text": "..."} under auto detection, decided by two lookups: it
        # is neither chat (no messages field) nor prompt (no completion field).
        self._plain = (cfg.shape in ("auto", "text") and "." not in cfg.text_field
                       and "." not in cfg.messages_field and "." not in cfg.completion_field)

    def _get(self, obj: dict[str, Any], name: str) -> Any:
        value: Any = obj.get(name) if name in obj else _MISSING
        if value is _MISSING and "." in name:
            value = obj
            for part in name.split("."):
                if not isinstance(value, dict) or part not in value:
                    value = _MISSING
                    break
                value = value[part]
        if value is _MISSING or value is None:
            if name in self.defaults:
                return self.defaults[name]
            keys = ", ".join(list(obj)[:8])
            raise RecordError("missing_field", f"no {name!r} field (fields present: {keys})")
        return value

    def _get_str(self, obj: dict[str, Any], name: str) -> str:
        value = self._get(obj, name)
        if not isinstance(value, str):
            if name in self.defaults:
                return self.defaults[name]
            raise RecordError("wrong_type", f"field {name!r} is a {type(value).__name__}, not a string")
        return value

    def _prompt(self, obj: dict[str, Any]) -> str:
        if not self._prompt_fields:
            return self._get_str(obj, self.cfg.prompt_field)
        return _TEMPLATE_FIELD.sub(lambda m: self._get_str(obj, m.group(1)), self.cfg.prompt_field)

    def _messages_name(self, obj: dict[str, Any]) -> str:
        """The field holding the conversation: ``--messages-field``, or ShareGPT's
        ``conversations`` when the default ``messages`` is absent."""
        name = self.cfg.messages_field
        if name == "messages" and name not in obj and "conversations" in obj:
            return "conversations"
        return name

    def _messages(self, obj: dict[str, Any]) -> list[tuple[str, str]]:
        raw = self._get(obj, self._messages_name(obj))
        if not isinstance(raw, list) or not raw:
            raise RecordError("bad_messages", f"{self._messages_name(obj)!r} must be a non-empty list "
                              f"of {{role, content}} objects")
        out: list[tuple[str, str]] = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise RecordError("bad_messages", f"message {i} is a {type(m).__name__}, not an object")
            role = m.get("role", m.get("from"))
            content = m.get("content", m.get("value"))
            if not isinstance(role, str) or not isinstance(content, str):
                raise RecordError("bad_messages", f"message {i} needs string 'role' and 'content'")
            role = _ROLE_ALIASES.get(role.lower(), role.lower())
            if role not in ROLES:
                raise RecordError("bad_messages", f"message {i} has unknown role {role!r} "
                                  f"(expected one of {', '.join(ROLES)})")
            out.append((role, content))
        if self.cfg.system_prompt is not None and out[0][0] != "system":
            out.insert(0, ("system", self.cfg.system_prompt))
        return out

    def _kind(self, obj: dict[str, Any]) -> int:
        shape = self.cfg.shape
        if shape == "text":
            return TEXT
        if shape == "prompt":
            return PROMPT
        if shape == "chat":
            return CHAT
        if self._messages_name(obj) in obj:
            return CHAT
        prompt_present = (all(f.split(".")[0] in obj or f in self.defaults for f in self._prompt_fields)
                          if self._prompt_fields else self.cfg.prompt_field.split(".")[0] in obj)
        if prompt_present and self.cfg.completion_field.split(".")[0] in obj:
            return PROMPT
        if self.cfg.text_field.split(".")[0] in obj or self.cfg.text_field in self.defaults:
            return TEXT
        keys = ", ".join(list(obj)[:8])
        raise RecordError("missing_field", f"no {self.cfg.text_field!r}, "
                          f"{self.cfg.prompt_field!r}+{self.cfg.completion_field!r} or "
                          f"{self.cfg.messages_field!r} field (fields present: {keys}); "
                          f"map yours with --text-field/--prompt-field/--completion-field/--messages-field")

    def __call__(self, value: Any, file: int, line: int) -> Doc:
        if isinstance(value, str):  # plain-text inputs
            return Doc(TEXT, file, line, text=value)
        if self._plain:
            text = value.get(self.cfg.text_field)
            if type(text) is str and (self.cfg.shape == "text" or (
                    self.cfg.messages_field not in value and self.cfg.completion_field not in value
                    and "conversations" not in value)):
                return Doc(TEXT, file, line, text=text)
        kind = self._kind(value)
        if kind == TEXT:
            return Doc(TEXT, file, line, text=self._get_str(value, self.cfg.text_field))
        if kind == PROMPT:
            return Doc(PROMPT, file, line, prompt=self._prompt(value),
                       completion=self._get_str(value, self.cfg.completion_field))
        return Doc(CHAT, file, line, messages=self._messages(value))


_MISSING = object()


def dedupe_key(doc: Doc) -> str:
    """The canonical string whose hash identifies exact duplicates (after cleaning)."""
    if doc.kind == TEXT:
        return doc.text
    if doc.kind == PROMPT:
        return f"\x00P{doc.prompt}\x00C{doc.completion}"
    return "\x00M" + "\x00".join(f"{r}\x01{c}" for r, c in doc.messages)


def similarity_text(doc: Doc) -> str:
    """The text near-duplicate detection compares."""
    if doc.kind == TEXT:
        return doc.text
    if doc.kind == PROMPT:
        return f"{doc.prompt}\n{doc.completion}"
    return "\n".join(c for _, c in doc.messages)
