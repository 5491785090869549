"""The backend interface (fastprep.stages.backends): both backends give identical flat ids on
the probe set, the static check refuses what the fast one is known to get wrong, and the spot
sample is a pure function of the document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastprep.stages.backends import (FastokensBackend, HFBackend, ParityReport, compare,
                                      probe_texts, spot_sample, support)

pytest.importorskip("fastokens")


def test_flat_ids_equal_per_text_encodings(tokenizer_dir: Path, tokenizer) -> None:
    texts = probe_texts()
    fast = FastokensBackend((tokenizer_dir / "tokenizer.json").read_text())
    for backend in (HFBackend(tokenizer), fast):
        ids, off = backend.encode(texts)
        assert ids.dtype == np.uint32 and off.dtype == np.int64 and off.shape == (len(texts) + 1,)
        tokenizer.encode_special_tokens = True
        for i in (0, 1, 10, 55, len(texts) - 1):
            assert ids[off[i]:off[i + 1]].tolist() == tokenizer.encode(texts[i], add_special_tokens=False).ids
        tokenizer.encode_special_tokens = False
    report = compare(fast, HFBackend(tokenizer), texts)
    assert report.mismatches == 0 and report.texts == len(texts) > 200 and report.tokens > 10_000
    # special strings stay text unless asked: "<s>" is one id only with special=True
    bos = tokenizer.token_to_id("<s>")
    assert bos not in fast.encode(["a <s> b"])[0].tolist()
    assert bos in fast.encode(["a <s> b"], special=True)[0].tolist()


def test_compare_counts_and_names_a_difference(tokenizer_dir: Path, tokenizer) -> None:
    class OffByOne(HFBackend):
        def encode(self, texts, special=False):
            ids, off = super().encode(texts, special)
            ids = ids.copy()
            ids[off[2]] += 1  # the third text's first token
            return ids, off

    r = compare(OffByOne(tokenizer), HFBackend(tokenizer), ["a", "b", "c", "d"], names=list("abcd"),
                report=ParityReport())
    assert (r.mismatches, r.first, r.texts) == (1, "c", 4)


def test_static_support_check(tokenizer_dir: Path) -> None:
    good = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert support(json.dumps(good), "fastokens") is None
    assert support(json.dumps(good), "hf") is None
    cases = {"WordPiece": {**good, "model": {**good["model"], "type": "WordPiece"}},
             "dropout": {**good, "model": {**good["model"], "dropout": 0.1}},
             "normalizer BertNormalizer": {**good, "normalizer": {"type": "BertNormalizer"}},
             "\\w": {**good, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                 {"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated"},
                 {"type": "ByteLevel"}]}}}
    for why, cfg in cases.items():
        reason = support(json.dumps(cfg), "fastokens")
        assert reason is not None and why in reason, (why, reason)


def test_spot_sample_is_a_function_of_the_document() -> None:
    docs = [f"document number {i} with some words" for i in range(20000)]
    picked = [spot_sample(d, 0.01) for d in docs]
    assert picked == [spot_sample(d, 0.01) for d in docs]
    assert 120 < sum(picked) < 290  # ~1%
    assert not any(spot_sample(d, 0.0) for d in docs[:100]) and all(spot_sample(d, 1.0) for d in docs[:100])
