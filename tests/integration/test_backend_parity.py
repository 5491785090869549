"""The tokenizer backend never changes a byte of the dataset: for every tokenizer family,
`--tokenizer-backend hf` and `auto` write identical shards for text, prompt/completion and chat
records, hostile text included; a backend that disagrees with tokenizers is caught (parity gate,
spot checks) and replaced, or refused when asked for by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import tokenizer_families as families
from conftest import make_texts, prep_config, write_jsonl
from fastprep import DedupeConfig, MinHashConfig, PackConfig, open_dataset, prepare
from fastprep.stages.backends import BackendError, FastokensBackend

pytest.importorskip("fastokens")  # the fast backend is a dependency where wheels exist

HOSTILE = ["tab\there  and\u00a0nbsp", "emoji 😀👍🏽👨‍👩‍👧 and ZWJ", "日本語のテキスト中文한국어",
           "combining e\u0301\u0301 and ﬁ ligature", "digits 1234567890 3.14159e-10",
           "special strings <|endoftext|> <|im_end|> <s> [SEP] in text", "a" * 3000,
           "   leading and trailing   ", "code: if (x) { return y; } // ok\n\tdone",
           "mixed\r\nnewlines\rand\nmore", "\u200b\u200d zero width", "don't WON'T I'd"]


def corpus(tmp: Path) -> list[str]:
    texts = make_texts(300, seed=11, max_words=80) + HOSTILE
    write_jsonl(tmp / "text.jsonl", [{"text": t} for t in texts], raw_lines=[b"{bad json"])
    write_jsonl(tmp / "prompt.jsonl", [{"prompt": f"Q{i}: {t[:40]}\n", "completion": f" {t[40:90]}."}
                                       for i, t in enumerate(texts[:120])])
    write_jsonl(tmp / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": t[:60]},
        {"role": "assistant", "content": t[60:] or "ok"},
        {"role": "user", "content": "and <|im_end|> or <|eot_id|> inside?"},
        {"role": "assistant", "content": "still text: <|im_start|>, </s> and <|endoftext|>"}]}
        for t in texts[:80]])
    return [str(tmp / f) for f in ("text.jsonl", "prompt.jsonl", "chat.jsonl")]


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.name.startswith(("shard-", "quarantine"))}


def run(inputs: list[str], out: Path, tok: Path, backend: str, **kw):
    kw.setdefault("pack", PackConfig(seq_len=256))
    return prepare(prep_config(inputs, out, tok, tokenizer_backend=backend, **kw))


@pytest.mark.parametrize("family", families.FAMILIES)
def test_hf_and_auto_give_the_same_bytes(tmp_path: Path, family: str) -> None:
    tok = families.build(family, tmp_path / "tok")
    inputs = corpus(tmp_path)
    ref = run(inputs, tmp_path / "hf", tok, "hf")
    auto = run(inputs, tmp_path / "auto", tok, "auto", workers=2, task_bytes=20000)
    assert shard_hashes(tmp_path / "auto") == shard_hashes(tmp_path / "hf")
    assert len(shard_hashes(tmp_path / "hf")) >= 3  # guard: shards and the quarantine were compared
    assert auto.counts == ref.counts
    used = auto.manifest.tokenizer["backend"]
    if family == "wordpiece":
        assert used["name"] == "hf" and "WordPiece" in used["fallback_reason"]
    elif family == "spm":
        # fastokens 0.3.5 still emits the control id of a special token that is also a model
        # vocabulary entry (<s>, </s>) with split_special_tokens: the probe set catches it
        assert used["name"] == "hf" and "parity-gate" in used["fallback_reason"]
    else:
        assert used["name"] == "fastokens" and used["parity_gate"]["mismatches"] == 0
        assert used["parity_gate"]["texts"] > 200
    assert ref.manifest.tokenizer["backend"]["name"] == "hf"
    # every chat kept its assistant targets, and no special id came out of message content
    ds = open_dataset(tmp_path / "auto")
    assert ds.has_loss_mask and ref.counts["documents_by_shape"]["chat"] == 80


def test_minhash_and_concat_do_not_depend_on_the_backend(tmp_path: Path, tokenizer_dir: Path) -> None:
    inputs = corpus(tmp_path)
    kw = dict(dedupe=DedupeConfig(minhash=MinHashConfig(threshold=0.8)),
              pack=PackConfig(seq_len=128, mode="concat"))
    run(inputs, tmp_path / "hf", tokenizer_dir, "hf", **kw)
    run(inputs, tmp_path / "fast", tokenizer_dir, "fastokens", **kw)
    assert shard_hashes(tmp_path / "fast") == shard_hashes(tmp_path / "hf")


def _planted(word: str):
    """fastokens with one wrong id for any text holding ``word``."""
    real = FastokensBackend.encode

    def encode(self, texts, special=False):
        ids, off = real(self, texts, special)
        ids = ids.copy()
        for i, t in enumerate(texts):
            if word in t and off[i + 1] > off[i]:
                ids[off[i]] = (int(ids[off[i]]) + 1) % 100
        return ids, off

    return encode


def test_parity_gate_catches_a_planted_mismatch_and_falls_back(tmp_path: Path, tokenizer_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = corpus(tmp_path)
    ref = run(inputs, tmp_path / "hf", tokenizer_dir, "hf")
    # "terse" is in the first chat's system turn: among the documents the gate reads
    monkeypatch.setattr(FastokensBackend, "encode", _planted("terse"))
    stats = run(inputs, tmp_path / "auto", tokenizer_dir, "auto")
    used = stats.manifest.tokenizer["backend"]
    assert used["name"] == "hf" and "parity-gate" in used["fallback_reason"]
    assert any("tokenizing with tokenizers (hf)" in n for n in stats.notes)
    assert shard_hashes(tmp_path / "auto") == shard_hashes(tmp_path / "hf")
    assert stats.counts == ref.counts
    with pytest.raises(BackendError, match="--tokenizer-backend fastokens: .*parity-gate"):
        run(inputs, tmp_path / "explicit", tokenizer_dir, "fastokens")


def test_spot_check_reruns_the_task_on_tokenizers(tmp_path: Path, tokenizer_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A document past the gate's sample where the fast backend is wrong: the spot checks find
    it, the task is redone on tokenizers (auto) or the run stops naming it (explicit)."""
    texts = make_texts(600, seed=3)
    texts[450] = "the planted zzmarker document with enough words to tokenize"
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    inputs = [str(tmp_path / "a.jsonl")]
    run(inputs, tmp_path / "hf", tokenizer_dir, "hf")
    monkeypatch.setattr("fastprep.pipeline.backend.GATE_DOCS", 50)
    monkeypatch.setattr(FastokensBackend, "encode", _planted("zzmarker"))
    stats = run(inputs, tmp_path / "auto", tokenizer_dir, "auto", spot_check=1.0)
    spot = stats.manifest.tokenizer["backend"]["spot_checks"]
    assert stats.manifest.tokenizer["backend"]["name"] == "fastokens"  # the gate passed
    assert spot["tasks_rerun_on_hf"] == 1 and spot["mismatches"][0]["line"] == 451
    assert shard_hashes(tmp_path / "auto") == shard_hashes(tmp_path / "hf")
    assert any("re-tokenized with tokenizers" in n for n in stats.notes)
    with pytest.raises(BackendError, match=r"a\.jsonl:451"):
        run(inputs, tmp_path / "explicit", tokenizer_dir, "fastokens", spot_check=1.0)


def test_spot_checks_sample_deterministically_and_count(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in make_texts(2000, seed=5)])
    a = run([str(tmp_path / "a.jsonl")], tmp_path / "o1", tokenizer_dir, "auto", spot_check=0.05)
    b = run([str(tmp_path / "a.jsonl")], tmp_path / "o2", tokenizer_dir, "auto", spot_check=0.05,
            workers=2, task_bytes=5000)
    sa = a.manifest.tokenizer["backend"]["spot_checks"]
    assert sa == b.manifest.tokenizer["backend"]["spot_checks"]
    assert 40 < sa["texts"] < 170 and sa["tasks_rerun_on_hf"] == 0  # ~5% of 2,000, whatever the split


def test_manifest_records_the_backend_and_only_that_differs(tmp_path: Path, tokenizer_dir: Path) -> None:
    inputs = corpus(tmp_path)
    run(inputs, tmp_path / "hf", tokenizer_dir, "hf")
    run(inputs, tmp_path / "auto", tokenizer_dir, "auto")
    m = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("hf", "auto")]
    assert m[0]["tokenizer"].pop("backend")["name"] == "hf"
    assert m[1]["tokenizer"].pop("backend")["name"] == "fastokens"
    m[0]["recipe"]["read"]["paths"] = m[1]["recipe"]["read"]["paths"] = []
    assert m[0] == m[1]


def test_chat_ids_equal_whole_text_encoding_when_content_is_clean(tokenizer_dir: Path, tokenizer) -> None:
    """Piecewise encoding between markup specials is what tokenizers does on the whole rendered
    text with special tokens recognized, as long as the content holds no special string."""
    from fastprep.stages.encode import Encoder
    from fastprep.stages.records import CHAT, Doc
    from fastprep.stages.tokenize import TokenizeConfig, TokenizerBundle

    b = TokenizerBundle(TokenizeConfig(tokenizer=str(tokenizer_dir), bos="never"))
    docs = [Doc(CHAT, 0, i, messages=[("system", "Be brief."), ("user", t[:30]),
                                      ("assistant", t[30:] + " 😀 ünï")])
            for i, t in enumerate(make_texts(40, seed=9))]
    for backend in (None, FastokensBackend(b.json_bytes.decode())):
        enc = Encoder(b, backend)(docs)
        starts = np.concatenate([[0], np.cumsum(enc.lengths)])
        for k, d in enumerate(docs):
            text, _ = b.renderer.render_with_spans(d.messages)
            want = tokenizer.encode(text, add_special_tokens=False).ids
            assert enc.ids[starts[k]:starts[k + 1]].tolist() == want
