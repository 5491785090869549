"""``fastprep bench``: every section of the report, its JSON schema, ids compared with the
reference, and nothing written outside ``--json``; the sampler on its own."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import pytest

import tokenizer_families as families
from conftest import make_texts, write_jsonl
from fastprep.bench import SCHEMA, BenchOptions, make_sample, stage_split
from fastprep.cli import main
from fastprep.stages.read import ReadConfig

# the documented schema (fastprep.bench.SCHEMA's docstring, README "fastprep bench")
KEYS = {
    "machine": {"cpu", "cores", "memory_gib", "platform", "python", "load_before", "load_after",
                "versions"},
    "sample": {"mode", "seed", "target_mb", "files", "bytes", "records", "documents", "text_bytes",
               "decompressed", "too_large"},
    "backends": {"backend", "threads", "supported", "reason", "seconds", "mb_s", "tokens",
                 "tokens_per_s", "ids_match"},
    "prepare": {"backend", "seq_len", "workers", "dedupe", "wall_s", "mb_s", "tokens_per_s",
                "documents_kept", "tokens", "driver_cpu_s", "workers_cpu_s", "stages", "limit"},
    "packing": {"seq_len", "mode", "efficiency", "rows", "documents_split", "documents_truncated",
                "padding_share", "plan_s"},
    "loader": {"skipped", "seq_len", "batch_size", "batches", "batches_per_s",
               "real_tokens_per_batch", "tokens_per_s"},
}
STAGES = ["read", "clean", "exact_hash", "minhash_signatures", "tokenize", "spot_check", "spill",
          "decontaminate", "decontaminate_wait",
          "kernel_wait", "merge", "minhash_shuffle", "task_phase_other", "pack", "write",
          "start_up_and_tail"]


def _corpus(folder: Path) -> Path:
    """Text, prompt/completion and chat records, an exact copy, a malformed line."""
    folder.mkdir()
    texts = make_texts(300, seed=3, min_words=20, max_words=400)
    write_jsonl(folder / "a.jsonl", [{"text": t} for t in texts] + [{"text": texts[0]}],
                raw_lines=[b"{oops"])
    write_jsonl(folder / "b.jsonl",
                [{"prompt": t[:40], "completion": t[40:]} for t in texts[:50]]
                + [{"messages": [{"role": "user", "content": t[:30]},
                                 {"role": "assistant", "content": t[30:]}]} for t in texts[50:100]])
    return folder


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for f in folders for p in sorted(f.rglob("*"))}


def _bench(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["bench", *args])
    return rc, capsys.readouterr().out


def test_bench_reports_every_section_and_writes_only_the_json(
        tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = _corpus(tmp_path / "data")
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir(), work.mkdir()
    monkeypatch.chdir(cwd)
    before = _snapshot(data, tokenizer_dir)
    out_json = tmp_path / "report" / "bench.json"
    out_json.parent.mkdir()
    rc, shown = _bench([str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "128", "512",
                        "--mb", "1", "--workers", "2", "--work-dir", str(work), "--json",
                        str(out_json), "--batch-size", "4"], capsys)
    assert rc == 0
    # nothing but the JSON was written: the data and tokenizer are untouched, the working
    # folder and the temporary one are empty again
    assert _snapshot(data, tokenizer_dir) == before
    assert list(cwd.iterdir()) == [] and list(work.iterdir()) == []
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["bench.json"]

    r = json.loads(out_json.read_text())
    assert r["schema"] == SCHEMA
    assert set(r) == {"schema", *KEYS}
    for section, keys in KEYS.items():
        rows = r[section] if isinstance(r[section], list) else [r[section]]
        assert rows and all(set(row) == keys for row in rows), section

    s = r["sample"]
    assert s["files"] == 2 and s["records"] == 402 and s["decompressed"] == 0
    assert s["bytes"] == sum(p.stat().st_size for p in data.iterdir())  # the whole corpus fits
    # 401 usable records, one of them an exact copy
    assert s["documents"] == r["prepare"]["documents_kept"] == 400

    by = {(b["backend"], b["threads"]): b for b in r["backends"]}
    cores = r["machine"]["cores"]
    assert set(by) == {("hf", 1), ("hf", cores), ("fastokens", 1), ("fastokens", cores)}
    assert by["hf", 1]["ids_match"] is True  # the reference against itself
    for b in r["backends"]:
        assert b["supported"] and b["ids_match"] is True and b["mb_s"] > 0
        assert b["tokens"] == by["hf", 1]["tokens"] > 0

    p = r["prepare"]
    assert p["backend"] == "fastokens" and p["seq_len"] == 128 and p["workers"] == 2
    assert p["dedupe"] == "exact" and p["wall_s"] > 0 and p["workers_cpu_s"] > 0
    assert [st["stage"] for st in p["stages"]] == STAGES
    st = {x["stage"]: x for x in p["stages"]}
    assert st["tokenize"]["seconds"] > 0 and st["read"]["seconds"] > 0 and st["merge"]["seconds"] > 0
    assert st["minhash_signatures"]["seconds"] == 0  # no MinHash in this run
    # the driver rows (task-phase rest included) add up to the wall time the bench measured
    driver = sum(x["wall_s"] for x in p["stages"] if x["where"] == "driver")
    assert driver == pytest.approx(p["wall_s"], abs=0.02)
    assert all(x["where"] == "workers" for x in p["stages"][:7])  # several tasks, 2 processes

    packing = {(x["seq_len"], x["mode"]): x for x in r["packing"]}
    assert set(packing) == {(L, m) for L in (128, 512) for m in ("bfd", "concat", "pad")}
    for (L, mode), x in packing.items():
        # every kept token is placed (split policy): efficiency x rows x L is the token count
        assert round(x["efficiency"] * x["rows"] * L) == p["tokens"]
        assert x["padding_share"] == pytest.approx(1 - x["efficiency"], abs=1e-5)
    assert packing[128, "pad"]["rows"] >= 400 and packing[128, "pad"]["efficiency"] < packing[128, "bfd"]["efficiency"]
    assert packing[512, "bfd"]["documents_split"] <= packing[128, "bfd"]["documents_split"]

    ld = r["loader"]
    if importlib.util.find_spec("torch") is None:
        assert "fastprep[train]" in ld["skipped"]
    else:
        assert ld["skipped"] is None and ld["batches"] > 0 and ld["batch_size"] == 4
        assert 0 < ld["real_tokens_per_batch"] <= 4 * 128

    for heading in ("tokenizer engines", "fastprep prepare", "limits the run", "packing the kept",
                    "loader", "versions:", "sample (first)"):
        assert heading in shown


def test_bench_ids_mismatch_is_reported_and_prepare_falls_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fastokens 0.3.5 emits the control id of a special token that is also a vocabulary entry
    (``<s>`` in a SentencePiece-style file) where tokenizers keeps the text: the bench must say
    the ids differ, and the prepared sample runs on tokenizers (the parity gate)."""
    tok = families.build("spm", tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"{t} <s> and </s> inside"}
                                              for t in make_texts(60, seed=1)])
    out_json = tmp_path / "b.json"
    rc, _ = _bench([str(data), "--tokenizer", str(tok), "--seq-len", "256", "--mb", "1",
                    "--workers", "1", "--json", str(out_json), "--quiet"], capsys)
    assert rc == 0
    r = json.loads(out_json.read_text())
    fast = [b for b in r["backends"] if b["backend"] == "fastokens"]
    assert fast and all(b["supported"] and b["ids_match"] is False for b in fast)
    assert all(b["ids_match"] is True for b in r["backends"] if b["backend"] == "hf")
    assert r["prepare"]["backend"] == "hf"


def test_bench_unsupported_backend_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = families.build("wordpiece", tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(40)])
    out_json = tmp_path / "b.json"
    rc, shown = _bench([str(data), "--tokenizer", str(tok), "--seq-len", "64", "--mb", "1",
                        "--workers", "1", "--json", str(out_json)], capsys)
    assert rc == 0
    r = json.loads(out_json.read_text())
    fast = [b for b in r["backends"] if b["backend"] == "fastokens"]
    assert all(not b["supported"] and "WordPiece" in b["reason"] and b["mb_s"] is None for b in fast)
    assert "not run:" in shown


def test_bench_failure_is_one_line_and_leaves_nothing(
        tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [], raw_lines=[b"{oops", b"[1, 2"])
    work = tmp_path / "work"
    work.mkdir()
    rc = main(["bench", str(data), "--tokenizer", str(tokenizer_dir), "--mb", "1", "--quiet",
               "--work-dir", str(work), "--json", str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "no dataset written" in err and "malformed_json" in err
    assert str(work) not in err  # the bench's quarantine is gone with its folder: not named
    assert list(work.iterdir()) == [] and not (tmp_path / "b.json").exists()
    assert main(["bench", str(data), "--tokenizer", str(tokenizer_dir), "--mb", "inf"]) == 2
    assert "--mb must be a positive size" in capsys.readouterr().err
    assert main(["bench", str(data), "--tokenizer", str(tokenizer_dir),
                 "--json", str(tmp_path / "no" / "b.json")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nope.jsonl"), "--tokenizer", str(tokenizer_dir)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", str(data), "--tokenizer", str(tokenizer_dir), "--mb", "0"]) == 2
    assert "--mb must be a positive size" in capsys.readouterr().err
    assert main(["bench", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "64", "0"]) == 2
    assert "--seq-len must be a positive integer" in capsys.readouterr().err


# ---- the sampler ---------------------------------------------------------------------------

def _lines(n: int) -> list[bytes]:
    return [json.dumps({"text": f"record {i} " + "x" * (i % 50)}).encode() + b"\n" for i in range(n)]


def test_sample_first_is_the_prefix_of_whole_records(tmp_path: Path) -> None:
    lines = _lines(2000)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b"".join(lines[:1000]))
    with gzip.open(src / "b.jsonl.gz", "wb") as f:
        f.write(b"".join(lines[1000:]))
    size_a = (src / "a.jsonl").stat().st_size
    budget = size_a + 1000  # all of a, and the first kilobyte of b (decompressed)
    read, stats = make_sample((str(src),), ReadConfig(paths=(str(src),)),
                              BenchOptions(mb=budget / 1e6), tmp_path / "s")
    got = [Path(p).read_bytes() for p in read.paths]
    assert [Path(p).name for p in read.paths] == ["0000-a.jsonl", "0001-b.jsonl"]
    assert got[0] == b"".join(lines[:1000])
    # whole lines: the first that reaches the budget is the last one taken
    n_b = next(k for k in range(1, 1001) if sum(map(len, lines[1000:1000 + k])) >= 1000)
    assert got[1] == b"".join(lines[1000:1000 + n_b])
    assert stats["records"] == 1000 + n_b and stats["decompressed"] == 1 and stats["files"] == 2


def test_sample_seeded_is_deterministic_spread_and_whole_records(tmp_path: Path) -> None:
    lines = _lines(200000)  # ~9 MB: nine 1 MiB slots, three of them taken
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"".join(lines))
    index = {line: i for i, line in enumerate(lines)}

    def sample(seed: int, name: str) -> list[int]:
        read, _ = make_sample((str(src),), ReadConfig(paths=(str(src),)),
                              BenchOptions(mb=2.0, sample="seeded", seed=seed), tmp_path / name)
        data = Path(read.paths[0]).read_bytes()
        return [index[line + b"\n"] for line in data.split(b"\n")[:-1]]  # KeyError: a cut record

    a, b, c = sample(0, "a"), sample(0, "b"), sample(1, "c")
    assert a == b and a != c
    assert a == sorted(a) and len(set(a)) == len(a)  # file order, no record twice
    assert max(a) > 100000 or min(a) > 50000  # not just the front of the file
    assert 2.0e6 <= sum(len(lines[i]) for i in a) < 2.0e6 + 200


def test_sample_text_paragraphs_stay_whole(tmp_path: Path) -> None:
    paras = [f"paragraph {i}\nsecond line {i}\n\n".encode() for i in range(100)]
    src = tmp_path / "t.txt"
    src.write_bytes(b"".join(paras))
    read, stats = make_sample((str(src),), ReadConfig(paths=(str(src),), text_unit="paragraph"),
                              BenchOptions(mb=300 / 1e6), tmp_path / "s")
    data = Path(read.paths[0]).read_bytes()
    assert data == b"".join(paras[:stats["records"]]) and 0 < stats["records"] < 100


def test_sample_parquet_keeps_schema_and_prefix(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i} " + "y" * 100 for i in range(5000)]
    pq.write_table(pa.table({"text": texts, "n": list(range(5000))}), tmp_path / "a.parquet",
                   row_group_size=700)
    read, stats = make_sample((str(tmp_path / "a.parquet"),), ReadConfig(paths=("x",)),
                              BenchOptions(mb=0.05), tmp_path / "s")
    t = pq.read_table(read.paths[0])
    assert t.schema.names == ["text", "n"] and 0 < t.num_rows < 5000
    assert t.column("text").to_pylist() == texts[:t.num_rows] and stats["records"] == t.num_rows


def test_stage_split_divides_worker_stages_and_keeps_the_tail(tmp_path: Path) -> None:
    """The shuffle runs inside the task phase (bug caught: subtracted from the wall time a
    second time, the start-up and tail came out 0); worker stages are divided by the
    processes that ran them (1: inline in the driver, where they are part of the task phase)."""
    secs = {"tokenize": 4.0, "read": 1.0, "merge": 0.5, "kernel_wait": 0.25,
            "minhash_shuffle": 0.75, "tasks_wall": 3.0, "pack": 0.1, "write": 0.4}
    rows = {r["stage"]: r for r in stage_split(secs, processes=2, wall=4.0)}
    assert [r for r in rows] == STAGES
    assert rows["tokenize"]["wall_s"] == 2.0 and rows["tokenize"]["where"] == "workers"
    assert rows["merge"]["wall_s"] == 0.5 and rows["merge"]["where"] == "driver"
    assert rows["start_up_and_tail"]["seconds"] == pytest.approx(0.5)
    assert rows["task_phase_other"]["seconds"] == pytest.approx(3.0 - 0.5 - 0.25 - 0.75)
    assert sum(r["wall_s"] for r in rows.values() if r["where"] == "driver") == pytest.approx(4.0)
    inline = {r["stage"]: r for r in stage_split({**secs, "tasks_wall": 7.0}, processes=1, wall=8.0)}
    assert inline["tokenize"]["wall_s"] == 4.0 and inline["tokenize"]["where"] == "driver (inline)"
    # inline, the worker stages are the task phase's own time: the rest is what is left
    assert inline["task_phase_other"]["seconds"] == pytest.approx(7.0 - 1.5 - 5.0)


def test_prepare_json_carries_the_stage_seconds(tmp_path: Path, tokenizer_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The task and driver timings the bench splits are in prepare's own --json too."""
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(4000, max_words=300)])
    assert main(["prepare", str(p), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
                 "--out", str(tmp_path / "ds"), "--json", "--no-progress", "--workers", "1"]) == 0
    secs = json.loads(capsys.readouterr().out)["seconds"]
    for key in ("read", "clean", "exact_hash", "tokenize", "spill", "merge", "pack", "write"):
        assert secs[key] >= 0, key
    assert secs["tokenize"] > 0 and secs["read"] > 0
    assert secs["read"] + secs["clean"] + secs["tokenize"] <= secs["task"] + 1e-3
    assert os.path.isdir(tmp_path / "ds")


def test_reading_time_excludes_mapping_and_cleaning(tmp_path: Path, tokenizer_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading is timed as the wait for documents minus mapping and cleaning (timed inside
    that wait): a slow cleaner shows up as cleaning, not as reading."""
    import time

    from conftest import prep_config
    from fastprep.pipeline.run import prepare
    from fastprep.stages.clean import Cleaner

    slow = Cleaner.__call__

    def sleepy(self, doc):  # type: ignore[no-untyped-def]
        time.sleep(0.02)
        return slow(self, doc)

    monkeypatch.setattr(Cleaner, "__call__", sleepy)
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(20)])
    secs = prepare(prep_config([p], tmp_path / "ds", tokenizer_dir)).seconds
    assert secs["clean"] >= 0.4 and secs["read"] < 0.2


def test_engine_subprocesses_ignore_modules_in_the_working_folder(
        tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug caught: ``python -c`` puts the working folder first on sys.path, so a user's own
    tokenizers.py there crashed the reference engine (a traceback) or hid fastokens."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(30)])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("tokenizers", "fastokens"):
        (cwd / f"{name}.py").write_text("raise ImportError('not the library')\n")
    monkeypatch.chdir(cwd)
    out_json = tmp_path / "b.json"
    assert main(["bench", str(data), "--tokenizer", str(tokenizer_dir), "--seq-len", "64",
                 "--mb", "1", "--workers", "1", "--json", str(out_json), "--quiet"]) == 0
    assert all(b["ids_match"] for b in json.loads(out_json.read_text())["backends"])


def test_reference_engine_failure_is_a_bench_error(tmp_path: Path) -> None:
    from fastprep.bench import BenchError, bench_backends

    texts = tmp_path / "texts.json"
    texts.write_text('["alpha"]')
    (tmp_path / "tokenizer.json").write_text("{}")  # no tokenizer at all
    with pytest.raises(BenchError, match="tokenizers failed"):
        bench_backends(texts, tmp_path / "tokenizer.json", 5, 1, 1 << 20, None, lambda _: None)


def _record_index(data: bytes) -> list[int]:
    return [json.loads(line)["i"] for line in data.splitlines() if line.strip()]


def test_seeded_sample_of_compressed_and_parquet_files_is_spread(tmp_path: Path) -> None:
    """Bug caught: the share computed from on-disk sizes while the budget counts decompressed
    (or Arrow) bytes, so a seeded sample of a .gz or Parquet file was its first records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"i": i, "text": f"record {i} " + "z" * (i % 40)} for i in range(40000)]
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet", row_group_size=4000)
    for name in ("c.jsonl.gz", "p.parquet"):
        src = str(tmp_path / name)
        read, stats = make_sample((src,), ReadConfig(paths=(src,)),
                                  BenchOptions(mb=0.3, sample="seeded", seed=1), tmp_path / f"s-{name}")
        if name.endswith(".parquet"):
            got = pq.read_table(read.paths[0]).column("i").to_pylist()
        else:
            got = _record_index(Path(read.paths[0]).read_bytes())
        assert got == sorted(got) and len(set(got)) == len(got), name
        assert max(got) > 30000 and len(got) > 1000, (name, max(got), len(got))


def test_seeded_sample_of_whole_text_files_takes_whole_files(tmp_path: Path) -> None:
    """Bug caught: each file kept with the budget's probability, so a seed could choose none."""
    src = tmp_path / "t"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}.txt").write_text(f"file {i}\n" + "w " * 500)
    cfg = ReadConfig(paths=(str(src),), text_unit="file")
    for seed in range(6):
        read, stats = make_sample((str(src),), cfg, BenchOptions(mb=0.002, sample="seeded", seed=seed),
                                  tmp_path / f"s{seed}")
        assert 1 <= stats["records"] == stats["files"] <= 2
        for path in read.paths:
            assert Path(path).read_text().startswith("file ")
    firsts = {Path(make_sample((str(src),), cfg, BenchOptions(mb=0.002, sample="seeded", seed=s),
                               tmp_path / f"r{s}")[0].paths[0]).read_text()[:6] for s in range(6)}
    assert len(firsts) > 1  # the seed decides which files


def test_sample_skips_records_over_the_record_limit_unread(tmp_path: Path) -> None:
    """Bug caught: a 200 MB record copied whole (and read into memory) although --mb was 0.1
    and prepare would quarantine it anyway."""
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.write(json.dumps({"text": "x" * 3000}).encode() + b"\n")
        f.write(b'{"text": "' + b"y" * 50000 + b'"}\n')
        f.write(json.dumps({"text": "small"}).encode() + b"\n")
    for mode in ("first", "seeded"):
        read, stats = make_sample((str(big),), ReadConfig(paths=(str(big),), max_record_bytes=10000),
                                  BenchOptions(mb=1, sample=mode), tmp_path / f"s-{mode}")
        assert stats["too_large"] == 1 and stats["records"] == 2, mode
        assert b"yyyy" not in Path(read.paths[0]).read_bytes()
