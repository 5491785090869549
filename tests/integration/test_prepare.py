"""End-to-end: files in, dataset out; exact counts on known inputs and format invariants."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_texts, write_jsonl
from conftest import prep_config as config
from fastprep import (CleanConfig, DedupeConfig, PackConfig, ReadConfig, RecordConfig,
                      open_dataset, prepare, verify)
from fastprep.dataset.format import DatasetError
from fastprep.pipeline.outdir import OutputError
from fastprep.pipeline.quarantine import StrictError


def segments(ds) -> list[tuple[list[int], list[int] | None]]:
    """Every (ids, loss_mask) segment of every row."""
    out = []
    for shard in ds.shards:
        ids_all = np.asarray(shard.arrays["input_ids"])
        seg_all = np.asarray(shard.arrays["segment_ids"])
        mask_all = np.asarray(shard.arrays["loss_mask"]) if "loss_mask" in shard.arrays else None
        for r in range(shard.rows):
            for s in range(1, int(seg_all[r].max()) + 1):
                sel = seg_all[r] == s
                out.append((ids_all[r][sel].tolist(),
                            mask_all[r][sel].tolist() if mask_all is not None else None))
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_text_corpus_round_trip_and_counts(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    texts = make_texts(300, seed=1)
    unique = list(dict.fromkeys(texts))
    records = [{"text": t} for t in texts] + [{"text": texts[0]}, {"text": texts[5]}]  # 2 exact dups
    write_jsonl(tmp_path / "a.jsonl", records[:150])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(
        b"".join(json.dumps(r).encode() + b"\n" for r in records[150:])))
    stats = prepare(config([tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"], tmp_path / "out",
                           tokenizer_dir, seq_len=128))
    c = stats.counts
    assert c["records_read"] == 302
    assert c["exact_duplicates"] == 302 - len(unique)
    assert c["records_kept"] == len(unique)
    assert c["dropped_total"] == 0 and c["tokens_dropped"] == 0
    ds = verify(tmp_path / "out")
    segs = segments(ds)
    assert len(segs) == len(unique)  # no document split: all are shorter than L
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    decoded = []
    for ids, mask in segs:
        assert ids[0] == bos and ids[-1] == eos and mask is None
        decoded.append(tokenizer.decode(ids[1:-1]))
    assert sorted(decoded) == sorted(unique)  # every kept document exactly once, byte for byte
    seg = np.concatenate([np.asarray(s.arrays["segment_ids"]) for s in ds.shards])
    assert (seg.max(axis=1) > 1).mean() > 0.5  # guard: rows really hold several documents
    assert c["tokens"] == c["tokens_kept"] == int((seg != 0).sum())
    assert stats.packing["efficiency"] == pytest.approx(c["tokens_kept"] / (c["rows"] * 128), abs=1e-6)
    m = ds.manifest
    assert m.tokenizer["sha256"] == hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert m.dtypes == {"input_ids": "<u2", "segment_ids": "<u2"}
    assert [Path(i["name"]).name for i in m.inputs] == ["a.jsonl", "b.jsonl.gz"]
    # the recipe decides the bytes and is recorded; run options (output folder, workers) are not
    assert m.recipe["pack"]["seq_len"] == 128 == m.seq_len
    assert "out" not in m.recipe and "workers" not in m.recipe and "seq_len" not in m.packing
    assert not (tmp_path / "out" / ".fastprep-work").exists()
    assert not (tmp_path / "out" / "quarantine.jsonl").exists()  # nothing was bad


def test_every_bad_input_kind_counted_and_quarantined(tmp_path: Path, tokenizer_dir: Path) -> None:
    good = [{"text": f"good record {i} alpha beta"} for i in range(10)]
    write_jsonl(tmp_path / "bad.jsonl", good[:5], raw_lines=[
        b'{"text": "unterminated',                      # malformed_json
        b'[1, 2]',                                      # not_an_object
        b'{"text": "bad \xff utf8"}',                    # invalid_utf8
        b'{"text": "' + b"L" * 5000 + b'"}',            # record_too_large
        b'{"body": "no text"}',                         # missing_field
        b'{"text": 3.5}',                               # wrong_type
        b'{"text": " \\u0000 \\r\\n "}',                # empty after cleaning
        b'',                                            # blank line: counted, not a record
        b'{"messages": [{"role": "user", "content": "q"}]}',   # no_assistant_turn
        b'{"messages": [{"role": "alien", "content": "q"}]}',  # bad_messages
        b'{"text": "crlf and nul\\r\\nfixed\\u0000"}',  # repaired, kept
    ] + [json.dumps(r).encode() for r in good[5:]])
    blob = gzip.compress(b"".join(json.dumps({"text": f"gz record {i} gamma"}).encode() + b"\n"
                                  for i in range(3000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])  # truncated_file
    stats = prepare(config([tmp_path], tmp_path / "out", tokenizer_dir, seq_len=64,
                           read=ReadConfig(paths=(str(tmp_path),), max_record_bytes=1000)))
    c = stats.counts
    assert c["dropped"] == {"bad_messages": 1, "empty": 1, "invalid_utf8": 1, "malformed_json": 1,
                            "missing_field": 1, "no_assistant_turn": 1, "not_an_object": 1,
                            "record_too_large": 1, "truncated_file": 1, "wrong_type": 1}
    assert c["blank_lines"] == 1
    gz_kept = c["records_kept"] - 11
    assert 0 < gz_kept < 3000
    assert c["records_read"] == c["records_kept"] + c["dropped_total"] + c["exact_duplicates"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    by_reason = {x["reason"]: x for x in lines}
    assert by_reason["malformed_json"]["line"] == 6 and by_reason["malformed_json"]["source"].endswith("bad.jsonl")
    assert by_reason["wrong_type"]["line"] == 11 and "3.5" in by_reason["wrong_type"]["excerpt"]
    assert by_reason["truncated_file"]["source"].endswith("cut.jsonl.gz")
    verify(tmp_path / "out")


def test_strict_names_file_line_and_fix(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [{"text": "fine"}], raw_lines=[b'{"text": 7}'])
    with pytest.raises(StrictError, match=r"s\.jsonl:2: wrong_type: .*--fill"):
        prepare(config([p], tmp_path / "out", tokenizer_dir, strict=True))
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / ".fastprep-work").exists()


def test_prompt_and_chat_loss_masks_survive_packing(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    recs = [{"prompt": f"Question {i}: alpha beta?", "completion": f" answer {i} gamma."} for i in range(40)]
    recs += [{"messages": [{"role": "user", "content": f"q{i} delta"},
                           {"role": "assistant", "content": f"a{i} epsilon"}]} for i in range(40)]
    recs += [{"text": f"plain {i} zeta eta"} for i in range(40)]
    p = write_jsonl(tmp_path / "mix.jsonl", recs)
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir, seq_len=96))
    assert stats.counts["documents_by_shape"] == {"chat": 40, "prompt": 40, "text": 40}
    ds = verify(tmp_path / "out")
    assert ds.has_loss_mask
    completions = sorted(tokenizer.encode(r["completion"], add_special_tokens=False).ids
                         + [tokenizer.token_to_id("</s>")] for r in recs[:40])
    got_prompt, got_text, got_chat = [], 0, 0
    for ids, mask in segments(ds):
        targets = [t for t, m in zip(ids, mask) if m]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if "Question" in text:
            got_prompt.append(targets)
        elif "<|im_start|>" in text:
            got_chat += 1
            assert tokenizer.decode(targets, skip_special_tokens=False).startswith("a")
            assert targets[-1] == tokenizer.token_to_id("<|im_end|>")
        else:
            got_text += 1
            assert mask == [1] * len(ids)
    assert sorted(got_prompt) == completions
    assert (got_text, got_chat) == (40, 40)
    # targets are what the loader trains on: a mask bit on a document's first token is no target
    learned = 0
    for s in ds.shards:
        seg, mask = np.asarray(s.arrays["segment_ids"]), np.asarray(s.arrays["loss_mask"])
        learned += int(((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0) & (mask[:, 1:] != 0)).sum())
    ones = sum(int(np.asarray(s.arrays["loss_mask"]).sum()) for s in ds.shards)
    assert stats.counts["target_tokens"] == learned == ones - 40  # the 40 texts' first tokens


def test_parquet_and_text_inputs(tmp_path: Path, tokenizer_dir: Path, tokenizer) -> None:
    pq.write_table(pa.Table.from_pylist([{"content": {"body": f"parquet row {i} alpha"}} for i in range(50)]),
                   tmp_path / "p.parquet", row_group_size=16)
    (tmp_path / "t.txt").write_text("first paragraph beta\n\nsecond paragraph gamma\n")
    stats = prepare(config([tmp_path / "p.parquet", tmp_path / "t.txt"], tmp_path / "out", tokenizer_dir,
                           records=RecordConfig(text_field="content.body"),
                           read=ReadConfig(paths=(str(tmp_path / "p.parquet"), str(tmp_path / "t.txt")),
                                           text_unit="paragraph")))
    assert stats.counts["records_kept"] == 52
    texts = sorted(tokenizer.decode(ids[1:-1]) for ids, _ in segments(open_dataset(tmp_path / "out")))
    assert "first paragraph beta" in texts and "parquet row 49 alpha" in texts


@pytest.mark.parametrize("mode,long_policy", [("bfd", "split"), ("bfd", "truncate"), ("concat", "split"),
                                              ("pad", "split")])
def test_pack_modes_end_to_end(tmp_path: Path, tokenizer_dir: Path, mode: str, long_policy: str) -> None:
    texts = make_texts(120, seed=3, max_words=120)  # some documents longer than L=48
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir,
                           pack=PackConfig(seq_len=48, mode=mode, long_policy=long_policy)))
    c = stats.counts
    ds = verify(tmp_path / "out")
    if long_policy == "truncate":
        assert c["documents_truncated"] > 0 and c["tokens_dropped"] > 0
    else:
        assert c["tokens_dropped"] == 0 and c["tokens_kept"] == c["tokens"]
    if mode == "pad":
        seg = np.asarray(ds.shards[0].arrays["segment_ids"])
        assert seg.max() == 1
    if mode == "bfd":
        assert stats.packing["efficiency"] > 0.9


def test_same_bytes_whatever_workers_tasks_and_batches(tmp_path: Path, tokenizer_dir: Path) -> None:
    texts = make_texts(600, seed=7)
    recs = [{"text": t} for t in texts + texts[:20]]
    recs += [{"prompt": f"q{i} alpha", "completion": f" a{i} beta"} for i in range(30)]
    a = write_jsonl(tmp_path / "a.jsonl", recs[:300], raw_lines=[b"{bad json"])
    b = write_jsonl(tmp_path / "b.jsonl", recs[300:])
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": texts[3]}).encode() + b"\n"))
    inputs = [a, b, tmp_path / "c.jsonl.gz"]
    prepare(config(inputs, tmp_path / "o1", tokenizer_dir))
    prepare(config(inputs, tmp_path / "o2", tokenizer_dir))
    prepare(config(inputs, tmp_path / "o3", tokenizer_dir, batch_bytes=500, task_bytes=2000))
    prepare(config(inputs, tmp_path / "o4", tokenizer_dir, workers=2, task_bytes=3000))
    h1 = file_hashes(tmp_path / "o1")
    assert "loss_mask" in " ".join(h1)
    for other in ("o2", "o3", "o4"):
        assert file_hashes(tmp_path / other) == h1, other
    q = [json.loads(x) for x in (tmp_path / "o4" / "quarantine.jsonl").read_text().splitlines()]
    assert [(Path(x["source"]).name, x["line"]) for x in q] == [("a.jsonl", 301)]
    prepare(config(inputs, tmp_path / "o5", tokenizer_dir, pack=PackConfig(seq_len=64, seed=1)))
    assert file_hashes(tmp_path / "o5")["shard-00000.input_ids.bin"] != h1["shard-00000.input_ids.bin"]


def test_strict_line_numbers_are_global_across_byte_range_tasks(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "s.jsonl", [{"text": t} for t in make_texts(200)], raw_lines=[b'{"text": 7}'])
    with pytest.raises(StrictError, match=r"s\.jsonl:201: wrong_type"):
        prepare(config([p], tmp_path / "out", tokenizer_dir, strict=True, task_bytes=1000, workers=2))


def test_sharding(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(300, seed=2)])
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir, shard_rows=7))
    ds = verify(tmp_path / "out")
    assert len(ds.shards) == -(-stats.counts["rows"] // 7)
    assert all(s.rows == 7 for s in ds.shards[:-1])


def test_output_folder_rules(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha beta"}])
    out = tmp_path / "out"
    prepare(config([p], out, tokenizer_dir))
    with pytest.raises(OutputError, match="--overwrite"):
        prepare(config([p], out, tokenizer_dir))
    prepare(config([p], out, tokenizer_dir, overwrite=True))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        prepare(config([p], out, tokenizer_dir, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"


def test_disk_error_leaves_no_visible_dataset_and_resumes(tmp_path: Path, tokenizer_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(200)])
    prepare(config([p], tmp_path / "ref", tokenizer_dir, shard_rows=3, task_bytes=2000))
    import fastprep.dataset.write as w

    real = w.ShardWriter.add
    calls = {"n": 0}

    def failing_add(self, block):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, block)

    monkeypatch.setattr(w.ShardWriter, "add", failing_add)
    with pytest.raises(OSError, match="No space"):
        prepare(config([p], tmp_path / "out", tokenizer_dir, shard_rows=3, batch_bytes=100, task_bytes=2000))
    left = sorted(os.listdir(tmp_path / "out"))
    assert left == [".fastprep-work"]  # no shard, manifest or temporary file is visible
    with pytest.raises(DatasetError, match="not a finished"):
        open_dataset(tmp_path / "out")
    monkeypatch.setattr(w.ShardWriter, "add", real)
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir, shard_rows=3, resume=True, task_bytes=2000))
    assert any("resumed" in n for n in stats.notes)
    assert file_hashes(tmp_path / "out") == file_hashes(tmp_path / "ref")


def test_resume_refuses_changed_inputs_and_restarts_without_flag(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50)])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".fastprep-work").mkdir()
    (out / ".fastprep-work" / "state.json").write_text('{"fingerprint": "other", "task_bytes": 1000}')
    (out / "shard-00000.input_ids.bin").write_bytes(b"partial")
    with pytest.raises(OutputError, match="differ"):
        prepare(config([p], out, tokenizer_dir, resume=True))
    stats = prepare(config([p], out, tokenizer_dir))
    assert any("discarded" in n for n in stats.notes)
    verify(out)
    with pytest.raises(OutputError, match="no interrupted run"):
        prepare(config([p], tmp_path / "fresh", tokenizer_dir, resume=True))


def test_verify_catches_corruption_and_unsafe_manifest(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(50)])
    out = tmp_path / "out"
    prepare(config([p], out, tokenizer_dir))
    shard = out / "shard-00000.input_ids.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="checksum"):
        verify(out)
    open_dataset(out)  # size still right: opening without checksums succeeds
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DatasetError, match="bytes"):
        open_dataset(out)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"][0]["files"]["input_ids"]["file"] = "../../etc/passwd"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="unsafe"):
        open_dataset(out)


def test_cleaning_and_field_options_reach_the_output(tmp_path: Path, tokenizer_dir: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"body": "short"}, {"body": "a long enough body alpha"},
                                           {"other": 1}])
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir, records=RecordConfig(text_field="body"),
                           clean=CleanConfig(min_chars=10), dedupe=DedupeConfig(exact=False)))
    assert stats.counts["dropped"] == {"missing_field": 1, "too_short": 1}
    assert stats.counts["records_kept"] == 1


def _planted_near_copies(path: Path) -> tuple[Path, list[dict], list[tuple[int, int]]]:
    """60 documents, every third followed by a near copy; (file, records, (copy line, original line))."""
    import random

    rng = random.Random(5)
    base = make_texts(60, seed=11, min_words=200, max_words=260)
    recs, planted = [], []
    for i, t in enumerate(base):
        recs.append({"text": t})
        if i % 3 == 0:  # a near copy: two words changed (Jaccard of 5-gram sets ~0.9)
            words = t.split()
            for _ in range(2):
                words[rng.randrange(len(words))] = "CHANGED"
            recs.append({"text": " ".join(words)})
            planted.append((len(recs), len(recs) - 1))  # (line of the copy, line of its original)
    return write_jsonl(path, recs), recs, planted


def test_minhash_removes_planted_near_duplicates_with_report(tmp_path: Path, tokenizer_dir: Path) -> None:
    from fastprep import MinHashConfig

    p, recs, planted = _planted_near_copies(tmp_path / "d.jsonl")
    report = tmp_path / "dups.jsonl"
    dd = DedupeConfig(minhash=MinHashConfig(threshold=0.8))
    stats = prepare(config([p], tmp_path / "o1", tokenizer_dir, dedupe=dd, seq_len=512, dedupe_report=str(report)))
    assert stats.counts["near_duplicates"] == len(planted) == 20
    assert stats.counts["records_kept"] == 60
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    assert sorted((r["line"], r["matched_line"]) for r in rows) == sorted(planted)
    # the default verification is exact: the reported similarity is the exact Jaccard of the
    # shingle sets that the worker computed, equal to one computed here from the two texts
    from fastprep.dedupe.minhash import jaccard_exact

    cfg_mh = MinHashConfig(threshold=0.8)
    for r in rows:
        j = jaccard_exact(recs[r["line"] - 1]["text"], recs[r["matched_line"] - 1]["text"], cfg_mh)
        assert r["similarity"] == pytest.approx(j, abs=5e-5)  # the report rounds to 4 places
    m = json.loads((tmp_path / "o1" / "manifest.json").read_text())
    assert m["dedupe"]["minhash"]["bands"] * m["dedupe"]["minhash"]["band_rows"] <= 128
    assert m["dedupe"]["minhash"]["verify"] == "exact"
    assert stats.near_dedupe["method"] == "stream" and stats.near_dedupe["bytes_per_doc"] > 0
    # the kept documents' sets went to a file in the work folder, removed at the end
    assert stats.near_dedupe["sets_file_bytes"] > 60 * 150 * 4
    assert not (tmp_path / "o1" / ".fastprep-work").exists()
    dd2 = DedupeConfig(minhash=MinHashConfig(threshold=0.8, verify="signature"))
    stats2 = prepare(config([p], tmp_path / "o2", tokenizer_dir, dedupe=dd2, seq_len=512, workers=2,
                            task_bytes=20000))
    assert stats2.counts["near_duplicates"] == 20
    h1, h2 = file_hashes(tmp_path / "o1"), file_hashes(tmp_path / "o2")
    assert h1.pop("manifest.json") != h2.pop("manifest.json")  # configs differ (verify mode)
    assert h1 == h2
    assert stats2.near_dedupe["sets_file_bytes"] == 0
    # the band-shuffle method (what Ray runs) decides exactly like the driver's index: same
    # removals, same report, same shards
    report3 = tmp_path / "dups3.jsonl"
    dd3 = DedupeConfig(minhash=MinHashConfig(threshold=0.8))
    stats3 = prepare(config([p], tmp_path / "o3", tokenizer_dir, dedupe=dd3, seq_len=512, workers=2,
                            task_bytes=20000, dedupe_report=str(report3), near_method="shuffle"))
    assert stats3.counts == stats.counts
    assert report3.read_bytes() == report.read_bytes()
    assert stats3.near_dedupe["method"] == "shuffle"
    assert stats3.near_dedupe["verified_pairs"] >= len(planted)
    h3 = file_hashes(tmp_path / "o3")
    h3.pop("manifest.json")
    assert h3 == h1


def test_minhash_resume_reuses_saved_signatures_and_sets(tmp_path: Path, tokenizer_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Finished tasks of an interrupted MinHash run are reloaded (signatures and shingle sets from
    their .npz) and the resumed output equals an uninterrupted run's, byte for byte."""
    import fastprep.dataset.write as w
    from fastprep import MinHashConfig

    p, _, planted = _planted_near_copies(tmp_path / "d.jsonl")
    dd = DedupeConfig(minhash=MinHashConfig(threshold=0.8))
    ref = prepare(config([p], tmp_path / "ref", tokenizer_dir, dedupe=dd, seq_len=512, task_bytes=9000))
    assert ref.counts["near_duplicates"] == len(planted)

    real = w.ShardWriter.add

    def failing_add(self, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w.ShardWriter, "add", failing_add)
    with pytest.raises(OSError, match="No space"):
        prepare(config([p], tmp_path / "out", tokenizer_dir, dedupe=dd, seq_len=512, task_bytes=9000))
    monkeypatch.setattr(w.ShardWriter, "add", real)
    stats = prepare(config([p], tmp_path / "out", tokenizer_dir, dedupe=dd, seq_len=512,
                           task_bytes=9000, resume=True))
    assert any("resumed" in n for n in stats.notes)
    assert stats.counts["near_duplicates"] == len(planted)
    assert file_hashes(tmp_path / "out") == file_hashes(tmp_path / "ref")


@pytest.mark.parametrize("mode", ["bfd", "concat"])
def test_kernel_warm_up_loads_what_the_run_uses(tmp_path: Path, tokenizer_dir: Path, mode: str) -> None:
    """The driver's warm-up thread must compile (or load from cache) exactly the kernel
    specialisations the run then calls, or it saves nothing: in a fresh process, after the
    warm-up, a whole prepare run (exact dedupe, text and prompt/completion records, so rows with
    and without a loss mask) adds no new signature to any driver kernel."""
    import subprocess
    import sys

    recs = [{"text": t} for t in make_texts(80, seed=2, max_words=90)]
    recs += [{"prompt": f"q{i} alpha", "completion": f" a{i} beta gamma"} for i in range(20)]
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from conftest import prep_config
from fastprep import PackConfig, prepare
from fastprep.dataset.format import ids_dtype, segment_dtype
from fastprep.pipeline.rows import warm_kernels
from fastprep.stages.tokenize import TokenizerBundle
cfg = prep_config([{str(src)!r}], {str(tmp_path / "out")!r}, {str(tokenizer_dir)!r},
                  pack=PackConfig(seq_len=48, mode={mode!r}))
r = cfg.recipe
warm_kernels(r.pack, r.dedupe.exact, ids_dtype(TokenizerBundle(r.tokenize).vocab_size), segment_dtype(48))
from fastprep.kernels import exact, pack
def sigs():
    return {{f"{{m.__name__}}.{{k}}": sorted(map(str, v.signatures)) for m in (pack, exact)
            for k, v in vars(m).items() if hasattr(v, "signatures")}}
before = sigs()
prepare(cfg)
print(json.dumps({{"before": before, "after": sigs()}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"]["fastprep.kernels.pack.fill_rows"]  # the warm-up did compile or load
    assert got["before"]["fastprep.kernels.exact.insert_keys"]
    assert got["after"] == got["before"]
