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


# ---- tests that start Ray in their own process -------------------------------------------
# Ray 2.60's core worker has aborted a whole pytest process here (task_manager.cc: "Check
# failed: it != submissible_tasks_.end() Tried to complete task that was not pending", a bug
# Ray asks to be reported), taking every later test's result with it. A test that starts Ray
# in-process therefore runs in a pytest process of its own: `in_own_process` skips it in the
# parent (where `run_in_own_process` runs it), and the child runs it for real.
IN_CHILD = "FASTPREP_TEST_IN_OWN_PROCESS"
in_own_process = pytest.mark.skipif(os.environ.get(IN_CHILD) != "1",
                                     reason="runs in a process of its own (run_in_own_process)")


def run_in_own_process(nodeid: str, attempts: int = 2) -> None:
    """Run the test ``nodeid`` in a fresh pytest process; a process that dies without a
    pytest result (Ray's abort) is run once more, a test failure is reported as it is."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    for _ in range(attempts):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", nodeid],
                           cwd=root, env={**os.environ, IN_CHILD: "1"}, capture_output=True,
                           text=True, timeout=900)
        out = r.stdout + r.stderr
        if r.returncode == 0 and " passed" in out and "skipped" not in out:
            return
        if r.returncode == 0 and " skipped" in out:  # e.g. ray not installed: say why
            pytest.skip(f"{nodeid} skipped in its own process: {out.strip().splitlines()[-1]}")
        if r.returncode in (1, 2, 3, 4) and (" failed" in out or " error" in out):
            pytest.fail(f"{nodeid} failed in its own process:\n{out[-4000:]}")
    pytest.fail(f"{nodeid}: its process died without a result {attempts} times "
                f"(status {r.returncode}):\n{out[-4000:]}")
