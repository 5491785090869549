"""Training side by side on CPU: ``fastprep train`` vs ``transformers.Trainer`` (padded, and with
``DataCollatorWithFlattening``) vs TRL ``SFTTrainer`` with bfd packing, one run, ratios.

    python benchmarks/bench_train.py                # L=512, 4 rows x 2 micro-batches, 20 steps (~3-7 min)
    python benchmarks/bench_train.py --repeats 3    # the figures in benchmarks/README.md

What is the same for every case:

- **Documents.** Texts of the benchmark corpus (``corpus.build``) go once through
  ``fastprep prepare --pack bfd --long-docs split`` with the corpus tokenizer
  (``corpus.tokenizer_dir()``, 32k byte-level BPE). ``fastprep train`` reads that dataset; the
  rows its loader hands out in the run (``PackedLoader.epoch_order``, seed fixed) are cut back into
  their documents (one run of equal ``segment_ids`` = one document, a long text split into
  chunks of at most L counts as one document per chunk), and exactly those token ids are the
  peers' dataset. Tokenization is not timed for anyone.
- **Model.** ``fastprep.train.models.tiny_model(vocab, max(2048, L), seed)`` (a random
  ``LlamaForCausalLM``, sdpa attention, fp32); every case reports the SHA-256 of its initial
  weights and its config, and the parent checks they are identical.
- **Optimizer.** ``torch.optim.AdamW`` (not fused), the same lr, betas, eps 1e-8, weight decay on
  matrices only (fastprep's rule; the Trainer's ``get_decay_parameter_names`` picks the same
  tensors here, checked), clipping at global norm ``--clip``, constant lr (no warm-up, no decay:
  fastprep ``--warmup-steps 0 --min-lr-ratio 1``, HF ``lr_scheduler_type="constant"``, and every
  logged lr is checked), the same number of optimizer steps.
- **Loss normalisation.** Sum of token losses over every real target of the optimizer step
  (all its micro-batches) / number of those targets: fastprep by construction, ``Trainer`` and
  ``SFTTrainer`` through ``num_items_in_batch`` (counted by the Trainer over
  ``labels[..., 1:]`` of the step's micro-batches). Each case asserts targets = tokens - documents
  (no document's first token is a target, every other token is).
- **Step size.** ``--grad-accum`` micro-batches per step for all. fastprep and TRL take
  ``--micro-rows`` packed rows of L per micro-batch; the two per-document cases take
  round(documents / (steps x grad-accum)) documents per micro-batch, which gives the same mean
  number of targets per step (per-step spread reported).

The four cases:

1. ``fastprep``: ``fastprep.train.loop.train(TrainConfig(...))`` with every field given
   explicitly; block-diagonal 4-D SDPA mask, positions restarting per document.
2. ``hf-padded``: ``Trainer`` + ``DataCollatorForLanguageModeling(mlm=False)`` (pads to the
   longest document of the micro-batch, labels -100 at padding); one document per row.
3. ``hf-flatten``: ``Trainer`` + ``DataCollatorWithFlattening`` (the micro-batch becomes one
   ``[1, sum of lengths]`` row, ``position_ids`` restart, label -100 at each document start);
   transformers 5.x builds a block-diagonal mask from the restarting positions for SDPA.
4. ``trl-bfd``: ``SFTTrainer`` with ``SFTConfig(packing=True, packing_strategy="bfd")`` (which
   forces ``padding_free``: the micro-batch of packed rows is flattened to one row, positions
   restart); TRL 1.16 computes the loss with its chunked "fused LM head" and also computes
   entropy and top-1 accuracy per token for its logs.

Before training, each case runs a correctness check on its own batch format with the model's
final norm and attention output projections scaled up (peaky logits, attention that counts, so a
wrong label or a cross-document attention shows): the
framework's loss must equal the token mean of per-document losses (each document alone), and the
same documents with causal attention across them must give a clearly different loss (so the check
is not vacuous).

Timing: each case runs in a fresh subprocess (its own peak RSS); the wall time of every optimizer
step is taken between step ends (data loading, forward, backward, clip, AdamW, logging), the first
``--skip`` steps are excluded, and real tokens/s = non-padding tokens of the timed steps / their
time. Final loss = mean of the last ``--last-k`` step losses. ``--repeats`` rounds run the cases
interleaved (order rotated per round); the table shows medians over rounds.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as corpus_mod  # noqa: E402
from bench_prepare import cpu_model  # noqa: E402

CASES = ("fastprep", "hf-padded", "hf-flatten", "trl-bfd")
BYTES_PER_TOKEN = 4.2   # the corpus tokenizer on this text (benchmarks/README.md)
CHECK_NORM_SCALE = 40.0  # final-norm gain for the correctness check (peaky logits)
ATTN_SCALE = 8.0        # o_proj gain for the check: attention counts in the residual stream
CHECK_RTOL = 1e-4       # framework loss vs per-document reference (float noise is ~1e-7)
CHECK_GUARD = 1e-3      # attention across documents must move the loss by more than this


# --------------------------------------------------------------------------- machine, versions

def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("fastprep", "torch", "transformers", "trl", "accelerate", "datasets", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = "-"
    return out


# --------------------------------------------------------------------------- data (parent)

def slice_corpus(src: Path, dst: Path, nbytes: int) -> int:
    """The first records of ``src`` holding at least ``nbytes`` of JSONL; returns the record count."""
    n = records = 0
    with open(src, "rb") as f, open(dst, "wb") as g:
        for line in f:
            g.write(line)
            n += len(line)
            records += 1
            if n >= nbytes:
                break
    return records


def documents_of_rows(input_ids: np.ndarray, segment_ids: np.ndarray) -> list[np.ndarray]:
    """The documents of packed rows, in row order: maximal runs of equal non-zero segment ids."""
    docs: list[np.ndarray] = []
    for ids, seg in zip(input_ids, segment_ids):
        seg = seg.astype(np.int64)
        cut = np.flatnonzero(np.diff(seg)) + 1
        for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [seg.size]])):
            if seg[a] != 0:
                docs.append(ids[a:b].astype(np.int64))
    return docs


def prepare_data(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``fastprep prepare`` on a slice of the corpus; the documents fastprep's run will see."""
    from fastprep.train.loader import PackedLoader, PackedRows

    tok = corpus_mod.tokenizer_dir()
    folder = corpus_mod.build(a.corpus_mb)
    rows_needed = a.steps * a.grad_accum * a.micro_rows
    nbytes = int(a.text_mb * 1e6) if a.text_mb else int(rows_needed * a.seq_len * BYTES_PER_TOKEN * 1.4)
    src = work / "text.jsonl"
    records = slice_corpus(folder / "text.jsonl", src, nbytes)
    ds = work / "ds"
    cmd = [sys.executable, "-m", "fastprep", "prepare", str(src), "--tokenizer", str(tok),
           "--seq-len", str(a.seq_len), "--pack", "bfd", "--long-docs", "split", "--dedupe", "none",
           "--seed", str(a.seed), "--workers", "1", "--out", str(ds), "--overwrite", "--json", "--quiet"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    prepare_s = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"fastprep prepare failed ({p.returncode}):\n{p.stderr[-3000:]}")
    stats = json.loads(p.stdout[p.stdout.index("{"):])
    rows = PackedRows(str(ds))
    if len(rows) < rows_needed:
        raise SystemExit(f"{len(rows)} packed rows < {rows_needed} needed; raise --text-mb")
    every = rows.gather(np.arange(len(rows)))
    true_targets = int((every["segment_ids"] != 0).sum()) - len(
        documents_of_rows(every["input_ids"], every["segment_ids"]))
    # The loader fastprep's run builds (same seed, batch size, one rank, drop_last): its order
    # decides which rows, hence which documents, the run sees.
    loader = PackedLoader(rows, a.micro_rows, seed=a.seed, num_workers=0)
    order = loader.epoch_order(0)[:rows_needed]
    got = rows.gather(order)
    ids, seg = got["input_ids"], got["segment_ids"]
    docs = documents_of_rows(ids, seg)
    per_step = (seg != 0).reshape(a.steps, -1).sum(axis=1)
    lengths = np.array([len(d) for d in docs], np.int64)
    assert lengths.sum() == int((seg != 0).sum()), "documents do not cover the rows' tokens"
    assert lengths.max() <= a.seq_len
    pad_id = rows.data.manifest.pad_id
    flat = np.concatenate(docs)
    # DataCollatorForLanguageModeling sets label -100 wherever input_ids == pad id: a real token
    # with that id would silently stop being a target there.
    assert not (flat == pad_id).any(), "a document holds the pad id"
    np.save(work / "doc_tokens.npy", flat)
    np.save(work / "doc_lengths.npy", lengths)
    return {"dataset": str(ds), "tokenizer": str(tok), "corpus": str(folder), "records": records,
            "text_bytes": nbytes, "prepare_s": prepare_s, "rows_total": len(rows),
            "rows_used": rows_needed, "efficiency": stats["packing"]["efficiency"],
            "vocab": rows.data.manifest.vocab_size, "pad_id": pad_id, "docs": len(docs),
            "tokens": int(lengths.sum()), "targets": int(lengths.sum() - len(docs)),
            "doc_len_mean": float(lengths.mean()), "doc_len_median": float(np.median(lengths)),
            "docs_full_length": int((lengths == a.seq_len).sum()),
            "manifest_target_tokens": stats["counts"].get("target_tokens"),
            "dataset_targets": true_targets,
            "fastprep_step_tokens": per_step.tolist()}


# --------------------------------------------------------------------------- shared child helpers

def load_docs(work: Path) -> list[list[int]]:
    flat = np.load(work / "doc_tokens.npy")
    lengths = np.load(work / "doc_lengths.npy")
    cuts = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[cuts[i]:cuts[i + 1]].tolist() for i in range(len(lengths))]


def make_model(spec: dict[str, Any]) -> Any:
    from fastprep.train.models import tiny_model

    return tiny_model(spec["vocab"], max(2048, spec["seq_len"]), seed=spec["seed"],
                      attn_implementation="sdpa")


def weights_sha(model: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_summary(model: Any) -> dict[str, Any]:
    c = model.config
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "attention_dropout")
    out = {k: getattr(c, k) for k in keys}
    out["attn"] = c._attn_implementation
    out["rope"] = str(getattr(c, "rope_parameters", None) or getattr(c, "rope_theta", None))
    out["params"] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return out


class scaled_norm:
    """Temporarily multiply the final RMSNorm gain (peaky logits) and the attention output
    projections (attention weighs more in the residual stream), so a wrong label, a double shift
    or attention across documents moves the loss far beyond float noise."""

    def __init__(self, model: Any, factor: float) -> None:
        dec = model.get_decoder()
        self.scaled = [(dec.norm.weight, factor)] + [(layer.self_attn.o_proj.weight, ATTN_SCALE)
                                                     for layer in dec.layers]

    def __enter__(self) -> None:
        import torch

        with torch.no_grad():
            self.saved = [w.detach().clone() for w, _ in self.scaled]
            for w, f in self.scaled:
                w.mul_(f)

    def __exit__(self, *exc: Any) -> None:
        import torch

        with torch.no_grad():
            for (w, _), old in zip(self.scaled, self.saved):
                w.copy_(old)


def reference_losses(model: Any, docs: list[list[int]]) -> tuple[float, float]:
    """(token mean of per-document losses, each document alone; the same documents concatenated
    in one row with plain causal attention across them, document starts still not targets)."""
    import torch
    import torch.nn.functional as F

    total, n = 0.0, 0
    with torch.no_grad():
        for d in docs:
            x = torch.tensor([d])
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            total += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
            n += len(d) - 1
        flat = torch.tensor([sum(docs, [])])
        labels = flat.clone()
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        labels[0, starts] = -100
        logits = model(input_ids=flat, use_cache=False).logits[0, :-1].float()
        cross = float(F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum")) / n
    return total / n, cross


def check_result(framework_loss: float, docs: list[list[int]], model: Any) -> dict[str, Any]:
    ref, cross = reference_losses(model, docs)
    rel = abs(framework_loss - ref) / abs(ref)
    rel_cross = abs(cross - ref) / abs(ref)
    out = {"docs": len(docs), "loss": framework_loss, "reference": ref, "rel_err": rel,
           "cross_doc_loss": cross, "cross_rel": rel_cross,
           "ok": rel < CHECK_RTOL and rel_cross > CHECK_GUARD}
    if not out["ok"]:
        raise AssertionError(f"correctness check failed: {out}")
    return out


def docs_of_flat(input_ids: Any, position_ids: Any) -> list[list[int]]:
    ids = input_ids.reshape(-1).tolist()
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist() + [len(ids)]
    return [ids[a:b] for a, b in zip(starts[:-1], starts[1:])]


class Counting:
    """A forward pre-hook on the model: real tokens, targets (``labels[..., 1:] != -100``, what the
    model's shifted loss counts), documents and slots of every micro-batch that reaches the model;
    ``bounds`` (filled by the step clock) marks where each optimizer step ends. Counting at the model,
    not in the collator, keeps the loader's read-ahead and a short last accumulation step of an
    epoch out of the arithmetic."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.bounds: list[int] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        if kwargs.get("attention_mask") is not None:   # padded: one document per row
            real, docs = int(kwargs["attention_mask"].sum()), int(ids.shape[0])
        else:                                           # flattened: positions restart per document
            real, docs = int(ids.numel()), int((kwargs["position_ids"] == 0).sum())
        targets = int((kwargs["labels"][..., 1:] != -100).sum())
        self.calls.append((real, targets, docs, int(ids.numel())))


# --------------------------------------------------------------------------- children

def child_fastprep(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import dataclasses

    import torch

    from fastprep.train.config import TrainConfig
    from fastprep.train.loader import PackedLoader, PackedRows, collate
    from fastprep.train.loop import loss_sum, param_groups, train
    from fastprep.train.models import load_model

    explicit = dict(
        data=spec["dataset"], model="tiny", out=str(work / f"run-fastprep-{spec['round']}"),
        batch_size=spec["micro_rows"], grad_accum=spec["grad_accum"], lr=spec["lr"],
        min_lr_ratio=1.0, warmup_steps=0, warmup_ratio=0.0, max_steps=spec["steps"], epochs=1.0,
        weight_decay=spec["weight_decay"], beta1=spec["beta1"], beta2=spec["beta2"],
        clip=spec["clip"], seed=spec["seed"], compile=False, dtype="float32", attention="sdpa",
        log_every=1, save_every=0, keep_last=1, resume="", device="cpu", num_workers=1,
        prefetch=4, peak_tflops=0.0, export=False, val_data="", eval_every=0, eval_batches=0,
        activation_checkpointing=False, estimate=False)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unset = sorted(known - explicit.keys())  # fields added after this script: left at defaults
    cfg = TrainConfig(**{k: v for k, v in explicit.items() if k in known})

    # What _setup builds: the same call, so the same weights.
    model = load_model("tiny", vocab_size=spec["vocab"], max_position_embeddings=max(2048, spec["seq_len"]),
                       attn_implementation="sdpa", seed=spec["seed"])
    sha, conf = weights_sha(model), config_summary(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for g in param_groups(model, spec["weight_decay"])
                     if g["weight_decay"] > 0 for p in g["params"])
    # Correctness on the run's first micro-batch, through fastprep's own loss path.
    rows = PackedRows(spec["dataset"])
    first = PackedLoader(rows, spec["micro_rows"], seed=spec["seed"], num_workers=0).epoch_order(0)
    got = rows.gather(first[:spec["micro_rows"]])
    batch = collate(got)
    docs = [d.tolist() for d in documents_of_rows(got["input_ids"], got["segment_ids"])]
    with scaled_norm(model, CHECK_NORM_SCALE), torch.no_grad():
        loss = float(loss_sum(model, batch, "sdpa")) / batch["n_targets"]
        check = check_result(loss, docs, model)
    assert batch["n_targets"] == batch["n_tokens"] - len(docs)
    del model

    stamps: list[float] = []
    records: list[dict[str, Any]] = []

    def log(rec: dict[str, Any]) -> None:
        if "loss" in rec:  # a training step (validation records carry val_loss only)
            stamps.append(time.perf_counter())
            records.append(rec)

    # Targets and documents of every step, from the rows the run's loader hands out.
    order = first[:spec["rows_used"]].reshape(spec["steps"], -1)
    step_targets, step_docs = [], []
    for step_rows in order:
        g = rows.gather(step_rows)
        step_targets.append(collate(g)["n_targets"])
        step_docs.append(len(documents_of_rows(g["input_ids"], g["segment_ids"])))

    t0 = time.perf_counter()
    res = train(cfg, log=log)
    wall = time.perf_counter() - t0
    step_s = np.diff([t0] + stamps).tolist()
    tokens = spec["fastprep_step_tokens"]
    assert res["tokens"] == sum(tokens), (res["tokens"], sum(tokens))
    assert res["steps"] == spec["steps"] and len(records) == spec["steps"]
    assert sum(step_targets) == sum(tokens) - sum(step_docs)
    lrs = sorted({r["lr"] for r in records})
    return {"weights_sha": sha, "config": conf, "check": check, "unset_fields": unset,
            "step_s": step_s, "step_tokens": tokens, "step_targets": step_targets,
            "losses": res["losses"], "lrs": lrs, "tokens_seen": res["tokens"],
            "targets_seen": sum(step_targets), "docs_seen": sum(step_docs),
            "slots_seen": spec["rows_used"] * spec["seq_len"], "train_wall_s": wall,
            "optimizer": "AdamW(fused=False)", "decayed_params": decayed,
            "own_tokens_per_s": res["tokens_per_s"], "own_step_tok_s": [r["tokens_per_s"] for r in records],
            "micro_batch": f"{spec['micro_rows']} rows x {spec['seq_len']}"}


class StepClock:
    """A ``TrainerCallback`` (built lazily so the parent needs no transformers import)."""

    @staticmethod
    def make() -> Any:
        from transformers import TrainerCallback

        class _Clock(TrainerCallback):
            def __init__(self) -> None:
                self.counter: Counting | None = None
                self.t0 = 0.0
                self.stamps: list[float] = []
                self.losses: list[float] = []
                self.lrs: list[float] = []

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.t0 = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self.stamps.append(time.perf_counter())
                if self.counter is not None:
                    self.counter.bounds.append(len(self.counter.calls))

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))
                    self.lrs.append(float(logs.get("learning_rate", float("nan"))))

        return _Clock()


def hf_common_args(spec: dict[str, Any], work: Path, per_device: int) -> dict[str, Any]:
    return dict(
        output_dir=str(work / f"run-{spec['case']}-{spec['round']}"), per_device_train_batch_size=per_device,
        gradient_accumulation_steps=spec["grad_accum"], learning_rate=spec["lr"],
        weight_decay=spec["weight_decay"], adam_beta1=spec["beta1"], adam_beta2=spec["beta2"],
        adam_epsilon=1e-8, max_grad_norm=spec["clip"], lr_scheduler_type="constant", warmup_steps=0,
        max_steps=spec["steps"], logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", seed=spec["seed"], data_seed=spec["seed"], use_cpu=True, bf16=False,
        fp16=False, optim="adamw_torch", dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=False, torch_compile=False, log_level="error")


def finish_hf(trainer: Any, clock: Any, counter: Counting, spec: dict[str, Any], t0: float,
              extra: dict[str, Any]) -> dict[str, Any]:
    wall = time.perf_counter() - t0
    counter.handle.remove()
    assert len(counter.bounds) == spec["steps"], (len(counter.bounds), spec["steps"])
    calls = np.array(counter.calls, np.int64)
    cuts = [0] + counter.bounds
    arr = np.array([calls[a_:b_].sum(axis=0) for a_, b_ in zip(cuts[:-1], cuts[1:])])
    assert (arr[:, 1] == arr[:, 0] - arr[:, 2]).all(), "targets != tokens - documents"
    assert len(clock.stamps) == spec["steps"] and len(clock.losses) == spec["steps"]
    step_s = np.diff([clock.t0] + clock.stamps).tolist()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = sorted(names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])
    return {**extra, "step_s": step_s, "step_tokens": arr[:, 0].tolist(),
            "step_targets": arr[:, 1].tolist(), "losses": clock.losses,
            "lrs": sorted(set(clock.lrs)), "tokens_seen": int(arr[:, 0].sum()),
            "targets_seen": int(arr[:, 1].sum()), "docs_seen": int(arr[:, 2].sum()),
            "slots_seen": int(arr[:, 3].sum()), "train_wall_s": wall,
            "optimizer": f"{type(opt).__name__}(fused={bool(opt.param_groups[0].get('fused'))})",
            "decayed_params": decayed}


def child_hf(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorWithFlattening,
                              Trainer, TrainingArguments)

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    docs = load_docs(work)
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    assert tok.pad_token_id == spec["pad_id"], (tok.pad_token_id, spec["pad_id"])
    model = make_model(spec)
    sha, conf = weights_sha(model), config_summary(model)
    per_device = spec["docs_per_micro"]
    if spec["case"] == "hf-padded":
        inner = DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)
    else:
        inner = DataCollatorWithFlattening()
    sample = docs[:per_device]
    b = inner([{"input_ids": d} for d in sample])
    with scaled_norm(model, CHECK_NORM_SCALE), torch.no_grad():
        loss = float(model(**b, use_cache=False).loss)
        check = check_result(loss, sample, model)
    if spec["case"] == "hf-flatten":
        assert docs_of_flat(b["input_ids"], b["position_ids"]) == sample
    clock = StepClock.make()
    clock.counter = counter = Counting(model)
    args = TrainingArguments(**hf_common_args(spec, work, per_device))
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": docs}),
                      data_collator=inner, callbacks=[clock])
    t0 = time.perf_counter()
    trainer.train()
    return finish_hf(trainer, clock, counter, spec, t0, {
        "weights_sha": sha, "config": conf, "check": check,
        "micro_batch": f"{per_device} documents" + (" padded to the longest" if spec["case"] == "hf-padded"
                                                    else " flattened to one row")})


def child_trl(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    docs = load_docs(work)
    tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
    model = make_model(spec)
    sha, conf = weights_sha(model), config_summary(model)
    clock = StepClock.make()
    args = SFTConfig(**hf_common_args(spec, work, spec["micro_rows"]), max_length=spec["seq_len"],
                     packing=True, packing_strategy="bfd", padding_free=True, shuffle_dataset=False,
                     dataset_num_proc=None, completion_only_loss=False, assistant_only_loss=False,
                     loss_type="nll", activation_offloading=False, use_liger_kernel=False)
    t_setup = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=datasets.Dataset.from_dict({"input_ids": docs}), callbacks=[clock])
    setup_s = time.perf_counter() - t_setup
    packed = trainer.train_dataset
    seq_lengths = [s for row in packed["seq_lengths"] for s in row]
    assert sum(seq_lengths) == spec["tokens"] and len(seq_lengths) == spec["docs"], \
        "TRL's packed dataset does not hold exactly the documents"
    rows = [packed[i] for i in range(spec["micro_rows"])]
    b = trainer.data_collator(rows)
    sample = docs_of_flat(b["input_ids"], b["position_ids"])
    with scaled_norm(trainer.model, CHECK_NORM_SCALE), torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, dict(b)))
        check = check_result(loss, sample, trainer.model)
    trainer._metrics["train"].clear()
    clock.counter = counter = Counting(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    return finish_hf(trainer, clock, counter, spec, t0, {
        "weights_sha": sha, "config": conf, "check": check, "trl_rows": len(packed),
        "trl_setup_s": setup_s,
        "micro_batch": f"{spec['micro_rows']} packed rows flattened to one row"})


def child_main(case: str, spec_path: Path, out_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    spec["case"] = case
    work = spec_path.parent
    t = time.perf_counter()
    load0 = loadavg()
    fn = {"fastprep": child_fastprep, "hf-padded": child_hf, "hf-flatten": child_hf,
          "trl-bfd": child_trl}[case]
    res = fn(spec, work)
    res.update(case=case, process_s=time.perf_counter() - t, load_before=load0, load_after=loadavg(),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               torch_threads=__import__("torch").get_num_threads())
    out_path.write_text(json.dumps(res))


# --------------------------------------------------------------------------- parent

def steady(res: dict[str, Any], skip: int) -> float:
    return sum(res["step_tokens"][skip:]) / sum(res["step_s"][skip:])


def final_loss(res: dict[str, Any], k: int) -> float:
    return statistics.fmean(res["losses"][-k:])


def run_case(case: str, spec_path: Path, rnd: int, log_dir: Path) -> dict[str, Any]:
    out = spec_path.parent / f"result-{case}-{rnd}.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", case, "--spec", str(spec_path),
                        "--result", str(out)], capture_output=True, text=True, env=env)
    (log_dir / f"{case}-{rnd}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"case {case} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")
    res = json.loads(out.read_text())
    res["subprocess_s"] = time.perf_counter() - t
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-rows", type=int, default=4, help="packed rows per micro-batch (fastprep, TRL)")
    ap.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step (all)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps (all)")
    ap.add_argument("--skip", type=int, default=4, help="first steps left out of tokens/s")
    ap.add_argument("--last-k", type=int, default=8, help="final loss = mean of the last k steps")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus-mb", type=float, default=20, help="benchmark corpus to draw texts from")
    ap.add_argument("--text-mb", type=float, default=0.0,
                    help="MB of corpus JSONL to prepare (0 = what the run needs, with a margin)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds, cases interleaved")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(a.child, a.spec, a.result)
        return
    cases = [c for c in a.cases.split(",") if c]
    assert cases and cases[0] == "fastprep" and set(cases) <= set(CASES), "fastprep first, then peers"
    assert a.skip < a.steps and a.last_k <= a.steps

    t_all = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench_train-")
    work = Path(tmp.name)
    ver = versions()
    print(f"# bench_train: {datetime.date.today()}, {os.cpu_count()} cores ({cpu_model()}), "
          f"{platform.system()} {platform.release()}, load average {loadavg()}")
    print("# " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    data = prepare_data(a, work)
    docs_per_micro = max(1, round(data["docs"] / (a.steps * a.grad_accum)))
    spec = {**vars(a), **data, "docs_per_micro": docs_per_micro}
    for k in ("child", "spec", "result"):
        spec.pop(k)
    spec_path = work / "spec.json"
    print(f"# data: {data['records']} corpus records ({data['text_bytes'] / 1e6:.2f} MB JSONL) -> "
          f"fastprep prepare (bfd, L={a.seq_len}, split) {data['rows_total']} rows in "
          f"{data['prepare_s']:.1f} s, efficiency {data['efficiency']:.4f}; the run uses "
          f"{data['rows_used']} rows = {data['docs']} documents ({data['docs_full_length']} of length L), "
          f"{data['tokens']:,} tokens, {data['targets']:,} targets, length mean "
          f"{data['doc_len_mean']:.0f} median {data['doc_len_median']:.0f}")
    if data["manifest_target_tokens"] != data["dataset_targets"]:
        print(f"# NOTE: the manifest says target_tokens {data['manifest_target_tokens']:,}; the rows hold "
              f"{data['dataset_targets']:,} (tokens - documents)")
    print(f"# step: {a.grad_accum} micro-batches; fastprep/TRL {a.micro_rows} rows x {a.seq_len}, "
          f"HF per-document cases {docs_per_micro} documents per micro-batch; {a.steps} steps, "
          f"tokens/s over steps {a.skip + 1}..{a.steps}, final loss = mean of the last {a.last_k}")
    print(f"# optimizer: AdamW lr {a.lr:g} constant (no warm-up), betas ({a.beta1}, {a.beta2}), "
          f"eps 1e-8, weight decay {a.weight_decay} on matrices, clip {a.clip}, fp32, sdpa, seed {a.seed}")

    results: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    for rnd in range(a.repeats):
        order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
        for case in order:
            spec_path.write_text(json.dumps({**spec, "round": rnd}))
            r = run_case(case, spec_path, rnd, work)
            results[case].append(r)
            print(f"#   round {rnd + 1} {case:<10} {steady(r, a.skip):>8,.0f} real tok/s  "
                  f"loss {final_loss(r, a.last_k):.4f}  train {r['train_wall_s']:.1f} s  "
                  f"process {r['subprocess_s']:.1f} s  RSS {r['peak_rss_mib']:.0f} MiB  "
                  f"load {r['load_after']}", flush=True)

    # ---- same model, same documents, same optimizer settings: checked, not assumed
    first = {c: results[c][0] for c in cases}
    sha = {c: r["weights_sha"] for c, r in first.items()}
    assert len(set(sha.values())) == 1, f"initial weights differ: {sha}"
    confs = {json.dumps(r["config"], sort_keys=True) for r in first.values()}
    assert len(confs) == 1, f"model configs differ: {[r['config'] for r in first.values()]}"
    decays = {c: r["decayed_params"] for c, r in first.items()}
    assert all(v == decays["fastprep"] for v in decays.values()), "weight-decay groups differ"
    for c, rs in results.items():
        for r in rs:
            assert r["lrs"] == [a.lr], f"{c}: learning rates {r['lrs']} (expected constant {a.lr})"
            assert len(r["losses"]) == a.steps
        if first[c].get("unset_fields"):
            print(f"# WARNING {c}: TrainConfig fields left at their defaults: {first[c]['unset_fields']}")
    if "trl-bfd" in first:
        print(f"# TRL packed the same documents into {first['trl-bfd']['trl_rows']} rows "
              f"(fastprep: {data['rows_used']}); SFTTrainer set-up incl. packing "
              f"{first['trl-bfd']['trl_setup_s']:.1f} s")
    own = statistics.median(statistics.median(r["own_step_tok_s"][a.skip:]) for r in results["fastprep"])
    print(f"# fastprep's own log: median {own:,.0f} real tok/s per step over the timed steps")
    cfg = first["fastprep"]["config"]
    print(f"# model: tiny Llama, {cfg['params']:,} parameters (vocab {cfg['vocab_size']}, hidden "
          f"{cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads / "
          f"{cfg['num_key_value_heads']} KV, MLP {cfg['intermediate_size']}, tied), identical initial "
          f"weights in every case (sha256 {sha['fastprep']}); decayed tensors identical "
          f"({len(decays['fastprep'])}); optimizers: "
          + ", ".join(f"{c} {r['optimizer']}" for c, r in first.items()))
    print("# correctness (final norm x40, o_proj x8): framework loss vs per-document reference, and what "
          "attention across documents would give:")
    for c, r in first.items():
        k = r["check"]
        print(f"#   {c:<10} {k['docs']:>3} docs: loss {k['loss']:.5f} ref {k['reference']:.5f} "
              f"(rel {k['rel_err']:.1e}); cross-doc {k['cross_doc_loss']:.5f} (rel {k['cross_rel']:.1e})")

    # ---- table
    tps = {c: statistics.median(steady(r, a.skip) for r in rs) for c, rs in results.items()}
    print(f"\n| case | micro-batch | real tokens/step (mean ± sd) | padding | real tokens/s | × fastprep "
          f"| final loss (last {a.last_k}) | train wall s | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for c, rs in results.items():
        r0 = rs[0]
        st = np.array(r0["step_tokens"], float)
        pad = 1 - r0["tokens_seen"] / r0["slots_seen"]
        loss = statistics.median(final_loss(r, a.last_k) for r in rs)
        wall = statistics.median(r["train_wall_s"] for r in rs)
        rss = statistics.median(r["peak_rss_mib"] for r in rs)
        print(f"| {c} | {r0['micro_batch']} | {st.mean():,.0f} ± {st.std():,.0f} | {pad:.1%} | "
              f"{tps[c]:,.0f} | {tps[c] / tps['fastprep']:.2f} | {loss:.4f} | {wall:.1f} | {rss:.0f} |")
    print(f"\nmedians of {a.repeats} round(s). Documents and tokens seen (the run's set: "
          f"{data['docs']} documents, {data['tokens']:,} tokens, {data['targets']:,} targets):")
    for c, rs in results.items():
        r0 = rs[0]
        print(f"  {c:<10} {r0['docs_seen']:>5} documents, {r0['tokens_seen']:>8,} tokens "
              f"({r0['tokens_seen'] / data['tokens'] - 1:+.1%}), {r0['targets_seen']:>8,} targets; "
              f"targets = tokens - documents: "
              f"{r0['targets_seen'] == r0['tokens_seen'] - r0['docs_seen']}")
    goal = all(tps["fastprep"] >= v for v in tps.values())
    ratios = ", ".join(f"{c} {tps[c] / tps['fastprep']:.2f}x" for c in cases[1:])
    print(f"\ngoal 'fastprep >= every peer in real tokens/s': {'MET' if goal else 'MISSED'} "
          f"(peers: {ratios} of fastprep)")
    print(f"# load average after {loadavg()}; whole run {time.perf_counter() - t_all:.0f} s")
    if a.keep:
        tmp._finalizer.detach()  # type: ignore[attr-defined]
        print(f"# work folder kept: {work}")
    else:
        tmp.cleanup()


if __name__ == "__main__":
    main()
