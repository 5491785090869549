"""DDP over two gloo ranks against one process, compared on what AdamW hides: the gradient.

Losses alone cannot catch a wrong gradient scale under DDP: Adam's update is (nearly) invariant
to a constant factor on the gradient, so a run whose gradients are off by ``world_size`` logs the
same losses. The logged gradient norm (taken before clipping) can, and so can the weights once
clipping is active, because clipping is the one place where the gradient's size changes the
update. Bugs caught: ``grad_scale`` or the global target count left out under DDP (norm off by
the world size or the target ratio), clipping that logs a norm but does not clip, clipping on
something other than the all-reduced gradient.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastprep.dataset.format import ids_dtype, segment_dtype  # noqa: E402
from fastprep.dataset.write import ShardWriter  # noqa: E402
from fastprep.train.checkpoint import load_checkpoint  # noqa: E402
from fastprep.train.config import TrainConfig  # noqa: E402
from fastprep.train.loader import PackedLoader, PackedRows, collate  # noqa: E402
from fastprep.train.loop import accumulate_gradients, train  # noqa: E402
from fastprep.train.models import load_model  # noqa: E402

pytestmark = pytest.mark.torch

VOCAB = 512
L = 64
STEPS = 3
CLIP = 0.05  # far below the tiny model's gradient norm (about 1-3): clipping acts on every step


def make_dataset(path: Path, docs: int = 240, seed: int = 0) -> Path:
    """Random documents packed next-fit into rows of L, with a loss mask whose prompt prefix
    varies, so micro-batches and ranks hold different numbers of targets."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(14), 0.7, docs).astype(np.int64), 2, L)
    rows: list[list[int]] = [[]]
    used = 0
    for n in lengths:
        if used + n > L:
            rows.append([])
            used = 0
        rows[-1].append(int(n))
        used += n
    block = {k: np.zeros((len(rows), L), np.int64) for k in ("input_ids", "segment_ids")}
    block["loss_mask"] = np.zeros((len(rows), L), np.uint8)
    for r, lens in enumerate(rows):
        pos = 0
        for k, n in enumerate(lens, start=1):
            block["input_ids"][r, pos:pos + n] = rng.integers(0, VOCAB, n)
            block["segment_ids"][r, pos:pos + n] = k
            block["loss_mask"][r, pos + int(rng.integers(0, n // 2 + 1)):pos + n] = 1
            pos += n
    path.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(path, L, {"input_ids": ids_dtype(VOCAB), "segment_ids": segment_dtype(L),
                                   "loss_mask": np.dtype(np.uint8)}, shard_rows=32)
    writer.add(block)
    writer.finish(tokenizer={"sha256": "0" * 64, "vocab_size": VOCAB, "bos_id": None,
                            "eos_id": None, "pad_id": 0})
    return path


def cfg(data: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(data=str(data), out=str(out), batch_size=4, grad_accum=2, lr=3e-3,
                                warmup_steps=1, max_steps=STEPS, log_every=1, seed=0,
                                num_workers=0, prefetch=1, export=False, clip=CLIP)
    base.update(kw)
    return TrainConfig(**base)


def run(config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(every log record, the final weights)."""
    records: list[dict[str, Any]] = []
    stats = train(config, log=records.append)
    return records, load_checkpoint(Path(stats["checkpoint"]))["model"]


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, result: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    records: list[dict[str, Any]] = []
    stats = train(config, log=records.append)
    if rank == 0:  # only rank 0 logs and saves
        torch.save({"records": records, "checkpoint": stats["checkpoint"]}, result)


def run_ddp(config: TrainConfig, result: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, config, result), nprocs=2, join=True,
                       start_method="spawn")
    got = torch.load(result, weights_only=True)
    return got["records"], load_checkpoint(Path(got["checkpoint"]))["model"]


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


def first_step_gradient_norm(data: Path) -> float:
    """The reference, without the loop: the norm of the gradient of the token-mean loss over
    every row step 1 consumes (world 1, batch 4, accumulation 2: the first 8 rows of the
    epoch's order), as one batch."""
    rows = PackedRows(data)
    order = PackedLoader(rows, 4, seed=0, num_workers=0).epoch_order(0)
    model = load_model("tiny", vocab_size=VOCAB, max_position_embeddings=2048, seed=0)
    accumulate_gradients(model, [collate(rows.gather(order[:8]))], attn_implementation="sdpa")
    return math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters()))


def test_ddp_gradients_and_clipped_updates_equal_one_process(tmp_path: Path) -> None:
    """Two ranks of batch 2 against one process of batch 4 (rank r reads perm[r::2], so a step
    covers the same rows): the pre-clip gradient norm of every step is the single run's, and
    with clipping active on every step the weights after the run are the single run's too."""
    data = make_dataset(tmp_path / "ds")
    single, w_single = run(cfg(data, tmp_path / "one"))
    _, w_unclipped = run(cfg(data, tmp_path / "noclip", clip=0.0))
    ddp, w_ddp = run_ddp(cfg(data, tmp_path / "two", batch_size=2), tmp_path / "ddp.pt")
    w0 = load_model("tiny", vocab_size=VOCAB, max_position_embeddings=2048, seed=0).state_dict()

    norms = [r["grad_norm"] for r in single]
    assert [r["step"] for r in single] == [r["step"] for r in ddp] == list(range(1, STEPS + 1))
    # the logged norm is the true gradient of the step's token-mean loss, not a rescaled one
    assert norms[0] == pytest.approx(first_step_gradient_norm(data), rel=1e-5)
    assert min(norms) > 10 * CLIP, "guard: clipping acts on every step"
    np.testing.assert_allclose([r["grad_norm"] for r in ddp], norms, rtol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in ddp], [r["loss"] for r in single], rtol=2e-5)

    moved = distance(w_single, w0)
    assert moved > 0, "guard: the weights moved"
    # clipping changed the update (so the next assertion compares clipped updates) ...
    assert distance(w_single, w_unclipped) > 0.01 * moved
    # ... and DDP clipped the same all-reduced gradient by the same factor
    assert distance(w_ddp, w_single) < 1e-3 * moved
