"""BOS/EOS never doubled, on documents whose *ids* already hold them.

A special-token string kept as text (``"<s>"`` in a document, the default) encodes to ordinary
pieces, so a test built on one passes whether or not the encoder looks at the first and last id.
These documents really start with the BOS id and end with the EOS id: a tokenizer whose
vocabulary holds both as plain words (text and prompt/completion records whose words encode to
them), the same with a normaliser that writes the BOS word in front of every text,
``--special-tokens-in-text`` turning the strings into their ids, and a chat template that renders
``{{ bos_token }}`` and ``{{ eos_token }}``. Each case first checks that the backend's own ids do
start/end with them (no vacuous pass). Bug caught: the assembly adding BOS/EOS by policy without
looking at the document's first and last ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tokenizer_families as families
from fastprep.stages.backends import HFBackend
from fastprep.stages.encode import Encoder
from fastprep.stages.records import CHAT, PROMPT, TEXT, Doc
from fastprep.stages.tokenize import TokenizeConfig, TokenizerBundle


def split(enc) -> list[tuple[list[int], list[int] | None]]:
    starts = np.concatenate([[0], np.cumsum(enc.lengths)])
    return [(enc.ids[a:b].tolist(), None if enc.loss_mask is None else enc.loss_mask[a:b].tolist())
            for a, b in zip(starts[:-1], starts[1:])]


def raw_ids(b: TokenizerBundle, text: str) -> list[int]:
    """What the backend alone gives for ``text`` (the bundle's special-string policy)."""
    ids, _ = HFBackend(b.tokenizer).encode([text], b.special_in_text)
    return ids.tolist()


def word_level(folder: Path, *, prepend: bool) -> Path:
    """A word-level tokenizer with BOS and EOS as plain vocabulary words (no added tokens, so
    no special-token matching is involved); with ``prepend`` its normaliser writes the BOS word
    in front of every text, so every encoding starts with the BOS id on its own."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["[UNK]", "<s>", "</s>", "<pad>"] + "alpha beta gamma delta Q: A:".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    if prepend:
        tok.normalizer = normalizers.Prepend("<s> ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": True}))
    return folder


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return families.build("spm", tmp_path_factory.mktemp("fam") / "spm")


@pytest.mark.parametrize("eos", ["auto", "always"])
def test_normaliser_that_yields_bos_and_text_ending_in_eos(tmp_path: Path, eos: str) -> None:
    b = TokenizerBundle(TokenizeConfig(tokenizer=str(word_level(tmp_path / "t", prepend=True)),
                                       eos=eos))
    assert b.add_bos and b.add_eos and b.bos_id != b.eos_id
    texts = ["alpha beta </s>", "gamma delta"]
    assert [raw_ids(b, t)[0] for t in texts] == [b.bos_id] * 2, \
        "guard: the tokenizer itself starts the ids with BOS"
    assert raw_ids(b, texts[0])[-1] == b.eos_id, "guard: the ids really end with EOS"
    (a, _), (c, _) = split(Encoder(b)([Doc(TEXT, 0, 1, text=texts[0]), Doc(TEXT, 0, 2, text=texts[1])]))
    assert a == raw_ids(b, texts[0])                # nothing added: both already there
    assert c == raw_ids(b, texts[1]) + [b.eos_id]   # only the missing EOS


@pytest.mark.parametrize("eos", ["auto", "always"])
def test_text_and_prompt_whose_words_encode_to_bos_and_eos(tmp_path: Path, eos: str) -> None:
    b = TokenizerBundle(TokenizeConfig(tokenizer=str(word_level(tmp_path / "t", prepend=False)),
                                       eos=eos))
    bos, eos_id = b.bos_id, b.eos_id
    text = "<s> alpha beta </s>"
    assert raw_ids(b, text) == [bos, 4, 5, eos_id], "guard: the words are the BOS/EOS ids"
    docs = [Doc(TEXT, 0, 1, text=text), Doc(TEXT, 0, 2, text="gamma"),
            Doc(PROMPT, 0, 3, prompt="<s> Q: alpha", completion="A: beta </s>"),
            Doc(PROMPT, 0, 4, prompt="Q: delta", completion="A: gamma")]
    (t, _), (g, _), (p, pmask), (q, qmask) = split(Encoder(b)(docs))
    assert t == [bos, 4, 5, eos_id]
    assert g == [bos, *raw_ids(b, "gamma"), eos_id]          # the policy adds what is missing
    assert p == raw_ids(b, "<s> Q: alpha") + raw_ids(b, "A: beta </s>")
    assert p.count(bos) == 1 and p.count(eos_id) == 1
    assert pmask == [0, 0, 0, 1, 1, 1]                       # BOS is prompt, EOS a target
    assert q[0] == bos and q[-1] == eos_id and qmask[0] == 0 and qmask[-1] == 1


@pytest.mark.parametrize("bos, eos", [("auto", "auto"), ("always", "always")])
def test_special_strings_parsed_as_ids_are_not_doubled(spm: Path, bos: str, eos: str) -> None:
    """``--special-tokens-in-text``: a text written as ``<s>...</s>`` holds the real ids."""
    b = TokenizerBundle(TokenizeConfig(tokenizer=str(spm), bos=bos, eos=eos,
                                       special_tokens_in_text=True))
    assert b.add_bos and b.add_eos
    text = "<s>alpha beta gamma</s>"
    got = raw_ids(b, text)
    assert got[0] == b.bos_id and got[-1] == b.eos_id, "guard: the text's ids hold BOS and EOS"
    docs = [Doc(TEXT, 0, 1, text=text),
            Doc(PROMPT, 0, 2, prompt="<s>[INST] alpha [/INST]", completion=" beta</s>"),
            Doc(TEXT, 0, 3, text="delta")]
    (t, _), (p, pmask), (d, _) = split(Encoder(b)(docs))
    assert t == got
    assert p.count(b.bos_id) == 1 and p[0] == b.bos_id
    assert p.count(b.eos_id) == 1 and p[-1] == b.eos_id and pmask[-1] == 1
    assert d == [b.bos_id, *raw_ids(b, "delta"), b.eos_id]  # the policy still adds what is missing


def test_chat_template_rendering_bos_and_eos_with_eos_always(spm: Path) -> None:
    """The spm family's template renders ``{{ bos_token }}`` first and ``eos_token`` after each
    assistant turn; ``--eos always`` must not add another after the last one."""
    b = TokenizerBundle(TokenizeConfig(tokenizer=str(spm), eos="always"))
    assert b.add_bos and b.eos_after_chat
    msgs = [("user", "alpha"), ("assistant", "beta"), ("user", "gamma"), ("assistant", "delta")]
    rendered = b.renderer.render(msgs)
    assert rendered.startswith("<s>") and rendered.endswith("</s>"), "guard: template markup"
    (ids, mask), = split(Encoder(b)([Doc(CHAT, 0, 1, messages=msgs)]))
    assert ids.count(b.bos_id) == 1 and ids[0] == b.bos_id
    assert ids.count(b.eos_id) == 2 and ids[-1] == b.eos_id and ids[-2] != b.eos_id
    assert mask[0] == 0 and mask[-1] == 1
