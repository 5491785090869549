"""``--estimate``: the memory formulas, against what autograd really saves for the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_loop import cfg, make_dataset  # noqa: E402

from fastprep.train.estimate import estimate  # noqa: E402
from fastprep.train.loader import collate  # noqa: E402
from fastprep.train.loop import loss_sum  # noqa: E402
from fastprep.train.models import count_parameters, tiny_model  # noqa: E402


def _saved_bytes(model: torch.nn.Module, batch: dict, attn: str) -> int:
    """Bytes of the distinct tensors autograd saves in a forward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_sum(model, batch, attn)
    return sum(seen.values())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_what_autograd_saves(tmp_path: Path, checkpointing: bool) -> None:
    data = make_dataset(tmp_path / "ds")  # vocab 512, L 64
    c = cfg(data, tmp_path / "run", batch_size=8, device="cpu", attention="sdpa",
            activation_checkpointing=checkpointing)
    e = estimate(c)
    model = tiny_model(512, 2048, seed=0, attn_implementation="sdpa").train()
    assert e["parameters"] == count_parameters(model)
    b = e["bytes"]
    n = e["parameters"]
    assert (b["weights"], b["gradients"], b["adamw"]) == (4 * n, 4 * n, 8 * n)
    assert b["total"] == 16 * n + b["activations"]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rng = np.random.default_rng(0)
    batch = collate({"input_ids": rng.integers(1, 512, (8, 64)).astype(np.uint16),
                     "segment_ids": np.ones((8, 64), np.uint16)})
    measured = _saved_bytes(model, batch, "sdpa")
    if checkpointing:
        # the forward keeps layer inputs and the loss; one layer's set comes back in the backward,
        # which the estimate adds on top
        assert measured <= b["activations"] < b["activations_without_checkpointing"]
    else:
        assert 0.8 <= b["activations"] / measured <= 1.25, (b["activations"], measured)


def test_estimate_of_a_model_folder_needs_no_memory(tmp_path: Path) -> None:
    """A model folder is built on the meta device: a 7B configuration costs no RAM here."""
    import transformers

    data = make_dataset(tmp_path / "ds")
    folder = tmp_path / "m"
    transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                             num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=32).save_pretrained(folder)
    e = estimate(cfg(data, tmp_path / "run", model=str(folder), batch_size=1))
    assert 6.5e9 < e["parameters"] < 7.0e9  # Llama-2-7B's shape
    assert e["bytes"]["weights"] == 4 * e["parameters"]
