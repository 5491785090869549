"""Hostile input: random bytes, random JSON and random Unicode through the readers and the whole
prepare path. Nothing crashes, every bad record is accounted for, every good record is kept."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastprep import PackConfig, PrepareConfig, ReadConfig, TokenizeConfig, open_dataset, prepare
from fastprep.pipeline.quarantine import NothingKept
from fastprep.stages.clean import CleanConfig, Cleaner
from fastprep.stages.read import read_file

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
good_record = st.builds(lambda t: orjson.dumps({"text": t}), st.text(min_size=1, max_size=60))
line = st.one_of(
    good_record,
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda t: orjson.dumps({"text": t, "extra": [1, {"x": None}]}), st.text(max_size=30)),
)


def expected_texts(lines: list[bytes]) -> tuple[list[str], int]:
    """The oracle: cleaned texts of the good records, and the number of non-blank lines."""
    cleaner = Cleaner(CleanConfig())
    good, records = [], 0
    for i, raw in enumerate(lines):
        if i == 0 and raw.startswith(b"\xef\xbb\xbf"):  # a file's byte-order mark is not content
            raw = raw[3:]
        if not raw.strip():
            continue
        records += 1
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            text = cleaner.text(value["text"])
            if text:
                good.append(text)
    return good, records


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(line, min_size=1, max_size=40))
def test_random_lines_through_prepare(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path,
                                      tokenizer, lines: list[bytes]) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = PrepareConfig.of(read=ReadConfig(paths=(str(tmp / "in.jsonl"),)),
                           tokenize=TokenizeConfig(tokenizer=str(tokenizer_dir), bos="never", eos="never"),
                           out=str(tmp / "out"), pack=PackConfig(seq_len=32), workers=1, progress=False)
    good, records = expected_texts(lines)
    if not good:  # nothing usable: no dataset, and the error says why
        with pytest.raises(NothingKept, match="no dataset written"):
            prepare(cfg)
        assert not (tmp / "out" / "manifest.json").exists()
        return
    stats = prepare(cfg)
    c = stats.counts
    assert c["records_read"] == records
    assert c["records_read"] == c["records_kept"] + c["dropped_total"] + c["exact_duplicates"]
    unique = list(dict.fromkeys(good))
    assert c["records_kept"] == len(unique) and c["exact_duplicates"] == len(good) - len(unique)
    quarantined = (tmp / "out" / "quarantine.jsonl")
    n_q = quarantined.read_bytes().count(b"\n") if quarantined.exists() else 0  # not splitlines: U+0085
    assert n_q == c["dropped_total"]
    # every good record is in the output, byte for byte (byte-level BPE decodes exactly)
    ds = open_dataset(tmp / "out")
    order = []
    for shard in ds.shards:
        ids, seg = np.asarray(shard.arrays["input_ids"]), np.asarray(shard.arrays["segment_ids"])
        for r in range(shard.rows):
            for s in range(1, int(seg[r].max()) + 1):
                order.append(ids[r][seg[r] == s].tolist())
    decoded = Counter(tokenizer.decode(p) for p in order)
    # documents longer than L are split into pieces: compare the token total and the short ones
    assert sum(len(p) for p in order) == c["tokens"]
    for text in unique:
        n = len(tokenizer.encode(text, add_special_tokens=False).ids)
        if n <= 32:
            assert decoded[text] >= 1, text


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.txt",
                                                  "a.parquet", "a.txt.gz"]))
def test_random_bytes_never_crash_a_reader(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                           name: str) -> None:
    p = tmp_path_factory.mktemp("bytes") / name
    p.write_bytes(data)
    raws = list(read_file(str(p), 0, ReadConfig(paths=(str(p),), text_unit="line")))
    for r in raws:
        assert (r.value is None) == (r.bad is not None)
    if name == "a.jsonl":  # exactly one item per line, good or bad
        n_lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        assert len(raws) == n_lines
        assert [r.line for r in raws] == list(range(1, n_lines + 1))


def _peak_rss_mb(code: str) -> tuple[float, str]:
    """Run code in a fresh interpreter; return its peak RSS in MB and its stdout.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a large
    pytest process would report the parent's size."""
    wrapped = code + ("\nprint('RSS', [int(x.split()[1]) / 1024 for x in open('/proc/self/status')"
                      " if x.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rss = float(out.stdout.rsplit("RSS", 1)[1])
    return rss, out.stdout


def _bomb(path: Path, mb: int, compress) -> None:
    chunk = b"0" * (1 << 20)
    with open(path, "wb") as f:
        c = compress()
        for _ in range(mb):
            f.write(c.compress(chunk))
        f.write(c.flush())


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_decompression_bomb_single_line_bounded_memory(tmp_path: Path, suffix: str) -> None:
    """200 MB of one line without a newline, compressed to a few hundred KB: skipped as too large
    while memory stays bounded; the good record after it is kept."""
    p = tmp_path / f"bomb.jsonl{suffix}"
    if suffix == ".gz":
        _bomb(p, 200, lambda: zlib.compressobj(9, zlib.DEFLATED, 31))
        with open(p, "ab") as f:
            f.write(gzip.compress(b'\n{"text": "after"}\n'))
    else:
        cctx = zstandard.ZstdCompressor(level=3)
        with open(p, "wb") as f, cctx.stream_writer(f) as w:
            for _ in range(200):
                w.write(b"0" * (1 << 20))
            w.write(b'\n{"text": "after"}\n')
    assert p.stat().st_size < 2 << 20
    rss, out = _peak_rss_mb(
        "from fastprep.stages.read import read_file, ReadConfig\n"
        f"raws = list(read_file({str(p)!r}, 0, ReadConfig(paths=('x',), max_record_bytes=1 << 20)))\n"
        "print([(r.line, r.bad.reason if r.bad else r.value) for r in raws])")
    assert "[(1, 'record_too_large'), (2, {'text': 'after'})]" in out
    assert rss < 300, f"peak RSS {rss:.0f} MB while streaming a 200 MB line"


@pytest.mark.slow
def test_hundred_megabyte_line_and_million_tiny_records(tmp_path: Path, tokenizer_dir: Path) -> None:
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.write(b'{"text": "' + b"x" * (100 << 20) + b'"}\n{"text": "tail"}\n')
    # memory is bounded by --max-record-bytes (a line is read up to that size before it is
    # known to be too large), not by the line: 16 MiB here against a 100 MiB line
    rss, out = _peak_rss_mb(
        "from fastprep.stages.read import read_file, ReadConfig\n"
        f"raws = list(read_file({str(big)!r}, 0, ReadConfig(paths=('x',), max_record_bytes=16 << 20)))\n"
        "print([(r.line, r.bad.reason if r.bad else r.value) for r in raws])")
    assert "(1, 'record_too_large')" in out and "(2, {'text': 'tail'})" in out
    assert rss < 250, rss
    tiny = tmp_path / "tiny.jsonl"
    with open(tiny, "wb") as f:
        for i in range(1_000_000):
            f.write(b'{"text": "r%d"}\n' % i)
    stats = prepare(PrepareConfig.of(read=ReadConfig(paths=(str(tiny),)),
                                  tokenize=TokenizeConfig(tokenizer=str(tokenizer_dir)),
                                  out=str(tmp_path / "out"), pack=PackConfig(seq_len=512), progress=False))
    assert stats.counts["records_kept"] == 1_000_000
