"""A vocabulary over 65,536 ids stored as uint32, end to end: prepare, the manifest, the files,
``open_dataset``, ``verify`` and the torch loader.

The tokenizer is a small byte-level BPE whose merged tokens are renumbered above 70,000 (the
ids in between are unreachable ``<unused_N>`` entries, as real large vocabularies reserve), so
nearly every id of the data is above 65,535: a uint16 anywhere on the way (spill, rows, shard
files, the loader's conversion) wraps them and the round trip fails. Bug caught: ids silently
truncated modulo 2**16 for Llama-3/Qwen-size vocabularies.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import make_texts, prep_config, write_jsonl
from fastprep import DedupeConfig, open_dataset, prepare, verify

SHIFT = 70_000
SEQ_LEN = 128


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastprep.sample import SPECIAL_TOKENS, train_tokenizer

    folder = train_tokenizer(make_texts(500, seed=2), tmp_path_factory.mktemp("tok") / "big",
                             vocab_size=600)
    cfg = json.loads((folder / "tokenizer.json").read_text())
    vocab = cfg["model"]["vocab"]
    keep = len(SPECIAL_TOKENS) + 256  # the special tokens and the byte alphabet keep their ids
    assert all(vocab[t] < len(SPECIAL_TOKENS) for t in SPECIAL_TOKENS)
    new = {t: i if i < keep else i + SHIFT for t, i in vocab.items()}
    new.update({f"<unused_{j}>": keep + j for j in range(SHIFT)})
    assert sorted(new.values()) == list(range(len(new)))  # contiguous, as real vocabularies are
    cfg["model"]["vocab"] = new
    (folder / "tokenizer.json").write_text(json.dumps(cfg))
    return folder


def corpus() -> list[dict]:
    texts = list(dict.fromkeys(make_texts(150, seed=9, max_words=40)))
    return [{"text": t} if i % 2 else {"prompt": f"Q: {t[:30]}", "completion": t[30:] or "x"}
            for i, t in enumerate(texts)]


def expected_documents(folder: Path, recs: list[dict]) -> Counter:
    """Each record's ids as tokenizers gives them, with the folder's BOS and EOS."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")

    def enc(s: str) -> list[int]:
        return tok.encode(s, add_special_tokens=False).ids

    bodies = [enc(r["text"]) if "text" in r else enc(r["prompt"]) + enc(r["completion"]) for r in recs]
    return Counter((bos, *body, eos) for body in bodies)


def stored_documents(ds) -> Counter:
    out: Counter = Counter()
    for shard in ds.shards:
        ids, seg = np.asarray(shard.arrays["input_ids"]), np.asarray(shard.arrays["segment_ids"])
        for r in range(shard.rows):
            for s in range(1, int(seg[r].max()) + 1):
                out[tuple(ids[r][seg[r] == s].tolist())] += 1
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, big_vocab: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("big")
    src = write_jsonl(root / "d.jsonl", corpus())
    out = {}
    for backend in ("hf", "fastokens"):
        out[backend] = root / backend
        prepare(prep_config([src], out[backend], big_vocab, seq_len=SEQ_LEN, shard_rows=8,
                            tokenizer_backend=backend, dedupe=DedupeConfig(exact=False)))
    return out


@pytest.mark.parametrize("backend", ["hf", "fastokens"])
def test_ids_over_65535_round_trip_as_uint32(big_vocab: Path, prepared: dict[str, Path],
                                             backend: str) -> None:
    out = prepared[backend]
    ds = verify(out)
    m = ds.manifest
    assert m.tokenizer["backend"]["name"] == backend  # guard: that backend really ran
    assert m.vocab_size > 1 << 16
    assert np.dtype(m.dtypes["input_ids"]) == np.dtype("<u4")
    for shard in ds.shards:
        assert shard.arrays["input_ids"].dtype == np.dtype("<u4")
        f = out / next(s for s in m.shards if s.name == shard.name).files["input_ids"]["file"]
        assert f.stat().st_size == shard.rows * SEQ_LEN * 4
    reopened = open_dataset(out, verify_checksums=True)
    stored = stored_documents(reopened)
    high = max(max(d) for d in stored)
    assert high > SHIFT, "guard: ids above 65,535 are in the data"
    assert sum(t > 0xFFFF for d in stored for t in d) > 0.5 * sum(len(d) for d in stored)
    assert stored == expected_documents(big_vocab, corpus())
    assert len(ds.shards) > 2  # guard: several shards (ids cross shard files)


def test_torch_loader_hands_out_the_same_uint32_ids(prepared: dict[str, Path]) -> None:
    torch = pytest.importorskip("torch")
    from fastprep.train.loader import PackedLoader, PackedRows, collate

    out = prepared["hf"]
    ds = open_dataset(out)
    on_disk = np.concatenate([np.asarray(s.arrays["input_ids"]) for s in ds.shards]).astype(np.int64)
    rows = PackedRows(out)
    batch = collate(rows.gather(range(len(rows))))
    assert batch["input_ids"].dtype == torch.int64
    assert np.array_equal(batch["input_ids"].numpy(), on_disk)
    assert int(batch["input_ids"].max()) > SHIFT  # guard
    # labels are next tokens: every real target is one of the stored (high) ids
    lab = batch["labels"]
    targets = lab[lab != -100]
    assert int(targets.min()) >= 0 and int(targets.max()) > SHIFT
    assert torch.equal(lab[:, :-1][lab[:, :-1] != -100],
                       batch["input_ids"][:, 1:][lab[:, :-1] != -100])
    # through the loader: one epoch, no shuffle, the same rows in the same order
    loader = PackedLoader(rows, 3, shuffle=False, drop_last=False, num_workers=1, pin_memory=False)
    got = torch.cat([b["input_ids"] for b in loader])
    assert np.array_equal(got.numpy(), on_disk)
