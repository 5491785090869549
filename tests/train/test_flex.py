"""FlexAttention document masking, tested for what it computes; skipped only where torch lacks
FlexAttention.

The skip is decided by asking torch (can it import FlexAttention; can it run it on this device)
before any fastprep code runs, so an exception raised by fastprep's own mask or model inputs is a
failure, never a skip. What is checked:

- the ``BlockMask`` of :func:`fastprep.train.masks.flex_block_mask` equals the document-causal
  rule (same non-zero segment or both padding, and key <= query) element by element, with rows
  whose documents end inside, across and exactly on block boundaries;
- its block map is the sparse one the module promises: a block is computed iff some query in it
  may attend to some key in it (a block with nothing allowed is skipped, none that has is);
- the mask :func:`fastprep.train.masks.model_inputs` hands a model under ``flex_attention`` is
  that same rule;
- (slow: compiling the kernel takes ~15 s on 2 CPU cores) a tiny Llama's summed token loss with
  FlexAttention equals its loss with SDPA and the dense mask, and differs from plain causal
  attention (so documents really are kept apart).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastprep.train import masks  # noqa: E402
from fastprep.train.loader import collate  # noqa: E402

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(importlib.util.find_spec("torch.nn.attention.flex_attention") is None,
                       reason=f"torch {torch.__version__} has no FlexAttention (needs >= 2.5)"),
]

VOCAB = 512


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


# FlexAttention's CPU kernels (TorchInductor C++) arrived in torch 2.6; forward only.
needs_cpu_flex = pytest.mark.skipif(_torch_version() < (2, 6),
                                    reason="FlexAttention on CPU needs torch >= 2.6")


def segments() -> torch.Tensor:
    """Rows ending documents inside a block, exactly on block boundaries (16), across several
    blocks, with and without padding, and one document filling the row."""
    seg = torch.zeros(4, 40, dtype=torch.long)
    seg[0, :10], seg[0, 10:35] = 1, 2                                        # 5 padding
    seg[1, :16], seg[1, 16:32], seg[1, 32:40] = 1, 2, 3                      # on the boundaries
    seg[2] = 1                                                               # one document
    for k, (a, b) in enumerate([(0, 3), (3, 4), (4, 20), (20, 21), (21, 37)], start=1):
        seg[3, a:b] = k                                                      # 1-token docs
    return seg


def rule(seg: torch.Tensor) -> torch.Tensor:
    """The document-causal rule written out position by position (no fastprep code)."""
    batch, n = seg.shape
    out = torch.zeros(batch, 1, n, n, dtype=torch.bool)
    for b in range(batch):
        for q in range(n):
            for k in range(q + 1):
                out[b, 0, q, k] = bool(seg[b, q] == seg[b, k])
    return out


def dense(block_mask, seg: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_mask

    batch, n = seg.shape
    return create_mask(block_mask.mask_mod, batch, 1, n, n, device="cpu")


def test_flex_block_mask_equals_the_document_causal_rule() -> None:
    seg = segments()
    want = rule(seg)
    assert int(want.sum()) < want.numel() // 3  # guard: far from an all-causal mask
    block = masks.flex_block_mask(seg, block_size=16)
    assert block.shape == (4, 1, 40, 40)
    assert torch.equal(dense(block, seg), want)


def test_flex_block_map_is_sparse_and_complete() -> None:
    seg = segments()
    want = rule(seg)
    size = 16
    nb = -(-seg.shape[1] // size)
    padded = torch.zeros(seg.shape[0], 1, nb * size, nb * size, dtype=torch.bool)
    padded[..., :seg.shape[1], :seg.shape[1]] = want
    any_allowed = padded.reshape(seg.shape[0], 1, nb, size, nb, size).any(dim=(3, 5))
    got = masks.flex_block_mask(seg, block_size=size).to_dense().bool()
    assert torch.equal(got, any_allowed)
    assert not bool(any_allowed[1, 0, 1, 0]), "guard: a skipped block (documents on the boundary)"


def test_model_inputs_for_flex_carry_the_document_mask() -> None:
    seg = segments()
    ids = torch.randint(1, VOCAB, seg.shape) * (seg != 0)
    kwargs = masks.model_inputs(ids, seg, masks.position_ids(seg), "flex_attention")
    assert torch.equal(kwargs["input_ids"], ids)
    assert torch.equal(kwargs["position_ids"], masks.position_ids(seg))
    assert torch.equal(dense(kwargs["attention_mask"], seg), rule(seg))


@pytest.mark.slow
@needs_cpu_flex
def test_tiny_model_loss_with_flex_equals_sdpa() -> None:
    import torch.nn.functional as F

    from fastprep.train.loop import loss_sum
    from fastprep.train.models import tiny_model

    seg = segments().numpy()
    rng = np.random.default_rng(0)
    batch = collate({"input_ids": rng.integers(1, VOCAB, seg.shape) * (seg != 0),
                     "segment_ids": seg})
    sdpa = tiny_model(VOCAB, 256, seed=0, attn_implementation="sdpa").eval()
    flex = tiny_model(VOCAB, 256, seed=0, attn_implementation="flex_attention").eval()
    with torch.no_grad():  # FlexAttention has no CPU backward
        want = loss_sum(sdpa, batch, "sdpa")
        got = loss_sum(flex, batch, "flex_attention")
        logits = sdpa(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        causal_only = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                      ignore_index=masks.IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert abs(float(causal_only) - float(want)) > 1e-2, "guard: the mask changes the loss"
