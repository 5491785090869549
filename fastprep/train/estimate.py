"""``fastprep train --estimate``: what a full fine-tuning run holds in memory, before it starts.

Full fine-tuning keeps, per parameter, fp32 weights (4 bytes: the loop loads models in float32
and autocasts), their gradients (4) and AdamW's two moments (8): 16 bytes, which is why a model
that serves in 2 bytes per parameter needs 8x that to train. On top of that come the
activations the backward pass needs, per micro-batch of ``T = batch_size x L`` tokens. They were
counted from the tensors autograd saves in a Llama decoder layer of transformers 5.24 (the tiny
model, SDPA on CPU; ``h`` hidden, ``kv`` the key/value width, ``i`` the MLP width), per token
and layer:

- ``12 h + 2 kv``: norms, projection inputs and outputs, the per-head q/k/v and rotated copies,
  the attention output;
- ``5 i``: the MLP's gate and up projections, the activation, the product, the down input;
- a dense 4-D mask (SDPA and eager) keeps ``L x L`` per row and layer in float32; eager
  attention also keeps ``heads x L x L`` scores (flagged, not counted); flash-attention and
  FlexAttention keep neither;
- the cross-entropy's float32 log-softmax, ``T x V x 4`` bytes (the logits themselves live only
  for the forward's peak).

With activation checkpointing a layer keeps only its input (``h`` per token), and one layer's
full set is rebuilt at a time in the backward. ``tests/train/test_estimate.py`` compares the
count with the bytes autograd saves for the tiny model.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import TINY, TrainConfig

GIB = 2 ** 30


def layer_elements(h: int, kv: int, i: int) -> int:
    """Activation elements a decoder layer saves per token (see the module docstring)."""
    return 12 * h + 2 * kv + 5 * i


def _shape(model: Any) -> dict[str, int]:
    c = model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    return {"hidden": c.hidden_size, "layers": c.num_hidden_layers,
            "intermediate": c.intermediate_size, "heads": heads, "kv": kv_heads * head_dim,
            "vocab": c.vocab_size}


def _meta_model(cfg: TrainConfig, vocab: int, seq_len: int) -> Any:
    """The model without memory (parameters on the meta device)."""
    import importlib

    from .models import tiny_config

    transformers = importlib.import_module("transformers")
    if cfg.model == TINY:
        config = tiny_config(vocab, max(2048, seq_len))
    else:
        config = transformers.AutoConfig.from_pretrained(cfg.model, local_files_only=True)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def estimate(cfg: TrainConfig) -> dict[str, Any]:
    """Parameters and bytes of weights, gradients, AdamW state and activations for ``cfg``."""
    from ..dataset.format import open_dataset
    from .models import count_parameters

    manifest = open_dataset(cfg.data).manifest
    vocab, seq_len = manifest.vocab_size, manifest.seq_len
    model = _meta_model(cfg, vocab, seq_len)
    s = _shape(model)
    n = count_parameters(model)
    tokens = cfg.batch_size * seq_len
    act = 2 if cfg.dtype in ("bfloat16", "float16") or (cfg.dtype == "auto" and
                                                       cfg.device.startswith("cuda")) else 4
    attn = cfg.attention if cfg.attention != "auto" else (
        "flash_attention_2" if cfg.device.startswith("cuda") else "sdpa")
    mask = cfg.batch_size * seq_len * seq_len * 4 if attn in ("sdpa", "eager") else 0
    per_layer = layer_elements(s["hidden"], s["kv"], s["intermediate"]) * tokens * act + mask
    logits = tokens * s["vocab"] * 4
    full = s["layers"] * per_layer + logits
    checkpointed = s["layers"] * s["hidden"] * tokens * act + per_layer + logits
    states = {"weights": 4 * n, "gradients": 4 * n, "adamw": 8 * n}
    acts = checkpointed if cfg.activation_checkpointing else full
    return {"parameters": n, **s, "seq_len": seq_len, "tokens_per_micro_batch": tokens,
            "activation_bytes_per_element": act, "bytes": {
                **states, "activations": acts, "activations_without_checkpointing": full,
                "activations_with_checkpointing": checkpointed,
                "total": sum(states.values()) + acts},
            "eager_attention_scores_not_counted": cfg.attention == "eager"}


def render(e: dict[str, Any]) -> str:
    b = e["bytes"]
    g = (lambda x: f"{x / GIB:8.2f} GiB")
    lines = [f"parameters          {e['parameters']:,}  ({e['layers']} layers, hidden {e['hidden']}, "
             f"MLP {e['intermediate']}, vocab {e['vocab']:,})",
             f"micro-batch         {e['tokens_per_micro_batch']:,} tokens (L {e['seq_len']}), "
             f"activations in {e['activation_bytes_per_element']} bytes",
             f"weights (fp32)      {g(b['weights'])}",
             f"gradients (fp32)    {g(b['gradients'])}",
             f"AdamW moments       {g(b['adamw'])}",
             f"activations         {g(b['activations'])}   (checkpointing: "
             f"{g(b['activations_with_checkpointing']).strip()}, without: "
             f"{g(b['activations_without_checkpointing']).strip()})",
             f"total               {g(b['total'])}"]
    if e["eager_attention_scores_not_counted"]:
        lines.append("(eager attention also keeps heads x L x L scores per layer: not counted)")
    return "\n".join(lines)
