"""Shared fixtures: a small byte-level BPE trained in-process (no download) and corpus writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Keep the tokenizer's Rust pool small and deterministic under pytest on a 2-core machine.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega the a of to and in is it that for on with as was").split()


def make_texts(n: int, seed: int = 0, min_words: int = 3, max_words: int = 60) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
            for _ in range(n)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as transformers saves it: tokenizer.json, tokenizer_config.json (BOS/EOS/pad,
    add_bos_token, ChatML template), special_tokens_map.json."""
    from fastprep.sample import train_tokenizer

    corpus = make_texts(2000) + ["Ünïcödé façade naïve 日本語 テキスト — “quotes” … 😀 \t\n code() {}"] * 20
    return train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "model", vocab_size=600)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def prep_config(inputs, out, tok, seq_len=64, **kw):
    """A PrepareConfig for tests: in-process (one worker) unless ``workers`` says otherwise,
    no progress line; ``kw`` are Recipe / RunOptions fields."""
    from fastprep import PackConfig, PrepareConfig, ReadConfig, TokenizeConfig

    kw.setdefault("pack", PackConfig(seq_len=seq_len))
    kw.setdefault("read", ReadConfig(paths=tuple(str(i) for i in inputs)))
    kw.setdefault("tokenize", TokenizeConfig(tokenizer=str(tok)))
    kw.setdefault("workers", 1)  # in-process; the worker-count tests use 2
    kw.setdefault("progress", False)
    return PrepareConfig.of(out=str(out), **kw)


def write_jsonl(path: Path, records: list, raw_lines: list[bytes] | None = None) -> Path:
    """Records are dicts/values dumped as JSON; raw_lines are appended verbatim (bad input)."""
    with open(path, "wb") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False).encode() + b"\n")
        for line in raw_lines or []:
            f.write(line + b"\n")
    return path
