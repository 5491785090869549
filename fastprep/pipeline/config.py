"""The root configuration of ``fastprep prepare``, split by what it decides.

- :class:`Recipe`: everything that decides the output bytes (inputs, record mapping, cleaning,
  deduplication, tokenizer, packing, shard size). The manifest records it and the resume
  fingerprint hashes it, whole: a field that changes a byte belongs here, and nothing else does.
- :class:`RunOptions`: how the run goes (output folder, workers, executor, task and batch
  sizes, progress, strictness, resume policy). Same recipe, any run options: the same bytes.

Each stage's config lives next to its stage; this module composes them and owns the configs
that have no single owner (:class:`DedupeConfig`). Every field is declared with
:func:`fastprep.flags.option`, and the ``fastprep prepare`` flags are derived from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..dedupe.decontam import DecontamConfig
from ..dedupe.minhash import MinHashConfig
from ..flags import option
from ..stages.clean import CleanConfig
from ..stages.mix import MixConfig, SplitConfig
from ..stages.pack import PackConfig
from ..stages.read import ReadConfig
from ..stages.records import RecordConfig
from ..stages.tokenize import TokenizeConfig


@dataclass(frozen=True)
class DedupeConfig:
    """Which duplicates go: exact copies (after cleaning), then near duplicates by MinHash.

    exact: remove exact duplicates (``--dedupe exact``, the default; ``minhash`` keeps it on).
    minhash: near-duplicate parameters, or None for no near-duplicate removal.
    """

    exact: bool = option(True, cli=False)
    minhash: MinHashConfig | None = option(None, cli=False)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the bytes of a dataset: recorded in its manifest, hashed for resume."""

    read: ReadConfig
    tokenize: TokenizeConfig
    records: RecordConfig = field(default_factory=RecordConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    shard_rows: int = option(0, "rows per shard (0: ~256 MiB of input_ids per shard)")

    def __post_init__(self) -> None:
        if self.shard_rows < 0:
            raise ValueError("--shard-rows must be >= 0 (0 = automatic)")
        if self.split.on and not self.dedupe.exact:
            # without dedupe a copy of a validation document could stay in training
            raise ValueError("a validation split (--val-fraction/--val-docs) needs --dedupe exact "
                             "or minhash, so that no copy of a validation document is trained on")
        if self.mix.on:
            missing = sorted(set(self.read.paths) - {p for s in self.mix.sources for p in s.paths})
            if missing:
                raise ValueError(f"with --mix every input belongs to a source; "
                                 f"{', '.join(missing)} has no weight")

    def source_records(self) -> tuple[RecordConfig, ...]:
        """The record mapping of each mix source (its own, or the run's)."""
        return tuple(s.records or self.records for s in self.mix.sources)

    def record(self) -> dict[str, Any]:
        """The recipe as plain JSON-able data (what the manifest records)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """How a run goes; none of it changes a byte of the output."""

    out: str = option(help="output dataset folder", required=True)
    workers: int = option(0, "worker processes (0: one per core); output is identical for any N")
    task_bytes: int = option(0, "input bytes per task (0: automatic, 1-64 MiB so each worker "
                             "gets ~16 tasks)")
    batch_bytes: int = option(1 << 20, "text per tokenizer call (larger batches amortise "
                              "per-call overhead)")
    executor: Literal["local", "ray"] = option(
        "local", "local worker processes, or Ray tasks (pip install 'fastprep[ray]')")
    ray_address: str | None = option(None, "Ray cluster address (e.g. auto); default: a local Ray",
                                     flag="--address")
    ray_cpus_per_task: int = option(1, "CPUs (and tokenizer threads) each Ray task reserves")
    tokenizer_backend: Literal["auto", "hf", "fastokens"] = option(
        "auto", "tokenizer engine: auto = fastokens when it supports the tokenizer and passes the "
        "parity gate, else tokenizers (hf); the dataset bytes are the same either way")
    spot_check: float = option(
        0.001, "share of documents re-encoded with tokenizers during the run to confirm a fast "
        "backend's ids (deterministic sample; 0 = off)")
    near_method: Literal["auto", "stream", "shuffle"] = option(
        "auto", "MinHash decisions by one index in the driver (stream) or by a band shuffle "
        "verified in parallel (shuffle; Ray tasks under --executor ray); same result; auto = "
        "shuffle under Ray, else stream")
    dedupe_report: str | None = option(None, "write a JSONL of the removed duplicates (exact and "
                                       "near) here: where each is, what it matched, ids, excerpts")
    id_field: str = option("id", "the record field --dedupe-report shows as a document's id")
    strict: bool = option(False, "stop at the first bad record with its file, line and fix")
    overwrite: bool = option(False, "replace an existing dataset (or discard an interrupted "
                             "run) in --out")
    resume: bool = option(False, "insist on resuming an interrupted run (automatic when the "
                          "recipe and inputs match)")
    progress: bool | None = option(None, "show a progress bar (default: when stderr is a "
                                   "terminal)")
    quiet: bool = option(False, "no progress bar, notes or summary: only warnings and errors")
    collect_lengths: bool = option(False, cli=False)  # PrepareStats.lengths (fastprep bench)
    exceed_model_max: bool = option(
        False, "allow --seq-len above the model's maximum (tokenizer_config.json / config.json), "
        "e.g. for a context extension")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        if self.batch_bytes < 1:
            raise ValueError("--batch-bytes must be positive")
        if self.workers < 0:
            raise ValueError("--workers must be >= 0 (0 = one per core)")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"--executor must be local or ray, not {self.executor!r}")
        if self.ray_cpus_per_task < 1:
            raise ValueError("--ray-cpus-per-task must be >= 1")
        if self.task_bytes < 0:
            raise ValueError("--task-bytes must be >= 0 (0 = automatic)")
        if self.tokenizer_backend not in ("auto", "hf", "fastokens"):
            raise ValueError(f"--tokenizer-backend must be auto, hf or fastokens, not "
                             f"{self.tokenizer_backend!r}")
        if not 0.0 <= self.spot_check <= 1.0:
            raise ValueError(f"--spot-check must be a share in [0, 1], got {self.spot_check!r}")
        if self.near_method not in ("auto", "stream", "shuffle"):
            raise ValueError(f"--near-method must be auto, stream or shuffle, not "
                             f"{self.near_method!r}")

    def resolved_near_method(self) -> Literal["stream", "shuffle"]:
        """``near_method`` with ``auto`` decided: shuffle under Ray, stream otherwise."""
        if self.near_method != "auto":
            return self.near_method
        return "shuffle" if self.executor == "ray" else "stream"


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``fastprep prepare`` does: what to make (:class:`Recipe`) and how
    (:class:`RunOptions`)."""

    recipe: Recipe
    run: RunOptions

    def __post_init__(self) -> None:
        dedupe = self.recipe.dedupe
        if self.run.dedupe_report is not None and not dedupe.exact and dedupe.minhash is None:
            raise ValueError("--dedupe-report needs deduplication (--dedupe exact or minhash)")

    @classmethod
    def of(cls, **fields: Any) -> PrepareConfig:
        """Build from the flat field names of :class:`Recipe` and :class:`RunOptions`, each
        routed to its owner: ``PrepareConfig.of(read=ReadConfig(paths=("data/",)),
        tokenize=TokenizeConfig(tokenizer="model/"), out="ds/", workers=2)``."""
        recipe_names = {f.name for f in dataclasses.fields(Recipe)}
        run_names = {f.name for f in dataclasses.fields(RunOptions)}
        unknown = sorted(set(fields) - recipe_names - run_names)
        if unknown:
            raise TypeError(f"PrepareConfig.of: unknown field(s) {', '.join(unknown)}; recipe "
                            f"fields are {', '.join(sorted(recipe_names))}, run options "
                            f"{', '.join(sorted(run_names))}")
        return cls(recipe=Recipe(**{k: v for k, v in fields.items() if k in recipe_names}),
                   run=RunOptions(**{k: v for k, v in fields.items() if k in run_names}))
