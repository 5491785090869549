"""``fastprep.hf``: the Hugging Face bridge (:mod:`fastprep.train.hf`) under a short name.

Needs the training extra (torch): ``pip install 'fastprep[train]'``.
"""

from .train.hf import Collator, HFRows, collate, packed_dataset

__all__ = ["Collator", "HFRows", "collate", "packed_dataset"]
