"""Packing throughput and quality: fastprep against TRL ``pack_dataset`` on the same lengths.

    python benchmarks/bench_pack.py --docs 1000000 --seq-len 2048
    python benchmarks/bench_pack.py --docs 1000000 --trl-docs 200000   # TRL needs trl + datasets

Lengths come from a seeded mixture that looks like a fine-tuning corpus: short chat turns
(lognormal, median ~120 tokens) and long prose (lognormal, median ~900 tokens, a tail past L).

Part 1 times :func:`fastprep.pack.plan` (lengths only) on ``--docs`` documents for every mode.
Part 2 compares with TRL on the first ``--trl-docs`` documents (TRL keeps every token in an Arrow
table, so it is run on a subset that fits in memory) and, to be fair, times fastprep end to end
there: ``plan`` plus ``fill_rows`` materialising every row as uint16 arrays, block by block as
the write stage does (``--fill-block`` rows per call, default 8192; ``fastprep prepare`` itself
uses ~4M tokens per block, 2048 rows at L=2048), against TRL's
``pack_dataset`` on a ``datasets.Dataset`` of ``input_ids`` (built beforehand, not timed).
Pairs: fastprep bfd+truncate vs TRL "bfd", bfd+split vs "bfd_split", concat vs "wrapped".
Efficiency counts rows as padded to L (how a fixed-shape training step consumes them).

Part 2 also measures a *memory floor* per pair on the same data: copying the kept tokens into a
preallocated ``rows x L`` uint16 array plus filling a preallocated ``rows x L`` uint16 segment
array, i.e. the bytes any packer that materialises rows must at least write, as two contiguous
streams on one thread or on all of numba's threads, whichever is faster (the real fill gathers
pieces from all over the token array, in parallel over rows, into one block of output buffers
that every block reuses, as ``fastprep prepare`` does). ``max`` is the speedup over TRL that
this floor allows, TRL time / (plan time + floor time), printed next to the achieved speedup.

Every timing: one burn-in run (JIT compilation, caches), then the median of ``--repeats`` runs
(``--repeats // 2`` for TRL, whose runs take seconds each).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

from fastprep.stages.pack import PackConfig, PackPlan, fill_rows, plan, row_buffers

COMBOS: list[tuple[str, str, str | None]] = [  # (fastprep mode, long policy, TRL strategy)
    ("bfd", "split", "bfd_split"),
    ("bfd", "truncate", "bfd"),
    ("concat", "split", "wrapped"),
    ("pad", "split", None),
]


def make_lengths(n: int, seed: int, chat_share: float = 0.55) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chat = rng.lognormal(np.log(120), 0.9, n)
    prose = rng.lognormal(np.log(900), 1.0, n)
    return np.maximum(np.where(rng.random(n) < chat_share, chat, prose), 1).astype(np.int64)


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = fn()  # burn-in: numba compilation / datasets caches are not what we measure
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def fastprep_cfg(mode: str, policy: str, seq_len: int) -> PackConfig:
    return PackConfig(seq_len=seq_len, mode=mode, long_policy=policy)  # type: ignore[arg-type]


def part_plan(lengths: np.ndarray, seq_len: int, repeats: int) -> None:
    print(f"\n## fastprep plan() on {lengths.size:,} documents, {int(lengths.sum()):,} tokens, "
          f"L={seq_len}")
    print(f"{'mode':<16}{'docs/s':>14}{'seconds':>10}{'rows':>12}{'efficiency':>12}{'kept':>9}"
          f"{'split':>9}{'truncated':>10}")
    for mode, policy, _ in COMBOS:
        cfg = fastprep_cfg(mode, policy, seq_len)
        sec, p = median_time(lambda cfg=cfg: plan(lengths, cfg), repeats)
        print(f"{mode + '+' + policy:<16}{lengths.size / sec:>14,.0f}{sec:>10.3f}{p.n_rows:>12,}"
              f"{p.efficiency:>12.5f}{p.tokens_kept / p.tokens_in:>9.2%}{p.docs_split:>9,}"
              f"{p.docs_truncated:>10,}")


def fastprep_end_to_end(lengths: np.ndarray, tokens: np.ndarray, offsets: np.ndarray,
                        cfg: PackConfig, block: int) -> PackPlan:
    """plan + every row materialised, in blocks, as the write stage does: into one block of
    output buffers allocated per run and reused by every block."""
    p = plan(lengths, cfg)
    bufs = row_buffers(min(block, max(p.n_rows, 1)), cfg.seq_len, np.uint16, np.uint16)
    for lo in range(0, p.n_rows, block):
        fill_rows(p, tokens, offsets, lo, min(lo + block, p.n_rows), pad_id=0,
                  ids_dtype=np.uint16, seg_dtype=np.uint16, out=bufs)
    return p


def trl_dataset(lengths: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> Any:
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(tokens))
    return Dataset(InMemoryTable(pa.table({"input_ids": ids})))


def trl_stats(packed: Any) -> tuple[int, int]:
    """(rows, tokens kept) of a packed TRL dataset."""
    import pyarrow.compute as pc

    col = packed.with_format("arrow")[:]["input_ids"]
    return len(packed), int(pc.sum(pc.list_value_length(col)).as_py())


@njit(parallel=True, cache=True)
def _floor_parallel(ids: np.ndarray, seg: np.ndarray, src: np.ndarray, chunk: int) -> None:
    """The floor's two streams in ``chunk``-element slices spread over numba's threads."""
    kept = src.shape[0]
    for c in prange((ids.shape[0] + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(lo + chunk, ids.shape[0])
        for t in range(lo, min(hi, kept)):
            ids[t] = src[t]
        seg[lo:hi] = 1


def memory_floor(tokens: np.ndarray, kept: int, n_rows: int, seq_len: int, repeats: int
                 ) -> float:
    """Median seconds to write what any materialising packer must: ``kept`` tokens copied into a
    preallocated ``n_rows x L`` ids array, and a preallocated ``n_rows x L`` segment array filled
    (both uint16, as fastprep writes them here), the faster of one thread (``np.copyto`` +
    ``fill``) and all of numba's threads (fastprep's fill runs on them too). The burn-in run
    faults the pages in."""
    ids = np.empty(n_rows * seq_len, np.uint16)
    seg = np.empty(n_rows * seq_len, np.uint16)
    src = tokens[:kept]

    def write() -> None:
        np.copyto(ids[:kept], src)
        seg.fill(1)

    one, _ = median_time(write, repeats)
    many, _ = median_time(lambda: _floor_parallel(ids, seg, src, 1 << 20), repeats)
    return min(one, many)


def part_trl(lengths: np.ndarray, seq_len: int, repeats: int, block: int) -> None:
    try:
        import datasets
        import trl
        from trl import pack_dataset
    except ImportError as e:
        print(f"\n## TRL comparison skipped ({e}); `pip install trl datasets` in a separate venv")
        return
    datasets.disable_progress_bars()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = (np.arange(offsets[-1], dtype=np.int64) % 50_000).astype(np.int32)
    ds = trl_dataset(lengths, tokens, offsets)
    tok16 = tokens.astype(np.uint16)
    n, total = lengths.size, int(offsets[-1])
    print(f"\n## fastprep plan+fill_rows vs TRL {trl.__version__} pack_dataset (datasets "
          f"{datasets.__version__}) on {n:,} documents, {total:,} tokens, L={seq_len}, "
          f"fill_rows in blocks of {block:,} rows")
    print("seconds: plan / plan+fill / memory floor (copy kept tokens + fill segment ids, "
          "preallocated) / TRL; max = TRL / (plan + floor)")
    print(f"{'fastprep':<16}{'docs/s':>10}{'eff.':>9}{'kept':>8}{'rows':>8} | {'TRL':<10}"
          f"{'docs/s':>8}{'eff.':>9}{'kept':>8}{'rows':>8} | {'speedup':>8}{'max':>8} | "
          f"{'plan':>7}{'p+fill':>7}{'floor':>7}{'TRL':>7}")
    floors: list[str] = []
    for mode, policy, strategy in COMBOS:
        if strategy is None:
            continue
        cfg = fastprep_cfg(mode, policy, seq_len)
        p_sec, _ = median_time(lambda cfg=cfg: plan(lengths, cfg), repeats)
        f_sec, p = median_time(
            lambda cfg=cfg: fastprep_end_to_end(lengths, tok16, offsets, cfg, block), repeats)
        floor_sec = memory_floor(tok16, p.tokens_kept, p.n_rows, seq_len, repeats)
        t_sec, packed = median_time(lambda s=strategy: pack_dataset(ds, seq_len, strategy=s),
                                    max(1, repeats // 2))
        rows, kept = trl_stats(packed)
        print(f"{mode + '+' + policy:<16}{n / f_sec:>10,.0f}{p.efficiency:>9.5f}"
              f"{p.tokens_kept / total:>8.2%}{p.n_rows:>8,} | {strategy:<10}{n / t_sec:>8,.0f}"
              f"{kept / (rows * seq_len):>9.5f}{kept / total:>8.2%}{rows:>8,} | "
              f"{t_sec / f_sec:>7.1f}x{t_sec / (p_sec + floor_sec):>7.1f}x | "
              f"{p_sec:>7.3f}{f_sec:>7.3f}{floor_sec:>7.3f}{t_sec:>7.2f}")
        written = 2 * (p.tokens_kept + p.n_rows * seq_len)  # bytes, uint16 ids + segment ids
        floors.append(f"{mode}+{policy}: floor writes {p.tokens_kept:,} tokens + "
                      f"{p.n_rows * seq_len:,} segment ids = {written / floor_sec / 1e9:.1f} GB/s")
    for line in floors:
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000, help="documents for the plan() timings")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--trl-docs", type=int, default=200_000,
                    help="documents for the TRL comparison (first N of the same lengths)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs after one burn-in")
    ap.add_argument("--fill-block", type=int, default=8192,
                    help="rows per fill_rows call in part 2 (fastprep prepare's write stage uses "
                         "~4M tokens per block: 2048 rows at L=2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chat-share", type=float, default=0.55,
                    help="share of short chat turns in the mixture (fewer = harder to pack)")
    args = ap.parse_args()
    print(f"# bench_pack: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, numpy {np.__version__}")
    lengths = make_lengths(args.docs, args.seed, args.chat_share)
    part_plan(lengths, args.seq_len, args.repeats)
    if args.trl_docs > 0:
        part_trl(lengths[:args.trl_docs], args.seq_len, args.repeats, max(1, args.fill_block))


if __name__ == "__main__":
    main()
