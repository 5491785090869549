"""The ``fastprep`` command: prepare, bench, inspect, verify, sample, train.

Errors a user can fix (missing input, unreadable tokenizer, impossible configuration, a bad record
under ``--strict``, a full disk) print one line and exit with status 2 (1 for disk errors), never
a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

from pathlib import Path

from ._version import __version__
from .dataset.format import QUARANTINE_FILE
from .flags import add_options, from_args


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    """The prepare flags, derived from the recipe's and the run options' fields."""
    from .pipeline.config import RunOptions

    p = sub.add_parser("prepare", help="tokenize, deduplicate and pack a corpus into a dataset folder",
                       description="read -> clean -> dedupe -> tokenize -> pack -> write")
    _add_recipe(p)
    add_options(p.add_argument_group("run"), RunOptions, "run__")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    _add_sources(p)


def _add_sources(p: argparse.ArgumentParser) -> None:
    """Mixing and decontamination: inputs given with weights, evaluation sets to keep out."""
    from .stages.mix import parse_mix

    g = p.add_argument_group("mixing and evaluation sets")
    def mix_item(item: str) -> Any:
        try:
            return parse_mix(item)
        except ValueError as e:  # argparse would replace the message with its own
            raise argparse.ArgumentTypeError(str(e)) from None

    g.add_argument("--mix", nargs="+", action="extend", type=mix_item, metavar="PATH=WEIGHT",
                   help="inputs with weights, shares of output tokens (instead of positional "
                        "inputs): down-sampled or repeated by whole documents")
    g.add_argument("--recipe", metavar="FILE", help="a TOML recipe: options and [[source]] "
                   "tables (paths, weight, own shape and fields); command-line flags win")
    g.add_argument("--decontaminate", nargs="+", action="extend", metavar="FILE", default=[],
                   help="evaluation sets (JSONL/Parquet/text, the run's field mapping): training "
                        "documents sharing a --decontaminate-ngram with them are removed and "
                        "quarantined as contaminated")
    inputs = next(a for a in p._actions if a.dest == "read__paths")
    inputs.nargs = "*"  # --mix / --recipe give the inputs instead


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """The flags of the recipe (inputs, records, cleaning, tokenizer, packing) and dedupe."""
    from .dedupe.minhash import MinHashConfig
    from .pipeline.config import Recipe

    add_options(p, Recipe)
    g = p.add_argument_group("deduplication")
    g.add_argument("--dedupe", choices=["none", "exact", "minhash"], default="exact",
                   help="exact (default): identical documents; minhash: exact, then near duplicates")
    add_options(g, MinHashConfig, "minhash__")
    # --seed seeded MinHash too before --minhash-seed existed: None tells "not given"
    p.set_defaults(minhash__seed=None)


# run options that mean nothing for a benchmark's temporary dataset
_BENCH_SKIPS = ("out", "executor", "ray_address", "ray_cpus_per_task", "dedupe_report", "id_field",
                "strict", "overwrite", "resume", "progress", "quiet")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .pipeline.config import RunOptions

    p = sub.add_parser("bench", help="measure engines, prepare's stages, packing and the loader "
                       "on a sample of your data", description="throughput of this corpus, "
                       "tokenizer and sequence lengths, side by side in one run; writes only "
                       "to a temporary folder and --json")
    _add_recipe(p)
    seq = p._option_string_actions["--seq-len"]  # the recipe's flag, here for several lengths
    seq.nargs, seq.default = "+", [seq.default]
    seq.help = "row lengths to pack (the first one is prepared and loaded)"
    add_options(p.add_argument_group("run"), RunOptions, "run__", skip=_BENCH_SKIPS)
    g = p.add_argument_group("benchmark")
    g.add_argument("--mb", type=float, default=100.0, help="size of the sample in MB of input")
    g.add_argument("--sample", choices=["first", "seeded"], default="first",
                   help="first: the inputs' first --mb MB; seeded: spread over the inputs")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of --sample seeded")
    g.add_argument("--batch-size", type=int, default=8, help="loader batch size (rows)")
    g.add_argument("--loader-batches", type=int, default=200, help="batches the loader is timed over")
    g.add_argument("--work-dir", default=None,
                   help="where the temporary sample and dataset go (default: the system's temp)")
    g.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON here")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of plots: lengths, packing, "
                       "counts, loss and data balance", description="a report of a prepared "
                       "dataset: the HTML embeds its plots (PNG) and their numbers (JSON)")
    p.add_argument("path", help="the dataset folder")
    p.add_argument("--out", metavar="FILE", default="report.html",
                   help="the HTML file to write (default: report.html)")
    p.add_argument("--png-dir", metavar="DIR", default=None, help="also write each plot as DIR/NAME.png")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures' numbers as JSON")
    p.add_argument("--flag-terms", metavar="FILE", default=None,
                   help="terms to count per source in the decoded text (one per line, # comments)")
    p.add_argument("--dedupe-report", metavar="FILE", default=None,
                   help="the JSONL of `prepare --dedupe-report`: the largest duplicate clusters")
    p.add_argument("--sample-rows", metavar="N", type=int, default=20_000,
                   help="rows decoded for the text figures, a seeded sample when there are more "
                        "(default: 20000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    p.add_argument("--row", metavar="N", type=int, default=None,
                   help="the row rendered token by token (default: a sampled row with targets)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def config_from_args(a: argparse.Namespace, **run: Any) -> Any:
    """The :class:`fastprep.PrepareConfig` of parsed ``prepare`` arguments (``run`` sets run
    options directly)."""
    from .dedupe.minhash import MinHashConfig
    from .pipeline.config import DedupeConfig, PrepareConfig, Recipe, RunOptions

    minhash = None
    if a.dedupe == "minhash":
        seed = a.minhash__seed
        if seed is None and a.pack__seed != 0:
            print("fastprep: warning: --seed also seeds MinHash's permutations in this release "
                  "only; pass --minhash-seed to keep that", file=sys.stderr)
            seed = a.pack__seed
        minhash = from_args(MinHashConfig, a, "minhash__", seed=seed or 0)
    dedupe = DedupeConfig(exact=a.dedupe != "none", minhash=minhash)
    extra = _source_fields(a)
    return PrepareConfig(recipe=from_args(Recipe, a, dedupe=dedupe, **extra),
                         run=from_args(RunOptions, a, "run__", **run))


def _source_fields(a: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields --mix, --recipe and --decontaminate set (read, mix, decontaminate)."""
    import dataclasses

    from . import recipe as recipe_file
    from .flags import from_args as fields_of
    from .dedupe.decontam import DecontamConfig
    from .stages.mix import MixConfig
    from .stages.read import ReadConfig
    from .stages.records import RecordConfig

    out: dict[str, Any] = {}
    decontam = fields_of(DecontamConfig, a, "decontaminate__")
    out["decontaminate"] = dataclasses.replace(decontam, paths=tuple(getattr(a, "decontaminate", [])))
    sources: tuple[Any, ...] = ()
    if getattr(a, "recipe", None):
        sources = recipe_file.sources(recipe_file.load(a.recipe), fields_of(RecordConfig, a, "records__"),
                                      a.recipe)
    if getattr(a, "mix", None):
        if sources:
            raise ValueError("give the sources either in the --recipe file or with --mix, not both")
        sources = recipe_file.mix_sources(a.mix)
    paths = tuple(a.read__paths or ())
    if sources:
        if paths:
            raise ValueError(f"with --mix or a recipe's sources the inputs are the sources' paths; "
                             f"drop the positional input(s) {' '.join(paths)}")
        paths = tuple(dict.fromkeys(p for src in sources for p in src.paths))
    out["read"] = fields_of(ReadConfig, a, "read__", paths=paths)
    out["mix"] = dataclasses.replace(fields_of(MixConfig, a, "mix__"), sources=sources)
    return out


def _fmt(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


# what each counted repair is, in the summary's words (fastprep.stages.clean.REPAIRS + reader)
REPAIR_NAMES = {"newlines": "CRLF/CR newlines", "control": "control characters",
                "unicode": "Unicode normalisation", "strip": "outer whitespace",
                "utf8": "invalid UTF-8 replaced", "bom": "byte-order mark"}


def _listing(counts: dict[str, int], names: dict[str, str] | None = None) -> str:
    """``a 3, b 1`` (largest first), or an empty string."""
    names = names or {}
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{names.get(k, k)} {v:,}" for k, v in items if v)


def summary_lines(counts: dict[str, Any], packing: dict[str, Any], seq_len: int,
                  seconds: dict[str, float] | None = None, out: str | None = None,
                  this_run: dict[str, Any] | None = None) -> list[str]:
    """The human summary of a run (``prepare``) or a dataset (``inspect``): counts by kind,
    never Python reprs. ``this_run`` (prepare only) holds what this invocation processed
    itself, for the throughput after a resume."""
    shapes = _listing(counts.get("documents_by_shape", {}))
    dropped = _listing(counts["dropped"])
    where = f"  -> {Path(out) / QUARANTINE_FILE}" if out and counts["dropped_total"] else ""
    lines = [
        f"records read        {_fmt(counts['records_read'])}",
        f"records kept        {_fmt(counts['records_kept'])}" + (f"  ({shapes})" if shapes else ""),
        f"dropped             {_fmt(counts['dropped_total'])}" + (f"  ({dropped}){where}" if dropped else ""),
        f"exact duplicates    {_fmt(counts['exact_duplicates'])}",
        f"near duplicates     {_fmt(counts['near_duplicates'])}",
        f"repaired            {_listing(counts['repaired'], REPAIR_NAMES) or 'none'}",
        f"tokens              {_fmt(counts['tokens'])}  (targets {_fmt(counts['target_tokens'])})",
        f"docs split / trunc. {_fmt(counts['documents_split'])} / {_fmt(counts['documents_truncated'])}",
        f"tokens dropped      {_fmt(counts['tokens_dropped'])}  ({100 * packing['dropped_token_share']:.2f}%)",
        f"rows x L            {_fmt(counts['rows'])} x {seq_len}  ({packing['mode']})",
        f"packing efficiency  {100 * packing['efficiency']:.2f}%",
    ]
    if seconds:
        total = max(seconds.get("total", 0.0), 1e-9)
        done = this_run or {}
        nbytes = done.get("text_bytes", counts.get("text_bytes", 0))
        tokens = done.get("tokens", counts["tokens"])
        resumed = done.get("resumed_tasks", 0)
        part = (f"; {resumed} of {done['tasks']} tasks resumed from an interrupted run, "
                f"rates over the rest" if resumed else "")
        lines.append(f"time                {total:.2f} s  ({nbytes / 1e6 / total:,.2f} MB/s of text, "
                     f"{tokens / total:,.0f} tokens/s, {int(seconds.get('workers', 1))} "
                     f"worker(s){part})")
    return lines


def recipe_lines(m: Any) -> list[str]:
    """The mix, the validation set and decontamination of a dataset's manifest, for people."""
    lines = []
    for src in m.mix.get("sources", []) if m.mix.get("tokens") is not None else []:
        what = (f"repeated, {src['epochs']:.2f} epochs" if src["epochs"] > 1 + 1e-9 else
                f"{100 * src['epochs']:.1f}% of it used")
        lines.append(f"mix source          {src['name']}: share {100 * src['share']:.2f}% "
                     f"(weight {100 * src['weight']:.2f}%), {_fmt(src['tokens_used'])} tokens "
                     f"from its {_fmt(src['tokens'])}, {what}")
    if "val_documents" in m.split:  # a training set's; a validation set's names its role
        lines.append(f"validation set      {_fmt(m.split['val_documents'])} documents, "
                     f"{_fmt(m.split['val_rows'])} rows, {_fmt(m.split['val_tokens'])} tokens "
                     f"-> {m.split['val_dir']}/")
    d = m.decontamination
    if d:
        lines.append(f"decontaminated      {_fmt(d['contaminated'])} documents shared a "
                     f"{d['ngram']}-gram with {_fmt(d['eval_documents'])} evaluation documents")
    return lines


def cmd_prepare(a: argparse.Namespace) -> int:
    from .pipeline.run import prepare

    cfg = config_from_args(a)
    stats = prepare(cfg)
    if not cfg.run.quiet:
        for note in stats.notes:
            print(f"fastprep: {note}", file=sys.stderr)
    for warning in stats.warnings:
        print(f"fastprep: warning: {warning}", file=sys.stderr)
    if a.json:
        print(json.dumps(stats.to_dict(), indent=2))
    elif not cfg.run.quiet:
        print("\n".join(summary_lines(stats.counts, stats.packing, stats.manifest.seq_len,
                                      stats.seconds, stats.out, stats.this_run)
                        + recipe_lines(stats.manifest)))
        print(f"dataset             {stats.out}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import BenchOptions, render, run_bench

    seq_lens = tuple(a.pack__seq_len)
    a.pack__seq_len = seq_lens[0]
    opts = BenchOptions(seq_lens=seq_lens, mb=a.mb, sample=a.sample, seed=a.sample_seed,
                        batch_size=a.batch_size, loader_batches=a.loader_batches,
                        work_dir=a.work_dir, progress=not a.quiet and sys.stderr.isatty())
    if a.json and not Path(a.json).resolve().parent.is_dir():
        raise ValueError(f"--json {a.json}: its folder does not exist")
    # the output folder is the benchmark's temporary one; this placeholder is replaced there
    cfg = config_from_args(a, out="(temporary)")
    report = run_bench(cfg, opts)
    if a.json:
        from .io import atomic_write_bytes

        atomic_write_bytes(Path(a.json), (json.dumps(report, indent=2) + "\n").encode())
    if not a.quiet:
        print(render(report))
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    import numpy as np

    from .dataset.format import open_dataset

    ds = open_dataset(a.path)
    m = ds.manifest
    if a.json:
        print(json.dumps({"seq_len": m.seq_len, "rows": m.rows, "arrays": list(m.arrays),
                          "dtypes": m.dtypes, "tokenizer": m.tokenizer, "counts": m.counts,
                          "packing": m.packing, "dedupe": m.dedupe, "mix": m.mix,
                          "split": m.split, "decontamination": m.decontamination,
                          "documents": m.documents}, indent=2))
        return 0
    print(f"dataset             {a.path}  ({len(ds.shards)} shard(s))")
    print("arrays              " + ", ".join(f"{k}:{np.dtype(v).name}" for k, v in m.dtypes.items()))
    tok = m.tokenizer
    print(f"tokenizer           vocab {tok['vocab_size']:,}, bos {tok['bos_id']}, eos {tok['eos_id']}, "
          f"pad {tok['pad_id']}, sha256 {tok['sha256'][:12]}")
    if m.counts and "records_read" in m.counts:
        print("\n".join(summary_lines(m.counts, m.packing, m.seq_len) + recipe_lines(m)))
    if ds.rows == 0:
        print("(no rows)")
        return 0
    index = a.row + ds.rows if a.row < 0 else a.row  # -1 is the last row, as in Python
    if not 0 <= index < ds.rows:
        raise ValueError(f"--row {a.row}: the dataset has {ds.rows:,} rows (0..{ds.rows - 1}, or "
                         f"-1..-{ds.rows} from the end)")
    row = ds.row(index)
    seg = np.asarray(row["segment_ids"])
    ids = np.asarray(row["input_ids"])
    mask = np.asarray(row["loss_mask"]) if "loss_mask" in row else None
    tok_path = Path(a.path) / tok.get("file", "tokenizer.json")
    decode = None
    if tok_path.is_file():
        from tokenizers import Tokenizer

        decode = Tokenizer.from_file(str(tok_path)).decode
    print(f"\nrow {index}: {int((seg != 0).sum())} real tokens, {int(seg.max())} document(s)")
    for s in range(1, int(seg.max()) + 1):
        sel = seg == s
        piece = ids[sel].tolist()
        targets = int(mask[sel].sum()) if mask is not None else len(piece)
        text = decode(piece, skip_special_tokens=False) if decode else str(piece[:40])
        text = text if len(text) <= a.chars else text[: a.chars] + " [...]"
        print(f"--- segment {s}: {len(piece)} tokens, {targets} targets")
        print(text)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from .report.build import ReportOptions, build_report

    opts = ReportOptions(out=a.out, png_dir=a.png_dir, json=a.json, flag_terms=a.flag_terms,
                         dedupe_report=a.dedupe_report, sample_rows=a.sample_rows, seed=a.seed,
                         row=a.row)
    result = build_report(a.path, opts)
    if not a.quiet:
        s, f = result["seconds"], result["figures"]
        print(f"report              {a.out}  ({f['dataset']['rows']:,} rows, "
              f"{f['sample']['rows_sampled']:,} decoded, {s['total']:.2f} s)")
        for path in result["files"][1:]:
            print(f"                    {path}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .dataset.verify import verify

    ds = verify(a.path)
    print(f"ok: {a.path}: {ds.rows:,} rows x {ds.seq_len}, {len(ds.shards)} shard(s), checksums and "
          f"invariants verified")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from .sample import write_sample

    paths = write_sample(a.dir, megabytes=a.mb, seed=a.seed, vocab_size=a.vocab_size)
    for k, v in paths.items():
        print(f"{k:<10} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_bench(sub)
    _add_report(sub)
    p = sub.add_parser("inspect", help="counts, efficiency, dtypes and a decoded sample row")
    p.add_argument("path")
    p.add_argument("--row", type=int, default=0)
    p.add_argument("--chars", type=int, default=400, help="characters shown per segment")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("verify", help="check checksums, shapes and mask invariants")
    p.add_argument("path")
    p = sub.add_parser("sample", help="write a sample corpus and tokenizer (no download)")
    p.add_argument("dir")
    p.add_argument("--mb", type=float, default=8.0, help="approximate corpus size in MB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=8000)
    from .train.config import TrainConfig  # torch-free: the loop imports torch when it runs

    p = sub.add_parser("train", help="full fine-tuning on a prepared dataset (needs fastprep[train])")
    add_options(p, TrainConfig)
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from .train.config import TrainConfig

    cfg = from_args(TrainConfig, a)
    if cfg.estimate:
        try:
            from .train.estimate import estimate, render
        except ImportError as e:
            raise ValueError(f"fastprep train needs the training extra ({e}): "
                             f"pip install 'fastprep[train]'") from None
        print(render(estimate(cfg)))
        return 0
    try:
        from .train.loop import train
    except ImportError as e:
        raise ValueError(f"fastprep train needs the training extra ({e}): "
                         f"pip install 'fastprep[train]'") from None
    stats = train(cfg)
    if stats["rank"] == 0:
        print(json.dumps({k: v for k, v in stats.items() if k != "losses"}, indent=2))
    return 0


COMMANDS = {"prepare": cmd_prepare, "bench": cmd_bench, "inspect": cmd_inspect, "verify": cmd_verify,
            "report": cmd_report, "sample": cmd_sample, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    """The console script. Called without ``argv`` (a process of its own), a finished
    ``prepare`` leaves through :func:`_exit_now`; called with ``argv`` (tests, other
    programs) it only returns the exit status."""
    rc, command = _main(sys.argv[1:] if argv is None else argv)
    if argv is None and command == "prepare":
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's finalisation. Everything of the run is
    already closed and renamed into place; what remains is tearing down numba's and LLVM's
    loaded kernels and the module graph, a noticeable part of a short run (benchmarks/README.md,
    "Component figures"). atexit handlers still run and the standard streams are
    flushed; non-daemon threads are none of ours (the pools were shut down)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say there
            pass
    os._exit(rc)


def _main(argv: list[str]) -> tuple[int, str]:
    """(exit status, command)."""
    parser = build_parser()
    if argv[:1] == ["prepare"] and "--recipe" in argv[1:]:
        try:
            argv = _with_recipe(argv, parser)
        except ValueError as e:
            print(f"fastprep: error: {e}", file=sys.stderr)
            return 2, "prepare"
    a = parser.parse_args(argv)
    return _run(a), a.command


def _with_recipe(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``prepare`` arguments with the recipe file's options placed before the command line's
    own (so that those win)."""
    from . import recipe as recipe_file

    i = argv.index("--recipe")
    if i + 1 >= len(argv):
        raise ValueError("--recipe needs a FILE")
    path = argv[i + 1]
    prepare = parser._subparsers._group_actions[0].choices["prepare"]  # type: ignore[union-attr]
    return ["prepare", *recipe_file.options_argv(recipe_file.load(path), prepare, path), *argv[1:]]


def _run(a: argparse.Namespace) -> int:
    try:
        return COMMANDS[a.command](a)
    except BrokenPipeError:
        # The reader went away (`fastprep inspect DS | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        tail = ("; run the same command again to resume from the finished tasks"
                if a.command == "prepare" else "")
        print(f"fastprep: interrupted{tail}", file=sys.stderr)
        return 130
    except OSError as e:
        out = getattr(a, "run__out", None)
        where = f"{e.filename}: " if e.filename else (f"{out}: " if out else "")
        hint = ""
        if a.command == "prepare" and e.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = (" (free space there, then run the same command again: finished tasks are "
                    "kept and resumed)")
        print(f"fastprep: error: {where}{e.strerror or e}{hint}", file=sys.stderr)
        return 1
    except ValueError as e:  # InputError, TokenizerError, OutputError, StrictError, DatasetError, ...
        print(f"fastprep: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .pipeline.executor import WorkerDied

        if not isinstance(e, WorkerDied):
            raise
        print(f"fastprep: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
