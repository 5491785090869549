"""Models for ``fastprep train``: any Hugging Face causal LM from a local folder, or ``tiny``.

- :func:`load_model` opens a folder written by ``save_pretrained`` (``config.json`` plus
  ``*.safetensors``) with ``local_files_only=True``: training never reaches the network, and
  safetensors never executes code (no pickle).
- :func:`tiny_config` / :func:`tiny_model` build a Llama-style model with random weights, no
  download: 2 layers, hidden 64, 4 heads (2 KV heads, so the GQA path is exercised), SwiGLU MLP of
  width 128, RoPE, tied embeddings. With a 512-token vocabulary it has ~0.1 M parameters: big enough
  to show real masking and loss curves, small enough that a CPU test step takes milliseconds. It is
  for tests, demos and data-pipeline benchmarks, not for quality.

The attention implementation decides how document masking is applied (see
:func:`fastprep.train.masks.model_inputs`): ``sdpa`` (default everywhere; a 4-D block-diagonal mask),
``eager``, ``flex_attention`` or ``flash_attention_2`` (positions only, varlen kernel; needs the
``flash-attn`` package and a CUDA GPU).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from .config import TINY


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("fastprep train needs transformers: pip install 'fastprep[train]'") from e
    return transformers


def default_attention(device: torch.device) -> str:
    """flash_attention_2 on CUDA when ``flash_attn`` is installed, else sdpa (CPU and GPU)."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def tiny_config(vocab_size: int = 512, max_position_embeddings: int = 2048, **overrides: Any) -> Any:
    """The documented tiny Llama config (see module docstring); ``overrides`` replace any field."""
    transformers = _transformers()
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    fields.update(overrides)
    return transformers.LlamaConfig(**fields)


def tiny_model(vocab_size: int = 512, max_position_embeddings: int = 2048, *, seed: int = 0,
               attn_implementation: str = "sdpa", **overrides: Any) -> torch.nn.Module:
    """A randomly initialised tiny Llama (seeded: the same ``seed`` gives the same weights)."""
    transformers = _transformers()
    config = tiny_config(vocab_size, max_position_embeddings, **overrides)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model


def load_model(name: str | os.PathLike[str], *, vocab_size: int | None = None,
               max_position_embeddings: int = 2048, attn_implementation: str = "sdpa",
               seed: int = 0) -> torch.nn.Module:
    """``"tiny"`` -> :func:`tiny_model`; otherwise a local Hugging Face model folder (fp32 weights).

    Weights are loaded in float32: the optimizer keeps fp32 master weights and bf16 comes from
    autocast, which is the numerically safe form of full fine-tuning.
    """
    if str(name) == TINY:
        return tiny_model(vocab_size or 512, max_position_embeddings, seed=seed,
                          attn_implementation=attn_implementation)
    path = Path(name)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {name}: not 'tiny' and not a local model folder with "
                                f"config.json (download it first, e.g. `hf download <repo> "
                                f"--local-dir {name}`)")
    transformers = _transformers()
    # transformers >= 4.56 names the argument `dtype`; older releases only know `torch_dtype`.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, attn_implementation=attn_implementation,
        **{dtype_kw: torch.float32})


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
