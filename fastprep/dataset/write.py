"""Write packed rows as sharded raw arrays plus ``manifest.json`` (see :mod:`fastprep.dataset.format`).

Crash safety: every file goes through :class:`fastprep.io.AtomicFile` (a temporary name in the
output folder, fsynced and renamed); ``manifest.json`` is renamed into place last. A folder
without a manifest is an unfinished run, and readers refuse it. Checksums are computed while
writing (no second read).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..io import AtomicFile, atomic_write_bytes
from .format import ARRAYS, MANIFEST, ROW_ARRAYS, Manifest, ShardInfo, shard_file, shard_name


class ShardWriter:
    """Appends blocks of rows; cuts a new shard every ``shard_rows`` rows.

    ``dtypes`` fixes which arrays are written (``input_ids``, ``segment_ids`` and optionally
    ``loss_mask`` and ``source``) and their on-disk dtypes. Call :meth:`add` with ``[n, L]``
    blocks (``[n]`` for the per-row ``source``), then :meth:`finish` with the rest of the
    manifest.
    """

    def __init__(self, out: Path, seq_len: int, dtypes: dict[str, np.dtype], shard_rows: int) -> None:
        if shard_rows <= 0:
            raise ValueError("shard_rows must be positive")
        self.out = Path(out)
        self.seq_len = seq_len
        self.arrays = [a for a in ARRAYS if a in dtypes]
        self.dtypes = {a: np.dtype(dtypes[a]).newbyteorder("<") for a in self.arrays}
        self.shard_rows = shard_rows
        self.shards: list[ShardInfo] = []
        self._files: dict[str, AtomicFile] = {}
        self._hash: dict[str, Any] = {}
        self._rows_in_shard = 0
        self.rows = 0

    def _open(self) -> None:
        self._name = shard_name(len(self.shards))
        for a in self.arrays:
            # a per-row array is a few bytes per row: not worth direct I/O's aligned blocks
            self._files[a] = AtomicFile(self.out / shard_file(self._name, a),
                                        direct=a not in ROW_ARRAYS)
            self._hash[a] = hashlib.sha256()
        self._rows_in_shard = 0

    def _close(self) -> None:
        files = {}
        for a in self.arrays:
            final = self._files.pop(a).commit()
            files[a] = {"file": final.name, "sha256": self._hash.pop(a).hexdigest()}
        self.shards.append(ShardInfo(name=self._name, rows=self._rows_in_shard, files=files))

    def add(self, block: dict[str, np.ndarray]) -> None:
        n = len(block["input_ids"])
        start = 0
        while start < n:
            if not self._files:
                self._open()
            take = min(n - start, self.shard_rows - self._rows_in_shard)
            for a in self.arrays:
                part = np.ascontiguousarray(block[a][start:start + take], dtype=self.dtypes[a])
                want = (take,) if a in ROW_ARRAYS else (take, self.seq_len)
                assert part.shape == want, (a, part.shape)
                data = part.data
                self._files[a].write(data)
                self._hash[a].update(data)
            self._rows_in_shard += take
            self.rows += take
            start += take
            if self._rows_in_shard == self.shard_rows:
                self._close()

    def finish(self, **sections: Any) -> Manifest:
        """Close the last shard and write ``manifest.json`` atomically with the given sections
        (the :class:`Manifest` fields a run describes: tokenizer, recipe, counts, ...)."""
        if self._files:
            self._close()
        manifest = Manifest(seq_len=self.seq_len, arrays=tuple(self.arrays),
                            dtypes={a: self.dtypes[a].str for a in self.arrays}, rows=self.rows,
                            shards=tuple(self.shards), **sections)
        atomic_write_bytes(self.out / MANIFEST, manifest.to_json())
        return manifest

    def abort(self) -> None:
        """Remove every file this writer created (used when a run fails): no partial dataset stays
        visible."""
        for f in self._files.values():
            f.discard()
        self._files.clear()
        for shard in self.shards:
            for info in shard.files.values():
                try:
                    os.unlink(self.out / info["file"])
                except OSError:
                    pass
        self.shards.clear()

