"""A reproducible benchmark corpus and a realistic tokenizer, built on this machine, no downloads.

    python benchmarks/corpus.py --mb 50            # prints the folder; cached, rebuilt only if missing
    python benchmarks/corpus.py --mb 200 --zst     # also writes text.jsonl.zst

Source: the prose and code of the Python standard library of the running interpreter
(:func:`fastprep.sample.stdlib_units`: module docstrings, functions/classes with a docstring, whole
modules), ~15 MB of text on CPython 3.11. ``--mb`` is the size of the *text* of ``text.jsonl`` in
MB (10**6 bytes of UTF-8 in the ``text`` fields, the denominator of every MB/s figure), so a
corpus larger than the standard library repeats it, with controlled variation:

- pass 0 is the standard library as it is; pass ``r >= 1`` holds every unit again with 15% of its
  words (maximal non-whitespace runs; layout and indentation untouched) replaced by words drawn
  from the corpus's own word frequencies (seed ``seed + r``). Word 5-gram Jaccard to the original
  is then ~0.28 and between two passes ~0.1, far below any near-duplicate threshold (0.8), so a
  repeated pass is new text for exact and MinHash deduplication, while the byte and token
  statistics (bytes per token, word lengths, code/prose mix) stay those of the standard library.
- the units of all passes are shuffled with the seed and cut at ``--mb``.

Planted duplicates (on top of ``--mb``, counted in ``meta.json``): 3% of the documents are exact
copies and 3% near copies made with :func:`fastprep.sample.edit_words` at 0.5%, 1% or 2% of the words
(word 5-gram Jaccard ~0.97 / ~0.9 / ~0.82, i.e. above a 0.8 threshold), each placed at a random
later position.

Supervised records, ``--sft-share`` of ``--mb`` each (default 10%): ``instruct.jsonl`` (prompt
"Explain what this Python code does" + the function's source, completion = its docstring) and
``chat.jsonl`` (system persona, user question, assistant answer; every 4th one two rounds),
built from the function units of the same passes.

The tokenizer: a byte-level BPE with a 32,000 vocabulary (:func:`fastprep.sample.train_tokenizer`,
BOS/EOS/pad and a ChatML template), trained once on ``--tok-train-mb`` MB of pass-0 units and
cached by its parameters; every corpus size shares it.

Everything lands under ``benchmarks/.cache/`` (git-ignored), keyed by the parameters and the
Python version (the standard library is the source); a finished folder holds ``meta.json``,
written last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fastprep.sample import edit_words, stdlib_units, train_tokenizer

CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = 1                    # bump when the recipe changes: the cache key includes it
VARY_RATE = 0.15               # share of words replaced in passes >= 1
DUP_EXACT = 0.03               # planted exact copies, share of documents
DUP_NEAR = 0.03                # planted near copies, share of documents
NEAR_RATES = (0.005, 0.01, 0.02)
_WORD = re.compile(r"(\S+)")


def _py() -> str:
    return f"py{sys.version_info[0]}{sys.version_info[1]}"


def _units() -> list[tuple[str, str, str]]:
    return list(stdlib_units(1 << 62))


def _word_pool(units: list[tuple[str, str, str]], seed: int, size: int = 200_000) -> list[str]:
    """Words sampled with their corpus frequency (a uniform draw from this list)."""
    rng = random.Random(seed)
    words: list[str] = []
    for _, _, text in units:
        words.extend(text.split())
    return [words[rng.randrange(len(words))] for _ in range(size)]


def _vary(text: str, rng: random.Random, pool: list[str], rate: float = VARY_RATE) -> str:
    """Replace ``rate`` of the words, keeping every whitespace run (layout, indentation) as is."""
    parts = _WORD.split(text)  # [ws, word, ws, word, ..., ws]
    n = len(parts) // 2
    for _ in range(int(n * rate + rng.random())):
        parts[2 * rng.randrange(n) + 1] = pool[rng.randrange(len(pool))]
    return "".join(parts)


def _docstring(code: str) -> str:
    return code.split('"""')[1].strip() if code.count('"""') >= 2 else ""


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> int:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    os.replace(tmp, path)
    return path.stat().st_size


def tokenizer_dir(vocab: int = 32000, train_mb: float = 8.0, seed: int = 0) -> Path:
    """The cached tokenizer folder, trained on first use."""
    out = CACHE / f"tokenizer-v{vocab}-t{train_mb:g}-s{seed}-{_py()}-r{VERSION}"
    if (out / "tokenizer.json").is_file():
        return out
    units = _units()
    random.Random(seed).shuffle(units)
    texts, total = [], 0
    for _, _, text in units:
        texts.append(text)
        total += len(text.encode())
        if total >= train_mb * 1e6:
            break
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.perf_counter()
    train_tokenizer(texts, tmp, vocab_size=vocab)
    os.replace(tmp, out)
    print(f"trained tokenizer (vocab {vocab}, {total / 1e6:.1f} MB) in {time.perf_counter() - t:.0f}s: {out}",
          file=sys.stderr)
    return out


def build(mb: float, seed: int = 0, sft_share: float = 0.1, zst: bool = False) -> Path:
    """Build (or find) the corpus folder; returns it. ``meta.json`` is written last."""
    out = CACHE / f"corpus-mb{mb:g}-s{seed}-sft{sft_share:g}-{_py()}-r{VERSION}"
    meta_path = out / "meta.json"
    if meta_path.is_file():
        if zst and not (out / "text.jsonl.zst").is_file():
            _zst(out / "text.jsonl")
        return out
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base = _units()
    pool = _word_pool(base, seed)
    target = int(mb * 1e6)
    sft_target = int(mb * 1e6 * sft_share)

    # ---- text: passes over the standard library until --mb of text, shuffled, then cut
    texts: list[str] = []
    funcs: list[tuple[str, str]] = []  # (name, code) of function units, for the SFT records
    total = 0
    p = 0
    while total < target or sum(len(c) for _, c in funcs) < 2 * sft_target:
        prng = random.Random(seed * 1_000_003 + p)
        for kind, name, text in base:
            t = text if p == 0 else _vary(text, prng, pool)
            texts.append(t)
            total += len(t.encode())
            if kind == "function" and _docstring(t):
                funcs.append((name, t))
        p += 1
    rng.shuffle(texts)
    docs: list[str] = []
    size = 0
    for t in texts:
        if size >= target:
            break
        docs.append(t)
        size += len(t.encode())
    del texts
    # ---- planted duplicates, each after its original
    n = len(docs)
    planted: list[tuple[int, str]] = []
    for _ in range(int(n * DUP_EXACT)):
        planted.append((rng.randrange(n), "exact"))
    for k in range(int(n * DUP_NEAR)):
        planted.append((rng.randrange(n), f"near{NEAR_RATES[k % len(NEAR_RATES)]}"))
    after: dict[int, list[str]] = {}  # position -> copies inserted after it (a later position)
    for src, how in planted:
        text = docs[src] if how == "exact" else edit_words(docs[src], rng, float(how[4:]))
        after.setdefault(rng.randrange(src, n), []).append(text)
    records = []
    for i, d in enumerate(docs):
        records.append({"text": d})
        records.extend({"text": t} for t in after.get(i, ()))
    text_bytes = sum(len(r["text"].encode()) for r in records)
    file_bytes = _write_jsonl(out / "text.jsonl", records)
    n_text = len(records)
    del records, docs

    # ---- supervised records: prompt/completion and chat from the function units
    rng.shuffle(funcs)
    instruct: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    sft_bytes = {"instruct": 0, "chat": 0}
    for i, (name, code) in enumerate(funcs):
        doc = _docstring(code)
        if sft_bytes["instruct"] < sft_target and i % 2 == 0:
            prompt = f"Explain what this Python code does:\n\n{code[:1500]}\n"
            instruct.append({"prompt": prompt, "completion": doc})
            sft_bytes["instruct"] += len(prompt.encode()) + len(doc.encode())
        elif sft_bytes["chat"] < sft_target and i % 2 == 1:
            msgs = [{"role": "system", "content": "You are a concise Python expert."},
                    {"role": "user", "content": f"What does `{name}` do?"},
                    {"role": "assistant", "content": doc}]
            if i % 8 == 1:
                msgs += [{"role": "user", "content": "Show me its source."},
                         {"role": "assistant", "content": code}]
            chat.append({"messages": msgs})
            sft_bytes["chat"] += sum(len(m["content"].encode()) for m in msgs)
        if min(sft_bytes.values()) >= sft_target:
            break
    _write_jsonl(out / "instruct.jsonl", instruct)
    _write_jsonl(out / "chat.jsonl", chat)
    if zst:
        _zst(out / "text.jsonl")
    meta = {
        "recipe_version": VERSION, "mb": mb, "seed": seed, "sft_share": sft_share, "python": _py(),
        "passes": p, "vary_rate": VARY_RATE,
        "text": {"file": "text.jsonl", "docs": n_text, "text_bytes": text_bytes, "file_bytes": file_bytes,
                 "planted_exact": int(n * DUP_EXACT), "planted_near": int(n * DUP_NEAR)},
        "instruct": {"file": "instruct.jsonl", "docs": len(instruct), "text_bytes": sft_bytes["instruct"],
                     "file_bytes": (out / "instruct.jsonl").stat().st_size},
        "chat": {"file": "chat.jsonl", "docs": len(chat), "text_bytes": sft_bytes["chat"],
                 "file_bytes": (out / "chat.jsonl").stat().st_size},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    print(f"built corpus {out} in {meta['build_seconds']}s", file=sys.stderr)
    return out


def _zst(path: Path) -> None:
    import zstandard

    tmp = path.with_name(path.name + ".zst.tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    os.replace(tmp, path.with_name(path.name + ".zst"))


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "meta.json").read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50, help="MB of text in text.jsonl (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-share", type=float, default=0.1,
                    help="size of instruct.jsonl and of chat.jsonl, each, as a share of --mb")
    ap.add_argument("--zst", action="store_true", help="also write text.jsonl.zst")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--tok-train-mb", type=float, default=8.0)
    a = ap.parse_args(argv)
    tok = tokenizer_dir(a.vocab, a.tok_train_mb, a.seed)
    folder = build(a.mb, a.seed, a.sft_share, a.zst)
    print(json.dumps({"corpus": str(folder), "tokenizer": str(tok), **load_meta(folder)}, indent=2))


if __name__ == "__main__":
    main()
