"""Torch loading of a packed dataset: memory-mapped rows in, GPU-ready batches out.

- :class:`PackedRows` is a map-style ``torch.utils.data.Dataset`` over the read-only memmaps of
  :func:`fastprep.dataset.format.open_dataset`: nothing is copied into RAM until a row is asked for, so a
  dataset far larger than memory opens in milliseconds and the page cache does the rest.
- :func:`collate` turns ``B`` rows into the batch a training step needs (``input_ids``, ``labels``,
  ``position_ids``, ``attention_mask``, ``segment_ids``, ``cu_seqlens``, ``max_seqlen``), using the
  vectorised derivations of :mod:`fastprep.train.masks` on CPU tensors, so the only Python work is per
  batch, never per token, and reading ``max_seqlen``/``n_targets`` never syncs a device.
- :class:`PackedLoader` decides the order: a seeded permutation per epoch (``seed``, ``epoch`` ->
  the same order on every machine), rank ``r`` of ``w`` takes rows ``perm[r::w]`` (disjoint, and
  together complete), batches are built ahead by a background thread pool (gather from the memmaps,
  derive, pin when CUDA is present) so the step rarely waits, and ``state_dict()`` records how many
  batches the *consumer* took, so a resumed run continues with exactly the batches it would have
  seen.

With ``drop_last`` (the default, what DDP needs so that every rank takes the same number of steps)
each rank takes ``(rows // world_size) // batch_size`` batches per epoch; the few rows left over
differ from epoch to epoch because the permutation does.

Collating a batch is per-batch numpy/torch work, small next to a training step, so one
background thread keeps the step from waiting (measured by ``benchmarks/bench_loader.py``;
figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from . import masks
from ..dataset.format import PackedDataset, open_dataset

Batch = dict[str, Any]
"""A collated batch: tensors under ``input_ids``, ``labels``, ``position_ids``, ``attention_mask``,
``segment_ids``, ``cu_seqlens``, ``cu_runs`` (every run of the flattened batch, padding included:
the flash-attention varlen arguments); Python ints under ``max_seqlen``, ``max_run``,
``n_targets`` (labels != -100)
and ``n_tokens`` (non-padding tokens); ``source`` ([B] int64, the row's source in the manifest's
``mix.sources``) when the dataset is a mix."""

class PackedRows(Dataset):
    """Map-style dataset of packed rows; ``ds[i]`` is ``{array name: [L] numpy array}``.

    Accepts a dataset folder or an already opened :class:`fastprep.dataset.format.PackedDataset`. Rows are
    addressed by global index across shards; :meth:`gather` fetches many rows with one fancy-index
    per shard (sorted, so the reads walk each file forwards).
    """

    def __init__(self, data: PackedDataset | str | os.PathLike[str], *,
                 verify_checksums: bool = False) -> None:
        self.data = data if isinstance(data, PackedDataset) else open_dataset(
            data, verify_checksums=verify_checksums)
        self.arrays: tuple[str, ...] = self.data.manifest.arrays
        counts = np.array([s.rows for s in self.data.shards], dtype=np.int64)
        # offsets[k] = first global row of shard k; searchsorted maps a global row to its shard.
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.seq_len = self.data.seq_len

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.data.row(int(index)).items()}

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` (in that order) as ``{array: [len(indices), L]}`` in on-disk dtypes."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row indices outside [0, {len(self)})")
        m = self.data.manifest
        out = {a: np.empty(m.shape(a, idx.size), dtype=self.data.shards[0].arrays[a].dtype)
               for a in self.arrays} if self.data.shards else {}
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(shard_of):  # one fancy-index per shard touched, not per row
            pick = np.nonzero(shard_of == k)[0]
            local = idx[pick] - self._offsets[k]
            order = np.argsort(local, kind="stable")
            for a in self.arrays:
                out[a][pick[order]] = self.data.shards[k].arrays[a][local[order]]
        return out


def collate(samples: Sequence[dict[str, np.ndarray]] | dict[str, np.ndarray]) -> Batch:
    """Build a training batch from rows (a list of ``PackedRows`` items, or stacked ``[B, L]`` arrays).

    Works as ``collate_fn`` of a plain ``torch.utils.data.DataLoader`` too.
    """
    if isinstance(samples, dict):
        stacked = samples
    else:
        stacked = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    # int64 ids: embedding lookups and cross_entropy want long; uint16 has no torch arithmetic.
    input_ids = torch.from_numpy(stacked["input_ids"].astype(np.int64))
    # int32 segments: a row holds at most L < 2**31 documents, and comparisons are all we do.
    segment_ids = torch.from_numpy(stacked["segment_ids"].astype(np.int32))
    loss_mask = (torch.from_numpy(stacked["loss_mask"].astype(np.bool_))
                 if "loss_mask" in stacked else None)
    lab = masks.labels(input_ids, segment_ids, loss_mask)
    cu, max_len = masks.cu_seqlens(segment_ids)
    runs, max_run = masks.run_seqlens(segment_ids)
    attn = masks.attention_mask(segment_ids)
    extra = {}
    if "source" in stacked:  # a mixed dataset: each row's source, for loss per source
        extra["source"] = torch.from_numpy(stacked["source"].astype(np.int64))
    return {
        **extra,
        "input_ids": input_ids,
        "labels": lab,
        "position_ids": masks.position_ids(segment_ids),
        "attention_mask": attn,
        "segment_ids": segment_ids,
        "cu_seqlens": cu,
        "max_seqlen": max_len,
        "cu_runs": runs,
        "max_run": max_run,
        "n_targets": int((lab != masks.IGNORE_INDEX).sum()),
        "n_tokens": int(attn.sum()),
    }


def pin(batch: Batch) -> Batch:
    """Page-lock the tensors so ``to(device, non_blocking=True)`` is a true async DMA copy."""
    return {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def to_device(batch: Batch, device: torch.device | str, *, non_blocking: bool = True) -> Batch:
    """Move every tensor of ``batch`` to ``device`` (async when the batch is pinned)."""
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


class PackedLoader:
    """Deterministic, shardable, resumable batches over :class:`PackedRows`.

    Iterating yields the *rest of the current epoch* and then moves to the next epoch;
    :meth:`forever` chains epochs. ``num_workers`` background threads build up to ``prefetch``
    batches ahead (``num_workers=0`` builds them in the caller's thread). ``pin_memory`` defaults to
    ``torch.cuda.is_available()``.
    """

    def __init__(self, rows: PackedRows, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, num_workers: int = 1,
                 prefetch: int = 4, pin_memory: bool | None = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size {batch_size} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if num_workers < 0 or prefetch < 1:
            raise ValueError("num_workers must be >= 0 and prefetch >= 1")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed to the consumer
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(rows)} rows over {world_size} rank(s) do not fill one batch of "
                             f"{batch_size}; lower --batch-size or prepare more data")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's row indices for ``epoch``: ``permutation(seed, epoch)[rank::world_size]``."""
        n = len(self.rows)
        if self.shuffle:
            # A fresh generator per (seed, epoch): any epoch's order is computable without replay.
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            perm = np.arange(n, dtype=np.int64)
        mine = perm[self.rank::self.world_size]
        if self.drop_last:
            # Every rank must take the same number of batches, or DDP's all-reduce would hang.
            mine = mine[: (n // self.world_size) // self.batch_size * self.batch_size]
        return mine

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.rows)
        per_rank = n // self.world_size if self.drop_last else len(range(self.rank, n, self.world_size))
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _build(self, indices: np.ndarray) -> Batch:
        batch = collate(self.rows.gather(indices))
        return pin(batch) if self.pin_memory else batch

    def __iter__(self) -> Iterator[Batch]:
        order = self.epoch_order(self.epoch)
        starts = range(self.position * self.batch_size, len(order), self.batch_size)
        chunks = [order[s:s + self.batch_size] for s in starts]
        if self.num_workers == 0:
            for chunk in chunks:
                batch = self._build(chunk)
                self.position += 1
                yield batch
        else:
            pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="fastprep-loader")
            pending: deque[Future[Batch]] = deque()
            todo = iter(chunks)
            try:
                for chunk in todo:
                    pending.append(pool.submit(self._build, chunk))
                    if len(pending) >= self.prefetch:
                        break
                while pending:
                    batch = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(self._build, nxt))
                    self.position += 1
                    yield batch
            finally:
                for f in pending:
                    f.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
        self.epoch += 1
        self.position = 0

    def forever(self) -> Iterator[Batch]:
        """Batches across epochs without end (the trainer stops by step count)."""
        while True:
            yield from self

    def state_dict(self) -> dict[str, int]:
        """Plain ints (safe under ``torch.load(weights_only=True)``) that pin the next batch."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rows": len(self.rows), "batch_size": self.batch_size, "rank": self.rank,
                "world_size": self.world_size, "shuffle": int(self.shuffle),
                "drop_last": int(self.drop_last)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` left off; refuse a state whose order would differ."""
        for key in ("seed", "rows", "batch_size", "world_size", "shuffle", "drop_last"):
            mine = getattr(self, key) if key != "rows" else len(self.rows)
            if key in state and int(state[key]) != int(mine):
                raise ValueError(f"loader state has {key}={state[key]}, this loader {key}={int(mine)}: "
                                 f"resuming would not reproduce the same order (same dataset, "
                                 f"--seed, --batch-size and world size needed)")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

