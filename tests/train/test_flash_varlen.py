"""flash_attention_2 with packed rows, checked on CPU: what reaches the attention function.

transformers reads restarting ``position_ids`` as packing only at batch size 1; with more rows it
runs plain causal attention over each row, across its documents. fastprep therefore hands the
flash path explicit varlen arguments over every run of the flattened batch. No GPU or
``flash_attn`` here: a varlen attention registered under its own name stands in for the kernel,
computing causal attention separately inside each ``cu_seq_lens_q`` span, and refusing a call
without them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fastprep.train import masks  # noqa: E402
from fastprep.train.loader import collate  # noqa: E402
from fastprep.train.loop import loss_sum  # noqa: E402

VOCAB = 96
PROBE = "fastprep_varlen_probe"
CALLS: list[dict[str, Any]] = []


def _varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Causal attention inside each ``[cu[i], cu[i+1])`` of the flattened batch, as
    ``flash_attn_varlen_func`` computes it; query/key/value ``[B, H, L, D]``."""
    cu = kwargs.get("cu_seq_lens_q")
    CALLS.append({k: kwargs.get(k) for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                             "max_length_k")})
    assert cu is not None, "no varlen arguments reached the flash-attention path"
    b, h, length, d = query.shape
    groups = h // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    q, k, v = (x.transpose(1, 2).reshape(b * length, h, d) for x in (query, k, v))
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        out[s:e] = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
            is_causal=True, scale=scaling).transpose(0, 1)
    return out.reshape(b, length, h, d), None


def _model() -> Any:
    from transformers import AttentionInterface

    from fastprep.train.models import tiny_model

    AttentionInterface.register(PROBE, _varlen_attention)
    model = tiny_model(VOCAB, 256, seed=0, attn_implementation="sdpa").eval()
    model.set_attn_implementation(PROBE)
    return model


def _rows(seed: int = 3) -> dict[str, np.ndarray]:
    """Three rows of 40 with several documents each and padding at the end of two."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((3, 40), np.uint16)
    for r, lengths in enumerate([[10, 7, 15], [20, 12, 8], [5, 5, 5, 9]]):
        pos = 0
        for k, n in enumerate(lengths, start=1):
            seg[r, pos:pos + n] = k
            pos += n
    ids = np.where(seg > 0, rng.integers(1, VOCAB, size=seg.shape), 0).astype(np.uint16)
    return {"input_ids": ids, "segment_ids": seg}


def test_run_seqlens_cover_documents_and_padding_runs() -> None:
    seg = torch.from_numpy(_rows()["segment_ids"].astype(np.int32))
    cu, max_len = masks.run_seqlens(seg)
    # row 0: 10, 7, 15, padding 8; row 1: 20, 12, 8; row 2: 5, 5, 5, 9, padding 16
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 10, 17, 32, 40, 60, 72, 80, 85, 90, 95, 104, 120]
    assert max_len == 20


def test_flash_path_keeps_documents_apart_with_several_rows() -> None:
    model = _model()
    batch = collate(_rows())
    CALLS.clear()
    with torch.no_grad():
        got = loss_sum(model, batch, "flash_attention_2")
    assert CALLS and all(c["cu_seq_lens_q"] is not None and c["max_length_q"] == 20 for c in CALLS)
    assert CALLS[0]["cu_seq_lens_q"].tolist() == batch["cu_runs"].tolist()
    # the same loss as every document on its own (sdpa, one document per call)
    model.set_attn_implementation("sdpa")
    want = torch.zeros(())
    seg, ids, labels = batch["segment_ids"], batch["input_ids"], batch["labels"]
    with torch.no_grad():
        for r in range(seg.shape[0]):
            for k in sorted(set(seg[r].tolist()) - {0}):
                where = torch.nonzero(seg[r] == k).flatten()
                logits = model(input_ids=ids[r, where][None]).logits[0]
                want += torch.nn.functional.cross_entropy(
                    logits, labels[r, where], ignore_index=masks.IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_flash_kwargs_without_the_collate_are_computed_from_segments() -> None:
    seg = torch.from_numpy(_rows()["segment_ids"].astype(np.int32))
    kw = masks.model_inputs(torch.zeros(seg.shape, dtype=torch.int64), seg,
                            masks.position_ids(seg), "flash_attention_2")
    cu, max_len = masks.run_seqlens(seg)
    assert kw["attention_mask"] is None and kw["max_length_q"] == kw["max_length_k"] == max_len
    assert torch.equal(kw["cu_seq_lens_q"], cu) and torch.equal(kw["cu_seq_lens_k"], cu)
