"""Plumbing shared by the examples, so that each example reads as: the records, the `fastprep`
command with its flags, and the check that matters for its task.

- :func:`args`: ``--out DIR`` (default: a new temporary folder), ``--steps N``, ``--fast``;
- :func:`tokenizer`: one small byte-level BPE trained in-process on every file of
  ``examples/data/`` (so the Korean of the translation example is in its training text), saved
  as a model folder with a ChatML template; cached by the hash of its training text;
- :func:`fastprep`: prints a command the way a user types it, then runs it (in this process:
  the same code path as the console script, without paying interpreter, numba and torch
  start-up once per command);
- :func:`report`, :func:`train`: ``fastprep report`` (when this fastprep has it) and a few steps
  of ``fastprep train --model tiny``, whose losses are returned;
- :func:`documents`, :func:`check_prompt_completion`: every packed document read back from the
  arrays with its loss mask, and the loss-mask check of prompt/completion datasets.

Checks raise :class:`CheckFailed` (exit status 1); ``assert`` would vanish under ``python -O``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
VOCAB_SIZE = 2000  # ~90 KB of training text: enough merges for whole English words and Hangul syllables


class CheckFailed(SystemExit):
    """An example's check failed: the message is printed and the exit status is 1."""

    def __init__(self, message: str) -> None:
        super().__init__(f"CHECK FAILED: {message}")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def args(doc: str | None, steps: int = 20) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(doc or "A fastprep example.").strip().splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary one)")
    p.add_argument("--steps", type=int, default=steps, help="training steps")
    p.add_argument("--fast", action="store_true", help="test mode: 3 training steps")
    a = p.parse_args()
    if a.fast:
        a.steps = 3
    a.out = a.out or Path(tempfile.mkdtemp(prefix="fastprep-example-"))
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"output folder: {a.out}")
    return a


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def tokenizer() -> Path:
    """The examples' tokenizer folder (tokenizer.json, tokenizer_config.json with BOS ``<s>``,
    EOS ``</s>``, pad ``<pad>``, a ChatML template and ``<|im_start|>``/``<|im_end|>`` as special
    tokens), trained on every string of every ``examples/data/*.jsonl``: byte-level BPE encodes
    any script, but only text it was trained on gets merges (untrained Hangul would cost three
    tokens per syllable). Cached in ``$FASTPREP_EXAMPLES_CACHE`` (default: the system's
    temporary folder) under the hash of that text, so the examples share one."""
    from fastprep._version import __version__
    from fastprep.sample import train_tokenizer

    texts = [s for path in sorted(DATA.glob("*.jsonl")) for r in read_jsonl(path) for s in _strings(r)]
    key = hashlib.sha256("\0".join([__version__, str(VOCAB_SIZE), *texts]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("FASTPREP_EXAMPLES_CACHE")
                 or Path(tempfile.gettempdir()) / "fastprep-examples")
    folder = cache / f"tokenizer-{key}"
    if not (folder / "tokenizer_config.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".tmp-"))
        train_tokenizer(texts, tmp, vocab_size=VOCAB_SIZE)
        try:
            os.replace(tmp, folder)  # atomic: a concurrent example either sees it whole or trains its own
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
    return folder


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json"))


def shell_line(argv: list[str]) -> str:
    """``argv`` as a bash line: paths under the working folder relative, newlines as $'\\n'."""
    cwd = Path.cwd()
    out = []
    for a in argv:
        p = Path(a)
        if p.is_absolute() and p.exists() and p.is_relative_to(cwd):
            a = str(p.relative_to(cwd))
        if "\n" in a or "\t" in a:
            esc = a.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
            out.append(f"$'{esc}'")
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def fastprep(*argv: str | Path) -> None:
    """Print ``fastprep ARGV`` as a command line and run it; a non-zero exit ends the example."""
    from fastprep import cli

    line = [str(a) for a in argv]
    print(f"\n$ {shell_line(['fastprep', *line])}", flush=True)
    rc = cli.main(line)
    if rc != 0:
        raise SystemExit(f"`fastprep {line[0]}` exited with status {rc}")


def report(ds: Path, html: Path, *extra: str | Path) -> None:
    """``fastprep report DS --out FILE.html [EXTRA]``: the dataset's figures on one HTML page."""
    fastprep("report", ds, "--out", html, *extra)


def train(ds: Path, out: Path, steps: int, lr: float = 3e-3, batch_size: int = 4) -> list[float]:
    """A few steps of the tiny random Llama on ``ds``; returns every step's loss. The random
    model has nothing to forget, so a high learning rate shows the loss falling in a few steps."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: --resume '' refuses a folder with checkpoints
    fastprep("train", "--data", ds, "--model", "tiny", "--out", out, "--max-steps", str(steps),
             "--batch-size", str(batch_size), "--lr", str(lr), "--log-every", "1", "--no-export")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    print("losses: " + " ".join(f"{x:.3f}" for x in losses))
    check(len(losses) == steps, f"{steps} steps asked, {len(losses)} losses logged")
    check(all(math.isfinite(x) for x in losses), f"a loss is not finite: {losses}")
    if steps >= 10:  # too few steps to expect it in --fast mode
        check(losses[-1] < losses[0], f"the loss did not fall in {steps} steps: {losses}")
    return losses


@dataclass(frozen=True)
class Document:
    """One packed document: its token ids and which of them are training targets."""

    row: int
    ids: np.ndarray      # [n] token ids
    targets: np.ndarray  # [n] bool: loss_mask == 1

    def text(self, tok, which: bool | None = None) -> str:
        """Decoded tokens, special tokens included: all, only the targets (True) or only the
        non-targets (False)."""
        ids = self.ids if which is None else self.ids[self.targets == which]
        return tok.decode(ids.tolist(), skip_special_tokens=False)


def documents(ds_path: Path) -> list[Document]:
    """Every document of every row, straight from the memory-mapped arrays: a document is a run
    of one non-zero ``segment_ids`` value; ``loss_mask`` marks its targets."""
    from fastprep.dataset.format import open_dataset

    ds = open_dataset(ds_path)
    check(ds.has_loss_mask, f"{ds_path} has no loss_mask: every token would be a target")
    out = []
    for r in range(ds.rows):
        row = ds.row(r)
        seg, ids, mask = (np.asarray(row[k]) for k in ("segment_ids", "input_ids", "loss_mask"))
        for s in range(1, int(seg.max()) + 1):
            sel = seg == s
            out.append(Document(r, ids[sel].astype(np.int64), mask[sel] == 1))
    check(len(out) > 0, f"{ds_path} holds no documents")
    return out


_FIELD = re.compile(r"\{([^{}]+)\}")


def render(template: str, record: dict[str, Any]) -> str:
    """A ``--prompt-field`` template filled from a record, as fastprep fills it (dotted names
    reach into nested objects)."""
    def get(m: re.Match[str]) -> str:
        value: Any = record
        for part in m.group(1).split("."):
            value = value[part]
        return value

    return _FIELD.sub(get, template)


def check_prompt_completion(ds: Path, tok, expected: dict[str, str]) -> list[Document]:
    """The loss-mask check of a prompt/completion dataset (``expected``: prompt -> completion).
    Every document decodes to ``<s>`` + one record's prompt + its completion + ``</s>``; its
    non-targets decode to exactly ``<s>`` + the prompt and its targets to exactly the completion
    + ``</s>`` (the model learns to answer, and to stop), as one run at the end; and every record
    is there exactly once (none lost, split or duplicated)."""
    docs = documents(ds)
    whole = {f"<s>{p}{c}</s>": p for p, c in expected.items()}
    seen: set[str] = set()
    for d in docs:
        text = d.text(tok)
        check(text in whole, f"row {d.row}: a document that is no record's prompt + completion "
                             f"(split, truncated or changed?): {text[:80]!r}")
        prompt = whole[text]
        check(prompt not in seen, f"row {d.row}: the record {prompt[:60]!r} twice")
        seen.add(prompt)
        target, context = d.text(tok, which=True), d.text(tok, which=False)
        check(context == "<s>" + prompt, f"row {d.row}: loss on the prompt: the targets are {target[:80]!r}, "
                                         f"expected only the completion + EOS")
        check(target == expected[prompt] + "</s>",
              f"row {d.row}: the targets are {target[:80]!r}, expected the completion + EOS "
              f"{expected[prompt][:80]!r}")
        k = len(d.ids) - int(d.targets.sum())
        check(not d.targets[:k].any(), f"row {d.row}: the targets are not one run at the end")
    missing = set(expected) - seen
    check(not missing, f"{len(missing)} record(s) missing from the dataset, e.g. {sorted(missing)[:1]}")
    print(f"checked {len(docs)} documents: loss on the completion + EOS only, prompt never a target")
    return docs


def manifest(ds: Path) -> dict[str, Any]:
    return json.loads((ds / "manifest.json").read_text())
