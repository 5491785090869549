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

# name -> the module that defines it. Imported on first use (PEP 562): a worker process
# unpickling its task function imports this package first, and an eager API would load the
# whole driver (run, merge, writers) in every worker.
_API = {
    "DatasetError": "dataset.format", "Manifest": "dataset.format", "PackedDataset": "dataset.format",
    "open_dataset": "dataset.format", "verify": "dataset.verify",
    "DedupeConfig": "pipeline.config", "PrepareConfig": "pipeline.config",
    "Recipe": "pipeline.config", "RunOptions": "pipeline.config",
    "PrepareStats": "pipeline.run", "prepare": "pipeline.run",
    "CleanConfig": "stages.clean", "PackConfig": "stages.pack", "PackPlan": "stages.pack",
    "fill_rows": "stages.pack", "plan": "stages.pack", "ReadConfig": "stages.read",
    "RecordConfig": "stages.records", "TokenizeConfig": "stages.tokenize",
    "TokenizerBundle": "stages.tokenize",
    "MinHashConfig": "dedupe.minhash",  # imports numba and pyarrow: only when asked for
}

if TYPE_CHECKING:
    from .dataset.format import DatasetError, Manifest, PackedDataset, open_dataset
    from .dataset.verify import verify
    from .dedupe.minhash import MinHashConfig
    from .pipeline.config import DedupeConfig, PrepareConfig, Recipe, RunOptions
    from .pipeline.run import PrepareStats, prepare
    from .stages.clean import CleanConfig
    from .stages.pack import PackConfig, PackPlan, fill_rows, plan
    from .stages.read import ReadConfig
    from .stages.records import RecordConfig
    from .stages.tokenize import TokenizeConfig, TokenizerBundle

__all__ = [
    "CleanConfig", "DatasetError", "DedupeConfig", "Manifest", "MinHashConfig", "PackConfig",
    "PackPlan", "PackedDataset", "PrepareConfig", "PrepareStats", "ReadConfig", "Recipe",
    "RecordConfig", "RunOptions", "TokenizeConfig", "TokenizerBundle", "__version__", "fill_rows",
    "open_dataset", "plan", "prepare", "verify",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fastprep' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__
