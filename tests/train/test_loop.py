"""Tests of fastprep.train and fastprep.models on CPU: gradient accumulation is exact, resume is
bit-exact, the loss falls, DDP over two gloo ranks equals one process, and Hugging Face folders
round-trip through save_pretrained."""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastprep.dataset.format import ids_dtype, segment_dtype  # noqa: E402
from fastprep.train.loader import PackedRows, collate  # noqa: E402
from fastprep.train.models import count_parameters, load_model, tiny_model  # noqa: E402
from fastprep.flags import add_options, from_args  # noqa: E402
from fastprep.train.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from fastprep.train.config import TrainConfig  # noqa: E402
from fastprep.train.device import peak_tflops  # noqa: E402
from fastprep.train.loop import WarmupCosine, accumulate_gradients, train  # noqa: E402
from fastprep.dataset.write import ShardWriter  # noqa: E402

pytestmark = pytest.mark.torch

VOCAB = 512
L = 64


def make_dataset(path: Path, *, docs: int = 300, seed: int = 0, learnable: bool = False,
                 with_loss_mask: bool = True) -> Path:
    """Documents packed next-fit into rows of L. ``learnable`` documents count upwards
    (a, a+1, a+2, ... mod V), a rule the tiny model picks up in a few dozen steps."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(14), 0.7, docs).astype(np.int64), 2, L)
    rows: list[list[np.ndarray]] = [[]]
    used = 0
    for n in lengths:
        if used + n > L:
            rows.append([])
            used = 0
        doc = ((rng.integers(0, VOCAB) + np.arange(n)) % VOCAB if learnable
               else rng.integers(0, VOCAB, n))
        rows[-1].append(doc)
        used += n
    block = {"input_ids": np.zeros((len(rows), L), np.int64),
             "segment_ids": np.zeros((len(rows), L), np.int64),
             "loss_mask": np.zeros((len(rows), L), np.uint8)}
    for r, docs_in_row in enumerate(rows):
        pos = 0
        for k, doc in enumerate(docs_in_row, start=1):
            block["input_ids"][r, pos:pos + len(doc)] = doc
            block["segment_ids"][r, pos:pos + len(doc)] = k
            prompt = int(rng.integers(0, len(doc) // 2 + 1))  # unlearned prefix of varying size
            block["loss_mask"][r, pos + prompt:pos + len(doc)] = 1
            pos += len(doc)
    dtypes = {"input_ids": ids_dtype(VOCAB), "segment_ids": segment_dtype(L)}
    if with_loss_mask:
        dtypes["loss_mask"] = np.dtype(np.uint8)
    path.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(path, L, dtypes, shard_rows=16)
    writer.add(block)
    writer.finish(tokenizer={"sha256": "0" * 64, "vocab_size": VOCAB, "bos_id": None,
                            "eos_id": None, "pad_id": 0})
    return path


def quiet(_: dict[str, Any]) -> None:
    """Log sink for tests (the records still go to out/log.jsonl)."""


def cfg(data: Path, out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(data=str(data), out=str(out), batch_size=2, grad_accum=2, lr=3e-3,
                                warmup_steps=2, max_steps=6, log_every=2, seed=0, num_workers=1,
                                prefetch=2, export=False)
    base.update(kw)
    return TrainConfig(**base)


def test_grad_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds"))
    big = collate(rows.gather(range(6)))
    micro = [collate(rows.gather(range(0, 1))), collate(rows.gather(range(1, 4))),
             collate(rows.gather(range(4, 6)))]
    counts = [b["n_targets"] for b in micro]
    assert len(set(counts)) > 1, "guard: micro-batches with different target counts"
    a, b = tiny_model(VOCAB, 256, seed=1), tiny_model(VOCAB, 256, seed=1)
    loss_a = accumulate_gradients(a, micro, attn_implementation="sdpa")
    loss_b = accumulate_gradients(b, [big], attn_implementation="sdpa")
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7)
    # The mean of per-micro-batch means is a different (wrong) number: the test can tell them apart.
    c = tiny_model(VOCAB, 256, seed=1)
    means = torch.stack([accumulate_gradients(c, [m], attn_implementation="sdpa") for m in micro])
    assert abs(float(means.mean()) - float(loss_b)) > 1e-4


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    full = train(cfg(data, tmp_path / "a", save_every=3, keep_last=5), log=quiet)
    assert len(full["losses"]) == 6
    ckpt = tmp_path / "a" / "checkpoint-000003.pt"
    assert ckpt.is_file() and [p.name for p in list_checkpoints(tmp_path / "a")] == [
        "checkpoint-000003.pt", "checkpoint-000006.pt"]
    state = load_checkpoint(ckpt)
    assert state["step"] == 3 and state["loader"]["position"] == 6
    resumed = train(cfg(data, tmp_path / "b", resume=str(ckpt)), log=quiet)
    assert resumed["losses"] == full["losses"][3:]  # bit-exact, not approximately
    end_a = load_checkpoint(tmp_path / "a" / "checkpoint-000006.pt")
    end_b = load_checkpoint(tmp_path / "b" / "checkpoint-000006.pt")
    for k, v in end_a["model"].items():
        assert torch.equal(v, end_b["model"][k]), k
    # A fresh run refuses to overwrite a run that has checkpoints; --resume auto continues it.
    with pytest.raises(ValueError, match="--resume auto"):
        train(cfg(data, tmp_path / "a"), log=quiet)
    done = train(cfg(data, tmp_path / "a", resume="auto"), log=quiet)
    assert done["steps"] == 6 and done["losses"] == []


def test_tiny_model_loss_falls(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", learnable=True)
    stats = train(cfg(data, tmp_path / "out", batch_size=4, grad_accum=1, lr=1e-2, max_steps=40,
                      warmup_steps=4, log_every=10), log=quiet)
    first, last = np.mean(stats["losses"][:3]), np.mean(stats["losses"][-3:])
    assert first > 5.5  # ~ln(512) = 6.24 at random init
    assert last < 0.6 * first, (first, last)
    assert 0 < stats["padding_fraction"] < 0.5 and 0 <= stats["data_wait_fraction"] < 1
    assert stats["tokens_per_s"] > 0 and stats["mfu"] is None  # no MFU on CPU
    log = (tmp_path / "out" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4


def test_hf_folder_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    src = tiny_model(VOCAB, 256, seed=3)
    src.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    assert count_parameters(loaded) == count_parameters(src)
    for (k, v), w in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(v, w), k
    stats = train(cfg(data, tmp_path / "out", model=str(tmp_path / "hf"), max_steps=2,
                      export=True, attention="eager"), log=quiet)
    assert stats["steps"] == 2 and stats["attention"] == "eager"
    exported = load_model(tmp_path / "out" / "model")
    final = load_checkpoint(tmp_path / "out" / "checkpoint-000002.pt")["model"]
    for k, v in exported.state_dict().items():
        assert torch.equal(v, final[k]), k
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nowhere")


def test_config_errors_name_the_flag_and_cli_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--batch-size"):
        TrainConfig(data="x", batch_size=0)
    with pytest.raises(ValueError, match="--data"):
        TrainConfig()
    with pytest.raises(ValueError, match="--attention"):
        TrainConfig(data="x", attention="magic")
    with pytest.raises(ValueError, match="--device"):
        TrainConfig(data="x", device="tpu")
    parser = argparse.ArgumentParser()
    add_options(parser, TrainConfig)
    args = parser.parse_args(["--data", "ds", "--batch-size", "3", "--no-export", "--compile",
                              "--lr", "1e-4", "--max-steps", "5"])
    got = from_args(TrainConfig, args)
    assert got == dataclasses.replace(TrainConfig(data="ds"), batch_size=3, export=False,
                                      compile=True, lr=1e-4, max_steps=5)


def test_schedule_and_peak_table() -> None:
    s = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    lrs = [s(i) for i in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] == pytest.approx(0.1)
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("NVIDIA A10G") == 70.0
    assert peak_tflops("Some Future GPU") is None


def _ddp_worker(rank: int, world: int, port: int, config: TrainConfig, result: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    stats = train(config, log=quiet)
    result[rank] = stats["losses"]


def test_ddp_two_ranks_equal_one_process(tmp_path: Path) -> None:
    """Rank r reads perm[r::2]: one DDP step covers the same rows as one batch twice the size, and
    with the loss normalised by the global target count the losses must match."""
    import torch.multiprocessing as mp

    data = make_dataset(tmp_path / "ds")
    single = train(cfg(data, tmp_path / "one", batch_size=4, max_steps=3, log_every=1), log=quiet)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        result = manager.dict()
        mp.start_processes(_ddp_worker, args=(2, port, cfg(data, tmp_path / "two", batch_size=2,
                                                          max_steps=3, log_every=1), result),
                           nprocs=2, join=True, start_method="spawn")
        losses = dict(result)
    assert losses[0] == losses[1]
    np.testing.assert_allclose(losses[0], single["losses"], rtol=2e-5)


def test_sigkill_during_training_then_resume_gives_the_same_losses(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    data = make_dataset(tmp_path / "ds", docs=600)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "fastprep", "train", "--data", str(data), "--out", str(out),
                "--batch-size", "2", "--grad-accum", "2", "--lr", "3e-3", "--warmup-steps", "2",
                "--max-steps", "10", "--log-every", "1", "--save-every", "2", "--keep-last", "10",
                "--num-workers", "1", "--no-export", "--resume", "auto"]

    def losses(out: Path) -> dict[int, float]:
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}

    subprocess.run(command(tmp_path / "ref"), check=True, capture_output=True, timeout=600)
    reference = losses(tmp_path / "ref")
    assert sorted(reference) == list(range(1, 11))

    proc = subprocess.Popen(command(tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoint-000004.pt").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = max(losses(tmp_path / "run"))
    assert done_before < 10
    subprocess.run(command(tmp_path / "run"), check=True, capture_output=True, timeout=600)
    after = losses(tmp_path / "run")  # the log is appended to: later entries win per step
    assert max(after) == 10
    for step in range(1, 11):
        assert after[step] == reference[step], step  # bit-exact on CPU
