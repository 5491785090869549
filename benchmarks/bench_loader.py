"""Packed fastprep batches vs a padded ``torch.utils.data.DataLoader``: real tokens/s into a model.

Same tiny Llama (:func:`fastprep.models.tiny_model`), same documents (lognormal lengths, seeded,
clipped to ``[8, L]``), same optimizer and loss (sum of token losses / real targets), same
training step; only the data path differs:

- **fastprep**: documents packed into rows of ``L`` with ``fastprep.pack.plan`` (best-fit
  decreasing; a next-fit fallback if that module is absent), written with ``ShardWriter``, read back
  through :class:`fastprep.loader.PackedLoader` (memmap, background thread, block-diagonal SDPA
  mask, positions restarting per document).
- **padded**: the common Hugging Face recipe: one document per sample, a ``DataLoader`` with one
  worker process whose collate pads to the longest document of the batch (``--pad-to batch``) or
  to ``L`` (``--pad-to max``), and the usual 2-D attention mask.

Both take ``--batch-size`` rows per step (the same bound on activation memory). The step is a
stripped copy of :mod:`fastprep.train`'s: forward, loss, backward, AdamW. Every repeat runs
``--burn-in`` untimed steps, then ``--steps`` timed ones; the two pipelines alternate repeats so
machine noise hits both, and medians over repeats are reported. Data-wait fraction = time blocked in
``next(batches)`` / step time.

    python benchmarks/bench_loader.py                 # L=2048, B=4
    python benchmarks/bench_loader.py --seq-len 1024 --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fastprep.dataset.format import ids_dtype, segment_dtype
from fastprep.train.loader import PackedLoader, PackedRows, to_device
from fastprep.train.models import tiny_model
from fastprep.train.loop import accumulate_gradients
from fastprep.dataset.write import ShardWriter

VOCAB = 512


def make_documents(n: int, seq_len: int, median: float, sigma: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), sigma, n).astype(np.int64), 8, seq_len)
    return [rng.integers(1, VOCAB, k).astype(np.int64) for k in lengths]


def write_packed(docs: list[np.ndarray], seq_len: int, out: Path) -> float:
    """Pack ``docs`` into a fastprep dataset at ``out``; return packing efficiency."""
    lengths = np.array([len(d) for d in docs], np.int64)
    tokens = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dtypes = {"input_ids": ids_dtype(VOCAB), "segment_ids": segment_dtype(seq_len)}
    writer = ShardWriter(out, seq_len, dtypes, shard_rows=1024)
    try:
        from fastprep.stages.pack import PackConfig, fill_rows, plan
    except ImportError:  # packer not available: a plain next-fit is enough for a data-path benchmark
        rows: list[list[int]] = [[]]
        used = 0
        for i, n in enumerate(lengths):
            if used + n > seq_len:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += int(n)
        block = {k: np.zeros((len(rows), seq_len), np.int64) for k in dtypes}
        for r, members in enumerate(rows):
            pos = 0
            for seg, i in enumerate(members, start=1):
                block["input_ids"][r, pos:pos + lengths[i]] = docs[i]
                block["segment_ids"][r, pos:pos + lengths[i]] = seg
                pos += int(lengths[i])
        writer.add(block)
        n_rows = len(rows)
    else:
        p = plan(lengths, PackConfig(seq_len=seq_len, mode="bfd", seed=0))
        writer.add(fill_rows(p, tokens, offsets, 0, p.n_rows, pad_id=0, ids_dtype=dtypes["input_ids"],
                             seg_dtype=dtypes["segment_ids"]))
        n_rows = p.n_rows
    writer.finish(tokenizer={"sha256": "0" * 64, "vocab_size": VOCAB, "bos_id": None,
                            "eos_id": None, "pad_id": 0})
    return float(lengths.sum()) / (n_rows * seq_len)


class Documents(Dataset):
    def __init__(self, docs: list[np.ndarray]) -> None:
        self.docs = docs

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.docs[i]


class PadCollate:
    """One document per row, right-padded; labels = next token inside the document, -100 elsewhere."""

    def __init__(self, pad_to: int | None) -> None:
        self.pad_to = pad_to

    def __call__(self, docs: list[np.ndarray]) -> dict[str, Any]:
        width = self.pad_to or max(len(d) for d in docs)
        ids = np.zeros((len(docs), width), np.int64)
        attn = np.zeros((len(docs), width), np.int64)
        for r, d in enumerate(docs):  # per document, not per token
            ids[r, :len(d)] = d
            attn[r, :len(d)] = 1
        labels = np.full_like(ids, -100)
        labels[:, :-1] = np.where(attn[:, 1:] == 1, ids[:, 1:], -100)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
                "labels": torch.from_numpy(labels), "n_tokens": int(attn.sum()),
                "n_targets": int((labels != -100).sum())}


def padded_step(model: torch.nn.Module, batch: dict[str, Any]) -> None:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                           ignore_index=-100, reduction="sum") / max(1, batch["n_targets"])
    loss.backward()


def run(kind: str, batches: Iterator[dict[str, Any]], model: torch.nn.Module,
        opt: torch.optim.Optimizer, device: torch.device, burn_in: int, steps: int
        ) -> tuple[float, float]:
    """(real tokens/s, data-wait fraction) over ``steps`` timed steps after ``burn_in``."""
    tokens = 0
    wait = 0.0
    t0 = 0.0
    for i in range(burn_in + steps):
        if i == burn_in:
            if device.type == "cuda":
                torch.cuda.synchronize()
            tokens, wait, t0 = 0, 0.0, time.perf_counter()
        tw = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - tw
        batch = to_device(batch, device)
        tokens += batch["n_tokens"]
        if kind == "fastprep":
            accumulate_gradients(model, [batch], attn_implementation="sdpa")
        else:
            padded_step(model, batch)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return tokens / elapsed, wait / elapsed


def forever(loader: Any) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--median-len", type=float, default=300.0, help="lognormal median, tokens")
    ap.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per step, both pipelines")
    ap.add_argument("--pad-to", choices=("batch", "max"), default="batch")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--burn-in", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    device = torch.device(a.device)
    docs = make_documents(a.docs, a.seq_len, a.median_len, a.sigma, a.seed)
    lengths = np.array([len(d) for d in docs])
    print(f"{len(docs)} documents, lengths median {np.median(lengths):.0f} mean {lengths.mean():.0f} "
          f"max {lengths.max()}, L={a.seq_len}, batch {a.batch_size} rows, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    tmp = tempfile.TemporaryDirectory()
    t = time.perf_counter()
    eff = write_packed(docs, a.seq_len, Path(tmp.name))
    print(f"packed + written in {time.perf_counter() - t:.2f} s, packing efficiency {eff:.3f}")

    rows = PackedRows(tmp.name)
    packed_loader = PackedLoader(rows, a.batch_size, seed=a.seed, num_workers=1, prefetch=4)
    padded_loader = DataLoader(Documents(docs), batch_size=a.batch_size, shuffle=True,
                               generator=torch.Generator().manual_seed(a.seed), num_workers=1,
                               collate_fn=PadCollate(a.seq_len if a.pad_to == "max" else None),
                               pin_memory=device.type == "cuda", persistent_workers=True,
                               prefetch_factor=4)
    streams = {"fastprep": forever(packed_loader), "padded": forever(padded_loader)}
    models = {k: tiny_model(VOCAB, a.seq_len, seed=a.seed).to(device) for k in streams}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in streams}
    for rep in range(a.repeats):
        for kind in streams:  # alternate, so drifting machine load hits both pipelines alike
            results[kind].append(run(kind, streams[kind], models[kind], opts[kind], device,
                                     a.burn_in, a.steps))
            tps, wait = results[kind][-1]
            print(f"  repeat {rep} {kind:>8}: {tps:>10,.0f} real tokens/s, data wait {wait:.1%}")
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for k, v in results.items()}
    print(f"\n{'pipeline':>10} {'real tok/s':>12} {'data wait':>10}")
    for k, (tps, wait) in med.items():
        print(f"{k:>10} {tps:>12,.0f} {wait:>10.1%}")
    print(f"\nfastprep / padded real tokens/s: {med['fastprep'][0] / med['padded'][0]:.2f}x "
          f"(medians of {a.repeats} repeats x {a.steps} steps, {a.burn_in} burn-in)")
    for s in streams.values():
        s.close()  # type: ignore[attr-defined]
    tmp.cleanup()


if __name__ == "__main__":
    main()
