"""``fastprep prepare`` end to end against ``datasets.map`` + ``transformers`` on the same file.

Input: the corpus's ``text.jsonl`` (``--bench-mb`` MB of text; tiny: ~0.5 MB) and its
tokenizer folder. Equal work on both sides: read the JSONL, tokenize every text with special
strings kept as text, append EOS, and write one token stream in document order to disk.

- ``fastprep`` / ``fastprep-hf``: :func:`fastprep.prepare` in this process (imports and
  interpreter start excluded, as for the peer) with ``--dedupe none``, no cleaning (no Unicode
  normalisation, newline or whitespace repair), ``--bos never --eos always`` and ``--pack concat``
  without the row shuffle, so its rows are the peer's stream cut every L = 2048 tokens;
  ``--tokenizer-backend auto`` (fastokens behind its parity gate) and ``hf`` (tokenizers), one
  worker per core (tiny: one, in-process). Documents that are empty are dropped by fastprep
  (counted as ``empty``) and kept as a lone EOS by the peer; the ids are compared over the
  documents fastprep keeps.
- ``datasets-transformers`` (the peer): ``bench_prepare.py``'s ``hf-transformers`` case:
  ``datasets.load_dataset("json")`` into a fresh cache folder, ``.map(batched=True)`` calling
  ``transformers.PreTrainedTokenizerFast`` (``split_special_tokens=True``, fastprep's rule), EOS
  appended, then nanoGPT's ``prepare.py`` write: one flat uint16 ``train.bin`` filled from 1024
  contiguous shards.

Checked before timing: fastprep's rows, read back, are exactly the reference ids
(``tokenizers``, :func:`conftest.reference_ids`) of every kept document with EOS, in order, and
its counts agree; the peer's ``train.bin`` is the reference of every document with EOS. The
whole-process figures (peak RSS, start-up, the CLI, the usual pipelines at 50-200 MB) stay in
``bench_prepare.py`` and ``bench_stages.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench_prepare import nanogpt_write
from suite import BENCH_HINT, Bench, Corpus, Ids, Sizes, first_mismatch

pytestmark = pytest.mark.benchmark(group="prepare")

SEQ_LEN = 2048


def fastprep_config(corpus: Corpus, out: Path, backend: str, workers: int) -> Any:
    """The recipe that does the peer's work and nothing more (see the module docstring)."""
    from fastprep import (CleanConfig, DedupeConfig, PackConfig, PrepareConfig, ReadConfig,
                          TokenizeConfig)

    return PrepareConfig.of(
        out=str(out), read=ReadConfig(paths=(str(corpus.path),)),
        tokenize=TokenizeConfig(tokenizer=str(corpus.tokenizer), bos="never", eos="always"),
        clean=CleanConfig(unicode="none", fix_newlines=False, strip_control=False, strip=False),
        dedupe=DedupeConfig(exact=False),
        pack=PackConfig(seq_len=SEQ_LEN, mode="concat", shuffle=False),
        workers=workers, tokenizer_backend=backend, progress=False, quiet=True)


def fastprep_stream(out: Path) -> np.ndarray:
    """The real tokens of a dataset's rows, in row order."""
    from fastprep import open_dataset

    ds = open_dataset(out)
    ids = np.concatenate([s.arrays["input_ids"].reshape(-1) for s in ds.shards])
    seg = np.concatenate([s.arrays["segment_ids"].reshape(-1) for s in ds.shards])
    return ids[seg != 0].astype(np.uint32)


def peer_run(corpus: Corpus, workdir: Path) -> Path:
    """datasets + transformers + nanoGPT's write; returns the train.bin path."""
    import datasets
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(corpus.tokenizer / "tokenizer.json"),
                                  bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    eos = tok.eos_token_id

    def process(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tok(batch["text"], split_special_tokens=True)
        ids = [x + [eos] for x in enc["input_ids"]]
        return {"ids": ids, "len": [len(x) for x in ids]}

    ds = datasets.load_dataset("json", data_files=str(corpus.path), split="train",
                               cache_dir=str(workdir / "cache"))
    ds = ds.map(process, batched=True, remove_columns=ds.column_names)
    path = workdir / "train.bin"
    nanogpt_write(ds, path)  # the same write as bench_prepare.py's hf-transformers case
    return path


def _eos(corpus: Corpus) -> int:
    from tokenizers import Tokenizer

    eos = Tokenizer.from_str(corpus.tokenizer_json).token_to_id("</s>")
    assert eos is not None
    return int(eos)


@pytest.mark.parametrize("case", ["fastprep", "fastprep-hf", "datasets-transformers"])
def test_prepare(bench: Bench, sizes: Sizes, corpus: Corpus, reference_ids: Ids, case: str,
                 tmp_path: Path) -> None:
    eos = _eos(corpus)
    kept = np.array([len(t) > 0 for t in corpus.texts])
    sizes_info = {"mb": round(corpus.mb, 2), "documents": len(corpus.texts),
                  "tokens": reference_ids.tokens + int(kept.sum())}
    rounds = iter(range(1 << 30))

    def fresh() -> tuple[Path]:
        return (Path(tempfile.mkdtemp(prefix=f"r{next(rounds)}-", dir=tmp_path)),)

    def clean(workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)

    if case == "datasets-transformers":
        pytest.importorskip("datasets", reason=f"datasets is not installed: {BENCH_HINT}")
        pytest.importorskip("transformers", reason=f"transformers is not installed: {BENCH_HINT}")
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        want = reference_ids.with_eos(eos)

        def check_peer(path: Path) -> None:
            got = np.fromfile(path, dtype=np.uint16).astype(np.uint32)
            assert np.array_equal(got, want), f"train.bin differs: {first_mismatch(got, want)}"
        bench(lambda wd: peer_run(corpus, wd), check_peer, setup=fresh, teardown=clean,
              role="peer", num_proc="None", **sizes_info)
        return

    from fastprep import prepare

    backend = "hf" if case == "fastprep-hf" else "auto"
    want = reference_ids.with_eos(eos, keep=kept)

    def run(workdir: Path) -> Any:
        return prepare(fastprep_config(corpus, workdir / "out", backend, sizes.prepare_workers))

    def check(stats: Any) -> None:
        c = stats.counts
        assert c["records_read"] == len(corpus.texts) and c["records_kept"] == int(kept.sum())
        assert c["tokens"] == c["tokens_kept"] == want.size and c["tokens_dropped"] == 0
        got = fastprep_stream(Path(stats.out))
        assert np.array_equal(got, want), f"{case}: rows differ: {first_mismatch(got, want)}"
        bench.info.update(rows=c["rows"], backend=stats.manifest.tokenizer["backend"]["name"])
    bench(run, check, setup=fresh, teardown=clean, role="fastprep", seq_len=SEQ_LEN,
          workers=sizes.prepare_workers or os.cpu_count(), **sizes_info)
