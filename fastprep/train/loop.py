"""``fastprep train``: a small, complete full-fine-tuning loop over a packed fastprep dataset.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` packed rows. The loss of a step
is the sum of the token losses over every real target of all its micro-batches (and, under DDP, of
all ranks) divided by the number of those targets: exactly the loss of one big batch, not a mean of
per-micro-batch means (which would over-weight micro-batches with few targets). Targets are the
shifted labels of :mod:`fastprep.train.masks`; the loss is computed here (``logits[:, t]`` against
``labels[:, t]``), never by the Hugging Face model, which would shift the labels a second time.

The rest is the standard recipe, each piece chosen for a reason:

- AdamW (fused kernel on CUDA), weight decay on matrices only (not on norms/biases), linear warm-up
  then cosine decay to ``min_lr_ratio * lr``; gradient clipping by global norm.
- fp32 master weights with bf16 autocast on GPU (``--dtype auto``); fp32 on CPU; ``--dtype
  float16`` with dynamic loss scaling (``GradScaler``, its state in checkpoints).
- Document masking through the attention implementation in use
  (:func:`fastprep.train.masks.model_inputs`).
- Optional ``torch.compile``.
- Checkpoints (:mod:`fastprep.train.checkpoint`); a resumed run reproduces the losses of an
  uninterrupted one bit for bit on CPU (tested).
- Logging every ``log_every`` steps: loss, lr, real (non-padding) tokens/s, padding fraction, the
  fraction of step time spent waiting for data, and on GPU the model FLOPs utilisation
  ``6 * N * real tokens/s / peak`` (``N`` = parameters; attention FLOPs ignored, so MFU is slightly
  under-stated; padding is not counted as useful work). The log goes to stdout and ``out/log.jsonl``.
- DDP under ``torchrun`` (:mod:`fastprep.train.device`): each rank reads disjoint rows
  (:class:`fastprep.train.loader.PackedLoader`), gradients are all-reduced once per step
  (``no_sync`` on the other micro-batches), and the target count is all-reduced so the loss stays
  a global token mean.

Host/device syncs: none per step; losses, the gradient norm and token counts are read back once
per log line. The per-step token loss is ``F.cross_entropy`` over float32 logits ``[B, L, V]``:
for a large vocabulary at many tokens per micro-batch that is gigabytes, so lower
``--batch-size`` and raise ``--grad-accum`` (same result, see above) for such models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import masks
from .checkpoint import (checkpoint_path, list_checkpoints, load_checkpoint, resolve_resume,
                         rng_state, save_checkpoint, set_rng_state)
from .config import TrainConfig
from .device import (Dist, autocast_dtype, close_distributed, init_distributed, peak_tflops,
                     pick_device)
from .loader import Batch, PackedLoader, PackedRows, to_device
from .models import count_parameters, default_attention, load_model


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
             autocast_dtype: torch.dtype | None = None, per_row: bool = False) -> torch.Tensor:
    """Sum (not mean) of the cross-entropy over the batch's real targets, in float32; with
    ``per_row`` one sum per row ``[B]`` (the evaluation's loss per source)."""
    device = batch["input_ids"].device
    runs = (batch["cu_runs"], batch["max_run"]) if "cu_runs" in batch else None
    kwargs = masks.model_inputs(batch["input_ids"], batch["segment_ids"], batch["position_ids"],
                                attn_implementation, dtype=autocast_dtype or torch.float32,
                                runs=runs)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = model(**kwargs, use_cache=False).logits
    # Labels are already shifted (labels[t] is the target of logits[t]): no second shift here.
    if per_row:
        token = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                ignore_index=masks.IGNORE_INDEX, reduction="none")
        return token.view(batch["labels"].shape).sum(dim=1)
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                           ignore_index=masks.IGNORE_INDEX, reduction="sum")


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[Batch], *,
                         attn_implementation: str, autocast_dtype: torch.dtype | None = None,
                         total_targets: int | torch.Tensor | None = None,
                         grad_scale: float = 1.0,
                         scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Backward over ``micro_batches`` so ``.grad`` equals that of one batch holding all of them.

    Each micro-batch contributes ``loss_sum / total_targets``, where ``total_targets`` defaults to
    the targets of all micro-batches together; under DDP pass the all-ranks count and
    ``grad_scale=world_size`` (DDP averages over ranks). A model with ``no_sync`` (DDP) only
    all-reduces on the last micro-batch. With ``scaler`` (float16), the backward runs on the
    scaled loss (the caller unscales before clipping). Returns the detached step loss (sum /
    total targets).
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
            term = s * (grad_scale / denom)
            (scaler.scale(term) if scaler is not None else term).backward()
        total += s.detach()
    return total / denom


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (embeddings, projections); not norms or biases, which decay would only shrink."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class _Trainer:
    """The objects of one run (model, optimizer, loader, ...) and where it stands."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    out: Path
    model: torch.nn.Module
    fwd: torch.nn.Module          # what the step calls: the model, wrapped in DDP / compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: PackedLoader
    attn: str
    amp: torch.dtype | None
    n_params: int
    peak: float                   # TFLOP/s for MFU; 0 = unknown (CPU)
    total_steps: int
    # float16 loss scaling (its range cannot hold small gradients); disabled otherwise, when
    # its calls pass straight through
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler(enabled=False))
    val: PackedLoader | None = None  # --val-data, in order, every row once per pass
    step: int = 0

    def save(self) -> Path:
        path = checkpoint_path(self.out, self.step)
        if self.dist.rank == 0:
            save_checkpoint(path, {
                "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "loader": self.loader.state_dict(), "rng": rng_state(),
                "scaler": self.scaler.state_dict(),
                "config": dataclasses.asdict(self.cfg), "world_size": self.dist.world_size,
            })
            for old in list_checkpoints(self.out)[:-self.cfg.keep_last]:
                old.unlink(missing_ok=True)
        self.dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The schedule's shape comes from this run's flags (same flags -> the exact same run), not
        # from the fields LambdaLR pickled with the checkpoint; only its step count is restored.
        self.scheduler.lr_lambdas[0] = self._schedule()
        self.loader.load_state_dict(state["loader"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _schedule(self) -> WarmupCosine:
        return WarmupCosine(self.cfg.warmup(self.total_steps), self.total_steps, self.cfg.min_lr_ratio)


def _setup(cfg: TrainConfig, d: Dist) -> _Trainer:
    """Model, loader, optimizer and schedule of ``cfg``, resumed from its checkpoint if any."""
    device = pick_device(cfg.device, d)
    out = Path(cfg.out)
    resume_from = resolve_resume(cfg.resume, out)
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rows = PackedRows(cfg.data)
    vocab = rows.data.manifest.vocab_size
    attn = default_attention(device) if cfg.attention == "auto" else cfg.attention
    if attn == "flex_attention" and device.type == "cpu":
        raise ValueError("--attention flex_attention: torch has no FlexAttention backward on CPU; "
                         "use sdpa (the same document masking) or a GPU")
    model = load_model(cfg.model, vocab_size=vocab, max_position_embeddings=max(2048, rows.seq_len),
                       attn_implementation=attn, seed=cfg.seed)
    emb = model.get_input_embeddings().weight.shape[0]
    if emb < vocab:
        raise ValueError(f"--model {cfg.model}: {emb} embedding rows but the dataset's tokenizer has "
                         f"{vocab} ids; prepare the data with this model's tokenizer")
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device)
    model.train()
    loader = PackedLoader(rows, cfg.batch_size, seed=cfg.seed, rank=d.rank, world_size=d.world_size,
                          num_workers=cfg.num_workers, prefetch=cfg.prefetch,
                          pin_memory=device.type == "cuda")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(loader) / cfg.grad_accum))
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.peak_lr(),
                                  betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(cfg.warmup(total_steps), total_steps, cfg.min_lr_ratio))
    peak = (cfg.peak_tflops or peak_tflops(torch.cuda.get_device_name(device)) or 0.0) \
        if device.type == "cuda" else 0.0
    amp = autocast_dtype(cfg.dtype, device)
    t = _Trainer(cfg, d, device, out, model, model, optimizer, scheduler, loader, attn,
                 amp, count_parameters(model), peak, total_steps,
                 scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16))
    t.val = _val_loader(cfg, rows, d)
    if resume_from is not None:
        t.resume(resume_from)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        t.fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        t.fwd = torch.compile(t.fwd)
    return t


def _val_loader(cfg: TrainConfig, train_rows: PackedRows, d: Dist) -> PackedLoader | None:
    """The validation rows of ``--val-data``: the same tokenizer as the training data, each
    rank a disjoint share, in order."""
    if not cfg.val_data:
        return None
    rows = PackedRows(cfg.val_data)
    want, got = (r.data.manifest.tokenizer.get("sha256") for r in (train_rows, rows))
    if want != got:
        raise ValueError(f"--val-data {cfg.val_data}: prepared with another tokenizer than "
                         f"--data {cfg.data} (sha256 {got} vs {want}); prepare both with one")
    return PackedLoader(rows, cfg.batch_size, shuffle=False, drop_last=False, rank=d.rank,
                        world_size=d.world_size, num_workers=0)


def evaluate(t: _Trainer) -> dict[str, Any]:
    """Token-mean loss (and perplexity) over the validation rows, summed over ranks; for a
    mixed dataset (rows carry their source) also the loss of each source."""
    assert t.val is not None
    names = t.val.rows.data.manifest.source_names
    t.model.eval()
    # row 0: every source; row 1 + s: source s. Columns: loss sum, targets.
    total = torch.zeros(1 + len(names), 2, dtype=torch.float64, device=t.device)
    try:
        with torch.no_grad():
            for i, batch in enumerate(t.val):
                if t.cfg.eval_batches and i >= t.cfg.eval_batches:
                    break
                _eval_batch(t, to_device(batch, t.device), total, bool(names))
    finally:
        t.val.epoch, t.val.position = 0, 0  # the same rows every pass
        t.model.train()
    sums = t.dist.all_reduce(total).tolist()
    loss = sums[0][0] / max(sums[0][1], 1.0)
    out: dict[str, Any] = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                           "val_targets": int(sums[0][1])}
    if names:
        out["val_loss_by_source"] = {n: (s / k if k else None) for n, (s, k) in zip(names, sums[1:])}
    return out


def _eval_batch(t: _Trainer, b: Batch, total: torch.Tensor, by_source: bool) -> None:
    if not by_source:
        total[0, 0] += loss_sum(t.model, b, t.attn, t.amp).double()
        total[0, 1] += float(b["n_targets"])
        return
    rows = loss_sum(t.model, b, t.attn, t.amp, per_row=True).double()
    targets = (b["labels"] != masks.IGNORE_INDEX).sum(dim=1).double()
    src = b["source"].long() + 1
    total[0, 0] += rows.sum()
    total[0, 1] += targets.sum()
    total[:, 0].index_add_(0, src, rows)
    total[:, 1].index_add_(0, src, targets)


@dataclass
class _Meter:
    """Throughput bookkeeping between log lines (``window``) and over the run (``totals``)."""

    window: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "slots": 0, "wait": 0.0})
    totals: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "slots": 0, "wait": 0.0,
                                                              "time": 0.0})
    start: float = field(default_factory=time.perf_counter)

    def fetch(self, batches: Iterator[Batch], device: torch.device) -> Batch:
        t_wait = time.perf_counter()
        batch = next(batches)
        self.window["wait"] += time.perf_counter() - t_wait
        self.window["tokens"] += batch["n_tokens"]
        self.window["slots"] += batch["input_ids"].numel()
        return to_device(batch, device, non_blocking=True)

    def close_window(self, t: _Trainer) -> dict[str, float]:
        """Rates over the window (token counts summed over ranks); opens the next window."""
        elapsed = time.perf_counter() - self.start
        counts = t.dist.all_reduce(torch.tensor([self.window["tokens"], self.window["slots"]],
                                                dtype=torch.float64, device=t.device)).tolist()
        tok_s = counts[0] / max(elapsed, 1e-9)
        rates = {"tokens_per_s": tok_s, "padding_fraction": 1.0 - counts[0] / max(counts[1], 1.0),
                 "data_wait_fraction": self.window["wait"] / max(elapsed, 1e-9),
                 "mfu": (6.0 * t.n_params * tok_s / t.dist.world_size / (t.peak * 1e12))
                 if t.peak else None}
        for k, v in (("tokens", counts[0]), ("slots", counts[1]), ("wait", self.window["wait"]),
                     ("time", elapsed)):
            self.totals[k] += v
        self.window = {"tokens": 0, "slots": 0, "wait": 0.0}
        self.start = time.perf_counter()
        return rates


def _train_step(t: _Trainer, batches: Iterator[Batch], meter: _Meter
                ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """One optimizer step: (step loss on the device, grad norm before clipping, its lr)."""
    micro = [meter.fetch(batches, t.device) for _ in range(t.cfg.grad_accum)]
    local_targets = sum(b["n_targets"] for b in micro)
    if t.dist.enabled:
        # The global count stays on the device: dividing by it needs no host sync.
        targets = t.dist.all_reduce(torch.tensor(float(local_targets), device=t.device))
        loss = accumulate_gradients(t.fwd, micro, attn_implementation=t.attn, autocast_dtype=t.amp,
                                    total_targets=targets, grad_scale=float(t.dist.world_size),
                                    scaler=t.scaler)
        # Each rank returned (its loss sum) / (global targets): the sum is the global loss.
        loss = t.dist.all_reduce(loss)
    else:
        loss = accumulate_gradients(t.fwd, micro, attn_implementation=t.attn, autocast_dtype=t.amp,
                                    total_targets=local_targets, scaler=t.scaler)
    t.scaler.unscale_(t.optimizer)  # clipping sees the true gradients
    grad_norm = (torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.clip)
                 if t.cfg.clip > 0 else None)
    lr = t.scheduler.get_last_lr()[0]
    t.scaler.step(t.optimizer)  # skipped when a gradient overflowed; the scale then shrinks
    t.scaler.update()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.step += 1
    return loss, grad_norm, lr


def train(cfg: TrainConfig, *, log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the loop of ``cfg``; return final statistics (``losses`` holds every step's loss).

    ``log`` receives each log record (default: print as JSON on rank 0).
    """
    d = init_distributed(cfg.device)
    try:
        return _run(_setup(cfg, d), log or _print_line)
    finally:
        close_distributed(d)


def _print_line(rec: dict[str, Any]) -> None:
    """A log record as one line a person reads (the JSON goes to log.jsonl)."""
    if "val_loss" in rec and "loss" not in rec:
        by = rec.get("val_loss_by_source") or {}
        parts = ", ".join(f"{n} {v:.4f}" for n, v in by.items() if v is not None)
        if parts:
            print(f"step {rec['step']:>6}  val loss by source: {parts}")
        print(f"step {rec['step']:>6}  val loss {rec['val_loss']:.4f}  ppl {rec['val_ppl']:.2f}  "
              f"({rec['val_targets']:,} targets)", flush=True)
        return
    parts = [f"step {rec['step']:>6}", f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.2e}"]
    if rec.get("grad_norm") is not None:
        parts.append(f"grad {rec['grad_norm']:.3f}")
    parts += [f"{rec['tokens_per_s']:,.0f} tok/s", f"pad {100 * rec['padding_fraction']:.1f}%",
              f"data wait {100 * rec['data_wait_fraction']:.1f}%"]
    if rec.get("mfu") is not None:
        parts.append(f"MFU {100 * rec['mfu']:.1f}%")
    print("  ".join(parts), flush=True)


def _run(t: _Trainer, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The loop: steps, a log line every ``log_every``, checkpoints, the final export."""
    cfg, rank = t.cfg, t.dist.rank
    log_file = open(t.out / "log.jsonl", "a", encoding="utf-8") if rank == 0 else None
    batches = t.loader.forever()
    meter, losses, pending = _Meter(), [], []  # losses read back once per log line (1 sync)
    vals: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    t_run = time.perf_counter()
    try:
        while t.step < t.total_steps:
            loss, grad_norm, lr = _train_step(t, batches, meter)
            pending.append(loss)
            if t.step % cfg.log_every == 0 or t.step == t.total_steps:
                if t.device.type == "cuda":
                    torch.cuda.synchronize(t.device)
                losses.extend(float(x) for x in torch.stack(pending).cpu())
                pending.clear()
                record = {"step": t.step, "loss": losses[-1], "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else None,
                          **meter.close_window(t), "epoch": t.loader.epoch}
                if log_file is not None:
                    emit(record)
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
            if t.val is not None and ((cfg.eval_every and t.step % cfg.eval_every == 0)
                                      or t.step == t.total_steps):
                val = {"step": t.step, **evaluate(t)}
                vals.append(val)
                if log_file is not None:
                    emit(val)
                    log_file.write(json.dumps(val) + "\n")
                    log_file.flush()
            if cfg.save_every and t.step % cfg.save_every == 0 and t.step < t.total_steps:
                t.save()
        checkpoint = t.save()
        if cfg.export and rank == 0:
            _export(t.model, t.out / "model", t.loader.rows.data)
    finally:
        batches.close()  # stops the prefetch threads
        if log_file is not None:
            log_file.close()
    tot = meter.totals
    return {
        "rank": rank, "world_size": t.dist.world_size, "steps": t.step,
        "total_steps": t.total_steps, "losses": losses, "final_loss": losses[-1] if losses else None,
        "tokens": int(tot["tokens"]), "tokens_per_s": tot["tokens"] / max(tot["time"], 1e-9),
        "padding_fraction": 1.0 - tot["tokens"] / max(tot["slots"], 1.0),
        "data_wait_fraction": tot["wait"] / max(tot["time"], 1e-9),
        "mfu": record.get("mfu"), "params": t.n_params, "attention": t.attn,
        "device": str(t.device), "elapsed_s": time.perf_counter() - t_run,
        "checkpoint": str(checkpoint), "validation": vals,
    }


def _export(model: torch.nn.Module, path: Path, data: Any) -> None:
    """``save_pretrained`` and the dataset's tokenizer (``tokenizer.json`` and a
    ``tokenizer_config.json`` naming its special tokens; the manifest records the chat
    template's hash, not its text, so a template is not carried over), so
    ``AutoTokenizer.from_pretrained`` loads it beside the model) into a temporary folder, then
    swapped in (no half-written model folder)."""
    from ..dataset.format import TOKENIZER_FILE

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok = data.manifest.tokenizer
    src = data.path / tok.get("file", TOKENIZER_FILE)
    if src.is_file():
        shutil.copyfile(src, tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(src, tok), indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _tokenizer_config(tokenizer_json: Path, tok: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``tokenizer_config.json`` for the dataset's tokenizer and its choices."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tokenizer_json))
    name = (lambda i: t.id_to_token(i) if i is not None else None)
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                           "bos_token": name(tok.get("bos_id")), "eos_token": name(tok.get("eos_id")),
                           "pad_token": name(tok.get("pad_id")),
                           "add_bos_token": bool(tok.get("add_bos")),
                           "add_eos_token": bool(tok.get("add_eos"))}
    return {k: v for k, v in cfg.items() if v is not None}
