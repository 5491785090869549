"""Chat rendering: a conversation to one string plus the character spans the model must learn.

Templates are Jinja, taken from the model folder (``tokenizer_config.json`` ``chat_template``,
``chat_template.jinja`` or ``chat_template.json``, as ``transformers`` saves them) or, when the
tokenizer has none, the documented ChatML default :data:`DEFAULT_CHAT_TEMPLATE`. They are
rendered in Jinja's ``ImmutableSandboxedEnvironment``: a template read from disk cannot reach
Python attributes, mutate objects or run code.

Assistant spans come from prefix rendering, which needs no template cooperation: for assistant
turn *i*, ``render(messages[:i], add_generation_prompt=True)`` is the text before the turn's
content (it ends with the assistant header) and ``render(messages[:i+1])`` ends after the turn's
closing marker; the difference is exactly what the model must generate, end-of-turn token
included. Trailing whitespace after the marker is not a target. When a template is not
prefix-stable (some rewrite earlier turns), the span falls back to the turn's content found in
order in the full text.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn. Add ``<|im_start|>`` and
``<|im_end|>`` to the tokenizer as special tokens so each is one id."""

# transformers' {% generation %} blocks only mark assistant text for its own masking; our spans
# come from prefix rendering, so the tags are dropped before compiling.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


class TemplateError(ValueError):
    """A chat template that fails to compile or render for a record."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


class ChatRenderer:
    def __init__(self, template: str, bos_token: str | None = None, eos_token: str | None = None) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(_GENERATION_TAG.sub("", template))
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        self._vars = {"bos_token": bos_token or "", "eos_token": eos_token or ""}

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool = False) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=[{"role": r, "content": c} for r, c in messages],
                add_generation_prompt=add_generation_prompt, **self._vars)
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None

    def render_with_spans(self, messages: list[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The full text and the [start, end) character spans of every assistant turn."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, (role, content) in enumerate(messages):
            if role != "assistant":
                continue
            span = None
            try:
                before = self.render(messages[:i], add_generation_prompt=True)
                upto = self.render(messages[: i + 1])
                if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
                    end = len(upto.rstrip())
                    if end > len(before):
                        span = (len(before), end)
            except TemplateError:
                span = None  # e.g. a template that refuses a conversation ending on a user turn
            if span is None:
                start = full.find(content, cursor)
                if start < 0:
                    raise TemplateError(f"assistant turn {i} not found in the rendered conversation; "
                                        f"the chat template drops or rewrites it")
                span = (start, start + len(content))
            spans.append(span)
            cursor = span[1]
        return full, spans
