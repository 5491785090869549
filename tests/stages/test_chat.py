"""Assistant spans by shape reuse equal those of rendering every prefix, for templates that treat
content as opaque text and for templates that trim, test, rewrite or repeat it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenizer_families as families
from fastprep.stages.chat import DEFAULT_CHAT_TEMPLATE, ChatRenderer, TemplateError

GEN = "{% if add_generation_prompt %}<assistant>{% endif %}"
TEMPLATES = {
    "chatml": DEFAULT_CHAT_TEMPLATE,
    "llama3 (trims content)": families.LLAMA3_CHAT,
    "spm (bos, eos after the answer)": families.SPM_CHAT,
    "tests content": "{% for m in messages %}{% if m['content'] == '' %}[empty]{% elif 'secret' in "
                     "m['content'] %}[redacted]{% else %}<{{ m['role'] }}>{{ m['content'] }}</{{ "
                     "m['role'] }}>{% endif %}{% endfor %}" + GEN,
    "rewrites earlier answers": "{% for m in messages %}{% if m['role'] == 'assistant' and not "
                                "loop.last and '</think>' in m['content'] %}<a>{{ m['content']"
                                ".split('</think>')[-1] }}</a>{% else %}<{{ m['role'] }}>{{ "
                                "m['content'] }}</{{ m['role'] }}>{% endif %}{% endfor %}" + GEN,
    "repeats content": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}={{ m['content'] "
                       "}}</{{ m['role'] }}>{% endfor %}" + GEN,
    "content length": "{% for m in messages %}<{{ m['role'] }} n={{ m['content'] | length }}>{{ "
                      "m['content'] }}{% endfor %}" + GEN,
    "upper": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | upper }}{% endfor %}" + GEN,
    "cuts content": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'][1:] }}|{% endfor %}" + GEN,
    "holds a placeholder itself": "{{ '\ue0009\ue000' }}{% for m in messages %}<{{ m['role'] }}>{{ "
                                  "m['content'] }}{% endfor %}" + GEN,
    # the last message treated by what it holds: the full rendering fills exactly, a prefix
    # (where an earlier message is last) does not
    "trims the last message": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim if "
                              "loop.last else m['content'] }}</s>{% endfor %}" + GEN,
    "scans content from the end": "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if "
                                  "m['role'] == 'user' and not m['content'].startswith('<tool>') %}"
                                  "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{% for m "
                                  "in messages %}<{{ m['role'] }}>{% if m['role'] == 'assistant' "
                                  "and loop.index0 > ns.last %}<think></think>{% endif %}{{ "
                                  "m['content'] }}</s>{% endfor %}" + GEN,
    "content via a variable": "{% for m in messages %}{% set c = m.content %}<{{ m.role }}>{{ c }}"
                              "{% endfor %}" + GEN,
    "content through tojson": "{% for m in messages %}<{{ m['role'] }}>{{ m | tojson }}"
                              "{% endfor %}" + GEN,
    "drops system, ends on assistant": "{% if messages[-1]['role'] == 'user' and not "
                                       "add_generation_prompt %}{{ raise_exception('end on an "
                                       "answer') }}{% endif %}{% for m in messages if m['role'] != "
                                       "'system' %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                                       + GEN,
}

contents = st.one_of(
    st.sampled_from(["", " ", "  padded  ", "secret plan", "why</think>because", "\ue000",
                     "<tool>ok</tool>", "A1 ",
                     "\ue0001\ue000", "\ue000" + "0" + "\ue000", "<|im_end|>", "line\nnext\n",
                     "naïve 日本語 😀"]),
    st.text(alphabet=st.sampled_from(list("ab \n\t<>/|\ue000é0")), max_size=12))
conversations = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), contents),
                         min_size=1, max_size=5)


def _outcome(r: ChatRenderer, messages: list[tuple[str, str]]) -> object:
    try:
        return r.render_with_spans(messages)
    except TemplateError as e:
        return ("error", str(e))


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_shape_reuse_gives_the_spans_of_prefix_rendering(name: str) -> None:
    fast = ChatRenderer(TEMPLATES[name], "<s>", "</s>")
    slow = ChatRenderer(TEMPLATES[name], "<s>", "</s>", reuse_shapes=False)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(conversations)
    def check(messages: list[tuple[str, str]]) -> None:
        assert _outcome(fast, messages) == _outcome(slow, messages)

    check()


def _counting(r: ChatRenderer) -> list[int]:
    """Count ``r``'s template renderings in the returned one-item list."""
    calls = [0]
    render = r.render

    def counted(*args: object, **kw: object) -> str:
        calls[0] += 1
        return render(*args, **kw)  # type: ignore[arg-type]

    r.render = counted  # type: ignore[method-assign]
    return calls


def test_shape_reuse_renders_once_per_conversation() -> None:
    """The point of the cache: after the first conversation of a role sequence, a conversation
    costs one template rendering, not two per assistant turn."""
    r = ChatRenderer(DEFAULT_CHAT_TEMPLATE)
    calls = _counting(r)
    shape = [("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")]
    r.render_with_spans(shape)
    first, calls[0] = calls[0], 0
    text, spans = r.render_with_spans([(role, c + " more") for role, c in shape])
    assert calls[0] == 1 and first > 1
    assert [text[s:e] for s, e in spans] == ["a more<|im_end|>", "a2 more<|im_end|>"]
    # a template that changes content is never filled in: every prefix is rendered
    up = ChatRenderer(TEMPLATES["upper"])
    calls = _counting(up)
    up.render_with_spans(shape)
    calls[0] = 0
    text, spans = up.render_with_spans(shape)
    assert calls[0] == 5 and [text[s:e] for s, e in spans] == ["A", "A2"]


def test_shape_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChatRenderer, "MAX_SHAPES", 2)
    r = ChatRenderer(DEFAULT_CHAT_TEMPLATE)
    calls = _counting(r)
    shapes = [[("user", "q")] + [("assistant", "a")] * k for k in (1, 2, 3)]
    for conv in shapes:
        r.render_with_spans(conv)
    costs = []
    for conv in shapes:
        calls[0] = 0
        r.render_with_spans(conv)
        costs.append(calls[0])
    assert costs == [1, 1, 1 + 2 * 3]  # the third shape was never kept


def test_shape_reuse_only_for_templates_that_only_output_content() -> None:
    """Bug caught: reuse for a template that tests content by position (the full rendering
    fills exactly while a prefix does not): its assistant spans, and so loss masks, changed."""
    reused = {name: ChatRenderer(t).reuse_shapes for name, t in TEMPLATES.items()}
    assert reused["chatml"] and reused["spm (bos, eos after the answer)"]
    assert reused["repeats content"] and reused["holds a placeholder itself"]
    for name in ("llama3 (trims content)", "tests content", "rewrites earlier answers",
                 "content length", "upper", "cuts content", "trims the last message",
                 "scans content from the end", "content via a variable", "content through tojson"):
        assert not reused[name], name
    fast = ChatRenderer(TEMPLATES["scans content from the end"])
    slow = ChatRenderer(TEMPLATES["scans content from the end"], reuse_shapes=False)
    msgs = [("user", "<tool>ok</tool>"), ("assistant", "A1"), ("user", "q"), ("assistant", "A2")]
    assert fast.render_with_spans(msgs) == slow.render_with_spans(msgs)
