from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from fastprep.stages.read import InputError, ReadConfig, expand_paths, read_all, read_file


def _records(path: Path, **kw) -> list:
    cfg = ReadConfig(paths=(str(path),), **kw)
    return list(read_file(str(path), 0, cfg))


def _good(raws) -> list:
    return [r.value for r in raws if r.bad is None]


def _bad(raws) -> list[tuple[int, str]]:
    return [(r.line, r.bad.reason) for r in raws if r.bad is not None]


LINES = [{"text": f"document number {i}"} for i in range(50)]
PAYLOAD = b"".join(json.dumps(r).encode() + b"\n" for r in LINES)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson"])
def test_jsonl_compressions_round_trip(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"data{suffix}"
    if suffix.endswith(".gz"):
        p.write_bytes(gzip.compress(PAYLOAD))
    elif suffix.endswith(".zst"):
        p.write_bytes(zstandard.ZstdCompressor().compress(PAYLOAD))
    else:
        p.write_bytes(PAYLOAD)
    raws = _records(p)
    assert _good(raws) == LINES
    assert [r.line for r in raws] == list(range(1, 51))


def test_multi_frame_zstd(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor()
    cut = PAYLOAD.index(b"\n", len(PAYLOAD) // 2) + 1  # frames split at a line boundary
    p = tmp_path / "multi.jsonl.zst"
    p.write_bytes(c.compress(PAYLOAD[:cut]) + c.compress(PAYLOAD[cut:]))
    assert _good(_records(p)) == LINES


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_file_keeps_complete_records(tmp_path: Path, suffix: str) -> None:
    big = b"".join(json.dumps({"text": f"record {i} " + "x" * 50}).encode() + b"\n" for i in range(20000))
    blob = gzip.compress(big) if suffix.endswith(".gz") else zstandard.ZstdCompressor().compress(big)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(blob[: len(blob) // 2])
    raws = _records(p)
    good = _good(raws)
    bad = _bad(raws)
    assert bad and bad[-1][1] == "truncated_file"
    assert len(bad) == 1
    assert 0 < len(good) < 20000
    assert good == [{"text": f"record {i} " + "x" * 50} for i in range(len(good))]


def test_bad_jsonl_lines_are_reported_and_rest_kept(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"text": "bom first"}\r\n'
                  b'{"text": "ok 2"}\n'
                  b'{"text": "unterminated\n'
                  b'[1, 2, 3]\n'
                  b'"a string"\n'
                  b'\n'
                  b'   \n'
                  b'{"text": "bad \xff\xfe utf8"}\n'
                  b'{"text": "nul \\u0000 inside"}\n'
                  + b"[" * 5000 + b"\n"
                  b'{"text": "last"}')  # no final newline
    raws = _records(p)
    assert _good(raws) == [{"text": "bom first"}, {"text": "ok 2"}, {"text": "nul \x00 inside"},
                           {"text": "last"}]
    assert _bad(raws) == [(3, "malformed_json"), (4, "not_an_object"), (5, "not_an_object"),
                          (6, "blank_line"), (7, "blank_line"), (8, "invalid_utf8"),
                          (10, "malformed_json")]


def test_invalid_utf8_replace_policy(tmp_path: Path) -> None:
    p = tmp_path / "u.jsonl"
    p.write_bytes(b'{"text": "bad \xff byte"}\n')
    raws = _records(p, invalid_utf8="replace")
    assert _good(raws) == [{"text": "bad \ufffd byte"}]
    assert raws[0].repaired == ("utf8",)


def test_oversized_line_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"text": "before"}\n')
        f.write(b'{"text": "' + b"y" * 300_000 + b'"}\n')
        f.write(b'{"text": "after"}\n')
    raws = _records(p, max_record_bytes=1000)
    assert _good(raws) == [{"text": "before"}, {"text": "after"}]
    assert _bad(raws) == [(2, "record_too_large")]
    assert [r.line for r in raws] == [1, 2, 3]


def test_parquet_row_groups_and_nested(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "meta": {"lang": "en"}} for i in range(1000)]
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=128)
    raws = _records(p)
    assert _good(raws) == rows
    assert [r.line for r in raws] == list(range(1, 1001))


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "broken.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    assert _bad(_records(p)) == [(0, "unreadable_file")]


def test_text_units(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_bytes(b"\xef\xbb\xbfpara one\nline two\n\n\npara two\n")
    assert _good(_records(p)) == ["para one\nline two\n\n\npara two\n"]
    assert _good(_records(p, text_unit="line")) == ["para one\n", "line two\n", "para two\n"]
    assert _good(_records(p, text_unit="paragraph")) == ["para one\nline two\n", "para two\n"]
    raws = _records(p, text_unit="paragraph")
    assert [r.line for r in raws] == [1, 5]


def test_text_file_too_large(tmp_path: Path) -> None:
    p = tmp_path / "t.txt.gz"
    p.write_bytes(gzip.compress(b"z" * 5000))
    assert _bad(_records(p, max_record_bytes=100)) == [(1, "record_too_large")]


def test_expand_paths_sorted_folders_and_globs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.jsonl.zst", "sub/c.parquet", "sub/notes.csv", ".hidden.jsonl"):
        (tmp_path / name).write_bytes(b"")
    files = expand_paths([str(tmp_path)])
    assert files == sorted(files)
    assert [Path(f).name for f in files] == ["a.jsonl.zst", "b.jsonl", "c.parquet"]
    assert expand_paths([str(tmp_path / "*.jsonl"), str(tmp_path / "b.jsonl")]) == [str(tmp_path / "b.jsonl")]
    with pytest.raises(InputError, match="no such file"):
        expand_paths([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="unsupported"):
        expand_paths([str(tmp_path / "sub/notes.csv")])
    with pytest.raises(InputError, match="matches no"):
        expand_paths([str(tmp_path / "*.nothing")])


def test_read_all_orders_files_then_lines(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.jsonl"
    a.write_text('{"text": "a1"}\n{"text": "a2"}\n')
    b.write_text('{"text": "b1"}\n')
    cfg = ReadConfig(paths=(str(tmp_path),))
    files = expand_paths(cfg.paths)
    got = [(r.file, r.line, r.value["text"]) for r in read_all(files, cfg)]
    assert got == [(0, 1, "a1"), (0, 2, "a2"), (1, 1, "b1")]


def test_config_validation_names_flags() -> None:
    with pytest.raises(ValueError, match="--text-unit"):
        ReadConfig(paths=("x",), text_unit="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--max-record-bytes"):
        ReadConfig(paths=("x",), max_record_bytes=0)


def test_byte_ranges_partition_lines_exactly(tmp_path: Path) -> None:
    from fastprep.stages.read import read_jsonl

    lines = [json.dumps({"text": "x" * (i % 37)}).encode() for i in range(300)]
    lines[100] = b'{"text": "' + b"y" * 5000 + b'"}'   # a long line crossing range boundaries
    lines[150] = b"{broken"
    data = b"\n".join(lines) + b"\n"
    p = tmp_path / "r.jsonl"
    p.write_bytes(data)
    cfg = ReadConfig(paths=(str(p),))
    whole = [(r.line, r.value, r.bad.reason if r.bad else None) for r in read_jsonl(str(p), 0, cfg)]
    for step in (1, 7, 64, 1000, 4999, len(data)):
        got = []
        offset = 0
        for start in range(0, len(data), step):
            part = list(read_jsonl(str(p), 0, cfg, start, min(start + step, len(data))))
            got += [(offset + r.line, r.value, r.bad.reason if r.bad else None) for r in part]
            offset += len(part)
        assert got == whole, step
