"""``fastprep report`` on ~1 GB of prepared rows against the floor of reading them once.

    python benchmarks/bench_report.py                 # 1 GB of rows at L = 2048, 3 repeats
    python benchmarks/bench_report.py --gb 0.2 --repeats 5

The dataset is made cheaply: the sample corpus (:func:`fastprep.sample.write_sample`) is
prepared once for real (``documents.bin``, tokenizer copy, loss mask), then its rows are tiled
with :class:`~fastprep.dataset.write.ShardWriter` into a dataset of ``--gb`` GB of array files,
its ``documents.bin`` tiled the same number of times and its manifest counts scaled, so every
figure of the report has real numbers to work on. A flag-terms file of 20 terms is passed, so
the decode-based figures do their full work.

Timed, alternating so machine noise hits both: the whole ``fastprep report`` command (a process
of its own: start-up, the pass over every row, the seeded sample of ``--sample-rows`` rows
decoded, script mix, term counts, plots, HTML and JSON written), the same command decoding only
1,000 rows (what the pass over every row, start-up and plotting cost without most of the
decoding), and the **floor**: reading
every array file of the dataset once (``np.sum`` over each memory map). Both run on a warm page
cache (the dataset was just written and is read once before timing), so the floor is memory
bandwidth, not the disk. Medians of ``--repeats``; the ratio report / floor says how much of a
report is more than touching the bytes. One more in-process run gives the report's own split
(compute vs drawing and writing). Target: < 30 s at 1 GB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import cpu_model

from fastprep.dataset.format import (
    DOCUMENT_DTYPE,
    TOKENIZER_FILE,
    open_dataset,
    read_documents,
)
from fastprep.dataset.write import ShardWriter

TERMS = ("python", "error", "return", "self", "class", "import", "file", "string", "list", "value",
         "None", "True", "exception", "module", "function", "data", "()", "->", "the", "is")
SMALL_SAMPLE = 1000  # a second report decoding few rows: the pass over every row, start-up, plots
SCALED = ("records_read", "records_kept", "dropped_total", "exact_duplicates", "near_duplicates",
          "documents_split", "documents_truncated", "tokens", "tokens_kept", "tokens_dropped",
          "rows", "padding_tokens", "target_tokens", "text_chars", "text_bytes")


def small_dataset(work: Path, seq_len: int, mb: float) -> Path:
    """The sample corpus prepared for real at ``seq_len``."""
    from fastprep.pipeline.config import PrepareConfig
    from fastprep.pipeline.run import prepare
    from fastprep.sample import write_sample
    from fastprep.stages.pack import PackConfig
    from fastprep.stages.read import ReadConfig
    from fastprep.stages.tokenize import TokenizeConfig

    paths = write_sample(work / "sample", megabytes=mb)
    inputs = tuple(v for k, v in paths.items() if k != "tokenizer")
    out = work / "small"
    prepare(PrepareConfig.of(read=ReadConfig(paths=inputs),
                             tokenize=TokenizeConfig(tokenizer=paths["tokenizer"]),
                             pack=PackConfig(seq_len=seq_len), out=str(out), progress=False,
                             quiet=True, overwrite=True))
    return out


def tile(small: Path, big: Path, gb: float) -> tuple[int, int]:
    """Write ``big``: ``small``'s rows repeated until the array files hold ``gb`` GB, with its
    documents.bin and counts repeated as often; returns (rows, bytes of array files)."""
    ds = open_dataset(small)
    m = ds.manifest
    row_bytes = sum(np.dtype(m.dtypes[a]).itemsize for a in m.arrays) * m.seq_len
    tiles = max(1, round(gb * 1e9 / (row_bytes * ds.rows)))
    big.mkdir(parents=True)
    w = ShardWriter(big, m.seq_len, {a: np.dtype(m.dtypes[a]) for a in m.arrays},
                    shard_rows=max(1, (256 << 20) // (m.seq_len * 2)))
    block = {a: np.concatenate([np.asarray(s.arrays[a]) for s in ds.shards]) for a in m.arrays}
    for _ in range(tiles):
        w.add(block)
    docs = read_documents(ds)
    assert docs is not None, "the small dataset has no documents.bin"
    table = np.tile(np.asarray(docs), tiles)
    (big / "documents.bin").write_bytes(table.tobytes())
    shutil.copy(small / TOKENIZER_FILE, big / TOKENIZER_FILE)
    counts = {k: (v * tiles if k in SCALED and isinstance(v, int) else v) for k, v in m.counts.items()}
    counts["dropped"] = {k: v * tiles for k, v in m.counts.get("dropped", {}).items()}
    counts["repaired"] = {k: v * tiles for k, v in m.counts.get("repaired", {}).items()}
    counts["documents_by_shape"] = {k: v * tiles for k, v in m.counts.get("documents_by_shape", {}).items()}
    documents = {"file": "documents.bin", "count": int(table.size),
                 "dtype": [[n, DOCUMENT_DTYPE.fields[n][0].str] for n in DOCUMENT_DTYPE.names]}
    w.finish(fastprep_version=m.fastprep_version, tokenizer=m.tokenizer, recipe=m.recipe,
             inputs=m.inputs, counts=counts, packing=m.packing, dedupe=m.dedupe, documents=documents)
    return w.rows, w.rows * row_bytes


def floor(path: Path) -> float:
    """Seconds to read every array file once (a sum over each memory map)."""
    t0 = time.perf_counter()
    ds = open_dataset(path)
    total = 0
    for shard in ds.shards:
        for arr in shard.arrays.values():
            total += int(np.sum(arr, dtype=np.uint64))
    assert total > 0
    return time.perf_counter() - t0


def report_cmd(big: Path, out: Path, terms: Path, sample_rows: int) -> list[str]:
    return [sys.executable, "-m", "fastprep", "report", str(big), "--out", str(out / "report.html"),
            "--json", str(out / "report.json"), "--flag-terms", str(terms),
            "--sample-rows", str(sample_rows), "--quiet"]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=1800)
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    return {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load": os.getloadavg(),
            "versions": {p: md.version(p) for p in ("fastprep", "numpy", "tokenizers", "matplotlib")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="size of the array files of the dataset")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--sample-mb", type=float, default=8.0, help="size of the sample corpus prepared")
    p.add_argument("--sample-rows", type=int, default=20_000, help="fastprep report --sample-rows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default=None, help="where the datasets go (default: system temp)")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_report_", dir=a.work_dir))
    try:
        info = machine()
        print(f"# bench_report {info['date']}: {info['cores']} cores ({info['cpu']}), "
              f"{info['mem_gib']} GiB, load {info['load']}; {info['versions']}")
        t0 = time.perf_counter()
        small = small_dataset(work, a.seq_len, a.sample_mb)
        rows, nbytes = tile(small, work / "big", a.gb)
        print(f"# dataset: {rows:,} rows x {a.seq_len}, {nbytes / 1e9:.2f} GB of array files "
              f"(made in {time.perf_counter() - t0:.1f} s)")
        terms = work / "terms.txt"
        terms.write_text("\n".join(TERMS) + "\n")
        cmd = report_cmd(work / "big", work, terms, a.sample_rows)
        print("# command: " + " ".join(Path(c).name if c.startswith(str(work)) else c for c in cmd[1:]))
        floor(work / "big")  # warm the page cache, as a second report would find it
        small_cmd = report_cmd(work / "big", work / "small_sample", terms, SMALL_SAMPLE)
        (work / "small_sample").mkdir()
        times: dict[str, list[float]] = {"report": [], f"report --sample-rows {SMALL_SAMPLE}": [],
                                         "floor": []}
        for _ in range(a.repeats):
            times["floor"].append(floor(work / "big"))
            times["report"].append(timed(cmd))
            times[f"report --sample-rows {SMALL_SAMPLE}"].append(timed(small_cmd))
        from fastprep.report.build import ReportOptions, build_report

        split = build_report(work / "big", ReportOptions(out=str(work / "r.html"), flag_terms=str(terms),
                                                         sample_rows=a.sample_rows))["seconds"]
        fig = json.loads((work / "report.json").read_text())
        med = {k: statistics.median(v) for k, v in times.items()}
        print("\n| what | median s | runs | GB/s of array files |\n|---|---:|---|---:|")
        for k, runs in times.items():
            print(f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in runs)} | "
                  f"{nbytes / 1e9 / med[k]:.2f} |")
        print(f"\nratio report / floor: {med['report'] / med['floor']:.1f}x; rows decoded "
              f"{fig['sample']['rows_sampled']:,} of {fig['sample']['rows_total']:,}; in-process split "
              f"{split}; target < 30 s: {'met' if med['report'] < 30 else 'MISSED'} "
              f"({med['report']:.1f} s); load after {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
