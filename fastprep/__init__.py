"""fastprep: fast, exact tokenization, deduplication and sequence packing for LLM training.

The public API, and nothing else: the package's wings (``fastprep.stages``, ``fastprep.dedupe``,
``fastprep.dataset``, ``fastprep.pipeline``, ``fastprep.kernels``, ``fastprep.train``) are
imported by their own names. This namespace never imports torch (the training side lives in
``fastprep.train``, ``pip install 'fastprep[train]'``), and numba or pyarrow only where a kernel
or a Parquet file needs them, so a worker that reads JSONL and tokenizes does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .dataset.format import DatasetError, Manifest, PackedDataset, open_dataset
from .dataset.verify import verify
from .pipeline.config import DedupeConfig, PrepareConfig, Recipe, RunOptions
from .pipeline.run import PrepareStats, prepare
from .stages.clean import CleanConfig
from .stages.pack import PackConfig, PackPlan, fill_rows, plan
from .stages.read import ReadConfig
from .stages.records import RecordConfig
from .stages.tokenize import TokenizeConfig, TokenizerBundle

if TYPE_CHECKING:
    from .dedupe.minhash import MinHashConfig

__all__ = [
    "CleanConfig", "DatasetError", "DedupeConfig", "Manifest", "MinHashConfig", "PackConfig",
    "PackPlan", "PackedDataset", "PrepareConfig", "PrepareStats", "ReadConfig", "Recipe",
    "RecordConfig", "RunOptions", "TokenizeConfig", "TokenizerBundle", "__version__", "fill_rows",
    "open_dataset", "plan", "prepare", "verify",
]


def __getattr__(name: str) -> Any:
    if name == "MinHashConfig":  # minhash imports numba and pyarrow: only when asked for
        from .dedupe.minhash import MinHashConfig

        return MinHashConfig
    raise AttributeError(f"module 'fastprep' has no attribute {name!r}")
