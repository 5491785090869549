"""``fastprep train``'s configuration: one frozen dataclass, one flag per field.

Torch-free on purpose: ``fastprep train --help`` and a config check work without the training
extra; the loop maps the dtype and attention names onto torch when it runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..flags import option

TINY = "tiny"
ATTENTIONS = ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fastprep train`` does; each field is the flag ``--field-name``."""

    data: str = option("", "dataset folder written by `fastprep prepare`", required=True)
    model: str = option(TINY, "local Hugging Face model folder (save_pretrained layout), or "
                        "'tiny' (a random Llama, no download)")
    out: str = option("runs/train", "folder for checkpoints, log.jsonl and the exported model")
    batch_size: int = option(8, "packed rows per micro-batch per rank")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(0.0, "peak learning rate (0 = auto: 2e-5 for a pretrained --model, gentle "
                       "enough that full fine-tuning does not erase what it knows; 3e-4 for the "
                       "random 'tiny', which has nothing to forget)")
    min_lr_ratio: float = option(0.1, "final lr as a fraction of --lr (cosine floor)")
    warmup_steps: int = option(-1, "linear warm-up steps (-1 = --warmup-ratio of the run)")
    warmup_ratio: float = option(0.05, "warm-up as a fraction of the optimizer steps, when "
                                 "--warmup-steps is -1 (a short run still reaches the peak lr)")
    max_steps: int = option(0, "optimizer steps (0 = derive from --epochs)")
    epochs: float = option(1.0, "passes over the data when --max-steps is 0")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    clip: float = option(1.0, "global gradient-norm clip (0 disables)")
    seed: int = option(0, "seed for the weights of 'tiny', the data order and the RNGs")
    compile: bool = option(False, "torch.compile the model")
    dtype: str = option("auto", "autocast dtype: auto (bfloat16 on a bf16-capable GPU, else "
                        "float32), float32, bfloat16, float16", choices=DTYPE_NAMES)
    attention: str = option("auto", "attention implementation: auto (flash_attention_2 if "
                            "installed on GPU, else sdpa), sdpa, eager, flex_attention, "
                            "flash_attention_2", choices=ATTENTIONS)
    log_every: int = option(10, "steps between log lines")
    save_every: int = option(0, "steps between checkpoints (0 = only at the end)")
    keep_last: int = option(2, "checkpoints kept in --out (older ones are deleted)")
    resume: str = option("", "'' = fresh run (refused if --out has checkpoints), 'auto' = "
                         "latest if any, 'latest', or a checkpoint file")
    device: str = option("auto", "auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N")
    num_workers: int = option(1, "background threads building batches (0 = in the training thread)")
    prefetch: int = option(4, "batches built ahead of the training step")
    peak_tflops: float = option(0.0, "GPU bf16 peak TFLOP/s for MFU (0 = look the GPU up by name)")
    export: bool = option(True, "write the final weights and the tokenizer to OUT/model "
                          "(save_pretrained: from_pretrained loads both)")
    val_data: str = option("", "a validation dataset (same tokenizer): its loss and perplexity "
                           "every --eval-every steps and at the end")
    eval_every: int = option(0, "steps between validation passes (0 = at the end only)")
    eval_batches: int = option(0, "validation batches per pass (0 = the whole validation set)")
    activation_checkpointing: bool = option(
        False, "recompute each layer's activations in the backward pass: less memory, ~1/3 "
        "more compute (see --estimate)")
    estimate: bool = option(False, "print the parameters and the memory of weights, gradients, "
                            "AdamW state and activations for this model, batch, length and dtype, "
                            "then exit without training")

    def peak_lr(self) -> float:
        """``--lr``, with 0 resolved: gentle for a pretrained model, faster for random weights."""
        if self.lr > 0:
            return self.lr
        return 3e-4 if self.model == TINY else 2e-5

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps of a run of ``total_steps``."""
        if self.warmup_steps >= 0:
            return self.warmup_steps
        return max(1, round(self.warmup_ratio * total_steps)) if self.warmup_ratio > 0 else 0

    def __post_init__(self) -> None:
        def need(ok: bool, flag: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{flag}: {what}")

        need(bool(self.data), "data", "a dataset folder is required")
        need(bool(self.model), "model", "'tiny' or a local model folder is required")
        need(bool(self.out), "out", "an output folder is required")
        need(self.batch_size > 0, "batch-size", f"must be positive, got {self.batch_size}")
        need(self.grad_accum > 0, "grad-accum", f"must be positive, got {self.grad_accum}")
        need(self.lr >= 0 and math.isfinite(self.lr), "lr",
             f"must be a positive number (0 = auto), got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min-lr-ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        need(self.warmup_steps >= -1, "warmup-steps",
             f"must be >= 0 (or -1 for --warmup-ratio), got {self.warmup_steps}")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup-ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        need(self.eval_every >= 0, "eval-every", f"must be >= 0, got {self.eval_every}")
        need(self.eval_batches >= 0, "eval-batches", f"must be >= 0, got {self.eval_batches}")
        need(self.max_steps >= 0, "max-steps", f"must be >= 0, got {self.max_steps}")
        need(self.epochs > 0 or self.max_steps > 0, "epochs",
             f"must be positive when --max-steps is 0, got {self.epochs}")
        need(self.weight_decay >= 0, "weight-decay", f"must be >= 0, got {self.weight_decay}")
        need(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        need(0 <= self.beta2 < 1, "beta2", f"must be in [0, 1), got {self.beta2}")
        need(self.clip >= 0, "clip", f"must be >= 0 (0 disables clipping), got {self.clip}")
        need(self.dtype in DTYPE_NAMES, "dtype", f"must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        need(self.attention in ATTENTIONS, "attention",
             f"must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        need(self.log_every > 0, "log-every", f"must be positive, got {self.log_every}")
        need(self.save_every >= 0, "save-every", f"must be >= 0 (0 = only at the end), got {self.save_every}")
        need(self.keep_last >= 1, "keep-last", f"must be >= 1, got {self.keep_last}")
        need(self.num_workers >= 0, "num-workers", f"must be >= 0, got {self.num_workers}")
        need(self.prefetch >= 1, "prefetch", f"must be >= 1, got {self.prefetch}")
        need(self.peak_tflops >= 0, "peak-tflops", f"must be >= 0 (0 = look up), got {self.peak_tflops}")
        need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None, "device",
             f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
