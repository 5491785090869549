"""Data recipes end to end (issue #16): sources mixed by token share, the validation split,
decontamination and recipe files, each checked against the rows themselves: tokens counted
per row and grouped by the ``source`` array, segments decoded and matched to the documents
they came from."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, make_texts, write_jsonl

from fastprep import open_dataset, verify
from fastprep.cli import main
from fastprep.dataset.format import (
    DOCUMENT_DTYPE,
    DatasetError,
    PackedDataset,
    read_documents,
)

MARKERS = ("srcone", "srctwo", "srcthree")  # the first word of every document of a source


# ---------------------------------------------------------------- helpers

@dataclass
class Corpus:
    """One JSONL file per source (file order = source order), and what each document must
    become: its token sequence (BOS + ids + EOS, tokenized here, not by fastprep)."""

    paths: list[str]
    texts: list[list[str]]
    keys: list[list[tuple[int, ...]]]

    def tokens(self, s: int) -> list[int]:
        return [len(k) for k in self.keys[s]]

    def have(self, s: int) -> int:
        return sum(self.tokens(s))


def doc_key(tokenizer, text: str) -> tuple[int, ...]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return (tokenizer.token_to_id("<s>"), *ids, tokenizer.token_to_id("</s>"))


def marked_texts(marker: str, n: int, seed: int, **kw) -> list[str]:
    return [f"{marker} n{i} {t}" for i, t in enumerate(make_texts(n, seed=seed, **kw))]


def rows_of(ds: PackedDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """input_ids, segment_ids and the source array (None without a mix) of every row."""
    def cat(a: str) -> np.ndarray:
        return np.concatenate([np.asarray(s.arrays[a]) for s in ds.shards])

    return cat("input_ids"), cat("segment_ids"), cat("source") if "source" in ds.manifest.arrays else None


def row_segments(ids: np.ndarray, seg: np.ndarray) -> list[list[tuple[int, ...]]]:
    """Every row's documents as token tuples, in row order."""
    return [[tuple(ids[r][seg[r] == s].tolist()) for s in range(1, int(seg[r].max()) + 1)]
            for r in range(len(ids))]


def decode(tokenizer, key: tuple[int, ...]) -> str:
    assert key[0] == tokenizer.token_to_id("<s>") and key[-1] == tokenizer.token_to_id("</s>")
    return tokenizer.decode(list(key[1:-1]))


def decoded_docs(tokenizer, folder: Path) -> list[str]:
    ids, seg, _ = rows_of(open_dataset(folder))
    return [decode(tokenizer, k) for r in row_segments(ids, seg) for k in r]


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under the dataset folder (val/ included), the manifest without the record of
    which tokenizer backend ran; a stale work folder is no part of the dataset."""
    def content(p: Path) -> bytes:
        if p.name != "manifest.json":
            return p.read_bytes()
        m = json.loads(p.read_text())
        m["tokenizer"].pop("backend", None)
        return json.dumps(m, sort_keys=True).encode()

    return {str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".fastprep-work" not in p.parts}


def prepare(*args: object) -> int:
    return main(["prepare", *map(str, args)])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastprep: error: "), err
    return lines[0]


# ---------------------------------------------------------------- the skewed corpus

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Corpus:
    """Three sources of short documents (all shorter than the rows: one segment each): 600,
    30 and 150 documents, so about 20 : 1 : 5 in tokens."""
    d = tmp_path_factory.mktemp("sources")
    paths, texts, keys = [], [], []
    for name, marker, n, seed in (("a_big", MARKERS[0], 600, 11), ("b_small", MARKERS[1], 30, 12),
                                  ("c_mid", MARKERS[2], 150, 13)):
        t = marked_texts(marker, n, seed, max_words=20)
        paths.append(str(write_jsonl(d / f"{name}.jsonl", [{"text": x} for x in t])))
        texts.append(t)
        keys.append([doc_key(tokenizer, x) for x in t])
    return Corpus(paths, texts, keys)


def two_way(c: Corpus) -> list[int]:
    """Output tokens (= integer weights) of a: holds 10x its share (down-sampled), b: 10x
    short of its share (every document exactly 10 times)."""
    return [c.have(0) // 10, 10 * c.have(1)]


def three_way_outputs(c: Corpus) -> list[int]:
    return [c.have(0) // 10, 10 * c.have(1), 5 * c.have(2) // 2]  # c: 2 epochs and a half


def mix_args(c: Corpus, outputs: list[int], out: Path, tok: Path, *extra: object) -> list[object]:
    """A --mix whose weights are the wanted output tokens and whose --mix-tokens is their sum."""
    return ["--mix", *(f"{p}={w}" for p, w in zip(c.paths, outputs)), "--mix-tokens", sum(outputs),
            "--tokenizer", tok, "--seq-len", 128, "--out", out, *extra]


@pytest.fixture(scope="module")
def three_way(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("mix3") / "out"
    assert prepare(*mix_args(corpus, three_way_outputs(corpus), out, tokenizer_dir,
                             "--max-repeat", 10, "--workers", 1, "--quiet")) == 0
    return out


def check_mix(out: Path, c: Corpus, outputs: list[int]) -> list[list[int]]:
    """The realised mix, computed from the rows, against the weights and the manifest; returns
    how often each document appears in the rows, per source."""
    ds = verify(out)
    m = ds.manifest
    k = len(outputs)
    ids, seg, src = rows_of(ds)
    real = (seg != 0).sum(axis=1)
    by_source = np.bincount(src.astype(np.int64), weights=real, minlength=k).astype(np.int64)
    total = int(by_source.sum())
    assert by_source.size == k and total == m.counts["tokens_kept"] == m.counts["tokens"]
    assert m.mix["tokens"] == sum(outputs)
    assert m.source_names == c.paths[:k]
    seen = Counter(key for row in row_segments(ids, seg) for key in row)
    known = {key for s in range(k) for key in c.keys[s]}
    assert set(seen) <= known  # every segment is one whole document of the inputs
    docs = read_documents(ds)
    assert docs is not None and docs.size == sum(len(c.keys[s]) for s in range(k))
    weights = np.array(outputs) / sum(outputs)
    uses_by_source, lo = [], 0
    for s, ms in enumerate(m.mix["sources"]):
        tokens = c.tokens(s)
        got = int(by_source[s])
        assert ms["tokens"] == c.have(s) and ms["documents"] == len(tokens)
        assert ms["tokens_used"] == got
        assert ms["weight"] == pytest.approx(weights[s], abs=1e-6)
        assert ms["share"] == pytest.approx(got / total, abs=1e-6)
        # the target exact up to one document; the share within 1 point of the weight
        assert abs(got - outputs[s]) <= max(tokens)
        assert abs(got / total - weights[s]) <= 0.01
        uses = [seen[key] for key in c.keys[s]]
        assert sum(u * t for u, t in zip(uses, tokens)) == got
        full = outputs[s] // c.have(s)
        assert set(uses) <= {full, full + 1}  # whole epochs, then a subset for the rest
        assert ms["documents_used"] == sum(u > 0 for u in uses)
        assert ms["documents_repeated"] == sum(u > 1 for u in uses)
        assert ms["repeated_uses"] == sum(max(u - 1, 0) for u in uses)
        assert ms["epochs"] == pytest.approx(got / c.have(s), abs=1e-6)
        assert ms["records_read"] == len(tokens)
        # documents.bin: input order (files sorted, then lines), what each document gave
        d = docs[lo:lo + len(tokens)]
        assert d["tokens"].tolist() == tokens and d["uses"].tolist() == uses
        assert (d["source"] == s).all() and (d["split"] == 0).all()
        lo += len(tokens)
        uses_by_source.append(uses)
    return uses_by_source


# ---------------------------------------------------------------- 1. realised shares

def test_two_sources_one_repeated_one_down_sampled(tmp_path: Path, corpus: Corpus,
                                                    tokenizer_dir: Path) -> None:
    outputs = two_way(corpus)
    two = Corpus(corpus.paths[:2], corpus.texts[:2], corpus.keys[:2])
    assert prepare(*mix_args(two, outputs, tmp_path / "out", tokenizer_dir, "--max-repeat", 10,
                             "--workers", 1, "--quiet")) == 0
    uses = check_mix(tmp_path / "out", two, outputs)
    assert set(uses[1]) == {10}  # 10x short of its share: every document really 10 times
    assert set(uses[0]) == {0, 1}  # 10x over: a subset, about a tenth, each once
    assert abs(sum(uses[0]) - len(uses[0]) / 10) <= 0.05 * len(uses[0])


def test_three_sources_shares(three_way: Path, corpus: Corpus) -> None:
    uses = check_mix(three_way, corpus, three_way_outputs(corpus))
    assert set(uses[0]) == {0, 1} and set(uses[1]) == {10} and set(uses[2]) == {2, 3}
    assert abs(sum(u == 3 for u in uses[2]) - 75) <= 10  # half of c's documents a third time


# ---------------------------------------------------------------- 2. --max-repeat

def test_max_repeat_exceeded_names_source_tokens_and_need(tmp_path: Path, corpus: Corpus,
                                                           tokenizer_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    outputs = two_way(corpus)
    two = Corpus(corpus.paths[:2], corpus.texts[:2], corpus.keys[:2])
    total, hb = sum(outputs), corpus.have(1)
    assert prepare(*mix_args(two, outputs, tmp_path / "out", tokenizer_dir, "--workers", 1,
                             "--quiet")) == 2  # default --max-repeat 4
    err = one_line_error(capsys)
    assert f"mix source '{corpus.paths[1]}' holds {hb:,} tokens" in err
    assert f"of {total:,} tokens needs {10 * hb:,}, 10.00 epochs, more than --max-repeat 4" in err
    assert f"lower its share to {4 * hb / total:.4g} or less" in err
    assert "raise --max-repeat to 10," in err
    assert "a_big" not in err  # the down-sampled source is fine
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert prepare(*mix_args(two, outputs, tmp_path / "o2", tokenizer_dir, "--max-repeat", 9.99,
                             "--workers", 1, "--quiet")) == 2
    assert "b_small" in one_line_error(capsys)


def test_source_emptied_by_dedupe_is_an_error(tmp_path: Path, corpus: Corpus, tokenizer_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # z_copies.jsonl sorts after a_big.jsonl: each of its documents is a's duplicate and goes
    z = write_jsonl(tmp_path / "z_copies.jsonl", [{"text": t} for t in corpus.texts[0][:20]])
    assert prepare("--mix", f"{corpus.paths[0]}=1", f"{z}=1", "--tokenizer", tokenizer_dir,
                   "--out", tmp_path / "out", "--workers", 1, "--quiet") == 2
    err = one_line_error(capsys)
    assert f"mix source '{z}' has no documents left after cleaning, dedupe" in err


# ---------------------------------------------------------------- 3. workers and resume

def test_two_workers_give_the_same_shares_and_bytes(tmp_path: Path, three_way: Path, corpus: Corpus,
                                                    tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    assert prepare(*mix_args(corpus, three_way_outputs(corpus), out, tokenizer_dir, "--max-repeat", 10,
                             "--workers", 2, "--task-bytes", 3000, "--quiet")) == 0
    assert open_dataset(out).manifest.mix == open_dataset(three_way).manifest.mix
    ref = tree_hashes(three_way)
    assert "shard-00000.source.bin" in ref and "documents.bin" in ref
    assert tree_hashes(out) == ref


def test_sigkill_then_resume_gives_the_same_bytes(tmp_path: Path, corpus: Corpus,
                                                  tokenizer_dir: Path) -> None:
    args = mix_args(corpus, three_way_outputs(corpus), tmp_path / "ref", tokenizer_dir,
                    "--max-repeat", 12, "--val-docs", 30)
    assert prepare(*args, "--workers", 1, "--quiet") == 0
    reference = tree_hashes(tmp_path / "ref")
    assert "val/shard-00000.source.bin" in reference

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastprep", "prepare",
           *map(str, mix_args(corpus, three_way_outputs(corpus), out, tokenizer_dir,
                              "--max-repeat", 12, "--val-docs", 30)), "--no-progress"]
    # the reference backend and small tasks (31): each kill lands after some finished tasks,
    # the second one in a run that had resumed from the first
    work = out / ".fastprep-work"
    for round_, finished in enumerate((2, 12)):
        with open(tmp_path / f"killed{round_}.err", "wb") as err:
            proc = subprocess.Popen(cmd + ["--workers", "1", "--task-bytes", "2000",
                                           "--tokenizer-backend", "hf"],
                                    stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while len(list(work.glob("task-*.json"))) < finished and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"killed{round_}.err").read_text()
        assert not (out / "manifest.json").exists()

    resumed = subprocess.run(cmd + ["--workers", "2", "--task-bytes", "2000"], check=False,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    found = re.search(r"resumed an interrupted run: (\d+) of (\d+) tasks", resumed.stderr)
    assert found and 12 <= int(found.group(1)) < int(found.group(2)), resumed.stderr
    assert tree_hashes(out) == reference
    assert open_dataset(out).manifest.mix == open_dataset(tmp_path / "ref").manifest.mix
    verify(out)


# ---------------------------------------------------------------- 4. the source array

def test_source_array_agrees_with_decoded_segments(three_way: Path, corpus: Corpus, tokenizer) -> None:
    ds = open_dataset(three_way)
    ids, seg, src = rows_of(ds)
    marker_of = {name: MARKERS[corpus.paths.index(name)] for name in ds.manifest.source_names}
    rows_by_source = Counter()
    multi = Counter()
    for r, row in enumerate(row_segments(ids, seg)):
        want = marker_of[ds.manifest.source_names[int(src[r])]]
        assert [decode(tokenizer, k).split()[0] for k in row] == [want] * len(row), r
        rows_by_source[want] += 1
        multi[want] += len(row) > 1
    # every source has rows, and rows that hold several documents (so they could have mixed)
    assert set(rows_by_source) == set(multi) == set(MARKERS)
    assert all(multi[m] > 0 for m in MARKERS)


def rewrite_documents(folder: Path, edit) -> None:
    """Edit documents.bin in place and give the manifest its new checksum (so that only the
    consistency checks can object)."""
    docs = np.fromfile(folder / "documents.bin", dtype=DOCUMENT_DTYPE)
    edit(docs)
    docs.tofile(folder / "documents.bin")
    m = json.loads((folder / "manifest.json").read_text())
    m["documents"]["sha256"] = hashlib.sha256(docs.tobytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))


def test_verify_checks_documents_bin_against_the_rows(tmp_path: Path, three_way: Path) -> None:
    def copy(name: str) -> Path:
        return Path(shutil.copytree(three_way, tmp_path / name))

    def more_uses(d: np.ndarray) -> None:
        d["uses"][0] += 1

    def other_source(d: np.ndarray) -> None:  # same total, another source's tokens
        i = int(np.flatnonzero((d["source"] == 1) & (d["uses"] > 0))[0])
        d["source"][i] = 2

    bad = copy("uses")
    rewrite_documents(bad, more_uses)
    with pytest.raises(DatasetError, match=r"documents\.bin puts \d+ tokens into the training rows, "
                                           r"the manifest counts \d+"):
        verify(bad)
    bad = copy("source")
    rewrite_documents(bad, other_source)
    with pytest.raises(DatasetError, match=r"documents\.bin gives the sources \[.*\] training tokens, "
                                           r"the rows' source array"):
        verify(bad)
    # a row's source changed (its checksum updated): the rows disagree with documents.bin
    bad = copy("rows")
    src = np.fromfile(bad / "shard-00000.source.bin", dtype=np.uint8)
    src[int(np.flatnonzero(src == 0)[0])] = 1
    src.tofile(bad / "shard-00000.source.bin")
    m = json.loads((bad / "manifest.json").read_text())
    m["shards"][0]["files"]["source"]["sha256"] = hashlib.sha256(src.tobytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="the rows' source array"):
        verify(bad)
    bad = copy("checksum")
    with open(bad / "documents.bin", "r+b") as f:
        f.seek(0)
        f.write(b"\xff")
    with pytest.raises(DatasetError, match=r"documents\.bin fails its SHA-256 checksum"):
        verify(bad)
    bad = copy("short")
    blob = (bad / "documents.bin").read_bytes()
    (bad / "documents.bin").write_bytes(blob[:-DOCUMENT_DTYPE.itemsize])
    with pytest.raises(DatasetError, match=r"documents\.bin holds \d+ bytes, the manifest implies"):
        verify(bad)
    verify(three_way)


# ---------------------------------------------------------------- 5. the validation set

def test_validation_set_exact_dedupe(tmp_path: Path, tokenizer_dir: Path, tokenizer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    a = marked_texts(MARKERS[0], 200, 41, max_words=20)
    b = marked_texts(MARKERS[1], 100, 42, max_words=20)
    # planted copies: within a source, and a's documents again in b (b's copies go: a sorts first)
    pa = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in a + a[:15]])
    pb = write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in b[:50] + a[100:110] + b[50:] + b[:5]])
    out = tmp_path / "out"
    assert prepare("--mix", f"{pa}=1", f"{pb}=1", "--tokenizer", tokenizer_dir, "--seq-len", 128,
                   "--out", out, "--val-fraction", 0.2, "--workers", 1, "--quiet") == 0
    assert main(["verify", str(out)]) == 0 and capsys.readouterr().out.startswith("ok: ")
    m = open_dataset(out).manifest
    assert m.counts["exact_duplicates"] == 30 and m.counts["records_kept"] == 300

    train = decoded_docs(tokenizer, out)
    val = decoded_docs(tokenizer, out / "val")
    assert len(val) == len(set(val)) == 60  # 20% of 300 kept documents, each once
    assert not set(val) & set(train)
    assert set(val) | set(train) <= set(a) | set(b)

    vds = open_dataset(out / "val")
    vm = vds.manifest
    s = m.split
    assert s["val_dir"] == "val" and s["fraction"] == 0.2
    assert s["val_documents"] == vm.counts["documents"] == 60
    assert s["val_rows"] == vm.rows == vds.rows
    vids, vseg, vsrc = rows_of(vds)
    assert s["val_tokens"] == vm.counts["tokens_kept"] == int((vseg != 0).sum())
    docs = read_documents(out)
    assert int(docs["split"].sum()) == 60 and (docs["uses"][docs["split"] == 1] == 0).all()
    # stratified: 200 : 100 kept documents give 40 : 20 validation documents; the val rows'
    # source array agrees with the documents' markers
    assert vm.source_names == m.source_names == [str(pa), str(pb)]
    val_by_source = Counter()
    for r, row in enumerate(row_segments(vids, vseg)):
        for k in row:
            assert decode(tokenizer, k).split()[0] == MARKERS[int(vsrc[r])]
            val_by_source[int(vsrc[r])] += 1
    assert val_by_source == {0: 40, 1: 20}
    assert np.bincount(docs["source"][docs["split"] == 1]).tolist() == [40, 20]
    # verify OUT covers OUT/val
    shard = out / "val" / "shard-00000.input_ids.bin"
    blob = bytearray(shard.read_bytes())
    blob[0] ^= 1
    shard.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=r"val.*shard-00000\.input_ids\.bin fails its SHA-256"):
        verify(out)


def words5(text: str) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(w[i:i + 5]) for i in range(max(len(w) - 4, 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def near_twins(val: list[str], train: list[str], threshold: float = 0.8) -> list[tuple[str, str]]:
    """Slow reference: every (validation, training) pair whose word 5-gram Jaccard reaches the
    threshold."""
    tg = [(t, words5(t)) for t in train]
    return [(v, t) for v in val for vg in [words5(v)] for t, g in tg if jaccard(vg, g) >= threshold]


def test_validation_set_has_no_near_twin_in_training(tmp_path: Path, tokenizer_dir: Path,
                                                     tokenizer) -> None:
    texts = list(dict.fromkeys(make_texts(160, seed=21, min_words=25, max_words=40)))
    twins = [t[:-1] + f" tail{i}." for i, t in enumerate(texts[:30])]  # one more word at the end
    assert all(jaccard(words5(t), words5(w)) >= 0.9 for t, w in zip(texts, twins))
    orig = write_jsonl(tmp_path / "orig.jsonl", [{"text": t} for t in texts])
    near = write_jsonl(tmp_path / "twins.jsonl", [{"text": t} for t in twins])
    planted = set(texts[:30]) | set(twins)

    out = tmp_path / "out"
    assert prepare(orig, near, "--tokenizer", tokenizer_dir, "--seq-len", 128, "--out", out,
                   "--dedupe", "minhash", "--val-fraction", 0.25, "--workers", 1, "--quiet") == 0
    assert main(["verify", str(out)]) == 0
    m = open_dataset(out).manifest
    assert m.counts["near_duplicates"] == 30 and m.counts["records_kept"] == len(texts)
    train, val = decoded_docs(tokenizer, out), decoded_docs(tokenizer, out / "val")
    assert len(val) == m.split["val_documents"] == open_dataset(out / "val").manifest.counts["documents"]
    assert len(val) == round(0.25 * len(texts)) and len(train) + len(val) == len(texts)
    assert any(v in planted for v in val)  # the case is exercised: a twin was in the input
    assert not set(val) & set(train)
    assert near_twins(val, train) == []

    # the reference does see near twins when only exact copies are removed
    assert prepare(orig, near, "--tokenizer", tokenizer_dir, "--seq-len", 128, "--out", tmp_path / "ex",
                   "--dedupe", "exact", "--val-fraction", 0.25, "--workers", 1, "--quiet") == 0
    assert near_twins(decoded_docs(tokenizer, tmp_path / "ex" / "val"),
                      decoded_docs(tokenizer, tmp_path / "ex"))


def test_validation_split_needs_dedupe(tmp_path: Path, corpus: Corpus, tokenizer_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare(corpus.paths[1], "--tokenizer", tokenizer_dir, "--out", tmp_path / "out",
                   "--val-fraction", 0.1, "--dedupe", "none", "--quiet") == 2
    assert "needs --dedupe exact or minhash" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 6. decontamination

def disguise(words: list[str], rng: random.Random) -> str:
    """The same words with their case and the punctuation between them changed."""
    cased = [w.upper() if i % 3 == 0 else w.capitalize() if i % 3 == 1 else w
             for i, w in enumerate(w.strip(".") for w in words)]
    return cased[0] + "".join(rng.choice([", ", "; ", " - ", " (", ") ", "! ", ' "']) + w
                              for w in cased[1:])


@pytest.fixture(scope="module")
def contaminated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """8 evaluation documents of 30 words; two training files of clean documents with 5
    planted contaminated documents each (a disguised 13-word window of an evaluation document
    amid other words) and 5 controls (a disguised 12-word window between words no evaluation
    document has)."""
    d = tmp_path_factory.mktemp("decontam")
    rng = random.Random(7)
    evals = make_texts(8, seed=31, min_words=30, max_words=30)
    # a blank and a malformed line in the middle: evaluation records keep their file lines
    eval_path = d / "eval.jsonl"
    eval_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in evals[:4]) + "\n{broken\n"
                         + "".join(json.dumps({"text": t}) + "\n" for t in evals[4:]))
    eval_line = [1, 2, 3, 4, 7, 8, 9, 10]
    planted: dict[tuple[str, int], int] = {}  # (file, line) -> the evaluation document's line
    controls: list[str] = []
    files = []
    for f, name in enumerate(("t1.jsonl", "t2.jsonl")):
        clean = make_texts(60, seed=50 + f, max_words=20)
        records = [{"text": t} for t in clean]
        for k in range(5):
            j, o = rng.randrange(8), rng.randrange(0, 30 - 13)
            window = disguise(evals[j].split()[o:o + 13], rng)
            pre = " ".join(rng.choice(WORDS) for _ in range(4))
            records.insert(7 + 11 * k, {"text": f"plant{f}x{k} {pre} {window} omega."})
            planted[(name, 8 + 11 * k)] = eval_line[j]
        for k in range(5):
            j, o = rng.randrange(8), rng.randrange(0, 30 - 12)
            text = f"ctrl{f}x{k} {disguise(evals[j].split()[o:o + 12], rng)} halt{f}x{k}"
            records.append({"text": text})
            controls.append(text)
        files.append(str(write_jsonl(d / name, records)))
    return {"dir": d, "eval": str(eval_path), "files": files, "planted": planted, "controls": controls}


def test_decontamination_removes_every_planted_document(tmp_path: Path, contaminated: dict,
                                                        tokenizer_dir: Path, tokenizer) -> None:
    c = contaminated
    out = tmp_path / "out"
    assert prepare(*c["files"], "--decontaminate", c["eval"], "--tokenizer", tokenizer_dir,
                   "--seq-len", 128, "--out", out, "--workers", 1, "--quiet") == 0
    m = verify(out).manifest
    assert m.counts["dropped"] == {"contaminated": 10} and m.counts["dropped_total"] == 10
    dc = m.decontamination
    assert dc["contaminated"] == 10 and dc["ngram"] == 13
    assert dc["eval_documents"] == 8 and dc["eval_documents_too_short"] == 0
    assert dc["eval_records_skipped"] == {"malformed_json": 1}
    assert m.counts["records_kept"] == 130
    quarantined = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {x["reason"] for x in quarantined} == {"contaminated"}
    assert {(Path(x["source"]).name, x["line"]) for x in quarantined} == set(c["planted"])
    for x in quarantined:
        record = re.search(r"with the evaluation record (.+):(\d+)$", x["detail"])
        assert record, x["detail"]
        assert os.path.abspath(record.group(1)) == c["eval"]
        assert int(record.group(2)) == c["planted"][(Path(x["source"]).name, x["line"])]
        assert x["detail"].startswith('shares the 13-gram "')
        assert x["excerpt"].startswith("plant")
    texts = decoded_docs(tokenizer, out)
    assert len(texts) == 130
    assert not [t for t in texts if t.startswith("plant")]
    assert sorted(t for t in texts if t.startswith("ctrl")) == sorted(c["controls"])  # none removed


def test_decontamination_ngram_reaches_the_controls(tmp_path: Path, contaminated: dict,
                                                    tokenizer_dir: Path) -> None:
    c = contaminated
    out = tmp_path / "out"
    assert prepare(*c["files"], "--decontaminate", c["eval"], "--decontaminate-ngram", 12,
                   "--tokenizer", tokenizer_dir, "--seq-len", 128, "--out", out, "--workers", 1,
                   "--quiet") == 0
    m = open_dataset(out).manifest
    assert m.counts["dropped"] == {"contaminated": 20} and m.decontamination["contaminated"] == 20
    assert m.decontamination["ngram"] == 12


def test_strict_run_still_quarantines_contaminated_documents(tmp_path: Path, contaminated: dict,
                                                             tokenizer_dir: Path) -> None:
    # a contaminated document is a sound record removed by a decision, not malformed input
    c = contaminated
    assert prepare(*c["files"], "--decontaminate", c["eval"], "--strict", "--tokenizer", tokenizer_dir,
                   "--seq-len", 128, "--out", tmp_path / "out", "--workers", 1, "--quiet") == 0
    assert open_dataset(tmp_path / "out").manifest.counts["dropped"] == {"contaminated": 10}


def test_evaluation_set_that_is_an_input_is_refused(tmp_path: Path, contaminated: dict,
                                                    tokenizer_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    c = contaminated
    assert prepare(c["files"][0], c["eval"], "--decontaminate", c["eval"], "--tokenizer", tokenizer_dir,
                   "--out", tmp_path / "out", "--workers", 1, "--quiet") == 2
    assert "is both an input and a --decontaminate evaluation set" in one_line_error(capsys)


# ---------------------------------------------------------------- 7. recipe files

@pytest.fixture(scope="module")
def recipe_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("recipe")
    qa = [{"question": f"srcqa q{i} {q}", "answer": f" {a}"}
          for i, (q, a) in enumerate(zip(make_texts(60, seed=61, max_words=12),
                                         make_texts(60, seed=62, max_words=12)))]
    gen = [{"text": t} for t in marked_texts("srcgen", 200, 63, max_words=20)]
    return {"qa": str(write_jsonl(d / "qa.jsonl", qa)), "gen": str(write_jsonl(d / "gen.jsonl", gen))}


RECIPE = """# options: prepare flags without their dashes
tokenizer = "@TOK@"
seq_len = 64
out = "@OUT@"
workers = 1
quiet = true
mix_seed = 3
max_repeat = 6
val_docs = 12

[[source]]
name = "qa"
paths = ["@QA@"]
weight = 0.6
shape = "prompt"
prompt_field = "question"
completion_field = "answer"

[[source]]
name = "general"
paths = "@GEN@"
weight = 0.4
shape = "text"
"""


def recipe_toml(inputs: dict[str, str], tok: Path, out: Path, text: str = RECIPE) -> str:
    for key, value in (("@TOK@", tok), ("@OUT@", out), ("@QA@", inputs["qa"]), ("@GEN@", inputs["gen"]),
                       ("@DIR@", out.parent)):
        text = text.replace(key, str(value))
    return text


def test_recipe_file_gives_the_command_lines_bytes(tmp_path: Path, recipe_inputs: dict[str, str],
                                                    tokenizer_dir: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_toml(recipe_inputs, tokenizer_dir, tmp_path / "from_recipe"))
    # a flag on the command line wins over the recipe's (seq_len = 64 there)
    assert prepare("--recipe", recipe, "--seq-len", 128) == 0
    # the same run by flags: the one record mapping recognises both shapes
    assert prepare("--mix", f"{recipe_inputs['qa']}=0.6", f"{recipe_inputs['gen']}=0.4",
                   "--prompt-field", "question", "--completion-field", "answer",
                   "--tokenizer", tokenizer_dir, "--seq-len", 128, "--out", tmp_path / "from_flags",
                   "--mix-seed", 3, "--max-repeat", 6, "--val-docs", 12, "--workers", 1, "--quiet") == 0
    a, b = verify(tmp_path / "from_recipe").manifest, verify(tmp_path / "from_flags").manifest
    assert a.seq_len == b.seq_len == 128
    assert a.source_names == ["qa", "general"]
    assert a.counts == b.counts and a.split == b.split and a.mix["seed"] == 3
    assert a.counts["documents_by_shape"] == {"prompt": 60, "text": 200}
    assert a.split["val_documents"] == 12 and "loss_mask" in a.arrays
    strip = ("name", "paths")
    assert [{k: v for k, v in s.items() if k not in strip} for s in a.mix["sources"]] == \
        [{k: v for k, v in s.items() if k not in strip} for s in b.mix["sources"]]
    # every file but the manifests (the sources' names and record mappings differ there)
    ha = {k: v for k, v in tree_hashes(tmp_path / "from_recipe").items() if not k.endswith("manifest.json")}
    hb = {k: v for k, v in tree_hashes(tmp_path / "from_flags").items() if not k.endswith("manifest.json")}
    assert "shard-00000.loss_mask.bin" in ha and "val/shard-00000.input_ids.bin" in ha
    assert ha == hb
    # the prompts are masked: the source's own field names reached the records
    docs = read_documents(tmp_path / "from_recipe")
    prompt = docs["kind"] != docs["kind"][docs["source"] == 1][0]
    assert (docs["source"][prompt] == 0).all() and (docs["targets"][prompt] < docs["tokens"][prompt]).all()


BAD_RECIPES = [  # (in the good recipe, replace this, by this): the message
    ("seq_len = 64", "sequence_length = 64", r"'sequence_length' is not a prepare option"),
    ("val_docs = 12", "val_docs = 12\n[pack]\nseq_len = 64", r"\[pack\] is not a recipe table"),
    ("weight = 0.4", "weight = 0.4\nweigth = 0.5", r"source 2: unknown key\(s\) weigth"),
    ("weight = 0.4", "weight = -1", r"source 2: mix source 'general': weight must be a positive number.*-1"),
    ("weight = 0.4", 'weight = "heavy"',
     r"source 2: mix source 'general': weight must be a positive number.*'heavy'"),
    ("weight = 0.4\n", "", r"source 2: mix source 'general': weight must be a positive number.*got 0$"),
    ('name = "general"', 'name = "qa"', r"mix source names must be unique: qa appear twice"),
    ('paths = "@GEN@"\n', "", r"source 2: paths must be a path or a list of paths"),
    ('paths = ["@QA@"]', 'paths = [["@QA@"]]', r"source 1: paths must be a path or a list of paths"),
    ('paths = "@GEN@"', 'paths = "@DIR@/nowhere.jsonl"', r"/nowhere\.jsonl: no such file or folder$"),
    ('shape = "text"', 'shape = "txt"', r"source 2: .*invalid choice: 'txt'"),
    ('shape = "text"', 'shape = "text"\n[[source', r"not valid TOML"),
]


@pytest.mark.parametrize("old,new,message", BAD_RECIPES)
def test_bad_recipe_is_one_line_exit_2(tmp_path: Path, recipe_inputs: dict[str, str], tokenizer_dir: Path,
                                       capsys: pytest.CaptureFixture[str], old: str, new: str,
                                       message: str) -> None:
    assert old in RECIPE
    recipe = tmp_path / "bad.toml"
    recipe.write_text(recipe_toml(recipe_inputs, tokenizer_dir, tmp_path / "out", RECIPE.replace(old, new)))
    assert prepare("--recipe", recipe) == 2
    line = one_line_error(capsys)
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()


def test_recipe_error_names_the_place_once(tmp_path: Path, recipe_inputs: dict[str, str],
                                           tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(recipe_toml(recipe_inputs, tokenizer_dir, tmp_path / "out",
                                  RECIPE.replace('shape = "text"', 'shape = "txt"')))
    assert prepare("--recipe", recipe) == 2
    assert one_line_error(capsys).count("source 2:") == 1


def test_recipe_file_absent_or_given_with_mix(tmp_path: Path, recipe_inputs: dict[str, str],
                                              tokenizer_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare("--recipe", tmp_path / "absent.toml") == 2
    assert re.search(r"--recipe .*absent\.toml: No such file", one_line_error(capsys))
    (tmp_path / "r.toml").write_text(recipe_toml(recipe_inputs, tokenizer_dir, tmp_path / "out"))
    assert prepare("--recipe", tmp_path / "r.toml", "--mix", f"{recipe_inputs['qa']}=1") == 2
    assert "either in the --recipe file or with --mix, not both" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_bad_mix_item_message_reaches_the_user(tmp_path: Path, tokenizer_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        prepare("--mix", "general.jsonl", "--tokenizer", tokenizer_dir, "--out", tmp_path / "out")
    assert e.value.code == 2
    assert "expected PATH=WEIGHT" in capsys.readouterr().err


def test_copy_of_a_contaminated_document_counts_as_contaminated(tmp_path: Path, contaminated: dict,
                                                                tokenizer_dir: Path) -> None:
    """Bug caught: the driver's exact dedupe ran on every document, so the copy in a later
    task of a contaminated document counted as an exact duplicate as well as, or instead of,
    contaminated (the worker flags both; each must count once, as contaminated)."""
    c = contaminated
    planted = [json.loads(x) for x in Path(c["files"][0]).read_text().splitlines()
               if json.loads(x)["text"].startswith("plant")]
    copy = write_jsonl(tmp_path / "t3.jsonl", planted[:2])
    out = tmp_path / "out"
    assert prepare(*c["files"], copy, "--decontaminate", c["eval"], "--tokenizer", tokenizer_dir,
                   "--seq-len", 128, "--out", out, "--workers", 2, "--task-bytes", 2000,
                   "--quiet") == 0
    m = open_dataset(out).manifest
    assert m.counts["dropped"] == {"contaminated": 12}
    assert m.counts["exact_duplicates"] == 0 and m.decontamination["contaminated"] == 12


@pytest.mark.parametrize("workers", [1, 2])
def test_unusable_evaluation_set_stops_the_waiting_tasks(tmp_path: Path, contaminated: dict,
                                                         tokenizer_dir: Path, workers: int) -> None:
    """Tasks tokenize while the driver builds the index and wait for it at their end. Bug
    caught: a build that fails (no usable evaluation record) left them waiting forever (its
    stop file was cleared after it was written); it must stop them and be the run's one-line
    error. A process of its own, so a hang fails this test instead of the suite."""
    bad = tmp_path / "bad-eval.jsonl"
    bad.write_text('{broken\n{"title": "no text field"}\n')
    args = ["prepare", *contaminated["files"], "--decontaminate", str(bad), "--tokenizer",
            str(tokenizer_dir), "--out", str(tmp_path / "out"), "--workers", str(workers),
            "--task-bytes", "2000", "--quiet"]
    # kernels loaded first, so the build fails at once (before the tasks start): the order in
    # which the stale stop file was cleared and the failure's stop file written
    script = ("import sys\nfrom fastprep.dedupe.decontam import NgramIndex\n"
              "NgramIndex.build(['warm up'], n=1).match(['warm up'])\n"
              "from fastprep.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", script, *args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the tasks kept waiting for an index whose build had failed")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "no usable evaluation document" in err[0]
    assert "malformed_json 1, missing_field 1" in err[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_summary_and_inspect_show_the_mix_and_the_split(tmp_path: Path, corpus: Corpus,
                                                        tokenizer_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The prepare summary and `inspect` show each source's realised share and the
    validation set (read from the manifest); `inspect --json` carries the new sections, and
    `inspect` of the validation set itself does not break on its own split section."""
    out = tmp_path / "out"
    assert prepare(*mix_args(corpus, three_way_outputs(corpus), out, tokenizer_dir,
                             "--max-repeat", 20, "--val-docs", 12, "--workers", 1)) == 0
    summary = capsys.readouterr().out
    m = open_dataset(out).manifest
    for src in m.mix["sources"]:
        assert f"mix source          {src['name']}: share {100 * src['share']:.2f}%" in summary
    assert f"validation set      12 documents, {m.split['val_rows']} rows" in summary
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.count("mix source") == 3 and "validation set      12 documents" in shown
    assert main(["inspect", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mix"] == m.mix and d["split"] == m.split and d["documents"]["count"] == m.documents["count"]
    assert main(["inspect", str(out / "val")]) == 0
    assert "segment 1" in capsys.readouterr().out
    from fastprep.cli import recipe_lines

    # a validation set's manifest names its role, not a split of its own: no line for it
    val = open_dataset(out / "val").manifest
    assert val.split == {"role": "validation", "of": ".."}
    assert not [x for x in recipe_lines(val) if x.startswith("validation set")]
