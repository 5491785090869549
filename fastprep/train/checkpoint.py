"""Checkpoints: one ``checkpoint-NNNNNN.pt`` per save (model, optimizer, scheduler, loader
position, RNG states, step, config), written atomically and loaded with
``torch.load(weights_only=True)``, so a checkpoint can never run code."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import AtomicFile

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{6,})\.pt$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only refuses: store it as a tensor.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def checkpoint_path(out: Path, step: int) -> Path:
    return out / f"checkpoint-{step:06d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in ``out``, oldest first (temporary files never match)."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through :class:`fastprep.io.AtomicFile`: a crash never leaves half a
    checkpoint."""
    with AtomicFile(path) as f:
        torch.save(state, f.file)


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: tensors and plain containers only; a checkpoint can never run code.
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_resume(resume: str, out: Path) -> Path | None:
    """The checkpoint ``--resume`` names in ``out`` (None: a fresh run)."""
    existing = list_checkpoints(out)
    if resume == "":
        if existing:
            raise ValueError(f"--out {out} already holds {existing[-1].name}; pass --resume auto to "
                             f"continue that run, or choose another --out")
        return None
    if resume in ("auto", "latest"):
        if existing:
            return existing[-1]
        if resume == "latest":
            raise ValueError(f"--resume latest: no checkpoint-*.pt in {out}")
        return None
    path = Path(resume)
    if not path.is_file():
        raise ValueError(f"--resume {resume}: no such checkpoint file")
    return path
