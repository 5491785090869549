"""fastprep: fast, exact tokenization, deduplication and sequence packing for LLM training.

The prepare side (this namespace) never imports torch; the training side lives in
``fastprep.loader`` / ``fastprep.train`` (``pip install 'fastprep[train]'``). numba and pyarrow
are imported only where a kernel or a Parquet file needs them, so a worker process that reads
JSONL and tokenizes does not pay for them (~0.5 s and ~60 MiB per process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .clean import CleanConfig
from .dedupe import DedupeConfig
from .format import DatasetError, PackedDataset, open_dataset
from .pack import PackConfig, PackPlan, fill_rows, plan
from .prepare import PrepareConfig, PrepareStats, prepare
from .read import ReadConfig
from .records import RecordConfig
from .tokenize import TokenizeConfig, TokenizerBundle
from .verify import verify

if TYPE_CHECKING:
    from .minhash import MinHashConfig

__all__ = [
    "CleanConfig", "DatasetError", "DedupeConfig", "MinHashConfig", "PackConfig", "PackPlan",
    "PackedDataset", "PrepareConfig", "PrepareStats", "ReadConfig", "RecordConfig",
    "TokenizeConfig", "TokenizerBundle", "fill_rows", "open_dataset", "plan", "prepare", "verify",
]


def __getattr__(name: str) -> Any:
    if name == "MinHashConfig":  # minhash imports numba and pyarrow: only when asked for
        from .minhash import MinHashConfig

        return MinHashConfig
    raise AttributeError(f"module 'fastprep' has no attribute {name!r}")
