"""Tests of fastprep.loader and fastprep.masks: derivations against slow references, invariants on
random segment layouts (with guards that rows really held several documents), document masking in
a real model, rank sharding and mid-epoch resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastprep.train import masks  # noqa: E402
from fastprep.dataset.format import ids_dtype, segment_dtype  # noqa: E402
from fastprep.train.loader import PackedLoader, PackedRows, collate  # noqa: E402
from fastprep.dataset.write import ShardWriter  # noqa: E402

pytestmark = pytest.mark.torch

VOCAB = 512


# ----------------------------------------------------------------------------- synthetic data

def pack_rows(lengths: np.ndarray, seq_len: int, rng: np.random.Generator,
              with_loss_mask: bool) -> dict[str, np.ndarray]:
    """Next-fit packing of random documents (truncated to L) into rows: enough for tests."""
    rows: list[list[np.ndarray]] = [[]]
    used = 0
    for n in np.minimum(lengths, seq_len):
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(rng.integers(1, VOCAB, n))
        used += n
    out = {"input_ids": np.zeros((len(rows), seq_len), np.int64),
           "segment_ids": np.zeros((len(rows), seq_len), np.int64)}
    if with_loss_mask:
        out["loss_mask"] = np.zeros((len(rows), seq_len), np.uint8)
    for r, docs in enumerate(rows):
        pos = 0
        for k, doc in enumerate(docs, start=1):
            out["input_ids"][r, pos:pos + len(doc)] = doc
            out["segment_ids"][r, pos:pos + len(doc)] = k
            if with_loss_mask:  # a "prompt" prefix of each document is not learned
                prompt = int(rng.integers(0, len(doc)))
                out["loss_mask"][r, pos + prompt:pos + len(doc)] = 1
            pos += len(doc)
    return out


def make_dataset(path: Path, *, docs: int = 200, seq_len: int = 64, seed: int = 0,
                 with_loss_mask: bool = False, shard_rows: int = 7, mean_len: float = 12.0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(np.log(mean_len), 0.8, docs).astype(np.int64))
    block = pack_rows(lengths, seq_len, rng, with_loss_mask)
    dtypes = {"input_ids": ids_dtype(VOCAB), "segment_ids": segment_dtype(seq_len)}
    if with_loss_mask:
        dtypes["loss_mask"] = np.dtype(np.uint8)
    path.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(path, seq_len, dtypes, shard_rows=shard_rows)
    writer.add(block)
    writer.finish(tokenizer={"sha256": "0" * 64, "vocab_size": VOCAB, "bos_id": None,
                            "eos_id": None, "pad_id": 0})
    return path


def random_layout(rng: np.random.Generator, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Rows of 1..6 random-length documents then padding, with a random loss mask."""
    seg = np.zeros((batch, seq_len), np.int64)
    for r in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, seq_len + 1), size=rng.integers(1, 7), replace=False))
        start = 0
        for k, end in enumerate(cuts, start=1):
            seg[r, start:end] = k
            start = end
        # Leave the tail after the last cut as padding (segment 0).
    ids = rng.integers(0, VOCAB, (batch, seq_len))
    loss = (rng.random((batch, seq_len)) < 0.8).astype(np.uint8)
    return {"input_ids": torch.from_numpy(ids), "segment_ids": torch.from_numpy(seg),
            "loss_mask": torch.from_numpy(loss)}


# ----------------------------------------------------------------------------- slow references

def ref_labels(ids: list[int], seg: list[int], loss: list[int] | None) -> list[int]:
    out = []
    for t in range(len(ids)):
        ok = (t + 1 < len(ids) and seg[t] != 0 and seg[t + 1] == seg[t]
              and (loss is None or loss[t + 1] == 1))
        out.append(ids[t + 1] if ok else -100)
    return out


def ref_positions(seg: list[int]) -> list[int]:
    out = []
    for t in range(len(seg)):
        out.append(0 if t == 0 or seg[t] != seg[t - 1] else out[-1] + 1)
    return out


def ref_cu_seqlens(segs: list[list[int]]) -> tuple[list[int], int]:
    lengths = []
    for seg in segs:
        for k in sorted(set(seg) - {0}):
            lengths.append(seg.count(k))
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu, max(lengths, default=0)


# ----------------------------------------------------------------------------- derivations

def test_derivations_match_slow_reference() -> None:
    rng = np.random.default_rng(1)
    multi_doc_rows = 0
    for _ in range(20):
        b = random_layout(rng, batch=4, seq_len=int(rng.integers(2, 40)))
        batch = collate({k: v.numpy() for k, v in b.items()})
        for r in range(4):
            ids, seg = b["input_ids"][r].tolist(), b["segment_ids"][r].tolist()
            loss = b["loss_mask"][r].tolist()
            assert batch["labels"][r].tolist() == ref_labels(ids, seg, loss)
            assert batch["position_ids"][r].tolist() == ref_positions(seg)
            assert batch["attention_mask"][r].tolist() == [int(s != 0) for s in seg]
            multi_doc_rows += len(set(seg) - {0}) > 1
        cu, max_len = ref_cu_seqlens(b["segment_ids"].tolist())
        assert batch["cu_seqlens"].dtype == torch.int32
        assert batch["cu_seqlens"].tolist() == cu and batch["max_seqlen"] == max_len
        assert batch["n_targets"] == int((batch["labels"] != -100).sum())
        # Without a loss mask every in-document next token is a target.
        no_mask = masks.labels(b["input_ids"], b["segment_ids"])
        assert no_mask[0].tolist() == ref_labels(b["input_ids"][0].tolist(),
                                                 b["segment_ids"][0].tolist(), None)
    assert multi_doc_rows > 20, "guard: rows must hold several documents for the checks to bite"


def test_no_label_crosses_a_document_boundary() -> None:
    rng = np.random.default_rng(2)
    boundaries = targets = 0
    for _ in range(30):
        b = random_layout(rng, batch=3, seq_len=50)
        lab = masks.labels(b["input_ids"], b["segment_ids"], b["loss_mask"])
        pos = masks.position_ids(b["segment_ids"])
        seg, ids, loss = b["segment_ids"], b["input_ids"], b["loss_mask"]
        has = lab[:, :-1] != -100
        # Every target is the next token of the same, real document, and is a loss-mask target.
        assert torch.equal(lab[:, :-1][has], ids[:, 1:][has])
        assert bool((seg[:, 1:][has] == seg[:, :-1][has]).all())
        assert bool((seg[:, :-1][has] != 0).all()) and bool((loss[:, 1:][has] == 1).all())
        assert bool((lab[:, -1] == -100).all())
        # At each boundary the last token of a document has no target.
        boundary = (seg[:, 1:] != seg[:, :-1]) & (seg[:, :-1] != 0)
        assert bool((lab[:, :-1][boundary] == -100).all())
        # Positions step +1 inside a run and reset to 0 exactly where a run starts.
        same = seg[:, 1:] == seg[:, :-1]
        assert bool((pos[:, 1:][same] == pos[:, :-1][same] + 1).all())
        assert bool((pos[:, 1:][~same] == 0).all()) and bool((pos[:, 0] == 0).all())
        boundaries += int(((seg[:, 1:] != seg[:, :-1]) & (seg[:, 1:] != 0)).sum())
        targets += int(has.sum())
    assert boundaries > 50 and targets > 500, "guard: the invariants must have seen real boundaries"


def test_4d_masks_are_block_diagonal_causal() -> None:
    rng = np.random.default_rng(3)
    b = random_layout(rng, batch=2, seq_len=24)
    seg = b["segment_ids"]
    m = masks.sdpa_mask(seg)
    assert m.shape == (2, 1, 24, 24) and m.dtype == torch.bool
    for r in range(2):
        for q in range(24):
            for k in range(24):
                assert bool(m[r, 0, q, k]) == (k <= q and int(seg[r, q]) == int(seg[r, k]))
    assert bool(m.any(-1).all()), "every query row attends to something (no NaN in SDPA)"
    e = masks.eager_mask(seg)
    assert torch.equal(e == 0, m)


# ----------------------------------------------------------------------------- masking in a model

def _packed_vs_separate(attn: str, *, no_grad: bool = False) -> None:
    from fastprep.train.models import tiny_model

    model = tiny_model(VOCAB, 256, seed=0, attn_implementation=attn).eval()
    rng = np.random.default_rng(5)
    b = random_layout(rng, batch=3, seq_len=48)
    seg, ids = b["segment_ids"], b["input_ids"]
    pos = masks.position_ids(seg)
    ctx = torch.no_grad() if no_grad else torch.enable_grad()
    with ctx:
        packed = model(**masks.model_inputs(ids, seg, pos, attn)).logits
        docs = 0
        for r in range(3):
            for k in sorted(set(seg[r].tolist()) - {0}):
                where = torch.nonzero(seg[r] == k).flatten()
                alone = model(input_ids=ids[r, where][None]).logits[0]
                torch.testing.assert_close(packed[r, where], alone, atol=2e-5, rtol=1e-4)
                docs += 1
        # Control: without the document mask the logits do differ (the test can fail).
        plain = model(input_ids=ids).logits
    assert docs >= 6, "guard: several documents per row"
    assert not torch.allclose(plain, packed, atol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_per_document_forward(attn: str) -> None:
    _packed_vs_separate(attn)


# ----------------------------------------------------------------------------- dataset + loader

def test_rows_are_memmapped_and_gather_matches_rows(tmp_path: Path) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds", with_loss_mask=True))
    assert len(rows.data.shards) > 3
    assert all(isinstance(a, np.memmap) for s in rows.data.shards for a in s.arrays.values())
    idx = np.random.default_rng(0).permutation(len(rows))[:17]
    got = rows.gather(idx)
    for j, i in enumerate(idx):
        for a, v in rows[int(i)].items():
            assert np.array_equal(got[a][j], v)
    with pytest.raises(IndexError):
        rows.gather([len(rows)])


def test_loader_batches_from_dataset(tmp_path: Path) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds", with_loss_mask=True))
    loader = PackedLoader(rows, 4, seed=0, num_workers=2, prefetch=2)
    batches = list(loader)
    assert len(batches) == len(rows) // 4 == len(loader)
    b = batches[0]
    assert b["input_ids"].dtype == torch.int64 and b["input_ids"].shape == (4, 64)
    assert b["position_ids"].dtype == torch.int64 and b["cu_seqlens"].dtype == torch.int32
    assert int((b["segment_ids"].amax(1) > 1).sum()) > 0, "guard: packed rows hold several documents"
    assert loader.epoch == 1 and loader.position == 0
    # A plain torch DataLoader can use the same dataset and collate.
    dl = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=collate)
    first = next(iter(dl))
    ref = collate(rows.gather(range(4)))
    assert torch.equal(first["labels"], ref["labels"])


def test_shuffle_is_seeded_per_epoch(tmp_path: Path) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds"))
    a = PackedLoader(rows, 2, seed=7, num_workers=0)
    b = PackedLoader(rows, 2, seed=7, num_workers=0)
    c = PackedLoader(rows, 2, seed=8, num_workers=0)
    assert np.array_equal(a.epoch_order(0), b.epoch_order(0))
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
    full = PackedLoader(rows, 2, seed=7, num_workers=0, drop_last=False)
    assert sorted(full.epoch_order(3).tolist()) == list(range(len(rows)))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_sharding_is_disjoint_and_complete(tmp_path: Path, world: int) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds", docs=230))
    n = len(rows)
    for epoch in (0, 1):
        full = [PackedLoader(rows, 2, seed=3, rank=r, world_size=world, drop_last=False,
                             num_workers=0).epoch_order(epoch) for r in range(world)]
        seen = np.concatenate(full)
        assert len(seen) == n and len(np.unique(seen)) == n  # disjoint and complete
        # With drop_last every rank takes the same number of batches (DDP must not hang).
        loaders = [PackedLoader(rows, 2, seed=3, rank=r, world_size=world, num_workers=0)
                   for r in range(world)]
        for ld in loaders:
            ld.epoch = epoch
        got = [np.concatenate([b["input_ids"].numpy() for b in ld]) for ld in loaders]
        assert len({len(g) for g in got}) == 1
        rows_seen = np.concatenate([ld.epoch_order(epoch) for ld in loaders])
        assert len(np.unique(rows_seen)) == len(rows_seen) > n - world * 2


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resume_mid_epoch_gives_the_same_remaining_order(tmp_path: Path, workers: int) -> None:
    rows = PackedRows(make_dataset(tmp_path / "ds"))
    ref = PackedLoader(rows, 3, seed=11, num_workers=workers, prefetch=3)
    stream = ref.forever()
    expected = [next(stream)["input_ids"] for _ in range(len(ref) + 5)]  # crosses an epoch end
    stream.close()

    first = PackedLoader(rows, 3, seed=11, num_workers=workers, prefetch=3)
    it = first.forever()
    for _ in range(len(first) - 2):  # stop two batches before the epoch ends
        next(it)
    state = first.state_dict()
    it.close()
    assert state["position"] == len(first) - 2 and state["epoch"] == 0

    resumed = PackedLoader(rows, 3, seed=11, num_workers=workers, prefetch=3)
    resumed.load_state_dict(state)
    it = resumed.forever()
    rest = [next(it)["input_ids"] for _ in range(7)]
    it.close()
    for got, want in zip(rest, expected[len(first) - 2:]):
        assert torch.equal(got, want)

    other = PackedLoader(rows, 3, seed=12, num_workers=0)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)
