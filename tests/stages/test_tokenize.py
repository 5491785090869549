from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fastprep.stages.chat import DEFAULT_CHAT_TEMPLATE, ChatRenderer, TemplateError
from fastprep.stages.records import CHAT, PROMPT, TEXT, Doc
from fastprep.stages.encode import Encoder
from fastprep.stages.tokenize import TokenizeConfig, TokenizerBundle, TokenizerError


def bundle(path: Path, **kw) -> TokenizerBundle:
    return TokenizerBundle(TokenizeConfig(tokenizer=str(path), **kw))


def split_docs(enc) -> list[tuple[list[int], list[int] | None]]:
    out, o = [], 0
    for n in enc.lengths.tolist():
        ids = enc.ids[o:o + n].tolist()
        m = enc.loss_mask[o:o + n].tolist() if enc.loss_mask is not None else None
        out.append((ids, m))
        o += n
    return out


def test_model_folder_special_tokens_and_policy(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    b = bundle(tokenizer_dir)
    assert (b.bos_id, b.eos_id, b.pad_id) == (tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>"),
                                             tokenizer.token_to_id("<pad>"))
    assert b.add_bos and b.add_eos and not b.eos_after_chat
    assert b.chat_template_source == "tokenizer"
    assert len(b.sha256) == 64 and not b.notes
    # the folder's tokenizer.json reads the folder's configuration too: the same resolution
    # (bug caught: the file alone gave no BOS/EOS and a dataset without end tokens, unseen,
    # because both manifests carried the same file hash)
    same = bundle(tokenizer_dir / "tokenizer.json")
    assert same.describe() == {**b.describe(), "source": str(tokenizer_dir / "tokenizer.json")}
    # a bare tokenizer.json (no configuration beside it): BOS/EOS inferred from its special
    # tokens, and said; pad falls back to EOS
    (tmp_path / "bare").mkdir()
    shutil.copy(tokenizer_dir / "tokenizer.json", tmp_path / "bare" / "tokenizer.json")
    bare = bundle(tmp_path / "bare" / "tokenizer.json")
    assert (bare.bos_id, bare.eos_id, bare.pad_id) == (b.bos_id, b.eos_id, b.eos_id)
    assert bare.add_eos and not bare.add_bos  # nothing says this model wants a BOS
    assert any("EOS token '</s>'" in n and "--eos-token" in n for n in bare.notes)
    assert bare.chat_template_source == "default (ChatML)"
    assert bare.resolved_sha256() != b.resolved_sha256()  # another pad id: another dataset


def test_special_tokens_named_on_the_command_line(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    eos = tokenizer.token_to_id("<|im_end|>")
    by_name = bundle(tokenizer_dir, eos_token="<|im_end|>", pad_token="<pad>")
    by_id = bundle(tokenizer_dir, eos_token=str(eos), pad_token="0")
    assert by_name.eos_id == by_id.eos_id == eos and by_name.eos_token == by_id.eos_token == "<|im_end|>"
    assert by_name.pad_id == by_id.pad_id == 0
    assert Encoder(by_name)([Doc(TEXT, 0, 1, text="alpha")]).ids.tolist()[-1] == eos
    with pytest.raises(TokenizerError, match="--eos-token '<nope>': not a token"):
        bundle(tokenizer_dir, eos_token="<nope>")
    with pytest.raises(TokenizerError, match="--bos-token 99999: no such token id"):
        bundle(tokenizer_dir, bos_token="99999")


def test_text_docs_get_bos_and_eos_and_special_strings_stay_text(tokenizer_dir: Path, tokenizer) -> None:
    b = bundle(tokenizer_dir)
    enc = Encoder(b)([Doc(TEXT, 0, 1, text="alpha beta"), Doc(TEXT, 0, 2, text="<s>gamma delta</s>")])
    (a, ma), (c, mc) = split_docs(enc)
    plain = tokenizer.encode("alpha beta", add_special_tokens=False).ids
    assert a == [b.bos_id, *plain, b.eos_id]
    assert c.count(b.bos_id) == 1 and c.count(b.eos_id) == 1 and c[0] == b.bos_id and c[-1] == b.eos_id
    assert ma is None and enc.loss_mask is None  # pure text batches store no mask
    never = Encoder(bundle(tokenizer_dir, bos="never", eos="never"))([Doc(TEXT, 0, 1, text="alpha beta")])
    assert never.ids.tolist() == plain


def test_special_token_strings_in_data_stay_text(tokenizer_dir: Path, tokenizer) -> None:
    docs = [Doc(TEXT, 0, 1, text="a </s> b <s>"), Doc(PROMPT, 0, 2, prompt="<|im_end|>", completion="<pad>")]
    enc = Encoder(bundle(tokenizer_dir, bos="never", eos="never"))(docs)
    (ids, _), (pids, _) = split_docs(enc)
    specials = {tokenizer.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")}
    assert not specials & set(ids) and not specials & set(pids)
    assert tokenizer.decode(ids) == "a </s> b <s>"
    parsed = Encoder(bundle(tokenizer_dir, bos="never", eos="never", special_tokens_in_text=True))(docs[:1])
    assert tokenizer.token_to_id("</s>") in parsed.ids.tolist()


def test_gpt2_style_bos_equals_eos_gets_only_separator(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tokenizer_dir, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.update(bos_token="</s>", eos_token="</s>", add_bos_token=False)
    cfg.pop("pad_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "special_tokens_map.json").unlink()
    b = bundle(folder)
    assert not b.add_bos and b.add_eos and b.pad_id == b.eos_id
    enc = Encoder(b)([Doc(TEXT, 0, 1, text="alpha")])
    assert enc.ids.tolist() == tokenizer.encode("alpha", add_special_tokens=False).ids + [b.eos_id]
    # a configuration that names no BOS: the special tokens do not decide for it either
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": None}))
    with pytest.raises(TokenizerError, match="--bos always.*--bos-token"):
        bundle(folder, bos="always")


def test_prompt_completion_loss_mask_exact(tokenizer_dir: Path, tokenizer) -> None:
    b = bundle(tokenizer_dir)
    prompt, completion = "Translate: alpha beta =", " gamma delta."
    enc = Encoder(b)([Doc(PROMPT, 0, 1, prompt=prompt, completion=completion),
                      Doc(TEXT, 0, 2, text="theta iota")])
    (ids, mask), (tids, tmask) = split_docs(enc)
    p = tokenizer.encode(prompt, add_special_tokens=False).ids
    c = tokenizer.encode(completion, add_special_tokens=False).ids
    assert ids == [b.bos_id, *p, *c, b.eos_id]
    assert mask == [0] * (1 + len(p)) + [1] * (len(c) + 1)
    # a plain-text document in a mixed batch: all ones, exactly as when no mask is stored
    assert tmask == [1] * len(tids)


def test_chat_loss_mask_exact_token_by_token(tokenizer_dir: Path, tokenizer) -> None:
    b = bundle(tokenizer_dir)
    msgs = [("system", "You are terse."), ("user", "alpha?"), ("assistant", "beta gamma."),
            ("user", "delta?"), ("assistant", "epsilon.")]
    enc = Encoder(b)([Doc(CHAT, 0, 1, messages=msgs)])
    [(ids, mask)] = split_docs(enc)
    rendered = ChatRenderer(DEFAULT_CHAT_TEMPLATE).render(msgs)
    assert ids == [b.bos_id, *tokenizer.encode(rendered, add_special_tokens=False).ids]
    assert rendered.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    end = tokenizer.token_to_id("<|im_end|>")
    # targets: each assistant content plus its <|im_end|>, nothing else
    targets = [t for t, m in zip(ids, mask) if m]
    expected = (tokenizer.encode("beta gamma.", add_special_tokens=False).ids + [end]
                + tokenizer.encode("epsilon.", add_special_tokens=False).ids + [end])
    assert targets == expected
    # and they are two contiguous runs, each ending on <|im_end|>
    runs = np.flatnonzero(np.diff(np.array([0, *mask, 0])))
    assert len(runs) == 4
    assert ids[runs[1] - 1] == end and ids[runs[3] - 1] == end


def test_chat_template_with_bos_not_doubled(tmp_path: Path, tokenizer_dir: Path) -> None:
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                   "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    b = bundle(tokenizer_dir, chat_template=str(tpl))
    enc = Encoder(b)([Doc(CHAT, 0, 1, messages=[("user", "alpha"), ("assistant", "beta")])])
    [(ids, mask)] = split_docs(enc)
    assert ids.count(b.bos_id) == 1 and ids[0] == b.bos_id
    assert sum(mask) > 0 and mask[0] == 0


def test_prefix_unstable_template_falls_back_to_content_search(tokenizer_dir: Path, tokenizer) -> None:
    # Renders the turn count first, so render(messages[:i]) is not a prefix of the full text.
    r = ChatRenderer("{{ messages|length }}:{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    text, spans = r.render_with_spans([("user", "q"), ("assistant", "answer one"), ("user", "q2"),
                                       ("assistant", "answer two")])
    assert [text[s:e] for s, e in spans] == ["answer one", "answer two"]


def test_template_sandbox_and_errors(tmp_path: Path, tokenizer_dir: Path) -> None:
    with pytest.raises(TemplateError):
        ChatRenderer("{% set x = messages.append(1) %}").render([("user", "a")])
    with pytest.raises(TemplateError, match="roles must alternate"):
        ChatRenderer("{{ raise_exception('roles must alternate') }}").render([("user", "a")])
    with pytest.raises(TemplateError, match="compile"):
        ChatRenderer("{% for %}")
    leaked = ChatRenderer("{{ ''.__class__.__mro__ }}{{ cycler.__init__ }}")
    try:
        out = leaked.render([("user", "a")])
    except TemplateError:
        out = ""
    assert "object" not in out and "function" not in out
    # a record whose template fails is reported, the rest of the batch is kept
    tpl = tmp_path / "strict.jinja"
    tpl.write_text("{% if messages|length > 2 %}{{ raise_exception('too long') }}{% endif %}"
                   "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    b = bundle(tokenizer_dir, chat_template=str(tpl))
    enc = Encoder(b)([Doc(CHAT, 0, 1, messages=[("user", "a"), ("assistant", "b"), ("user", "c")]),
                      Doc(TEXT, 0, 2, text="alpha")])
    assert enc.keep.tolist() == [False, True] and enc.errors[0][1] == "template_error"
    assert len(enc.lengths) == 1


def test_stored_truncation_and_padding_are_ignored(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    folder = tmp_path / "trunc"
    shutil.copytree(tokenizer_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    text = " ".join(["alpha beta gamma"] * 20)
    enc = Encoder(bundle(folder, bos="never", eos="never"))([Doc(TEXT, 0, 1, text=text)])
    assert enc.ids.tolist() == tokenizer.encode(text, add_special_tokens=False).ids


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no such"):
        bundle(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        bundle(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        bundle(tmp_path / "bad.json")


def test_text_fast_path_equals_per_document_assembly(tokenizer_dir: Path, tokenizer) -> None:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    b = bundle(tokenizer_dir)
    enc_fn = Encoder(b)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.text(max_size=30), min_size=1, max_size=12))
    @example(["<s>", "a </s> b"])  # found by CI: a special-token string inside text
    def check(texts: list[str]) -> None:
        enc = enc_fn([Doc(TEXT, 0, i, text=t) for i, t in enumerate(texts)])
        want = []
        tokenizer.encode_special_tokens = True  # special strings in data stay text (e.g. "<s>")
        try:
            for t in texts:
                ids = tokenizer.encode(t, add_special_tokens=False).ids
                want.append([b.bos_id, *ids, b.eos_id])
        finally:
            tokenizer.encode_special_tokens = False
        assert [ids for ids, _ in split_docs(enc)] == want
        assert enc.ids.dtype == np.uint32 and enc.loss_mask is None

    check()


def test_workers_rebuild_the_driver_bundle_from_its_spec(tmp_path: Path, tokenizer_dir: Path) -> None:
    """The driver resolves the tokenizer once; a worker rebuilds from the spec and refuses a
    file that changed since (bug caught: workers re-deriving from the path silently used a
    different tokenizer than the one the manifest names)."""
    import pickle
    import shutil

    from fastprep.stages.tokenize import TokenizerError

    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    driver = bundle(folder)
    spec = pickle.loads(pickle.dumps(driver.spec))  # what crosses the process boundary
    worker = TokenizerBundle.from_spec(spec)
    docs = [Doc(TEXT, 0, 1, text="alpha beta"), Doc(PROMPT, 0, 2, prompt="q", completion=" a")]
    a, b = Encoder(driver)(docs), Encoder(worker)(docs)
    assert a.ids.tolist() == b.ids.tolist() and a.loss_mask.tolist() == b.loss_mask.tolist()
    assert worker.describe() == driver.describe()
    data = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(data.replace('"alpha"', '"alphA"', 1) + " ")
    with pytest.raises(TokenizerError, match="changed while the run was going"):
        TokenizerBundle.from_spec(spec)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="unreadable in this worker"):
        TokenizerBundle.from_spec(spec)
