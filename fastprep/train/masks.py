"""Everything the model needs that is *derived* from ``segment_ids`` at load time (torch).

The dataset stores only ``input_ids``, ``segment_ids`` and (optionally) ``loss_mask``; see
:mod:`fastprep.dataset.format`. Segment ids are the whole attention story: 0 is padding, equal non-zero ids
are one document, documents are contiguous from position 0 and padding only sits at the row end.
From them this module derives, with vectorised tensor ops only (no per-token Python loop, no
``.item()`` on an accelerator, so no device sync):

- :func:`position_ids`: restart at 0 for every document (RoPE sees each document as if alone).
- :func:`labels`: ``labels[t] = input_ids[t+1]`` when ``t+1`` is in the same document and
  ``loss_mask[t+1] == 1``, else ``-100``. The last token of a document never predicts the first
  token of the next one, padding never predicts anything, and the last position of a row is -100.
  The labels are already shifted: compare ``logits[:, t]`` with ``labels[:, t]`` and do *not* hand
  them to a Hugging Face model (which would shift them a second time).
- :func:`attention_mask`: ``segment_ids != 0`` (2-D, for bookkeeping; not what the model attends by).
- :func:`cu_seqlens`: cumulative document lengths over the flattened, *unpadded* token stream
  ``input_ids[attention_mask]`` (int32, as flash-attention varlen kernels expect) and ``max_seqlen``.
- :func:`run_seqlens`: the same over the flattened *padded* batch, padding runs included: what
  the flash-attention path of a ``[B, L]`` batch is given.
- :func:`sdpa_mask` / :func:`eager_mask`: the 4-D block-diagonal causal mask ``[B, 1, L, L]``
  (boolean for SDPA, additive 0/-inf for eager attention).
- :func:`flex_block_mask`: a FlexAttention ``BlockMask`` (sparse blocks, so cost scales with the
  documents' own lengths, not L**2); imported lazily because some CPU builds cannot run it.
- :func:`model_inputs`: the keyword arguments that make document masking take effect for a Hugging
  Face model's attention implementation.

Padding tokens form one more block of the block-diagonal mask (they attend to each other causally).
That keeps every query row non-empty, so SDPA never produces NaN for an all-masked row; real tokens
never see padding because padding only follows them. Padding outputs carry label -100 and vanish
from the loss.

The dense 4-D mask is B*L*L bytes, costly to build on the host, which is why the trainer builds
it on the device from ``segment_ids`` after the copy instead of shipping it (collate and mask
timings: ``benchmarks/README.md``, "Training loader"). On CPU, SDPA with a dense mask
costs O(L**2) per row whatever the documents ; on GPU,
``flash_attention_2`` with the varlen arguments runs the varlen kernel, whose cost follows
the documents' own lengths.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100
"""Label value that ``torch.nn.functional.cross_entropy`` skips (its default ``ignore_index``)."""


def _run_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """True where a new run of equal segment ids begins (position 0 of every row included)."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts


def position_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` int64 positions that restart at 0 for every document (and for the padding run).

    Position ``t`` minus the start index of its run, where the run start is carried forward with a
    cumulative max: O(B*L), no loop.
    """
    seg = segment_ids.long()
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device).expand_as(seg)
    start_idx = torch.where(_run_starts(seg), idx, torch.zeros_like(idx))
    return idx - torch.cummax(start_idx, dim=1).values


def labels(input_ids: torch.Tensor, segment_ids: torch.Tensor,
           loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, L]`` int64 next-token targets, -100 wherever a target must not be learned.

    ``labels[t] = input_ids[t+1]`` iff ``segment_ids[t+1] == segment_ids[t] != 0`` and (when a loss
    mask is given) ``loss_mask[t+1] == 1``; the last column is always -100.
    """
    ids = input_ids.long()
    seg = segment_ids
    out = torch.full_like(ids, IGNORE_INDEX)
    keep = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] != 0)
    if loss_mask is not None:
        keep &= loss_mask[:, 1:] != 0
    out[:, :-1] = torch.where(keep, ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE_INDEX))
    return out


def attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` int64, 1 on real tokens and 0 on padding (the Hugging Face 2-D convention)."""
    return (segment_ids != 0).long()


def document_lengths(segment_ids: torch.Tensor) -> torch.Tensor:
    """Lengths of the real documents of the batch in row-major order (int64, 1-D).

    A run is a maximal stretch of equal segment ids inside one row; padding runs are dropped.
    """
    seg = segment_ids.long()
    starts = _run_starts(seg).reshape(-1)
    flat = seg.reshape(-1)
    start_idx = torch.nonzero(starts, as_tuple=False).reshape(-1)
    ends = torch.cat([start_idx[1:], start_idx.new_tensor([flat.numel()])])
    lengths = ends - start_idx
    return lengths[flat[start_idx] != 0]


def cu_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, max_seqlen)`` for flash-attention varlen over ``input_ids[attention_mask]``.

    ``cu_seqlens`` is int32 ``[n_docs + 1]`` starting at 0; it indexes the flattened batch with the
    padding removed (real documents only). ``max_seqlen`` is a Python int: call this on CPU tensors
    (the collate does) so reading it costs no device sync.
    """
    lengths = document_lengths(segment_ids)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=segment_ids.device)
    cu[1:] = torch.cumsum(lengths, 0)
    max_len = int(lengths.max()) if lengths.numel() else 0
    return cu, max_len


def run_seqlens(segment_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu, max_len)`` over every run of the flattened ``[B * L]`` batch, padding runs
    included: the varlen arguments (``cu_seq_lens_q/k``, ``max_length_q/k``) with which a
    flash-attention kernel keeps the documents of a ``[B, L]`` batch apart. ``cu`` is int32
    ``[runs + 1]``; compute it on CPU tensors (the collate does) so ``max_len`` costs no sync.

    Without them transformers treats restarting ``position_ids`` as packing only at batch size
    1 and otherwise runs plain causal attention over each row, across its documents.
    """
    flat_starts = _run_starts(segment_ids).reshape(-1)
    start_idx = torch.nonzero(flat_starts, as_tuple=False).reshape(-1)
    cu = torch.zeros(start_idx.numel() + 1, dtype=torch.int32, device=segment_ids.device)
    cu[:-1] = start_idx.to(torch.int32)
    cu[-1] = flat_starts.numel()
    lengths = cu[1:] - cu[:-1]
    return cu, int(lengths.max()) if lengths.numel() else 0


def sdpa_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` boolean block-diagonal causal mask, True = may attend (SDPA convention)."""
    seg = segment_ids
    length = seg.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    return (same & causal)[:, None]


def eager_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, 1, L, L]`` additive mask (0 = attend, dtype-min = blocked) for eager attention."""
    allowed = sdpa_mask(segment_ids)
    zero = torch.zeros((), dtype=dtype, device=segment_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def flex_block_mask(segment_ids: torch.Tensor, *, block_size: int = 128) -> Any:
    """A FlexAttention ``BlockMask`` for block-diagonal causal attention over ``segment_ids``.

    Raises ``RuntimeError`` with a hint where this torch build has no FlexAttention.
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as e:  # torch < 2.5
        raise RuntimeError("FlexAttention needs torch >= 2.5; use attention 'sdpa' instead") from e
    seg = segment_ids.long()
    batch, length = seg.shape

    def document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (seg[b, q] == seg[b, kv]) & (q >= kv)

    return create_block_mask(document_causal, B=batch, H=None, Q_LEN=length, KV_LEN=length,
                             device=seg.device, BLOCK_SIZE=block_size)


def model_inputs(input_ids: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor,
                 attn_implementation: str, *, dtype: torch.dtype = torch.float32,
                 runs: tuple[torch.Tensor, int] | None = None) -> dict[str, Any]:
    """Keyword arguments for a Hugging Face causal LM so that packed documents stay independent.

    - ``sdpa``: a boolean 4-D mask (transformers passes a 4-D mask through untouched).
    - ``eager``: the same mask in additive form (eager *adds* the mask to the scores).
    - ``flex_attention``: a ``BlockMask``.
    - ``flash_attention_2``/``flash_attention_3``: no mask, and explicit varlen arguments over
      every run of the flattened batch (:func:`run_seqlens`; pass the collate's ``runs`` to
      avoid computing them on the device): position ids alone are read as packing only at
      batch size 1.
    ``position_ids`` always go in, so rotary embeddings restart per document.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids}
    if attn_implementation == "sdpa":
        kwargs["attention_mask"] = sdpa_mask(segment_ids)
    elif attn_implementation == "eager":
        kwargs["attention_mask"] = eager_mask(segment_ids, dtype)
    elif attn_implementation == "flex_attention":
        kwargs["attention_mask"] = flex_block_mask(segment_ids)
    elif attn_implementation.startswith("flash_attention"):
        cu, max_len = runs if runs is not None else run_seqlens(segment_ids)
        kwargs.update(attention_mask=None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                      max_length_q=max_len, max_length_k=max_len)
    else:
        raise ValueError(f"attention implementation {attn_implementation!r} has no document mask "
                         f"here; use one of sdpa, eager, flex_attention, flash_attention_2")
    return kwargs
