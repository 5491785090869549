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

Prefix rendering costs two template renderings per assistant turn. A template that only
*outputs* message content (``{{ m['content'] }}``, alone or joined with ``+``/``~``) and never
tests, filters, slices or stores it renders every conversation as fixed text around the
contents, decided by the roles alone: that is checked once on the template's syntax tree
(:func:`_content_is_opaque`). For such a template the first conversation of each role sequence
is also rendered with placeholder contents, and its renderings kept as fixed pieces and slots.
Every later conversation of that shape is still rendered in full, once, and must equal its
pieces with the contents put in; the prefix renderings are then built the same way and the
spans follow by the same rule without the template. Any other template (one that trims content,
tests it, or treats the last message differently by what it holds, as Qwen3's does) renders
every prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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
    MAX_SHAPES = 1024
    """Role sequences whose placeholder renderings are kept (memory stays bounded when every
    conversation has a shape of its own); later shapes render every prefix."""

    def __init__(self, template: str, bos_token: str | None = None, eos_token: str | None = None,
                 reuse_shapes: bool = True) -> None:
        """``reuse_shapes=False`` renders every prefix with the template (the reference the
        shape reuse is tested against)."""
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        source = _GENERATION_TAG.sub("", template)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        self.reuse_shapes = reuse_shapes and _content_is_opaque(env.parse(source))
        self._vars = {"bos_token": bos_token or "", "eos_token": eos_token or ""}
        self._shapes: dict[tuple[str, ...], _Shape | None] = {}

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
        shape = self._shape(tuple(r for r, _ in messages)) if self.reuse_shapes else None
        if shape is not None:
            contents = [c for _, c in messages]
            if shape.fill(shape.full, contents) == full:
                return full, self._spans(messages, full, lambda i, gen: shape.fill(
                    shape.before[i] if gen else shape.upto[i], contents))
        return full, self._spans(messages, full, lambda i, gen: self.render(
            messages[: i if gen else i + 1], add_generation_prompt=gen))

    def _shape(self, roles: tuple[str, ...]) -> _Shape | None:
        """The placeholder renderings of a role sequence (None: the template is not opaque to
        content there, or renders it more than once)."""
        if roles in self._shapes:
            return self._shapes[roles]
        shape = None
        if len(self._shapes) < self.MAX_SHAPES:
            marks = [f"{_MARK}{j}{_MARK}" for j in range(len(roles))]
            ph = list(zip(roles, marks))
            try:
                full = _Shape.parse(self.render(ph), len(roles))
                before = {i: _Shape.parse(self.render(ph[:i], add_generation_prompt=True), len(roles))
                          for i, r in enumerate(roles) if r == "assistant"}
                upto = {i: _Shape.parse(self.render(ph[: i + 1]), len(roles)) for i in before}
            except TemplateError:
                full = None
            if full is not None and all(v is not None for v in (*before.values(), *upto.values())):
                shape = _Shape(full, before, upto)  # type: ignore[arg-type]
            self._shapes[roles] = shape
        return shape

    def _spans(self, messages: list[tuple[str, str]], full: str, prefix: Any) -> list[tuple[int, int]]:
        """Assistant spans by prefix rendering; ``prefix(i, True)`` is the rendering of the
        first ``i`` messages with the generation prompt, ``prefix(i, False)`` of the first
        ``i + 1``."""
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, (role, content) in enumerate(messages):
            if role != "assistant":
                continue
            span = None
            try:
                before = prefix(i, True)
                upto = prefix(i, False)
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
        return spans


# ways to reach a message's content other than ``m['content']`` / ``m.content``
_INDIRECT_FILTERS = {"tojson", "string", "pprint", "map", "selectattr", "rejectattr", "items",
                     "dictsort", "groupby", "list", "join", "first", "last", "sum", "unique",
                     "xmlattr", "attr", "batch", "slice", "reverse", "sort"}
_INDIRECT_ATTRS = {"items", "values", "get", "keys"}


def _content_is_opaque(tree: Any) -> bool:
    """Whether the template only outputs message content: every ``…['content']`` or
    ``….content`` sits directly in an output (``{{ }}``) or in a ``+``/``~`` chain that is, and
    nothing reaches content another way (a ``'content'`` constant elsewhere, ``.items()``,
    ``tojson``, ``map``, ...). Conservative: a False only costs speed."""
    from jinja2 import nodes

    def content_ref(node: Any) -> bool:
        return ((isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
                 and node.arg.value == "content")
                or (isinstance(node, nodes.Getattr) and node.attr == "content"))

    def ok(node: Any, outputting: bool) -> bool:
        if content_ref(node):
            return outputting and ok(node.node, False)
        if isinstance(node, nodes.Const) and node.value == "content":
            return False  # e.g. message[key] with key = 'content', or a map(attribute=...)
        if isinstance(node, nodes.Filter) and node.name in _INDIRECT_FILTERS:
            return False
        if isinstance(node, nodes.Getattr) and node.attr in _INDIRECT_ATTRS:
            return False
        if isinstance(node, nodes.Output):
            return all(ok(child, True) for child in node.nodes)
        keep = outputting and isinstance(node, (nodes.Add, nodes.Concat))
        return all(ok(child, keep) for child in node.iter_child_nodes())

    return ok(tree, False)


_MARK = "\ue000"  # placeholder contents: a private-use character around the message index
_SLOT = re.compile(f"{_MARK}(\\d+){_MARK}")


@dataclass(frozen=True)
class _Shape:
    """A conversation shape's renderings as fixed text and content slots: ``pieces[0] +
    contents[slots[0]] + pieces[1] + ...``."""

    full: tuple[tuple[str, ...], tuple[int, ...]]
    before: dict[int, tuple[tuple[str, ...], tuple[int, ...]]]
    upto: dict[int, tuple[tuple[str, ...], tuple[int, ...]]]

    @staticmethod
    def parse(text: str, n: int) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
        """Pieces and slots of a placeholder rendering (a content may appear more than once,
        or not at all). A template that changes content leaves pieces that do not fill into its
        real rendering, which is checked for every conversation."""
        parts = _SLOT.split(text)
        pieces, slots = tuple(parts[0::2]), tuple(int(x) for x in parts[1::2])
        if any(j >= n for j in slots):
            return None  # the template's own text holds a placeholder: it cannot be filled
        return pieces, slots

    @staticmethod
    def fill(layout: tuple[tuple[str, ...], tuple[int, ...]], contents: list[str]) -> str:
        pieces, slots = layout
        out = [pieces[0]]
        for j, piece in zip(slots, pieces[1:]):
            out += (contents[j], piece)
        return "".join(out)
