"""Tokenizer engines on the corpus's texts in memory: fastprep's backends against the peers.

What is timed: encoding every text of the corpus (:func:`conftest.corpus`), in ~1 MiB batches
as ``prepare`` hands them to a tokenizer call, to token ids a program can use, with special-token
strings kept as text, each library on its own default thread pool (all cores; the one-thread
figures, which need a fresh process per case, stay in ``bench_backends.py``). The tokenizer is
loaded before the clock starts.

- ``fastprep-fastokens`` / ``fastprep-hf``: :class:`fastprep.stages.backends.FastokensBackend`
  and :class:`~fastprep.stages.backends.HFBackend` exactly as ``prepare`` calls them
  (``encode(batch)`` -> one flat uint32 array + offsets per batch).
- ``tokenizers`` (the peer and the reference): ``Tokenizer.encode_batch_fast`` used directly,
  ids taken out of each ``Encoding`` as a list (what a user's own loop does).
- ``tiktoken`` (where installed): a ``tiktoken.Encoding`` built from the same byte-level BPE
  (:func:`tiktoken_encoding`), ``encode_ordinary_batch``. tiktoken merges the adjacent pair
  whose result has the lowest rank, ``tokenizers`` the pair with the lowest merge index, so the
  two agree only when ids were assigned in merge order; that is checked on the file, and the
  ids of every document are then compared with the reference: a difference fails the case.

Before any timing, every case's ids for every document must equal ``tokenizers``'.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from suite import BENCH_HINT, Bench, Corpus, Ids

pytestmark = pytest.mark.benchmark(group="backends")

# GPT-2's pre-tokenizer pattern: what tokenizers' ByteLevel(use_regex=True) splits with
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a vocabulary entry uses -> the byte."""
    from fastprep.stages.encode import byte_alphabet

    return byte_alphabet()


def tiktoken_encoding(tokenizer_json: str) -> Any:
    """A ``tiktoken.Encoding`` equivalent to a byte-level BPE ``tokenizer.json``, or a skip that
    says which part has no tiktoken counterpart. Mergeable ranks are the vocabulary in byte
    form with its ids as ranks; special tokens are left out (``encode_ordinary`` keeps their
    strings as text, as fastprep does)."""
    tiktoken = pytest.importorskip("tiktoken", reason=f"tiktoken is not installed: {BENCH_HINT}")
    cfg = json.loads(tokenizer_json)
    model, pre = cfg.get("model") or {}, cfg.get("pre_tokenizer") or {}
    why = None
    if model.get("type") != "BPE" or model.get("dropout") or model.get("continuing_subword_prefix"):
        why = "not a plain BPE model"
    elif cfg.get("normalizer") is not None:
        why = "a normalizer (tiktoken has none)"
    elif pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        why = "not tokenizers' ByteLevel pre-tokenizer with the GPT-2 pattern"
    elif any(not t.get("special") for t in cfg.get("added_tokens", [])):
        why = "non-special added tokens (tiktoken has no such rule)"
    if why:
        pytest.skip(f"tiktoken cannot express this tokenizer: {why}")
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    results = [vocab[a + b] for a, b in merges]
    if any(x >= y for x, y in zip(results, results[1:])):
        pytest.skip("tiktoken cannot express this tokenizer: ids are not in merge order")
    special = {t["content"] for t in cfg.get("added_tokens", [])}
    dec = byte_decoder()
    ranks = {bytes(dec[c] for c in tok): i for tok, i in vocab.items() if tok not in special}
    return tiktoken.Encoding("fastprep-bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={})


def _encoder(case: str, corpus: Corpus) -> Any:
    """The batch -> ids function of one case (the tokenizer is loaded here, outside the clock)."""
    raw = corpus.tokenizer_json
    if case == "fastprep-fastokens":
        from fastprep.stages.backends import FastokensBackend

        return FastokensBackend(raw).encode
    if case == "fastprep-hf":
        from tokenizers import Tokenizer

        from fastprep.stages.backends import HFBackend

        return HFBackend(Tokenizer.from_str(raw)).encode
    if case == "tokenizers":
        from tokenizers import Tokenizer

        tk = Tokenizer.from_str(raw)
        tk.encode_special_tokens = True
        return lambda b: [e.ids for e in tk.encode_batch_fast(b, add_special_tokens=False)]
    enc = tiktoken_encoding(raw)
    return enc.encode_ordinary_batch


def _as_ids(case: str, out: list[Any]) -> Ids:
    if case.startswith("fastprep"):
        return Ids.concat(out)
    return Ids.from_lists([ids for batch in out for ids in batch])


@pytest.mark.parametrize("case", ["fastprep-fastokens", "fastprep-hf", "tokenizers", "tiktoken"])
def test_backends(bench: Bench, corpus: Corpus, reference_ids: Ids, case: str) -> None:
    encode = _encoder(case, corpus)
    batches = corpus.batches()

    def run() -> list[Any]:
        return [encode(b) for b in batches]

    def check(out: list[Any]) -> None:
        got = _as_ids(case, out)
        assert got.offsets.size - 1 == len(corpus.texts) and reference_ids.tokens > 0
        assert got.equals(reference_ids), (
            f"{case} ids differ from tokenizers': {got.first_difference(reference_ids)}")

    bench(run, check, role="peer" if case in ("tokenizers", "tiktoken") else "fastprep",
          reference=case == "tokenizers", mb=round(corpus.mb, 2), documents=len(corpus.texts),
          tokens=reference_ids.tokens, batches=len(batches),
          bytes_per_token=round(corpus.mb * 1e6 / reference_ids.tokens, 2))


def test_tiktoken_conversion_is_checked(corpus: Corpus) -> None:
    """The conversion is what the tiktoken case relies on: on the probe set the ids match
    ``tokenizers`` (a guard that the case compares real encodings, not two empty lists)."""
    from tokenizers import Tokenizer

    from fastprep.stages.backends import probe_texts

    enc = tiktoken_encoding(corpus.tokenizer_json)
    tk = Tokenizer.from_str(corpus.tokenizer_json)
    tk.encode_special_tokens = True
    texts = probe_texts()
    ref = [e.ids for e in tk.encode_batch_fast(texts, add_special_tokens=False)]
    got = enc.encode_ordinary_batch(texts)
    assert sum(map(len, ref)) > len(texts)
    bad = [texts[i][:40] for i in range(len(texts)) if ref[i] != got[i]]
    assert not bad, f"tiktoken differs from tokenizers on {len(bad)} probes, e.g. {bad[:3]}"
    assert np.array_equal(np.concatenate([np.array(x, np.int64) for x in got if x]),
                          np.concatenate([np.array(x, np.int64) for x in ref if x]))
