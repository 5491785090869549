"""The training-side data path: fastprep's loader over a packed dataset against a padded
``torch.utils.data.DataLoader``, on the same documents.

Documents: ``bench_loader.py``'s seeded lognormal lengths (median 300 tokens at L = 2048,
clipped to ``[8, L]``; 20,000 of them, batches of 8 rows; tiny: 300 at L = 256, batches of 4),
random ids below 512. Cases, each taking one epoch of batches ready for a training step, on
the calling thread (``num_workers=0``: the in-process cost of building a batch; the step
itself, background workers and the data-wait share stay in ``bench_loader.py``):

- ``fastprep``: the documents packed by ``bench_loader.write_packed`` (``plan`` best-fit
  decreasing + ``fill_rows`` + ``ShardWriter``, untimed), read through
  :class:`fastprep.train.loader.PackedLoader` (memory-mapped rows, ``collate``: ``input_ids``,
  ``labels``, ``position_ids``, ``attention_mask``, ``segment_ids``, ``cu_seqlens``).
- ``padded-batch`` (the peer): one document per row, right-padded to the longest of the batch,
  ``input_ids``, ``attention_mask`` and ``labels`` (``bench_loader.PadCollate``).
- ``padded-max``: the same padded to L (a fixed-shape step).

The same number of rows per batch, so the same bound on activation memory; packed batches hold
more real tokens each, and there are fewer of them. Timed: one epoch, drop_last off. Checked
before timing: each loader yields every real token of every document once, and the documents
it yields (the runs of a segment id, or a row's unpadded prefix) are exactly the input
documents; ``extra_info`` has the batches, real tokens per batch and the padding share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from suite import TRAIN_HINT, Bench, Sizes

pytestmark = pytest.mark.benchmark(group="loader")


@dataclass(frozen=True)
class LoaderData:
    docs: list[np.ndarray]     # int64 ids per document
    packed: Path               # the fastprep dataset of the same documents
    efficiency: float
    seq_len: int
    batch: int

    @property
    def tokens(self) -> int:
        return sum(len(d) for d in self.docs)


@pytest.fixture(scope="module")
def data(sizes: Sizes, tmp_path_factory: pytest.TempPathFactory) -> LoaderData:
    pytest.importorskip("torch", reason=f"torch is not installed: {TRAIN_HINT}")
    from bench_loader import make_documents, write_packed

    L = sizes.loader_seq_len
    docs = make_documents(sizes.loader_docs, L, median=300.0 * L / 2048, sigma=1.0, seed=0)
    folder = tmp_path_factory.mktemp("packed")
    eff = write_packed(docs, L, folder)
    return LoaderData(docs, folder, eff, L, sizes.loader_batch)


def _loader(case: str, data: LoaderData) -> Any:
    import torch
    from torch.utils.data import DataLoader

    from bench_loader import Documents, PadCollate
    from fastprep.train.loader import PackedLoader, PackedRows

    if case == "fastprep":
        return PackedLoader(PackedRows(data.packed), data.batch, seed=0, num_workers=0,
                            drop_last=False, pin_memory=False)
    pad_to = data.seq_len if case == "padded-max" else None
    return DataLoader(Documents(data.docs), batch_size=data.batch, shuffle=True,
                      generator=torch.Generator().manual_seed(0), num_workers=0,
                      collate_fn=PadCollate(pad_to))


def _documents(case: str, batch: dict[str, Any]) -> list[np.ndarray]:
    """The documents of one batch, as the loader lays them out."""
    ids = batch["input_ids"].numpy()
    if case == "fastprep":
        real = ids[batch["segment_ids"].numpy() != 0]
        cu = batch["cu_seqlens"].numpy().astype(np.int64)
        assert cu[-1] == real.size
        return [real[a:b] for a, b in zip(cu[:-1], cu[1:])]
    n = batch["attention_mask"].numpy().sum(axis=1)
    return [ids[r, :k] for r, k in enumerate(n.tolist())]


@pytest.mark.parametrize("case", ["fastprep", "padded-batch", "padded-max"])
def test_loader(bench: Bench, data: LoaderData, case: str) -> None:
    loader = _loader(case, data)

    # content first (untimed): the documents one epoch yields are exactly the input documents
    seen: Counter[bytes] = Counter()
    positions = batches = 0
    for b in loader:
        batches += 1
        positions += b["input_ids"].numel()
        seen.update(d.astype(np.int64).tobytes() for d in _documents(case, b))
    want = Counter(d.astype(np.int64).tobytes() for d in data.docs)
    assert seen == want, f"{case}: the epoch's documents differ from the input documents"

    def run() -> tuple[int, int]:
        n = tokens = 0
        for batch in loader:
            n += 1
            tokens += batch["n_tokens"]
        return n, tokens

    def check(out: tuple[int, int]) -> None:
        assert out == (batches, data.tokens), f"{case}: {out} (batches, real tokens)"

    extra = {"rows": len(loader.rows), "packing_efficiency": round(data.efficiency, 4)} \
        if case == "fastprep" else {}
    bench(run, check, role="fastprep" if case == "fastprep" else "peer",
          reference=case == "padded-batch", documents=len(data.docs), tokens=data.tokens,
          seq_len=data.seq_len, batch_rows=data.batch, batches=batches,
          tokens_per_batch=round(data.tokens / batches, 1),
          padding=round(1 - data.tokens / positions, 4), **extra)
