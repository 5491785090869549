"""Exactly one BOS per document in prepared rows, for tokenizers whose post-processor adds BOS.

Llama-2 (``TemplateProcessing(single="<s> $A")``) and Llama-3 (a ``Sequence`` holding
``TemplateProcessing(single="<|begin_of_text|> $A")``) ship no ``add_bos_token`` in
``tokenizer_config.json``: the post-processor is the only place that says the model wants BOS.
Counting BOS ids per segment of the written rows catches both ways to get it wrong: a backend
that encodes with the post-processor on, plus the policy's BOS (two BOS), and a policy that does
not see the post-processor (no BOS). Every record shape, on every backend that runs the
tokenizer exactly; chat templates that render ``{{ bos_token }}`` themselves included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tokenizer_families as families
from conftest import make_texts, prep_config, write_jsonl
from fastprep import prepare, verify

SEQ_LEN = 256


def llama2(folder: Path) -> Path:
    """The spm family with Llama-2's post-processor instead of ``add_bos_token``."""
    from tokenizers import Tokenizer, processors

    families.build("spm", folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("add_bos_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def records() -> list[dict]:
    texts = make_texts(60, seed=3, max_words=20)
    out: list[dict] = []
    for i, t in enumerate(texts):
        if i % 3 == 0:
            out.append({"text": t})
        elif i % 3 == 1:
            out.append({"prompt": f"Q{i}: {t}", "completion": f" answer {i}."})
        else:
            out.append({"messages": [{"role": "user", "content": t},
                                     {"role": "assistant", "content": f"reply {i}"}]})
    return out


def documents(ds) -> list[list[int]]:
    """Every segment of every row, in row order."""
    out = []
    for shard in ds.shards:
        ids = np.asarray(shard.arrays["input_ids"])
        seg = np.asarray(shard.arrays["segment_ids"])
        for r in range(shard.rows):
            for s in range(1, int(seg[r].max()) + 1):
                out.append(ids[r][seg[r] == s].tolist())
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama")
    return {"llama2": llama2(root / "llama2"), "llama3": families.build("llama3", root / "llama3")}


# fastokens is not exact on the spm family (its parity gate refuses it): hf only there
@pytest.mark.parametrize("family, backend", [("llama2", "hf"), ("llama3", "hf"),
                                             ("llama3", "fastokens")])
def test_post_processor_bos_gives_exactly_one_bos_per_document(tmp_path: Path, folders: dict[str, Path],
                                                               family: str, backend: str) -> None:
    from tokenizers import Tokenizer

    folder = folders[family]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    bos_token = config["bos_token"]
    bos = tok.token_to_id(bos_token)
    # guard: the post-processor is what adds BOS, and nothing else says so
    assert "add_bos_token" not in config
    assert tok.encode("alpha", add_special_tokens=True).ids[0] == bos
    assert bos not in tok.encode("alpha", add_special_tokens=False).ids
    recs = records()
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    out = tmp_path / "out"
    stats = prepare(prep_config([src], out, folder, seq_len=SEQ_LEN, tokenizer_backend=backend))
    ds = verify(out)
    m = ds.manifest
    assert m.tokenizer["add_bos"] is True and m.tokenizer["bos_id"] == bos
    assert m.tokenizer["backend"]["name"] == backend  # guard: that backend really ran
    assert stats.counts["documents_split"] == 0  # guard: every segment is a whole document
    docs = documents(ds)
    assert len(docs) == len(recs) == stats.counts["records_kept"]
    shapes = stats.counts["documents_by_shape"]
    assert shapes == {"text": 20, "prompt": 20, "chat": 20}
    bad = [d[:4] for d in docs if d.count(bos) != 1 or d[0] != bos]
    assert not bad, f"{len(bad)} documents without exactly one leading BOS, e.g. {bad[:3]}"
    # the EOS of text and prompt documents is not doubled either (chat closes its own turns)
    eos = m.tokenizer["eos_id"]
    closing = [d for d in docs if d[-1] == eos]
    assert len(closing) >= 40 and all(d[-2] != eos for d in closing)
