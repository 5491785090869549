"""The output folder: claimed for a fresh run, kept for a resumed one, never holding foreign files.

A run writes ``state.json`` (its fingerprint and task size) into the work folder before any task.
The fingerprint hashes what the output depends on: the recipe, fastprep's version, the
tokenizer as resolved (file hash, special tokens, template) and every input's path, size and
modification time. A rerun with the same fingerprint resumes from the saved task results; one
with another fingerprint discards the unfinished run (or, with ``--resume``, refuses).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from .._version import __version__
from ..dataset.format import MANIFEST, OWNED_NAMES, OWNED_PREFIXES, WORK_DIR
from ..io import atomic_write_bytes
from ..stages.tokenize import TokenizerSpec
from .config import PrepareConfig


class OutputError(ValueError):
    """The output folder cannot be used (holds a dataset or foreign files)."""


def fingerprint(cfg: PrepareConfig, files: list[str], tokenizer: TokenizerSpec) -> str:
    """What the output depends on; a resumed run must match it exactly."""
    inputs = []
    for f in files:
        st = os.stat(f)
        inputs.append([f, st.st_size, st.st_mtime_ns])
    resolved = {k: v for k, v in asdict(tokenizer).items() if k not in ("file", "source")}
    blob = orjson.dumps({"fastprep": __version__, "recipe": cfg.recipe.record(),
                         "tokenizer": resolved, "inputs": inputs},
                        option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()


def _clear(out: Path, names: list[str], keep: str | None = None) -> None:
    # The manifest goes first so the folder stops being a "finished dataset" before shards go.
    if MANIFEST in names:
        (out / MANIFEST).unlink()
    for n in names:
        p = out / n
        if n == MANIFEST or n == keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _saved_state(out: Path) -> dict[str, Any] | None:
    try:
        state = orjson.loads((out / WORK_DIR / "state.json").read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def claim(cfg: PrepareConfig, fp: str, notes: list[str]) -> int | None:
    """Make ``--out`` ready. Returns the task size of an interrupted run to resume (None for a
    fresh start); appends notes for the user."""
    run = cfg.run
    out = Path(run.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if not out.exists():
        if run.resume:
            raise OutputError(f"--resume: {out} holds no interrupted run")
        out.mkdir(parents=True)
        return None
    names = os.listdir(out)
    foreign = [n for n in names if not n.startswith(OWNED_PREFIXES) and n not in OWNED_NAMES]
    if foreign:
        raise OutputError(f"--out {out} holds files fastprep did not write ({', '.join(sorted(foreign)[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder")
    if MANIFEST in names:
        if not run.overwrite:
            raise OutputError(f"--out {out} already holds a finished dataset; pass --overwrite to replace it")
        _clear(out, names)
        return None
    state = _saved_state(out) if WORK_DIR in names else None
    if state is not None and state.get("fingerprint") == fp and not run.overwrite and (
            not run.task_bytes or run.task_bytes == state.get("task_bytes")):
        _clear(out, names, keep=WORK_DIR)  # partial shards of the interrupted run go
        return int(state["task_bytes"])
    if run.resume:
        why = ("its recipe, tokenizer or input files differ from this run's"
               if state is not None else "it left no resumable state")
        raise OutputError(f"--resume: cannot resume the run in {out}: {why}; run without --resume "
                          f"to start over")
    if names:
        notes.append(f"discarded an unfinished run in {out} (different recipe or inputs)")
    _clear(out, names)
    return None


def start_work(work: Path, fp: str, task_bytes: int) -> None:
    """Create the work folder of a fresh run with its resumable state."""
    work.mkdir()
    atomic_write_bytes(work / "state.json", orjson.dumps({"fingerprint": fp,
                                                          "task_bytes": task_bytes}))
