from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprep.stages.clean import CleanConfig, Cleaner
from fastprep.stages.records import CHAT, PROMPT, TEXT, Doc, RecordConfig, RecordError, RecordMapper, dedupe_key


def test_shape_detection_per_record() -> None:
    m = RecordMapper(RecordConfig())
    assert m({"text": "t"}, 0, 1).kind == TEXT
    assert m({"prompt": "p", "completion": "c", "text": "ignored"}, 0, 1).kind == PROMPT
    d = m({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 0, 1)
    assert d.kind == CHAT and d.messages == [("user", "hi"), ("assistant", "yo")]
    assert m("plain text file", 0, 1).text == "plain text file"


def test_forced_shape_and_missing_field_reason() -> None:
    m = RecordMapper(RecordConfig(shape="prompt"))
    with pytest.raises(RecordError) as e:
        m({"prompt": "p"}, 0, 1)
    assert e.value.reason == "missing_field" and "completion" in e.value.detail
    with pytest.raises(RecordError) as e:
        RecordMapper(RecordConfig())({"body": "x"}, 0, 1)
    assert e.value.reason == "missing_field" and "--text-field" in e.value.detail


def test_nested_fields_template_and_defaults() -> None:
    m = RecordMapper(RecordConfig(text_field="doc.body"))
    assert m({"doc": {"body": "nested"}}, 0, 1).text == "nested"
    alpaca = RecordMapper(RecordConfig(prompt_field="{instruction}\n\n{input}", completion_field="output",
                                       defaults=(("input", ""),)))
    d = alpaca({"instruction": "Translate", "input": "Hallo", "output": "Hello"}, 0, 1)
    assert (d.kind, d.prompt, d.completion) == (PROMPT, "Translate\n\nHallo", "Hello")
    d = alpaca({"instruction": "Say hi", "output": "hi"}, 0, 1)  # missing input filled
    assert d.prompt == "Say hi\n\n"
    d = alpaca({"instruction": "Say hi", "input": None, "output": "hi"}, 0, 1)  # null filled
    assert d.prompt == "Say hi\n\n"


def test_wrong_types() -> None:
    m = RecordMapper(RecordConfig())
    with pytest.raises(RecordError) as e:
        m({"text": 42}, 0, 1)
    assert e.value.reason == "wrong_type"
    filled = RecordMapper(RecordConfig(defaults=(("text", "fallback"),)))
    assert filled({"text": 42}, 0, 1).text == "fallback"
    for bad in ({"messages": "hi"}, {"messages": []}, {"messages": [1]},
                {"messages": [{"role": "user"}]}, {"messages": [{"role": "wizard", "content": "x"}]}):
        with pytest.raises(RecordError) as e:
            m(bad, 0, 1)
        assert e.value.reason == "bad_messages"


def test_sharegpt_roles_and_system_prompt_fill() -> None:
    m = RecordMapper(RecordConfig(messages_field="conversations", system_prompt="Be brief."))
    d = m({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, 0, 1)
    assert d.messages == [("system", "Be brief."), ("user", "q"), ("assistant", "a")]
    d = m({"conversations": [{"role": "system", "content": "Persona"}, {"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a"}]}, 0, 1)
    assert d.messages[0] == ("system", "Persona")  # an existing system turn is kept


def test_dedupe_key_distinguishes_shapes() -> None:
    a = Doc(PROMPT, 0, 1, prompt="ab", completion="c")
    b = Doc(PROMPT, 0, 1, prompt="a", completion="bc")
    t = Doc(TEXT, 0, 1, text="abc")
    assert len({dedupe_key(a), dedupe_key(b), dedupe_key(t)}) == 3


def test_cleaning_repairs() -> None:
    c = Cleaner(CleanConfig())
    assert c.text("  a\r\nb\rc\x00\x07\x1b[0m\ufeff  ") == "a\nb\nc[0m"
    assert c.text("e\u0301") == "\u00e9"  # NFC composes
    assert Cleaner(CleanConfig(unicode="NFKC")).text("ｆｕｌｌ ﬁ") == "full fi"
    assert Cleaner(CleanConfig(unicode="none")).text("e\u0301") == "e\u0301"
    keep = Cleaner(CleanConfig(fix_newlines=False, strip_control=False, strip=False))
    assert keep.text(" a\r\n\x00 ") == " a\r\n\x00 "
    assert c.text("tab\tand\nnewline kept") == "tab\tand\nnewline kept"


@pytest.mark.parametrize("text, kinds", [
    ("clean", set()), (" padded ", {"strip"}), ("crlf\r\nhere", {"newlines"}),
    ("bell\x07", {"control"}), ("c1\x85 and bom\ufeff", {"control"}), ("e\u0301", {"unicode"}),
    ("ünïcödé", set()), ("  e\u0301\r\n\x00", {"newlines", "control", "unicode", "strip"}),
])
def test_each_repair_is_counted_by_kind(text: str, kinds: set[str]) -> None:
    """The summary's repairs by kind (it used to be one "cleaning" count for every document that
    changed at all); the ASCII fast path and the regex path find the same controls."""
    d = Doc(TEXT, 0, 1, text=text)
    assert Cleaner(CleanConfig())(d) == kinds


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_control_fast_path_equals_the_regex(s: str) -> None:
    from fastprep.stages.clean import CONTROL_RE

    assert Cleaner.has_control(s) == (CONTROL_RE.search(s) is not None)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_cleaning_is_idempotent_and_removes_controls(s: str) -> None:
    c = Cleaner(CleanConfig())
    once = c.text(s)
    assert c.text(once) == once
    assert not any(ord(ch) < 32 and ch not in "\t\n" for ch in once)
    assert "\r" not in once


def test_length_filters_and_reasons() -> None:
    c = Cleaner(CleanConfig(min_chars=5, max_chars=10))
    for text, reason in (("   ", "empty"), ("abc", "too_short"), ("x" * 11, "too_long")):
        with pytest.raises(RecordError) as e:
            c(Doc(TEXT, 0, 1, text=text))
        assert e.value.reason == reason
    d = Doc(TEXT, 0, 1, text=" hello ")
    assert c(d) == {"strip"} and d.text == "hello"
    assert c(Doc(TEXT, 0, 1, text="hello")) == set()
    with pytest.raises(RecordError) as e:
        Cleaner(CleanConfig())(Doc(PROMPT, 0, 1, prompt="q", completion="  "))
    assert e.value.reason == "empty"
    with pytest.raises(RecordError) as e:
        Cleaner(CleanConfig())(Doc(CHAT, 0, 1, messages=[("user", "q"), ("assistant", " ")]))
    assert e.value.reason == "no_assistant_turn"


def test_clean_config_validation() -> None:
    with pytest.raises(ValueError, match="--unicode"):
        CleanConfig(unicode="NFD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--max-chars"):
        CleanConfig(min_chars=10, max_chars=5)


def test_prompt_completion_boundary_whitespace_is_kept() -> None:
    d = Doc(PROMPT, 0, 1, prompt="  Q: 2+2?\nA:", completion=" 4.\n\n")
    Cleaner(CleanConfig())(d)
    assert (d.prompt, d.completion) == ("Q: 2+2?\nA:", " 4.")
