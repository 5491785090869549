"""fastprep: fast, exact tokenization, deduplication and sequence packing for LLM training.

The prepare side (this namespace) never imports torch; the training side lives in
``fastprep.loader`` / ``fastprep.train`` (``pip install 'fastprep[train]'``).
"""

__version__ = "0.1.0"

from .clean import CleanConfig
from .dedupe import DedupeConfig
from .format import DatasetError, PackedDataset, open_dataset
from .minhash import MinHashConfig
from .pack import PackConfig, PackPlan, fill_rows, plan
from .prepare import PrepareConfig, PrepareStats, prepare
from .read import ReadConfig
from .records import RecordConfig
from .tokenize import TokenizeConfig, TokenizerBundle
from .verify import verify

__all__ = [
    "CleanConfig", "DatasetError", "DedupeConfig", "MinHashConfig", "PackConfig", "PackPlan", "PackedDataset",
    "PrepareConfig", "PrepareStats", "ReadConfig", "RecordConfig", "TokenizeConfig",
    "TokenizerBundle", "fill_rows", "open_dataset", "plan", "prepare", "verify",
]
