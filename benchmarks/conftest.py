"""The pytest-benchmark suite: its switch between timing and CI, its inputs, and its summary.

    python -m pytest benchmarks --benchmark-only                       # timed, full sizes
    python -m pytest benchmarks --benchmark-only --bench-mb 50 --benchmark-json out.json
    python -m pytest                                                    # CI: each case once, tiny

Two modes, decided once per session (:func:`pytest_configure`):

- **timed** (``--benchmark-only`` or ``--benchmark-enable``): full sizes, the benchmark corpus
  of :mod:`corpus` (``--bench-mb`` MB of text and the 32k byte-level BPE, built on first use and
  cached in ``benchmarks/.cache``), timing on.
- **tiny** (anything else, e.g. the project's default ``python -m pytest``, whose testpaths
  include ``benchmarks``): every benchmark runs once, untimed (pytest-benchmark's
  ``--benchmark-disable`` behaviour), on ~0.5 MB of standard-library text and a 2,000-entry
  byte-level BPE trained in-process, both in the session's temporary folder. The correctness
  assertions run all the same, so a broken benchmark fails CI.

Every case goes through :func:`suite.measure`: its output is checked (equal ids, equal rows)
before any round is timed. Each records its sizes in ``extra_info`` and names its peer
(``role``, ``pair``); at the end of a timed run a Markdown table gives every case's median and
its speed as a multiple of its peer's (peer median / case median: the work is the same, so this
is the throughput ratio).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

# the scripts' folder, where they import each other from (``corpus``, ``bench_pack``, ``suite``)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import (Bench, Corpus, Ids, Sizes, full_corpus, loadavg,  # noqa: E402
                   reference_encode, tiny_corpus)

_SIZES = pytest.StashKey[Sizes]()
_SUMMARY = pytest.StashKey[list[dict[str, Any]]]()
# pytest-benchmark options that only make sense with timing on
_TIMING_OUTPUTS = ("benchmark_json", "benchmark_save", "benchmark_autosave", "benchmark_compare")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("fastprep benchmarks (benchmarks/conftest.py)")
    g.addoption("--bench-mb", type=float, default=20.0,
                help="MB of corpus text in the timed run (default 20; built once, cached)")
    g.addoption("--bench-pack-docs", type=int, default=200_000,
                help="documents of the packing benchmark in the timed run (default 200000)")
    g.addoption("--bench-rounds", type=int, default=3,
                help="timed rounds per case after the checked burn-in (default 3; a case under "
                     "0.2 s gets as many as fit in ~1 s, at most 50)")
    g.addoption("--bench-tiny", action="store_true",
                help="the CI inputs even when timing (a quick look at the timed path)")


def pytest_configure(config: pytest.Config) -> None:
    """Decide the mode. pytest-benchmark reads ``--benchmark-disable`` in its own
    ``pytest_configure``, which is ``trylast``, so this one (an initial conftest under
    ``python -m pytest`` and ``python -m pytest benchmarks``) runs first and can switch timing
    off; :func:`suite.measure` also disables each fixture, for a session where this conftest
    is found only during collection."""
    opt = config.option
    timed = bool(getattr(opt, "benchmark_only", False) or getattr(opt, "benchmark_enable", False))
    if not timed:
        asked = [f"--{n.replace('_', '-')}" for n in _TIMING_OUTPUTS if getattr(opt, n, None)]
        if asked:
            raise pytest.UsageError(f"{', '.join(asked)}: the benchmarks are timed only with "
                                    "--benchmark-only (or --benchmark-enable); add it")
        opt.benchmark_disable = True
    config.stash[_SIZES] = Sizes.of(timed, opt.bench_tiny, opt.bench_mb, opt.bench_pack_docs,
                                    opt.bench_rounds)
    config.stash[_SUMMARY] = []


@pytest.fixture(scope="session")
def sizes(pytestconfig: pytest.Config) -> Sizes:
    return pytestconfig.stash[_SIZES]


@pytest.fixture
def bench(benchmark: Any, sizes: Sizes) -> Bench:
    """:func:`suite.measure` bound to this test's ``benchmark`` fixture."""
    return Bench(benchmark, sizes)


@pytest.fixture(scope="session")
def corpus(sizes: Sizes, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Full mode: the cached benchmark corpus and 32k tokenizer; tiny mode: ~0.5 MB of the
    standard library and a small BPE trained in the session's temporary folder."""
    if sizes.full:
        return full_corpus(sizes.mb)
    return tiny_corpus(tmp_path_factory.mktemp("tiny-corpus"))


@pytest.fixture(scope="session")
def reference_ids(corpus: Corpus) -> Ids:
    """The corpus encoded once by ``tokenizers``, untimed: the ids every tokenizer case and
    ``prepare`` are checked against."""
    return reference_encode(corpus)


# ---------------------------------------------------------------------------- summary

try:
    import pytest_benchmark  # noqa: F401  (the hook below is one of the plugin's)
except ImportError:  # pragma: no cover - the dev extra installs it
    collect_ignore_glob = ["test_bench_*.py"]
else:
    @pytest.hookimpl(wrapper=True)
    def pytest_benchmark_group_stats(config: pytest.Config, benchmarks: list[dict[str, Any]],
                                     group_by: str) -> Any:
        """Keep this run's flat benchmark records (not those --benchmark-compare loaded)."""
        config.stash[_SUMMARY] = [b for b in benchmarks if b.get("source") in (None, False, "NOW")]
        return (yield)


def _sizes_text(info: dict[str, Any]) -> str:
    parts = []
    for k, v in info.items():
        if k in ("role", "pair", "reference"):
            continue
        parts.append(f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool)
                     else f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Medians and ratios to each pair's peer, as a Markdown table (timed runs only)."""
    rows = config.stash.get(_SUMMARY, [])
    if not rows:
        return
    peers: dict[tuple[str, str], float] = {}
    for b in rows:
        info = b.get("extra_info", {})
        if info.get("role") == "peer" and info.get("reference", True):
            peers.setdefault((b["group"], info.get("pair", "")), b["median"])
    tr = terminalreporter
    tr.write_sep("-", f"fastprep vs peers: {os.cpu_count()} cores, load average {loadavg()}")
    tr.write_line("| group | case | median s | × peer | MB/s | sizes (extra_info) |")
    tr.write_line("|---|---|---:|---:|---:|---|")
    for b in sorted(rows, key=lambda b: (b["group"] or "", b["extra_info"].get("pair", ""),
                                         b["extra_info"].get("role") == "peer", b["median"])):
        info = b.get("extra_info", {})
        peer = peers.get((b["group"], info.get("pair", "")))
        ratio = f"{peer / b['median']:.2f}" if peer else ""
        mbs = f"{info['mb'] / b['median']:.1f}" if isinstance(info.get("mb"), float) else ""
        case = b["param"] or b["name"]
        case = f"{info['pair']}: {case}" if info.get("pair") and info["pair"] not in case else case
        tr.write_line(f"| {b['group']} | {case} | {b['median']:.4f} | {ratio} "
                      f"| {mbs} | {_sizes_text(info)} |")
