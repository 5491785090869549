"""Tests of fastprep.train.hf, the Hugging Face bridge, on CPU with a tiny random Llama: rows in the
transformers convention; for eager and SDPA, the packed batch's loss and logits equal each
document run alone (and the boolean mask that would leak on eager is shown to leak); for
flash-attention, the varlen kwargs cover every run and reach the attention function (a reference
varlen attention stands in for flash-attn, which needs a GPU); and ``transformers.Trainer`` trains
on ``packed_dataset`` + ``collate`` with its default column removal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastprep import PackConfig, prepare  # noqa: E402
from fastprep.train import masks  # noqa: E402
from fastprep.train.hf import (  # noqa: E402
    Collator, HFRows, collate, hf_labels, packed_dataset, segments_from_positions)
from fastprep.train.loader import PackedRows  # noqa: E402
from fastprep.train.loader import collate as fastprep_collate  # noqa: E402
from fastprep.train.models import tiny_model  # noqa: E402

from conftest import make_texts, prep_config, write_jsonl  # noqa: E402

pytestmark = pytest.mark.torch

L = 64
TOL = 1e-5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """Prompt/completion records (a loss mask with zeros) and short texts, packed into L=64."""
    tmp = tmp_path_factory.mktemp("hf")
    texts = make_texts(80, seed=3, min_words=2, max_words=14)
    recs: list[dict[str, str]] = [{"prompt": f"Question {i}: {t[:20]}", "completion": f" {t[20:]}"}
                                  for i, t in enumerate(texts[:40])]
    recs += [{"text": t} for t in texts[40:]]
    src = write_jsonl(tmp / "mix.jsonl", recs)
    out = tmp / "ds"
    prepare(prep_config([src], out, tokenizer_dir, seq_len=L, pack=PackConfig(seq_len=L)))
    return out


@pytest.fixture(scope="module")
def packed(dataset: Path) -> PackedRows:
    return PackedRows(dataset)


def documents(row: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Slow reference: (ids, loss mask) of each document of a fastprep row, by a Python walk."""
    seg, ids = row["segment_ids"].astype(int), row["input_ids"].astype(int)
    loss = row.get("loss_mask", np.ones_like(seg)).astype(int)
    out = []
    for s in sorted(set(seg.tolist()) - {0}):
        where = np.nonzero(seg == s)[0]
        out.append((ids[where], loss[where]))
    return out


def mixed_rows(packed: PackedRows, n: int = 4) -> list[int]:
    """Indices of ``n`` rows holding several documents, the first with padding; guarded."""
    several = [i for i in range(len(packed))
               if len(np.unique(packed[i]["segment_ids"][packed[i]["segment_ids"] != 0])) >= 2]
    padded = [i for i in several if (packed[i]["segment_ids"] == 0).any()]
    assert len(several) >= n and padded, "guard: the dataset must pack several documents per row"
    chosen = [padded[0]] + [i for i in several if i != padded[0]][: n - 1]
    assert any((packed[i]["loss_mask"][packed[i]["segment_ids"] != 0] == 0).any() for i in chosen)
    return chosen


def both(packed: PackedRows, n: int = 4) -> tuple[list[dict[str, np.ndarray]], list[dict[str, Any]]]:
    """The same rows twice: as fastprep stores them (for the references) and as
    :func:`packed_dataset` hands them to a Trainer (what collate gets)."""
    idx = mixed_rows(packed, n)
    return [packed[i] for i in idx], HFRows(packed).__getitems__(idx)


def model_for(vocab: int, attn: str) -> torch.nn.Module:
    return tiny_model(vocab, 256, seed=0, attn_implementation=attn).eval()


def reference(model: torch.nn.Module, rows: list[dict[str, np.ndarray]]) -> tuple[float, int, list]:
    """Token-mean loss of every document run alone, the number of targets, and their logits."""
    total, count, logits = 0.0, 0, []
    with torch.no_grad():
        for row in rows:
            for ids, loss in documents(row):
                out = model(input_ids=torch.tensor(ids)[None]).logits[0]
                logits.append(out)
                target = torch.tensor(loss[1:]).bool()  # the first token is never a target
                ce = torch.nn.functional.cross_entropy(out[:-1], torch.tensor(ids[1:]), reduction="none")
                total += float(ce[target].sum())
                count += int(target.sum())
    assert count > 0
    return total / count, count, logits


def packed_logits(logits: torch.Tensor, rows: list[dict[str, np.ndarray]]) -> list[torch.Tensor]:
    """The packed batch's logits cut into documents, in the order of :func:`reference`."""
    out = []
    flat = logits.reshape(len(rows), L, -1)
    for r, row in enumerate(rows):
        seg = row["segment_ids"].astype(int)
        out += [flat[r, seg == s] for s in sorted(set(seg.tolist()) - {0})]
    return out


# ----------------------------------------------------------------------------- the rows


def test_rows_follow_the_transformers_convention(dataset: Path, packed: PackedRows) -> None:
    hf = packed_dataset(dataset)
    assert isinstance(hf, HFRows) and len(hf) == len(packed) > 4
    seen_starts = seen_masked = 0
    for i in range(len(hf)):
        row, raw = hf[i], packed[i]
        assert set(row) == {"input_ids", "labels", "position_ids", "attention_mask"}
        assert all(v.dtype == torch.int64 and v.shape == (L,) for v in row.values())
        seg = torch.from_numpy(raw["segment_ids"].astype(np.int64))
        ids, lab = row["input_ids"], row["labels"]
        # unshifted: a label is its own token or -100
        assert bool(((lab == ids) | (lab == -100)).all())
        starts = torch.ones(L, dtype=torch.bool)
        starts[1:] = seg[1:] != seg[:-1]
        assert bool((lab[starts] == -100).all()) and bool((lab[seg == 0] == -100).all())
        loss0 = torch.from_numpy(raw["loss_mask"].astype(np.int64)) == 0
        assert bool((lab[loss0] == -100).all())
        pos = row["position_ids"]
        assert bool((pos[starts] == 0).all()) and bool((pos[~starts] == pos.roll(1)[~starts] + 1).all())
        assert torch.equal(row["attention_mask"], (seg != 0).long())
        assert torch.equal(segments_from_positions(pos[None], row["attention_mask"][None])[0], seg)
        # the same targets as fastprep's own (shifted) labels, one step to the right
        internal = fastprep_collate([raw])
        assert torch.equal(lab[1:], internal["labels"][0, :-1])
        assert int((lab != -100).sum()) == internal["n_targets"]
        seen_starts += int(starts[seg != 0].sum())
        seen_masked += int((loss0 & (seg != 0) & ~starts).sum())
    assert seen_starts > 2 * len(hf) and seen_masked > 0  # guard: real documents and prompts


def test_getitems_equals_getitem_and_collate_accepts_both_row_kinds(dataset: Path,
                                                                    packed: PackedRows) -> None:
    hf = packed_dataset(dataset)
    picks = [3, 0, len(hf) - 1, 3]
    many = hf.__getitems__(picks)
    for i, row in zip(picks, many):
        assert all(torch.equal(row[k], hf[i][k]) for k in row)
    for attn in ("eager", "sdpa", "flash_attention_2"):
        a, b = collate(many, attn), collate([packed[i] for i in picks], attn)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                   for k in a)


def test_hf_labels_on_a_hand_made_row() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 0, 0]])
    seg = torch.tensor([[1, 1, 1, 2, 2, 2, 0, 0]])
    loss = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 0]])
    assert hf_labels(ids, seg, loss).tolist() == [[-100, 6, 7, -100, -100, 10, -100, -100]]
    assert hf_labels(ids, seg).tolist() == [[-100, 6, 7, -100, 9, 10, -100, -100]]


# ----------------------------------------------------------------------------- eager and SDPA


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_loss_equals_the_token_mean_of_documents_run_alone(attn: str, packed: PackedRows) -> None:
    rows, hf_rows = both(packed)
    model = model_for(packed.data.manifest.vocab_size, attn)
    want, count, alone = reference(model, rows)
    batch = collate(hf_rows, attn)
    got_pos = [p[:, 0].tolist() for p in packed_logits(batch["position_ids"][..., None], rows)]
    assert got_pos == [list(range(len(ids))) for row in rows for ids, _ in documents(row)]
    assert batch["attention_mask"].shape == (len(rows), 1, L, L)
    assert int((batch["labels"] != -100).sum()) == count
    with torch.no_grad():
        out = model(**batch)
    assert abs(float(out.loss) - want) < TOL, (float(out.loss), want)
    for got, ref in zip(packed_logits(out.logits, rows), alone, strict=True):
        torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL)
    assert batch["attention_mask"].dtype == torch.float32  # additive: right for eager and SDPA


def test_a_boolean_mask_leaks_on_eager_and_the_additive_mask_does_not(packed: PackedRows) -> None:
    """Why collate hands eager a float mask: eager adds the mask to the scores, so True/False
    become +1/+0 and the second document of a row sees the first (and the future)."""
    rows, hf_rows = both(packed, 2)
    model = model_for(packed.data.manifest.vocab_size, "eager")
    _, _, alone = reference(model, rows[:1])
    batch = collate(hf_rows[:1], "eager")
    with torch.no_grad():
        right = packed_logits(model(**batch).logits, rows[:1])
        seg = torch.from_numpy(rows[0]["segment_ids"].astype(np.int64))[None]
        wrong = packed_logits(model(**{**batch, "attention_mask": masks.sdpa_mask(seg)}).logits, rows[:1])
    torch.testing.assert_close(right[1], alone[1], atol=TOL, rtol=TOL)  # the second document
    assert not torch.allclose(wrong[1], alone[1], atol=1e-3)


def test_bfloat16_mask_and_collator_for_model(packed: PackedRows) -> None:
    _, hf_rows = both(packed, 2)
    batch = collate(hf_rows, "sdpa", torch.bfloat16)
    mask = batch["attention_mask"]
    assert mask.dtype == torch.bfloat16
    assert set(mask.unique().tolist()) == {0.0, torch.finfo(torch.bfloat16).min}
    model = model_for(packed.data.manifest.vocab_size, "eager").to(torch.bfloat16)
    assert Collator.for_model(model) == Collator("eager", torch.bfloat16)
    assert Collator.for_model(model_for(600, "sdpa")) == Collator()


def test_errors_name_the_fix(packed: PackedRows) -> None:
    with pytest.raises(ValueError, match="eager, sdpa and flash_attention_2"):
        collate([packed[0]], "flex_attention")
    with pytest.raises(ValueError, match="eager, sdpa and flash_attention_2"):
        Collator("paged_attention")
    with pytest.raises(ValueError, match="floating dtype"):
        Collator("sdpa", torch.int64)
    with pytest.raises(ValueError, match="lack labels, position_ids.*remove_unused_columns=False"):
        collate([{"input_ids": np.zeros(L, np.int64), "attention_mask": np.ones(L, np.int64)}])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


# ----------------------------------------------------------------------------- flash-attention


def runs(row: dict[str, np.ndarray]) -> list[int]:
    """Slow reference: lengths of the runs of equal segment ids of a row, padding runs included."""
    seg = row["segment_ids"].tolist()
    out = [1]
    for a, b in zip(seg, seg[1:]):
        if a == b:
            out[-1] += 1
        else:
            out.append(1)
    return out


def test_flash_kwargs_cover_every_document_and_padding_run(packed: PackedRows) -> None:
    rows, hf_rows = both(packed)
    batch = collate(hf_rows, "flash_attention_2")
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                          "max_length_q", "max_length_k"}  # no attention_mask: it would win
    lengths = [n for row in rows for n in runs(row)]
    want = np.concatenate([[0], np.cumsum(lengths)])
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert batch[key].dtype == torch.int32 and batch[key].tolist() == want.tolist()
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)
    assert isinstance(batch["max_length_q"], int)
    assert all(batch[k].shape == (1, len(rows) * L) for k in ("input_ids", "labels", "position_ids"))
    pos = batch["position_ids"][0].tolist()
    assert pos == [p for n in lengths for p in range(n)]  # restart at 0 on every run
    assert len(lengths) > len(rows) + 1  # guard: several documents and a padding run
    assert torch.equal(batch["labels"][0], collate(hf_rows, "eager")["labels"].reshape(-1))
    seg = np.concatenate([r["segment_ids"] for r in rows])
    assert bool((batch["labels"][0, torch.from_numpy(seg == 0)] == -100).all())


def reference_varlen(calls: list[dict[str, Any]]):
    """Stands in for transformers' ``_flash_attention_forward`` (flash-attn needs a GPU): records
    what reaches it and computes exact attention per run with SDPA. Without varlen kwargs it does
    what flash-attn does at batch size > 1: plain causal attention over each row."""

    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Any,
                query_length: int, is_causal: bool, **kw: Any) -> torch.Tensor:
        calls.append({"attention_mask": attention_mask, "is_causal": is_causal, **kw})
        groups = q.shape[2] // k.shape[2]  # [B, S, H, D] layout; GQA: repeat the KV heads
        k, v = (x.repeat_interleave(groups, dim=2) for x in (k, v))
        cu = kw.get("cu_seq_lens_q")
        bounds = cu.tolist() if cu is not None else None
        out = torch.empty_like(q)
        for b in range(q.shape[0]):
            edges = bounds if bounds is not None else [0, q.shape[1]]
            for s, e in zip(edges, edges[1:]):
                qs, ks, vs = (x[b, s:e].transpose(0, 1) for x in (q, k, v))
                out[b, s:e] = torch.nn.functional.scaled_dot_product_attention(
                    qs, ks, vs, is_causal=True, scale=kw.get("softmax_scale")).transpose(0, 1)
        return out

    return forward


def test_flash_attention_receives_varlen_kwargs_and_keeps_documents_apart(
        packed: PackedRows, monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers refuses to *build* a flash_attention_2 model without flash-attn installed, so
    # build it with sdpa and switch the implementation the attention layers dispatch on.
    rows, hf_rows = both(packed)
    model = model_for(packed.data.manifest.vocab_size, "sdpa")
    want, _, alone = reference(model, rows)
    model.config._attn_implementation = "flash_attention_2"
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("transformers.integrations.flash_attention._flash_attention_forward",
                        reference_varlen(calls))
    batch = Collator.for_model(model)(hf_rows)
    with torch.no_grad():
        out = model(**batch)
    assert len(calls) == model.config.num_hidden_layers  # guard: the flash path really ran
    for call in calls:
        assert call["attention_mask"] is None and call["is_causal"]
        assert torch.equal(call["cu_seq_lens_q"], batch["cu_seq_lens_q"])
        assert call["max_length_q"] == batch["max_length_q"]
    assert abs(float(out.loss) - want) < TOL, (float(out.loss), want)
    for got, ref in zip(packed_logits(out.logits, rows), alone, strict=True):
        torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL)
    # What the bridge exists for: restarting position ids over [B, L] alone do not reach flash-attn
    # as varlen, and documents attend across each other.
    calls.clear()
    plain = collate(hf_rows, "eager")
    with torch.no_grad():
        leaky = model(input_ids=plain["input_ids"], position_ids=plain["position_ids"],
                      labels=plain["labels"])
    assert calls and all(c.get("cu_seq_lens_q") is None for c in calls)
    assert abs(float(leaky.loss) - want) > 1e-3


# ----------------------------------------------------------------------------- Trainer


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_trainer_trains_on_packed_dataset_with_collate(attn: str, dataset: Path, tmp_path: Path) -> None:
    hf = packed_dataset(dataset)
    assert hf.vocab_size == hf.rows.data.manifest.vocab_size and hf.seq_len == L
    model = tiny_model(hf.vocab_size, 256, seed=0, attn_implementation=attn)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True)
    collator = collate if attn == "sdpa" else Collator.for_model(model)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=hf, data_collator=collator)
    # The batches the Trainer really builds (after its column removal) keep documents apart.
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["attention_mask"].shape == (2, 1, L, L)
    assert bool((batch["attention_mask"] != 0).any())  # guard: some position is blocked
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert trainer.state.global_step == 3 and len(losses) == 3
    assert all(math.isfinite(x) and x > 0 for x in losses)
