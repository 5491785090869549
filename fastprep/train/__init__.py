"""The training side (torch): load packed rows, derive masks, and a full-fine-tuning loop.

Reads datasets through :mod:`fastprep.dataset` only. Modules: ``config`` (torch-free),
``device``, ``checkpoint``, ``loop``, ``loader``, ``masks``, ``models``.
"""
