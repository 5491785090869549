"""``fastprep train``: a small, complete full-fine-tuning loop over a packed fastprep dataset.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` packed rows. The loss of a step
is the sum of the token losses over every real target of all its micro-batches (and, under DDP, of
all ranks) divided by the number of those targets: exactly the loss of one big batch, not a mean of
per-micro-batch means (which would over-weight micro-batches with few targets). Targets are the
shifted labels of :mod:`fastprep.masks`; the loss is computed here (``logits[:, t]`` against
``labels[:, t]``), never by the Hugging Face model, which would shift the labels a second time.

The rest is the standard recipe, each piece chosen for a reason:

- AdamW (fused kernel on CUDA), weight decay on matrices only (not on norms/biases), linear warm-up
  then cosine decay to ``min_lr_ratio * lr``; gradient clipping by global norm.
- fp32 master weights with bf16 autocast on GPU (``--dtype auto``); fp32 on CPU.
- Document masking through the attention implementation in use (see :func:`fastprep.masks.model_inputs`).
- Optional ``torch.compile``.
- Checkpoints (model, optimizer, scheduler, loader position, RNG states, step, config) in one
  ``checkpoint-NNNNNN.pt`` written to a temporary name, fsynced and renamed, loaded back with
  ``torch.load(weights_only=True)`` (no arbitrary pickle). A resumed run reproduces the losses of an
  uninterrupted one bit for bit on CPU (tested).
- Logging every ``log_every`` steps: loss, lr, real (non-padding) tokens/s, padding fraction, the
  fraction of step time spent waiting for data, and on GPU the model FLOPs utilisation
  ``6 * N * real tokens/s / peak`` (``N`` = parameters; attention FLOPs ignored, so MFU is slightly
  under-stated; padding is not counted as useful work). The log goes to stdout and ``out/log.jsonl``.
- DDP under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``): each rank reads disjoint rows
  (:class:`fastprep.loader.PackedLoader`), gradients are all-reduced once per step (``no_sync`` on
  the other micro-batches), and the target count is all-reduced so the loss stays a global token mean.

Host/device syncs: none per step; losses, the gradient norm and token counts are read back once
per log line. The per-step token loss is ``F.cross_entropy`` over float32 logits ``[B, L, V]``:
for a 150k vocabulary at B*L = 16k tokens that is ~10 GB, so lower ``--batch-size`` and raise
``--grad-accum`` (same result, see above) for large-vocabulary models. Measured here (shared 2-core
CPU box, tiny model, B=4, L=2048): ~3.6 s/step, 60% of it dense masked attention, data wait < 1%.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import masks
from .loader import Batch, PackedLoader, PackedRows, to_device
from .models import TINY, count_parameters, default_attention, load_model

ATTENTIONS = ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{6,})\.pt$")

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from NVIDIA data sheets. Matched as
# substrings of torch.cuda.get_device_name(), most specific first ("A100" before "A10").
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0), ("B200", 2250.0), ("H200", 989.0), ("GH200", 989.0),
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("A6000", 155.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name, or None when it is not in :data:`PEAK_TFLOPS`."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``fastprep train`` does; each field is the CLI flag ``--field-name``."""

    data: str = ""
    """Dataset folder written by ``fastprep prepare``."""
    model: str = TINY
    """Local Hugging Face model folder (``save_pretrained`` layout), or ``tiny`` (random, no download)."""
    out: str = "runs/train"
    """Folder for checkpoints, ``log.jsonl`` and the final ``model/`` export."""
    batch_size: int = 8
    """Packed rows per micro-batch per rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    warmup_steps: int = 100
    max_steps: int = 0
    """Optimizer steps; 0 = as many as ``epochs`` passes over the data take."""
    epochs: float = 1.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    seed: int = 0
    compile: bool = False
    dtype: str = "auto"
    """Autocast dtype: auto (bfloat16 on a bf16-capable GPU, else float32), float32, bfloat16, float16."""
    attention: str = "auto"
    """auto (flash_attention_2 if installed on GPU, else sdpa), sdpa, eager, flex_attention, flash_attention_2."""
    log_every: int = 10
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept in ``out`` (older ones are deleted)."""
    resume: str = ""
    """'' = fresh run (refused if ``out`` has checkpoints), 'auto' = latest if any, 'latest', or a file."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N."""
    num_workers: int = 1
    """Background threads building batches (0 = in the training thread)."""
    prefetch: int = 4
    """Batches built ahead of the training step."""
    peak_tflops: float = 0.0
    """GPU peak for MFU; 0 = look the GPU up in fastprep.train.PEAK_TFLOPS."""
    export: bool = True
    """Write the final weights to ``out/model`` with ``save_pretrained``."""

    def __post_init__(self) -> None:
        def need(ok: bool, flag: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{flag}: {what}")

        need(bool(self.data), "data", "a dataset folder is required")
        need(bool(self.model), "model", "'tiny' or a local model folder is required")
        need(bool(self.out), "out", "an output folder is required")
        need(self.batch_size > 0, "batch-size", f"must be positive, got {self.batch_size}")
        need(self.grad_accum > 0, "grad-accum", f"must be positive, got {self.grad_accum}")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be a positive number, got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min-lr-ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        need(self.warmup_steps >= 0, "warmup-steps", f"must be >= 0, got {self.warmup_steps}")
        need(self.max_steps >= 0, "max-steps", f"must be >= 0, got {self.max_steps}")
        need(self.epochs > 0 or self.max_steps > 0, "epochs",
             f"must be positive when --max-steps is 0, got {self.epochs}")
        need(self.weight_decay >= 0, "weight-decay", f"must be >= 0, got {self.weight_decay}")
        need(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        need(0 <= self.beta2 < 1, "beta2", f"must be in [0, 1), got {self.beta2}")
        need(self.clip >= 0, "clip", f"must be >= 0 (0 disables clipping), got {self.clip}")
        need(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
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


# ----------------------------------------------------------------------------- CLI helpers

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per :class:`TrainConfig` field (defaults from the dataclass)."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        doc = _FIELD_HELP.get(f.name, "")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=doc)
        else:
            choices = {"dtype": tuple(DTYPES), "attention": ATTENTIONS}.get(f.name)
            parser.add_argument(flag, dest=f.name, type=type(default), default=default,
                                choices=choices, required=f.name == "data",
                                help=f"{doc} (default: {default!r})".strip())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` described by parsed arguments (unknown attributes are ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def run_from_args(args: argparse.Namespace) -> int:
    """Build the config from ``args``, train, print the final statistics as JSON; return 0."""
    stats = train(config_from_args(args))
    if stats["rank"] == 0:
        summary = {k: v for k, v in stats.items() if k != "losses"}
        print(json.dumps(summary, indent=2))
    return 0


# ----------------------------------------------------------------------------- pieces of a step

class WarmupCosine:
    """LR multiplier: linear 1/w..1 over ``warmup`` steps, then cosine from 1 to ``min_ratio``.

    A plain class (not a lambda) so ``LambdaLR.state_dict()`` stores its fields and the scheduler
    round-trips through ``torch.load(weights_only=True)``.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup = warmup
        self.total = total
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def loss_sum(model: torch.nn.Module, batch: Batch, attn_implementation: str,
             autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum (not mean) of the cross-entropy over the batch's real targets, in float32."""
    device = batch["input_ids"].device
    kwargs = masks.model_inputs(batch["input_ids"], batch["segment_ids"], batch["position_ids"],
                                attn_implementation, dtype=autocast_dtype or torch.float32)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = model(**kwargs, use_cache=False).logits
    # Labels are already shifted (labels[t] is the target of logits[t]): no second shift here.
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                           ignore_index=masks.IGNORE_INDEX, reduction="sum")


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[Batch], *,
                         attn_implementation: str, autocast_dtype: torch.dtype | None = None,
                         total_targets: int | torch.Tensor | None = None,
                         grad_scale: float = 1.0) -> torch.Tensor:
    """Backward over ``micro_batches`` so ``.grad`` equals that of one batch holding all of them.

    Each micro-batch contributes ``loss_sum / total_targets``, where ``total_targets`` defaults to
    the targets of all micro-batches together; under DDP pass the all-ranks count and
    ``grad_scale=world_size`` (DDP averages over ranks). A model with ``no_sync`` (DDP) only
    all-reduces on the last micro-batch. Returns the detached step loss (sum / total targets).
    """
    if total_targets is None:
        total_targets = sum(int(b["n_targets"]) for b in micro_batches)
    denom = (total_targets.clamp(min=1) if isinstance(total_targets, torch.Tensor)
             else max(1, total_targets))
    total = torch.zeros((), dtype=torch.float32, device=micro_batches[0]["input_ids"].device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            s = loss_sum(model, batch, attn_implementation, autocast_dtype)
            (s * (grad_scale / denom)).backward()
        total += s.detach()
    return total / denom


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (embeddings, projections); not norms or biases, which decay would only shrink."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- checkpoints

def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only refuses: store it as a tensor.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def checkpoint_path(out: Path, step: int) -> Path:
    return out / f"checkpoint-{step:06d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in ``out``, oldest first (temporary files never match)."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to ``.name.tmp``, fsync, rename: a crash never leaves a half checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: tensors and plain containers only; a checkpoint can never run code.
    return torch.load(path, map_location="cpu", weights_only=True)


def _resolve_resume(cfg: TrainConfig, out: Path) -> Path | None:
    existing = list_checkpoints(out)
    if cfg.resume == "":
        if existing:
            raise ValueError(f"--out {out} already holds {existing[-1].name}; pass --resume auto to "
                             f"continue that run, or choose another --out")
        return None
    if cfg.resume in ("auto", "latest"):
        if existing:
            return existing[-1]
        if cfg.resume == "latest":
            raise ValueError(f"--resume latest: no checkpoint-*.pt in {out}")
        return None
    path = Path(cfg.resume)
    if not path.is_file():
        raise ValueError(f"--resume {cfg.resume}: no such checkpoint file")
    return path


# ----------------------------------------------------------------------------- the loop

@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _init_distributed(device_flag: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_flag != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank, world, local)


def _pick_device(flag: str, dist_info: _Dist) -> torch.device:
    if flag == "auto":
        return torch.device(f"cuda:{dist_info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if flag.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {flag}: CUDA is not available in this torch build/machine; use --device cpu")
    if flag == "cuda" and dist_info.enabled:
        return torch.device(f"cuda:{dist_info.local_rank}")
    return torch.device(flag)


def _autocast_dtype(flag: str, device: torch.device) -> torch.dtype | None:
    if flag == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    dtype = DTYPES[flag]
    return None if dtype == torch.float32 else dtype


def train(cfg: TrainConfig, *, log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the loop of ``cfg``; return final statistics (``losses`` holds every step's loss).

    ``log`` receives each log record (default: print as JSON on rank 0).
    """
    dist_info = _init_distributed(cfg.device)
    try:
        return _train(cfg, dist_info, log)
    finally:
        if dist_info.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _train(cfg: TrainConfig, dist_info: _Dist,
           log: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    rank, world = dist_info.rank, dist_info.world_size
    device = _pick_device(cfg.device, dist_info)
    out = Path(cfg.out)
    resume_from = _resolve_resume(cfg, out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    rows = PackedRows(cfg.data)
    tokenizer = rows.data.manifest["tokenizer"]
    vocab = int(tokenizer["vocab_size"])
    attn = default_attention(device) if cfg.attention == "auto" else cfg.attention
    model = load_model(cfg.model, vocab_size=vocab, max_position_embeddings=max(2048, rows.seq_len),
                       attn_implementation=attn, seed=cfg.seed)
    emb = model.get_input_embeddings().weight.shape[0]
    if emb < vocab:
        raise ValueError(f"--model {cfg.model}: {emb} embedding rows but the dataset's tokenizer has "
                         f"{vocab} ids; prepare the data with this model's tokenizer")
    model.to(device)
    model.train()
    n_params = count_parameters(model)

    loader = PackedLoader(rows, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world,
                          num_workers=cfg.num_workers, prefetch=cfg.prefetch,
                          pin_memory=device.type == "cuda")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(loader) / cfg.grad_accum))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))

    step = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The schedule's shape comes from this run's flags (same flags -> the exact same run), not
        # from the fields LambdaLR pickled with the checkpoint; only its step count is restored.
        scheduler.lr_lambdas[0] = WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
        loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        step = int(state["step"])
        del state

    fwd: torch.nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        fwd = torch.compile(fwd)
    amp = _autocast_dtype(cfg.dtype, device)
    peak = (cfg.peak_tflops or peak_tflops(torch.cuda.get_device_name(device)) or 0.0) \
        if device.type == "cuda" else 0.0
    emit = log or (lambda rec: print(json.dumps(rec), flush=True))
    log_file = open(out / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        if dist_info.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def save(at_step: int) -> Path | None:
        path = checkpoint_path(out, at_step)
        if rank == 0:
            save_checkpoint(path, {
                "step": at_step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                "rng": _rng_state(), "config": dataclasses.asdict(cfg), "world_size": world,
            })
            for old in list_checkpoints(out)[:-cfg.keep_last]:
                old.unlink(missing_ok=True)
        if dist_info.enabled:
            import torch.distributed as dist

            dist.barrier()
        return path

    batches: Iterator[Batch] = loader.forever()
    losses: list[float] = []
    pending: list[torch.Tensor] = []     # step losses not yet read back (read at log time: 1 sync)
    window = {"tokens": 0, "slots": 0, "wait": 0.0, "start": time.perf_counter()}
    totals = {"tokens": 0, "slots": 0, "wait": 0.0, "time": 0.0}
    last_ckpt: Path | None = None
    t_run = time.perf_counter()
    last_record: dict[str, Any] = {}

    try:
        while step < total_steps:
            micro: list[Batch] = []
            for _ in range(cfg.grad_accum):
                t_wait = time.perf_counter()
                batch = next(batches)
                window["wait"] += time.perf_counter() - t_wait
                window["tokens"] += batch["n_tokens"]
                window["slots"] += batch["input_ids"].numel()
                micro.append(to_device(batch, device, non_blocking=True))
            local_targets = sum(b["n_targets"] for b in micro)
            if dist_info.enabled:
                # The global count stays on the device: dividing by it needs no host sync.
                targets: int | torch.Tensor = all_reduce(
                    torch.tensor(float(local_targets), device=device))
                step_loss = accumulate_gradients(fwd, micro, attn_implementation=attn,
                                                 autocast_dtype=amp, total_targets=targets,
                                                 grad_scale=float(world))
                # Each rank returned (its loss sum) / (global targets): the sum is the global loss.
                step_loss = all_reduce(step_loss)
            else:
                step_loss = accumulate_gradients(fwd, micro, attn_implementation=attn,
                                                 autocast_dtype=amp, total_targets=local_targets)
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                         if cfg.clip > 0 else None)
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pending.append(step_loss)

            if step % cfg.log_every == 0 or step == total_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                losses.extend(float(x) for x in torch.stack(pending).cpu())
                pending.clear()
                elapsed = time.perf_counter() - window["start"]
                counts = all_reduce(torch.tensor([window["tokens"], window["slots"]],
                                                 dtype=torch.float64, device=device)).tolist()
                tok_s = counts[0] / max(elapsed, 1e-9)
                last_record = {
                    "step": step, "loss": losses[-1], "lr": lr_now,
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "tokens_per_s": tok_s,
                    "padding_fraction": 1.0 - counts[0] / max(counts[1], 1.0),
                    "data_wait_fraction": window["wait"] / max(elapsed, 1e-9),
                    "mfu": (6.0 * n_params * tok_s / world / (peak * 1e12)) if peak else None,
                    "epoch": loader.epoch,
                }
                if rank == 0:
                    emit(last_record)
                    assert log_file is not None
                    log_file.write(json.dumps(last_record) + "\n")
                    log_file.flush()
                for k, v in (("tokens", counts[0]), ("slots", counts[1]), ("wait", window["wait"]),
                             ("time", elapsed)):
                    totals[k] += v
                window = {"tokens": 0, "slots": 0, "wait": 0.0, "start": time.perf_counter()}

            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                last_ckpt = save(step)
        last_ckpt = save(step)
        if cfg.export and rank == 0:
            _export(model, out / "model")
    finally:
        batches.close()  # stops the prefetch threads
        if log_file is not None:
            log_file.close()

    return {
        "rank": rank, "world_size": world, "steps": step, "total_steps": total_steps,
        "losses": losses, "final_loss": losses[-1] if losses else None,
        "tokens": int(totals["tokens"]),
        "tokens_per_s": totals["tokens"] / max(totals["time"], 1e-9),
        "padding_fraction": 1.0 - totals["tokens"] / max(totals["slots"], 1.0),
        "data_wait_fraction": totals["wait"] / max(totals["time"], 1e-9),
        "mfu": last_record.get("mfu"), "params": n_params, "attention": attn,
        "device": str(device), "elapsed_s": time.perf_counter() - t_run,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
    }


def _export(model: torch.nn.Module, path: Path) -> None:
    """``save_pretrained`` into a temporary folder, then swap it in (no half-written model folder)."""
    import shutil

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


_FIELD_HELP: dict[str, str] = {
    "data": "dataset folder written by `fastprep prepare`",
    "model": "local Hugging Face model folder, or 'tiny' (random Llama, no download)",
    "out": "folder for checkpoints, log.jsonl and the exported model",
    "batch_size": "packed rows per micro-batch per rank",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate",
    "min_lr_ratio": "final lr as a fraction of --lr (cosine floor)",
    "warmup_steps": "linear warm-up steps",
    "max_steps": "optimizer steps (0 = derive from --epochs)",
    "epochs": "passes over the data when --max-steps is 0",
    "weight_decay": "AdamW weight decay (matrices only)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "clip": "gradient-norm clip (0 disables)",
    "seed": "seed for weights of 'tiny', data order and RNGs",
    "compile": "torch.compile the model",
    "dtype": "autocast dtype: auto, float32, bfloat16, float16",
    "attention": "attention implementation: " + ", ".join(ATTENTIONS),
    "log_every": "steps between log lines",
    "save_every": "steps between checkpoints (0 = only at the end)",
    "keep_last": "checkpoints to keep",
    "resume": "'auto' (latest if any), 'latest', or a checkpoint file; empty = fresh run",
    "device": "auto, cpu, cuda, cuda:N",
    "num_workers": "background threads building batches (0 = inline)",
    "prefetch": "batches built ahead",
    "peak_tflops": "GPU bf16 peak TFLOP/s for MFU (0 = look up by GPU name)",
    "export": "save the final model with save_pretrained into OUT/model",
}
