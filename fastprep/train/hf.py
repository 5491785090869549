"""The Hugging Face bridge: packed rows in the transformers convention, so ``transformers.Trainer``
(or any loop that calls ``model(**batch).loss``) trains on a fastprep dataset correctly.

fastprep's own batches (:func:`fastprep.train.loader.collate`) are made for fastprep's loop, which
computes the loss itself: their ``labels`` are already shifted (``labels[t]`` is the target of
position ``t``) and their ``attention_mask`` is the 2-D padding mask, not what the model attends by.
A Hugging Face causal LM shifts ``labels`` itself and builds a plain causal mask from a 2-D mask,
so those batches would train on the token after next and let packed documents attend to each
other, without an error. This module hands out the transformers convention instead:

- :func:`packed_dataset` / :class:`HFRows`: a map-style ``Dataset`` whose row ``i`` is
  ``{input_ids, labels, position_ids, attention_mask}``, ``[L]`` int64 tensors. ``labels`` are
  *unshifted* (``labels[t] = input_ids[t]`` or -100; the model compares ``logits[t-1]`` with
  ``labels[t]``) and -100 on padding, on every document's first token (the last token of one
  document never predicts the next document's first) and where ``loss_mask`` is 0;
  ``position_ids`` restart at 0 per document; ``attention_mask`` is 1 on real tokens. These are
  all names of ``forward``'s signature on purpose: ``Trainer`` (``remove_unused_columns=True``, its
  default) drops every other key of a row *before* the collator sees it, so ``segment_ids`` and
  ``loss_mask`` would vanish. Documents are recovered from ``position_ids`` (a document starts
  where the position is 0) and ``attention_mask`` (padding only ends a row).
- :func:`collate` / :class:`Collator`: rows to a batch for one attention implementation, with
  documents kept apart:

  - ``eager`` and ``sdpa``: ``input_ids``, ``labels``, ``position_ids`` ``[B, L]`` and a *float
    additive* 4-D ``attention_mask`` ``[B, 1, L, L]`` (0 = may attend, dtype-min = blocked),
    block-diagonal causal (:func:`fastprep.train.masks.eager_mask`). transformers passes a 4-D mask
    through untouched; eager attention *adds* it to the scores, so a boolean mask (right for SDPA)
    would add 1/0 there and let every token see every other one, future included. The float form is
    right for both. It costs ``B*L*L*itemsize`` bytes per batch (8 rows at L=4096: 512 MiB in
    float32), so long rows want flash-attention.
  - ``flash_attention_2`` (any ``flash*`` name): the varlen convention of transformers'
    ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``: the batch is flattened to
    ``[1, B*L]`` and ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32) mark every run, each document and
    each row's padding run, with ``max_length_q``/``max_length_k`` as Python ints and no
    ``attention_mask`` (a mask would send transformers down its unpadding path, which ignores the
    runs). Position ids alone do not do it: transformers reads them as packing only at batch size
    1, and runs plain causal attention per row otherwise. Padding stays in, as its own runs, so the
    shape is static; real tokens never attend to it, and its labels are -100.

Everything is vectorised torch over ``[B, L]`` (the derivations of :mod:`fastprep.train.masks`),
no per-token Python. Rows of :class:`fastprep.train.loader.PackedRows` (``segment_ids``, optional
``loss_mask``) are accepted by :func:`collate` too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from . import masks
from ..dataset.format import PackedDataset
from .loader import PackedRows

HF_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")
"""The keys of a :class:`HFRows` row (all arguments of a causal LM's ``forward``)."""


def hf_labels(input_ids: torch.Tensor, segment_ids: torch.Tensor,
              loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, L]`` int64 *unshifted* labels: ``input_ids[t]`` where ``t`` is a target, else -100.

    A target is a non-padding token that is not its document's first and whose ``loss_mask`` is 1:
    fastprep's shifted labels (:func:`fastprep.train.masks.labels`) moved one step right, so both
    conventions name exactly the same targets.
    """
    shifted = masks.labels(input_ids, segment_ids, loss_mask)
    out = torch.full_like(shifted, masks.IGNORE_INDEX)
    out[:, 1:] = shifted[:, :-1]
    return out


def segments_from_positions(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` segment ids (0 = padding, 1, 2, ... per document) from restarting positions.

    A document starts where its position is 0; padding (``attention_mask == 0``) only ends a row.
    """
    real = attention_mask != 0
    starts = (position_ids == 0) & real
    return torch.cumsum(starts.long(), dim=1) * real


class HFRows(Dataset):
    """Map-style dataset of packed rows in the transformers convention (see the module docstring).

    ``rows[i]`` is ``{input_ids, labels, position_ids, attention_mask}`` as ``[L]`` int64 tensors;
    ``__getitems__`` (which ``torch.utils.data.DataLoader`` calls for a whole batch) fetches many
    rows with one fancy-index per shard and derives them in one vectorised pass.
    """

    def __init__(self, data: PackedRows | PackedDataset | str | os.PathLike[str], *,
                 verify_checksums: bool = False) -> None:
        self.rows = data if isinstance(data, PackedRows) else PackedRows(
            data, verify_checksums=verify_checksums)
        self.seq_len = self.rows.seq_len
        self.vocab_size = self.rows.data.manifest.vocab_size  # for the model's embedding size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = [int(i) + len(self) if int(i) < 0 else int(i) for i in indices]
        block = _tensors(self.rows.gather(idx))
        batch = {
            "input_ids": block["input_ids"],
            "labels": hf_labels(block["input_ids"], block["segment_ids"], block.get("loss_mask")),
            "position_ids": masks.position_ids(block["segment_ids"]),
            "attention_mask": masks.attention_mask(block["segment_ids"]),
        }
        return [{k: v[r].clone() for k, v in batch.items()} for r in range(len(idx))]


def packed_dataset(path: PackedRows | PackedDataset | str | os.PathLike[str], *,
                   verify_checksums: bool = False) -> HFRows:
    """A fastprep dataset folder as a ``torch.utils.data.Dataset`` for ``transformers.Trainer``.

    Pass it as ``train_dataset`` together with ``data_collator=collate`` (or a :class:`Collator`
    matching the model's attention implementation); never with transformers' default collator,
    whose 2-D mask lets packed documents attend to each other.
    """
    return HFRows(path, verify_checksums=verify_checksums)


def _tensors(stacked: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``[B, L]`` arrays (on-disk dtypes: uint16 has no torch arithmetic) as int64 tensors."""
    return {k: (v.long() if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v, np.int64)))
            for k, v in stacked.items()}


def _stack(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(rows, Mapping):
        return _tensors(rows)
    if not rows:
        raise ValueError("collate got an empty batch")
    keys = rows[0].keys()
    return {k: torch.stack([v.long() if isinstance(v, torch.Tensor)
                            else torch.from_numpy(np.asarray(v, np.int64)) for v in (r[k] for r in rows)])
            for k in keys}


def _ids_segments_labels(block: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """(input_ids, segment_ids, labels) from fastprep rows or from :class:`HFRows` rows."""
    if "segment_ids" in block:  # PackedRows: derive the labels here
        seg = block["segment_ids"]
        return block["input_ids"], seg, hf_labels(block["input_ids"], seg, block.get("loss_mask"))
    missing = [k for k in HF_KEYS if k not in block]
    if missing:
        raise ValueError(
            f"collate: rows lack {', '.join(missing)}; they must be rows of "
            f"fastprep.train.hf.packed_dataset (input_ids, labels, position_ids, attention_mask) "
            f"or of fastprep.train.loader.PackedRows (input_ids, segment_ids[, loss_mask]); if "
            f"a column filter dropped them on the way, set remove_unused_columns=False")
    seg = segments_from_positions(block["position_ids"], block["attention_mask"])
    return block["input_ids"], seg, block["labels"]


def is_flash(attn_implementation: str) -> bool:
    """Flash-attention implementations (``flash_attention_2``/``_3``, hub flash kernels)."""
    return "flash" in attn_implementation


def _check_implementation(attn_implementation: str) -> None:
    if attn_implementation not in ("eager", "sdpa") and not is_flash(attn_implementation):
        raise ValueError(f"attn_implementation {attn_implementation!r}: the Hugging Face bridge keeps "
                         f"documents apart for eager, sdpa and flash_attention_2; load the model "
                         f"with one of them (attn_implementation='sdpa' works everywhere)")


def flattened(input_ids: torch.Tensor, segment_ids: torch.Tensor,
              labels: torch.Tensor) -> dict[str, Any]:
    """The varlen batch for flash-attention: ``[1, B*L]`` tensors plus run boundaries.

    ``cu_seq_lens`` marks every run of equal segment ids of every row (documents and padding runs)
    over the flattened stream; runs are where the per-document positions restart at 0.
    """
    pos = masks.position_ids(segment_ids).reshape(1, -1)
    total = pos.shape[1]
    starts = torch.nonzero(pos[0] == 0, as_tuple=False).reshape(-1)
    cu = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max()) if total else 0  # a Python int, as flash-attn wants
    return {"input_ids": input_ids.reshape(1, -1), "labels": labels.reshape(1, -1),
            "position_ids": pos, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": max_len, "max_length_k": max_len}


def collate(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], attn_implementation: str = "sdpa",
            dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A batch in the transformers convention that keeps packed documents apart.

    ``rows``: a list of :class:`HFRows` or :class:`~fastprep.train.loader.PackedRows` rows, or a
    dict of stacked ``[B, L]`` arrays. ``attn_implementation`` must be the model's
    (``model.config._attn_implementation``); ``dtype`` is the dtype the attention scores are
    computed in, for the additive mask (``torch.bfloat16`` for a bf16 model; float32 is right for
    float32 weights, autocast included on CPU). See the module docstring for what each gets.
    """
    _check_implementation(attn_implementation)
    input_ids, segment_ids, labels = _ids_segments_labels(_stack(rows))
    if is_flash(attn_implementation):
        return flattened(input_ids, segment_ids, labels)
    return {"input_ids": input_ids, "labels": labels,
            "position_ids": masks.position_ids(segment_ids),
            "attention_mask": masks.eager_mask(segment_ids, dtype)}


@dataclass(frozen=True)
class Collator:
    """:func:`collate` with its options bound, for ``Trainer(data_collator=...)``.

    ``Collator.for_model(model)`` reads the implementation and dtype from the model itself, so the
    batch cannot disagree with the attention it is fed to.
    """

    attn_implementation: str = "sdpa"
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        _check_implementation(self.attn_implementation)
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype {self.dtype} must be a floating dtype (the model's), "
                             f"e.g. torch.float32 or torch.bfloat16")

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> Collator:
        config = getattr(model, "config", None)
        attn = getattr(config, "_attn_implementation", None) or "sdpa"
        dtype = getattr(model, "dtype", None)
        return cls(attn, dtype if isinstance(dtype, torch.dtype) else torch.float32)

    def __call__(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
        return collate(rows, self.attn_implementation, self.dtype)
