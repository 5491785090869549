"""End-to-end preparation throughput: fastprep against the physical limit and the usual pipelines.

    python benchmarks/bench_prepare.py --mb 50 --repeats 3 --out-json prepare.json
    python benchmarks/bench_prepare.py --mb 20 --only limit,fastprep --repeats 1     # quick look

Needs the ``bench`` environment (``datasets``, ``transformers``); the corpus and the 32k BPE
tokenizer come from :mod:`corpus` (built on first use, cached in ``benchmarks/.cache``). Every
case reads the same ``text.jsonl`` (``--mb`` MB of UTF-8 text in the ``text`` fields, the
denominator of every MB/s) with the same tokenizer:

- ``limit-<backend>-1t`` / ``-mt``: the tokenizer alone on the texts already in memory, in ~1 MB
  batches, ids counted and dropped, one thread (``RAYON_NUM_THREADS=1``,
  ``FASTOKENS_BPE_THREADS=1``) / its own pool: ``hf`` is ``tokenizers``' ``encode_batch_fast``,
  ``fast`` is fastokens' ``encode_batch_flat`` (what ``--tokenizer-backend auto`` runs). The
  limit of any pipeline on this machine is ``cores x limit-fast-1t``.
- ``hf-transformers`` (``num_proc`` None / cores): ``datasets.load_dataset("json")`` +
  ``.map(batched=True)`` calling ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``
  (what ``AutoTokenizer`` returns), EOS appended, then nanoGPT's ``prepare.py`` write: one flat
  uint16 ``train.bin`` filled from 1024 contiguous shards ``with_format("numpy")``.
  ``hf-tokenizers``: the same with ``tokenizers.Tokenizer.encode_batch_fast`` in the map function.
  A fresh ``datasets`` cache folder per run (a first run, as a user's is).
- ``fastprep-<dedupe>-<backend>-w<N>``: ``python -m fastprep prepare text.jsonl --dedupe
  none|exact|minhash --tokenizer-backend auto|hf --workers N --no-progress --json``, timed as the
  whole command (interpreter start, imports and numba cache loading included).
- ``startup-<backend>``: the default command on a 1 MB slice of the corpus: what a run costs
  beyond its data.
- ``rss-<dedupe>-<mb>``: ``fastprep prepare`` (``--rss-dedupe`` modes, default exact; all
  workers) on corpora of ``--rss-mb`` sizes, once each: peak memory must not grow with the
  corpus (target: the largest process at most 10% larger for the largest size; the rest is
  reported in bytes per extra document).

Method: every measurement runs in a fresh subprocess (so thread variables apply and memory is its
own). Peak RSS is the largest single process's ``VmHWM`` (the measured command reports its own as
it exits; its descendants' are read every 0.1 s), not ``ru_maxrss``, which inherits the
benchmark process's own peak (see :func:`vmhwm_kb`); and, because several processes add up, the
peak of the tree's summed PSS sampled every second from ``/proc/*/smaps_rollup`` (sampling it
every 0.1 s cost ~10% of a core and slowed the timed command). Before
timing, one burn-in round runs every case on a 2 MB slice (numba cache, page cache, imports); the
timed rounds then interleave the cases (case A, B, C, A, B, C, ...) so background load hits them
alike, and the table shows medians of ``--repeats``. The Python-level pipelines (limit, hf-*)
are timed inside their process from just before ``load_dataset`` (or the first batch) to the
file written: imports and interpreter start are excluded there, which favours them; fastprep's
figure includes its start-up. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod

HERE = Path(__file__).resolve().parent
BATCH_BYTES = 1 << 20


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------- children
def _texts(path: str) -> list[str]:
    import orjson

    with open(path, "rb") as f:
        return [orjson.loads(line)["text"] for line in f if line.strip()]


def child_limit(a: argparse.Namespace) -> dict[str, Any]:
    texts = _texts(a.input)
    tok_file = str(Path(a.tokenizer) / "tokenizer.json")
    if a.case.startswith("limit-fast"):
        import fastokens
        import numpy as np

        ftok = fastokens.Tokenizer.from_json_str(Path(tok_file).read_text())

        def encode(batch: list[str]) -> int:
            _, off = ftok.encode_batch_flat(batch, add_special_tokens=False, split_special_tokens=True)
            return int(np.frombuffer(off, np.uint64)[-1])
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tok_file)
        tok.encode_special_tokens = True

        def encode(batch: list[str]) -> int:
            return sum(len(e.ids) for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    batches: list[list[str]] = [[]]
    size = 0
    for t in texts:  # ~1 MB batches, as fastprep's --batch-bytes
        batches[-1].append(t)
        size += len(t)
        if size >= BATCH_BYTES:
            batches.append([])
            size = 0
    encode(texts[:64])  # spin the pool up
    t0 = time.perf_counter()
    tokens = sum(encode(b) for b in batches)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "docs": len(texts)}


def child_hf(a: argparse.Namespace) -> dict[str, Any]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    num_proc = a.num_proc or None
    tok_file = str(Path(a.tokenizer) / "tokenizer.json")
    if a.case.startswith("hf-transformers"):
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>")
        eos = tok.eos_token_id

        def process(batch: dict[str, list]) -> dict[str, list]:
            enc = tok(batch["text"])  # input_ids + attention_mask, as users write it
            ids = [x + [eos] for x in enc["input_ids"]]
            return {"ids": ids, "len": [len(x) for x in ids]}
    else:
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(tok_file)
        eos = tk.token_to_id("</s>")

        def process(batch: dict[str, list]) -> dict[str, list]:
            ids = [e.ids + [eos] for e in tk.encode_batch_fast(batch["text"], add_special_tokens=False)]
            return {"ids": ids, "len": [len(x) for x in ids]}

    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=a.input, split="train", cache_dir=a.workdir)
    n_docs = len(ds)
    ds = ds.map(process, batched=True, num_proc=num_proc, remove_columns=ds.column_names)
    arr_len = nanogpt_write(ds, Path(a.workdir) / "train.bin")
    return {"seconds": time.perf_counter() - t0, "tokens": arr_len, "docs": n_docs}


def nanogpt_write(ds: Any, path: Path) -> int:
    """nanoGPT data/openwebtext/prepare.py's write: the ``ids`` column of a mapped dataset as
    one flat uint16 ``train.bin`` (vocab < 2**16), filled from up to 1024 contiguous shards;
    returns the token count."""
    import numpy as np

    arr_len = int(np.sum(ds["len"], dtype=np.uint64))
    arr = np.memmap(path, dtype=np.uint16, mode="w+", shape=(arr_len,))
    total_batches = min(1024, len(ds))
    idx = 0
    for i in range(total_batches):
        batch = ds.shard(num_shards=total_batches, index=i, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(batch["ids"])
        arr[idx: idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    return arr_len


# ---------------------------------------------------------------------------- measuring
def vmhwm_kb(pid: int | str = "self") -> int:
    """Peak resident set of one process since its exec (``VmHWM``), in kB; 0 once it is gone.

    Not ``ru_maxrss``: a forked child starts with a copy of its parent's high-water mark, and
    Linux keeps the mark of the pre-exec address space, so a child's ``ru_maxrss`` (from
    ``wait4`` or its own ``getrusage``) is at least its parent's peak RSS at the fork.
    Measured here: ``python -c pass`` started from a parent holding 300 MiB reports 326 MiB;
    this script's own process peaks at ~240-250 MiB (reading the corpus file to warm the page
    cache), which was a floor under every "RSS" figure it printed before this was found."""
    return _status_kb(pid, ("VmHWM:",))[0]


def _status_kb(pid: int | str, keys: tuple[str, ...]) -> list[int]:
    """Fields of ``/proc/<pid>/status`` in kB (0 when absent or the process is gone)."""
    got = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line[:line.find(":") + 1]
                if k in got:
                    got[k] = int(line.split()[1])
    except OSError:
        pass
    return [got[k] for k in keys]


# The fastprep command, run through runpy so that it reports its own VmHWM as it exits (its
# workers are spawned from ``-c``, so they do not run this again).
FASTPREP = r"""
import atexit, runpy, sys
def _report():
    with open("/proc/self/status") as f:
        kb = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    print(f"VMHWM_KB {kb}", file=sys.stderr, flush=True)
atexit.register(_report)
sys.argv = ["fastprep"] + sys.argv[1:]
runpy.run_module("fastprep", run_name="__main__")
"""


class TreeSampler(threading.Thread):
    """Peaks of a process tree: every process's ``VmHWM`` (checked every 0.1 s: a few
    ``/proc/<pid>/status`` reads) and the tree's summed PSS (every 1 s)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self._stop_evt = pid, 0, threading.Event()
        self.hwm_kb: dict[int, int] = {}
        self.anon_kb: dict[int, int] = {}  # sampled peak of RssAnon (heap, not file pages)

    def _tree(self) -> list[int]:
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for t in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
        return out

    # PSS once a second: a sample costs ~2.7 ms per smaps_rollup of a 300 MB process (measured
    # here), so sampling every 0.1 s took ~10% of one core from the command being timed.
    INTERVAL = 0.1
    PSS_EVERY = 10

    def run(self) -> None:
        tick = 0
        while not self._stop_evt.wait(self.INTERVAL):
            tick += 1
            tree = self._tree()
            for p in tree:
                hwm, anon = _status_kb(p, ("VmHWM:", "RssAnon:"))
                self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), hwm)
                self.anon_kb[p] = max(self.anon_kb.get(p, 0), anon)
            if tick % self.PSS_EVERY:
                continue
            total = 0
            for p in tree:
                try:
                    with open(f"/proc/{p}/smaps_rollup") as f:
                        for line in f:
                            if line.startswith("Pss:"):
                                total += int(line.split()[1])
                                break
                except OSError:
                    pass
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> int:
        self._stop_evt.set()
        self.join()
        return self.peak_kb


def run_cmd(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one measurement: wall seconds, the largest process's peak RSS (``VmHWM``; the command
    itself reports its own as it exits, its descendants are sampled), the tree's peak summed PSS
    (MiB), stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        sampler = TreeSampler(p.pid)
        sampler.start()
        _, status, _ = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        pss = sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr[-3000:]}")
    own = [int(x.split()[1]) for x in stderr.splitlines() if x.startswith("VMHWM_KB ")]
    if not own:
        raise RuntimeError(f"{' '.join(cmd)} did not report its peak memory (VMHWM_KB)")
    sampler.hwm_kb[p.pid] = own[-1]
    return {"wall": wall, "maxrss_mb": max(sampler.hwm_kb.values()) / 1024,
            "anon_peak_mb": max(sampler.anon_kb.values(), default=0) / 1024,
            "pss_peak_mb": pss / 1024, "stdout": stdout}


ONE_THREAD = {"RAYON_NUM_THREADS": "1", "FASTOKENS_BPE_THREADS": "1"}


def case_list(only: set[str] | None, n_cores: int) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for b in ("fast", "hf"):
        cases.append({"name": f"limit-{b}-1t", "group": "limit", "env": ONE_THREAD})
        cases.append({"name": f"limit-{b}-mt", "group": "limit", "env": {}})
    for lib in ("transformers", "tokenizers"):
        for np_ in (0, n_cores):
            cases.append({"name": f"hf-{lib}-np{np_ or 'None'}", "group": "hf", "num_proc": np_,
                          "env": {}})
    for dd, backend, w in (("none", "auto", n_cores), ("exact", "auto", n_cores),
                           ("minhash", "auto", n_cores), ("exact", "auto", 1),
                           ("exact", "hf", n_cores)):
        cases.append({"name": f"fastprep-{dd}-{backend}-w{w}", "group": "fastprep", "dedupe": dd,
                      "backend": backend, "workers": w, "env": {}})
    for backend in ("auto", "hf"):
        cases.append({"name": f"startup-{backend}", "group": "startup", "dedupe": "exact",
                      "backend": backend, "workers": n_cores, "env": {}})
    if only:
        cases = [c for c in cases if c["group"] in only or c["name"] in only]
    return cases


def measure(case: dict[str, Any], input_path: str, tok: str, work: Path) -> dict[str, Any]:
    env = {**os.environ, **case["env"]}
    env.pop("TOKENIZERS_PARALLELISM", None)
    wd = Path(tempfile.mkdtemp(dir=work))
    try:
        if case["group"] in ("fastprep", "startup"):
            cmd = [sys.executable, "-c", FASTPREP, "prepare", input_path, "--tokenizer", tok,
                   "--out", str(wd / "out"), "--dedupe", case["dedupe"], "--workers",
                   str(case["workers"]), "--tokenizer-backend", case.get("backend", "auto"),
                   "--no-progress", "--json"]
            if case.get("near_method"):
                cmd += ["--near-method", case["near_method"]]
            r = run_cmd(cmd, env)
            stats = json.loads(r["stdout"][r["stdout"].index("{"):])
            r.update(seconds=r["wall"], tokens=stats["counts"]["tokens"],
                     docs=stats["counts"]["records_read"], inner=stats.get("seconds"),
                     counts={k: stats["counts"][k] for k in ("records_kept", "exact_duplicates",
                                                             "near_duplicates", "rows")})
        else:
            cmd = [sys.executable, __file__, "--child", case["name"], "--input", input_path,
                   "--tokenizer", tok, "--workdir", str(wd), "--num-proc", str(case.get("num_proc", 0))]
            r = run_cmd(cmd, env)
            r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
        r.pop("stdout")
        return r
    finally:
        subprocess.run(["rm", "-rf", str(wd)], check=False)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("fastprep", "tokenizers", "fastokens", "numpy", "numba", "pyarrow", "orjson", "datasets",
              "transformers"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "-"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _slice(src: Path, dst: Path, nbytes: int) -> None:
    if dst.is_file():
        return
    with open(src, "rb") as f, open(dst.with_suffix(".tmp"), "wb") as g:
        n = 0
        for line in f:
            g.write(line)
            n += len(line)
            if n >= nbytes:
                break
    os.replace(dst.with_suffix(".tmp"), dst)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fastprep prepare vs the limit and the usual pipelines")
    ap.add_argument("--mb", type=float, default=50, help="MB of text of the comparison corpus")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; the table shows medians")
    ap.add_argument("--only", default="", help="comma-separated groups (limit,hf,fastprep,startup,rss) or case names")
    ap.add_argument("--rss-mb", default="50,200", help="corpus sizes of the memory check")
    ap.add_argument("--rss-dedupe", default="exact",
                    help="comma-separated --dedupe modes of the memory check (exact is the "
                         "default; minhash-shuffle adds --near-method shuffle)")
    ap.add_argument("--out-json", default="", help="write every raw figure here")
    ap.add_argument("--no-burn-in", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--input", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default="", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--num-proc", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        a.case = a.child
        res = child_limit(a) if a.child.startswith("limit") else child_hf(a)
        print(json.dumps(res))
        print(f"VMHWM_KB {vmhwm_kb()}", file=sys.stderr, flush=True)
        return

    only = {s.strip() for s in a.only.split(",") if s.strip()} or None
    n_cores = cores()
    tok = str(corpus_mod.tokenizer_dir())
    folder = corpus_mod.build(a.mb)
    meta = corpus_mod.load_meta(folder)
    text_path = folder / "text.jsonl"
    text_mb = meta["text"]["text_bytes"] / 1e6
    work = corpus_mod.CACHE / "runs"
    work.mkdir(parents=True, exist_ok=True)
    burn = folder / "burnin.jsonl"
    _slice(text_path, burn, 2_000_000)
    one_mb = folder / "one-mb.jsonl"
    _slice(text_path, one_mb, 1_000_000)
    cases = case_list(only, n_cores)
    ver = versions()
    header = {"date": datetime.date.today().isoformat(), "cores": n_cores, "cpu": cpu_model(),
              "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "versions": ver, "corpus": str(folder), "text_mb": text_mb, "docs": meta["text"]["docs"],
              "tokenizer": tok, "repeats": a.repeats, "load_before": loadavg()}
    print(f"# bench_prepare {header['date']}: {n_cores} cores ({header['cpu']}), {header['mem_gb']} GiB, "
          f"load {header['load_before']}")
    print("# " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    print(f"# corpus {folder.name}: {text_mb:.1f} MB of text, {meta['text']['docs']:,} docs; "
          f"tokenizer {Path(tok).name}")
    text_path.read_bytes()  # page cache

    runs: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in cases}
    t_all = time.perf_counter()
    if cases and not a.no_burn_in:
        for c in cases:
            measure(c, str(burn), tok, work)
        print(f"# burn-in done ({time.perf_counter() - t_all:.0f}s)", flush=True)
    for r in range(a.repeats):
        for c in cases:
            m = measure(c, str(one_mb if c["group"] == "startup" else text_path), tok, work)
            m["load"] = loadavg()
            runs[c["name"]].append(m)
            print(f"#   round {r + 1} {c['name']:<24} {text_mb / m['seconds']:6.2f} MB/s  "
                  f"{m['seconds']:6.1f}s  rss {m['maxrss_mb']:6.0f} MiB  pss {m['pss_peak_mb']:6.0f} MiB  "
                  f"load {m['load']}", flush=True)

    rows: list[dict[str, Any]] = []
    for c in cases:
        ms = runs[c["name"]]
        sec = statistics.median(m["seconds"] for m in ms)
        rows.append({"name": c["name"], "seconds": sec, "mb_s": text_mb / sec,
                     "docs_s": statistics.median(m["docs"] / m["seconds"] for m in ms),
                     "tok_s": statistics.median(m["tokens"] / m["seconds"] for m in ms),
                     "maxrss_mb": max(m["maxrss_mb"] for m in ms),
                     "pss_mb": max(m["pss_peak_mb"] for m in ms)})
    by = {r["name"]: r for r in rows}
    limit = by["limit-fast-1t"]["mb_s"] * n_cores if "limit-fast-1t" in by else None
    hf_tf = max((r["mb_s"] for r in rows if r["name"].startswith("hf-transformers")), default=None)
    hf_tk = max((r["mb_s"] for r in rows if r["name"].startswith("hf-tokenizers")), default=None)
    if rows:
        print(f"\n## {text_mb:.1f} MB of text, {meta['text']['docs']:,} docs, medians of {a.repeats} "
              f"(limit = {n_cores} cores x limit-fast-1t"
              + (f" = {limit:.2f} MB/s" if limit else ": not measured") + ")")
        print(f"{'case':<26}{'MB/s':>7}{'docs/s':>9}{'tokens/s':>11}{'seconds':>9}{'RSS MiB':>9}"
              f"{'PSS MiB':>9}{'x limit':>9}{'x hf-tf':>9}{'x hf-tk':>9}")
        for r in rows:
            if r["name"].startswith("startup"):
                continue

            def ratio(ref: float | None, r: dict[str, Any] = r) -> str:
                return f"{r['mb_s'] / ref:>9.2f}" if ref else f"{'-':>9}"
            print(f"{r['name']:<26}{r['mb_s']:>7.2f}{r['docs_s']:>9,.0f}{r['tok_s']:>11,.0f}"
                  f"{r['seconds']:>9.1f}{r['maxrss_mb']:>9.0f}{r['pss_mb']:>9.0f}"
                  f"{ratio(limit)}{ratio(hf_tf)}{ratio(hf_tk)}")
        checks = []
        fp_none = by.get(f"fastprep-none-auto-w{n_cores}")
        fp_mh = by.get(f"fastprep-minhash-auto-w{n_cores}")
        fp_def = by.get(f"fastprep-exact-auto-w{n_cores}")
        fp_hf = by.get(f"fastprep-exact-hf-w{n_cores}")
        if limit and fp_def:
            checks.append(("fastprep (default) >= 0.35 x cores x fastokens 1-thread", fp_def["mb_s"] / limit, 0.35))
        if fp_hf and fp_def:
            checks.append(("fastprep (default) >= 10 x --tokenizer-backend hf", fp_def["mb_s"] / fp_hf["mb_s"], 10.0))
        if fp_none and fp_mh:
            checks.append(("fastprep --dedupe minhash >= 0.7 x --dedupe none", fp_mh["mb_s"] / fp_none["mb_s"], 0.7))
        for name in ("startup-auto", "startup-hf"):
            if name in by:
                print(f"{name:<26} {by[name]['seconds']:.2f} s on a 1 MB slice (median)")
        if "startup-auto" in by:
            # lower is better: compared as target / achieved >= 1, printed in seconds below
            checks.append(("fixed start-up on 1 MB (default), s", by["startup-auto"]["seconds"], -0.7))
        if hf_tf and fp_def:
            checks.append(("fastprep (default) vs datasets+transformers", fp_def["mb_s"] / hf_tf, 1.0))
        if checks:
            print("\n## targets (achieved / target)")
            for name, got, want in checks:
                met = got <= -want if want < 0 else got >= want  # negative: an upper bound
                print(f"{'MET ' if met else 'MISS'} {name}: {got:.2f} (target "
                      f"{'<= ' if want < 0 else ''}{abs(want):g})")

    rss_rows: list[dict[str, Any]] = []
    if only is None or "rss" in only:
        sizes = [float(s) for s in a.rss_mb.split(",") if s.strip()]
        for mode in a.rss_dedupe.split(","):
            dedupe, _, near = mode.partition("-")  # minhash-shuffle: --near-method shuffle
            flags = f"--dedupe {dedupe}" + (f" --near-method {near}" if near else "")
            print(f"\n## peak memory of fastprep prepare ({flags}, --workers {n_cores}) by corpus "
                  f"size, one run each (RSS: largest process; anon: its heap part, sampled)")
            print(f"{'text MB':>8}{'docs':>10}{'seconds':>9}{'MB/s':>7}{'RSS MiB':>9}{'anon MiB':>9}"
                  f"{'PSS MiB':>9}")
            case_rows = []
            for mb in sizes:
                f2 = corpus_mod.build(mb)
                m2 = corpus_mod.load_meta(f2)
                (f2 / "text.jsonl").read_bytes()
                c = {"name": f"rss-{mode}-{mb:g}", "group": "fastprep", "dedupe": dedupe,
                     "near_method": near, "workers": n_cores, "backend": "auto", "env": {}}
                m = measure(c, str(f2 / "text.jsonl"), tok, work)
                mbt = m2["text"]["text_bytes"] / 1e6
                m.update(text_mb=mbt, docs=m2["text"]["docs"], mode=mode, load=loadavg())
                case_rows.append(m)
                print(f"{mbt:>8.1f}{m2['text']['docs']:>10,}{m['seconds']:>9.1f}{mbt / m['seconds']:>7.2f}"
                      f"{m['maxrss_mb']:>9.0f}{m['anon_peak_mb']:>9.0f}{m['pss_peak_mb']:>9.0f}",
                      flush=True)
            rss_rows += case_rows
            if len(case_rows) >= 2:
                lo, hi = case_rows[0], case_rows[-1]
                grow = hi["maxrss_mb"] / lo["maxrss_mb"]
                per_doc = (hi["maxrss_mb"] - lo["maxrss_mb"]) * 2**20 / max(1, hi["docs"] - lo["docs"])
                # "flat": at most 10% more for the larger corpus; what is left grows with the
                # number of documents (dedupe index, packing plan), reported per document
                print(f"{'MET ' if grow <= 1.10 else 'MISS'} peak RSS flat ({flags}): "
                      f"x{grow:.2f} for x{hi['text_mb'] / lo['text_mb']:.1f} the text "
                      f"(target <= 1.10); {per_doc:.0f} B per extra document")
    header["load_after"] = loadavg()
    header["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print(f"\n# load average before {header['load_before']}, after {header['load_after']}; "
          f"{header['total_seconds']:.0f}s in all")
    if a.out_json:
        Path(a.out_json).write_text(json.dumps({"header": header, "runs": runs, "table": rows,
                                                "rss": rss_rows}, indent=2))


if __name__ == "__main__":
    main()
