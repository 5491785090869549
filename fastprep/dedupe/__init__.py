"""Exact and near-duplicate decisions over digests and signatures; no I/O policy."""
