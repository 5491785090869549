"""``--dtype float16`` trains with dynamic loss scaling, and its state survives a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_loop import cfg, make_dataset, quiet  # noqa: E402

from fastprep.train.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from fastprep.train.loop import train  # noqa: E402


def test_float16_scales_the_loss_and_checkpoints_the_scaler(tmp_path: Path) -> None:
    """Bug caught: float16 autocast without loss scaling (small gradients flush to zero and
    nothing says so), or a resumed run that restarts the scale from its initial value."""
    data = make_dataset(tmp_path / "ds")
    stats = train(cfg(data, tmp_path / "run", dtype="float16", device="cpu", max_steps=4,
                      save_every=2), log=quiet)
    assert all(torch.isfinite(torch.tensor(stats["losses"])))
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["scaler"] and state["scaler"]["scale"] > 0
    assert 0 < state["scaler"]["_growth_tracker"] <= 4 or state["scaler"]["scale"] != 65536.0
    # float32 runs carry a disabled scaler: an empty state, nothing scaled
    train(cfg(data, tmp_path / "run32", device="cpu", max_steps=2), log=quiet)
    assert not load_checkpoint(list_checkpoints(tmp_path / "run32")[-1])["scaler"]


def test_float16_resume_restores_the_scale(tmp_path: Path) -> None:
    """Resumed from step 3, a float16 run gives the uninterrupted run's losses bit for bit (a
    scale reset to its initial value would change them) and the same scaler state."""
    data = make_dataset(tmp_path / "ds")
    full = train(cfg(data, tmp_path / "a", dtype="float16", device="cpu", save_every=3,
                     keep_last=5), log=quiet)
    ckpt = tmp_path / "a" / "checkpoint-000003.pt"
    resumed = train(cfg(data, tmp_path / "b", dtype="float16", device="cpu", resume=str(ckpt)),
                    log=quiet)
    assert resumed["losses"] == full["losses"][3:]
    a = load_checkpoint(tmp_path / "a" / "checkpoint-000006.pt")["scaler"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint-000006.pt")["scaler"]
    assert a == b
