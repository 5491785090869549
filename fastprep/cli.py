"""The ``fastprep`` command: prepare, inspect, verify, sample, train.

Errors a user can fix (missing input, unreadable tokenizer, impossible configuration, a bad record
under ``--strict``, a full disk) print one line and exit with status 2 (1 for disk errors), never
a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="tokenize, deduplicate and pack a corpus into a dataset folder",
                       description="read -> clean -> dedupe -> tokenize -> pack -> write")
    p.add_argument("inputs", nargs="+", help="JSONL (.jsonl/.ndjson/.json, optionally .gz/.zst), "
                   "Parquet or text files, folders, or globs")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a local model folder")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--seq-len", type=int, default=2048, help="row length L in tokens (default 2048)")
    g = p.add_argument_group("records")
    g.add_argument("--shape", choices=["auto", "text", "prompt", "chat"], default="auto",
                   help="record shape; auto detects messages / prompt+completion / text per record")
    g.add_argument("--text-field", default="text", help="field holding text (dotted for nested keys)")
    g.add_argument("--prompt-field", default="prompt",
                   help="prompt field, or a template over fields such as '{instruction}\\n\\n{input}'")
    g.add_argument("--completion-field", default="completion")
    g.add_argument("--messages-field", default="messages")
    g.add_argument("--system-prompt", default=None, help="system turn for chats that have none")
    g.add_argument("--fill", action="append", default=[], metavar="FIELD=VALUE",
                   help="default for a missing/null field (repeatable), e.g. --fill input=")
    g.add_argument("--text-unit", choices=["file", "line", "paragraph"], default="file",
                   help="record unit of plain-text files (default: a whole file)")
    g.add_argument("--max-record-bytes", type=int, default=64 << 20,
                   help="larger records are quarantined (default 64 MiB)")
    g.add_argument("--invalid-utf8", choices=["drop", "replace"], default="drop")
    g = p.add_argument_group("cleaning")
    g.add_argument("--unicode", choices=["NFC", "NFKC", "none"], default="NFC")
    g.add_argument("--no-fix-newlines", action="store_true", help="keep CRLF / CR as they are")
    g.add_argument("--keep-control", action="store_true", help="keep control characters")
    g.add_argument("--no-strip", action="store_true", help="keep leading/trailing whitespace")
    g.add_argument("--min-chars", type=int, default=1)
    g.add_argument("--max-chars", type=int, default=0, help="0 = no limit")
    g = p.add_argument_group("deduplication")
    g.add_argument("--dedupe", choices=["none", "exact", "minhash"], default="exact",
                   help="exact (default): identical documents; minhash: exact, then near duplicates")
    g.add_argument("--threshold", type=float, default=0.8, help="MinHash Jaccard threshold")
    g.add_argument("--num-perm", type=int, default=128)
    g.add_argument("--ngram", type=int, default=5)
    g.add_argument("--char-ngrams", action="store_true", help="character instead of word n-grams")
    g.add_argument("--bands", type=int, default=None)
    g.add_argument("--rows", type=int, default=None, help="rows per band")
    g.add_argument("--verify", choices=["signature", "exact"], default="exact",
                   help="confirm MinHash candidates by the exact Jaccard of their shingle sets "
                        "(default; the sets of kept documents go to a file in the work folder, "
                        "~4 B per shingle) or by the signature estimate (no file, less precise)")
    g.add_argument("--dedupe-report", default=None, help="JSONL of removed near duplicates")
    g.add_argument("--near-method", choices=["auto", "stream", "shuffle"], default="auto",
                   help="MinHash decisions by one index in the driver (stream) or by a band "
                        "shuffle verified in parallel (shuffle; Ray tasks under --executor ray); "
                        "same result; auto = shuffle under Ray, else stream")
    g = p.add_argument_group("tokenization")
    g.add_argument("--bos", choices=["auto", "always", "never"], default="auto")
    g.add_argument("--eos", choices=["auto", "always", "never"], default="auto")
    g.add_argument("--chat-template", default=None, help="Jinja file overriding the tokenizer's")
    g.add_argument("--special-tokens-in-text", action="store_true",
                   help="let '<|endoftext|>'-like strings in text become special tokens (off: they stay text)")
    g = p.add_argument_group("packing")
    g.add_argument("--pack", choices=["bfd", "concat", "pad"], default="bfd")
    g.add_argument("--long-docs", choices=["split", "truncate"], default="split",
                   help="documents longer than L: split into chunks (default) or truncate")
    g.add_argument("--pack-window", type=int, default=1_000_000, help="BFD window in documents")
    g.add_argument("--seed", type=int, default=0, help="row shuffle seed")
    g.add_argument("--no-shuffle", action="store_true")
    g = p.add_argument_group("output")
    g.add_argument("--shard-rows", type=int, default=0, help="rows per shard (0: ~256 MiB shards)")
    g.add_argument("--batch-bytes", type=int, default=1 << 20, help="text per tokenizer call")
    g.add_argument("--workers", type=int, default=0,
                   help="worker processes (default 0: one per core); output is identical for any N")
    g.add_argument("--task-bytes", type=int, default=0, help="input bytes per task (0: automatic)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local worker processes, or Ray tasks (pip install 'fastprep[ray]')")
    g.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray")
    g.add_argument("--ray-cpus-per-task", type=int, default=1)
    g.add_argument("--strict", action="store_true", help="stop at the first bad record")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (or discard an interrupted run) in --out")
    g.add_argument("--resume", action="store_true",
                   help="insist on resuming an interrupted run (automatic when the config and inputs match)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--json", action="store_true", help="print the statistics as JSON")


def _parse_fill(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--fill {item!r}: expected FIELD=VALUE")
        k, v = item.split("=", 1)
        out.append((k, v))
    return tuple(out)


def config_from_args(a: argparse.Namespace) -> Any:
    from .clean import CleanConfig
    from .dedupe import DedupeConfig
    from .pack import PackConfig
    from .prepare import PrepareConfig
    from .read import ReadConfig
    from .records import RecordConfig
    from .tokenize import TokenizeConfig

    minhash = None
    if a.dedupe == "minhash":
        from .minhash import MinHashConfig

        minhash = MinHashConfig(threshold=a.threshold, num_perm=a.num_perm, ngram=a.ngram,
                                char_ngrams=a.char_ngrams, bands=a.bands, rows=a.rows, seed=a.seed,
                                verify=a.verify)
    return PrepareConfig(
        read=ReadConfig(paths=tuple(a.inputs), text_unit=a.text_unit,
                        max_record_bytes=a.max_record_bytes, invalid_utf8=a.invalid_utf8),
        tokenize=TokenizeConfig(tokenizer=a.tokenizer, bos=a.bos, eos=a.eos, chat_template=a.chat_template,
                                special_tokens_in_text=a.special_tokens_in_text),
        out=a.out,
        records=RecordConfig(shape=a.shape, text_field=a.text_field, prompt_field=a.prompt_field,
                             completion_field=a.completion_field, messages_field=a.messages_field,
                             system_prompt=a.system_prompt, defaults=_parse_fill(a.fill)),
        clean=CleanConfig(unicode=a.unicode, fix_newlines=not a.no_fix_newlines,
                          strip_control=not a.keep_control, strip=not a.no_strip,
                          min_chars=a.min_chars, max_chars=a.max_chars),
        dedupe=DedupeConfig(exact=a.dedupe != "none", minhash=minhash, report=a.dedupe_report,
                            near_method=a.near_method),
        pack=PackConfig(seq_len=a.seq_len, mode=a.pack, long_policy=a.long_docs,
                        window_docs=a.pack_window, shuffle=not a.no_shuffle, seed=a.seed),
        shard_rows=a.shard_rows, batch_bytes=a.batch_bytes, workers=a.workers,
        task_bytes=a.task_bytes, strict=a.strict, resume=a.resume, executor=a.executor,
        ray_address=a.address, ray_cpus_per_task=a.ray_cpus_per_task,
        overwrite=a.overwrite, progress=a.progress,
    )


def _fmt(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def summary_lines(counts: dict[str, Any], packing: dict[str, Any], seconds: dict[str, float] | None) -> list[str]:
    lines = [
        f"records read        {_fmt(counts['records_read'])}",
        f"records kept        {_fmt(counts['records_kept'])}  {counts.get('documents_by_shape', {})}",
        f"dropped             {_fmt(counts['dropped_total'])}  {counts['dropped'] or ''}",
        f"exact duplicates    {_fmt(counts['exact_duplicates'])}",
        f"near duplicates     {_fmt(counts['near_duplicates'])}",
        f"repaired            {counts['repaired'] or 0}",
        f"tokens              {_fmt(counts['tokens'])}  (targets {_fmt(counts['target_tokens'])})",
        f"docs split / trunc. {_fmt(counts['documents_split'])} / {_fmt(counts['documents_truncated'])}",
        f"tokens dropped      {_fmt(counts['tokens_dropped'])}  ({100 * packing['dropped_token_share']:.2f}%)",
        f"rows x L            {_fmt(counts['rows'])} x {packing['seq_len']}  ({packing['mode']})",
        f"packing efficiency  {100 * packing['efficiency']:.2f}%",
    ]
    if seconds:
        total = seconds.get("total", 0.0)
        mb = counts.get("text_chars", 0) / 1e6
        lines.append(f"time                {total:.2f} s  ({mb / max(total, 1e-9):.2f} MB/s of text, "
                     f"{counts['tokens'] / max(total, 1e-9):,.0f} tokens/s)")
    return lines


def cmd_prepare(a: argparse.Namespace) -> int:
    from .prepare import prepare

    stats = prepare(config_from_args(a))
    for note in stats.notes:
        print(f"fastprep: {note}", file=sys.stderr)
    if a.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print("\n".join(summary_lines(stats.counts, stats.packing, stats.seconds)))
        print(f"dataset             {stats.out}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from .format import open_dataset

    ds = open_dataset(a.path)
    m = ds.manifest
    if a.json:
        print(json.dumps({k: m[k] for k in ("seq_len", "rows", "arrays", "dtypes", "tokenizer",
                                            "counts", "packing", "dedupe") if k in m}, indent=2))
        return 0
    print(f"dataset             {a.path}  ({len(ds.shards)} shard(s))")
    print("arrays              " + ", ".join(f"{k}:{np.dtype(v).name}" for k, v in m["dtypes"].items()))
    tok = m["tokenizer"]
    print(f"tokenizer           vocab {tok['vocab_size']:,}, bos {tok['bos_id']}, eos {tok['eos_id']}, "
          f"pad {tok['pad_id']}, sha256 {tok['sha256'][:12]}")
    if "counts" in m:
        print("\n".join(summary_lines(m["counts"], m["packing"], None)))
    if ds.rows == 0:
        print("(no rows)")
        return 0
    row = ds.row(min(a.row, ds.rows - 1))
    seg = np.asarray(row["segment_ids"])
    ids = np.asarray(row["input_ids"])
    mask = np.asarray(row["loss_mask"]) if "loss_mask" in row else None
    tok_path = Path(a.path) / tok.get("file", "tokenizer.json")
    decode = None
    if tok_path.is_file():
        from tokenizers import Tokenizer

        decode = Tokenizer.from_file(str(tok_path)).decode
    print(f"\nrow {min(a.row, ds.rows - 1)}: {int((seg != 0).sum())} real tokens, {int(seg.max())} document(s)")
    for s in range(1, int(seg.max()) + 1):
        sel = seg == s
        piece = ids[sel].tolist()
        targets = int(mask[sel].sum()) if mask is not None else len(piece)
        text = decode(piece, skip_special_tokens=False) if decode else str(piece[:40])
        text = text if len(text) <= a.chars else text[: a.chars] + " [...]"
        print(f"--- segment {s}: {len(piece)} tokens, {targets} targets")
        print(text)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .verify import verify

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


def build_parser(want_train: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastprep", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
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
    # The train parser imports torch; build it only when asked, so prepare never imports torch.
    if want_train:
        try:
            from .train import add_train_arguments
        except ImportError as e:
            p = sub.add_parser("train")
            p.set_defaults(no_torch=str(e))
        else:
            p = sub.add_parser("train", help="full fine-tuning on a prepared dataset")
            add_train_arguments(p)
    else:
        p = sub.add_parser("train", help="full fine-tuning on a prepared dataset (needs fastprep[train]; "
                           "see fastprep train --help)", add_help=False)
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    if getattr(a, "no_torch", False):
        raise ValueError(f"fastprep train needs the training extra ({a.no_torch}): "
                         f"pip install 'fastprep[train]'")
    from .train import run_from_args

    run_from_args(a)
    return 0


COMMANDS = {"prepare": cmd_prepare, "inspect": cmd_inspect, "verify": cmd_verify,
            "sample": cmd_sample, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(want_train=bool(argv) and argv[0] == "train")
    a = parser.parse_args(argv)
    try:
        return COMMANDS[a.command](a)
    except KeyboardInterrupt:
        print("fastprep: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"fastprep: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:  # InputError, TokenizerError, OutputError, StrictError, DatasetError, ...
        print(f"fastprep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
