"""Write packed rows as sharded raw arrays plus ``manifest.json`` (see :mod:`fastprep.format`).

Crash safety: every file is written under a temporary name (``.name.tmp``) in the output folder,
fsynced and renamed; ``manifest.json`` is renamed into place last. A folder without a manifest is an
unfinished run, and readers refuse it. Checksums are computed while writing (no second read).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .format import ARRAYS, FORMAT_NAME, FORMAT_VERSION, MANIFEST, shard_file


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends blocks of rows; cuts a new shard every ``shard_rows`` rows.

    ``arrays`` fixes which arrays are written (``input_ids``, ``segment_ids`` and optionally
    ``loss_mask``) and ``dtypes`` their on-disk dtypes. Call :meth:`add` with ``[n, L]`` blocks, then
    :meth:`finish` with the rest of the manifest.
    """

    def __init__(self, out: Path, seq_len: int, dtypes: dict[str, np.dtype], shard_rows: int) -> None:
        if shard_rows <= 0:
            raise ValueError("shard_rows must be positive")
        self.out = Path(out)
        self.seq_len = seq_len
        self.arrays = [a for a in ARRAYS if a in dtypes]
        self.dtypes = {a: np.dtype(dtypes[a]).newbyteorder("<") for a in self.arrays}
        self.shard_rows = shard_rows
        self.shards: list[dict[str, Any]] = []
        self._files: dict[str, Any] = {}
        self._hash: dict[str, Any] = {}
        self._rows_in_shard = 0
        self.rows = 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}"
        self._name = name
        for a in self.arrays:
            self._files[a] = open(_tmp(self.out / shard_file(name, a)), "wb")
            self._hash[a] = hashlib.sha256()
        self._rows_in_shard = 0

    def _close(self) -> None:
        files = {}
        for a in self.arrays:
            f = self._files.pop(a)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            final = self.out / shard_file(self._name, a)
            os.replace(_tmp(final), final)
            files[a] = {"file": final.name, "sha256": self._hash.pop(a).hexdigest()}
        self.shards.append({"name": self._name, "rows": self._rows_in_shard, "files": files})

    def add(self, block: dict[str, np.ndarray]) -> None:
        n = len(block["input_ids"])
        start = 0
        while start < n:
            if not self._files:
                self._open()
            take = min(n - start, self.shard_rows - self._rows_in_shard)
            for a in self.arrays:
                part = np.ascontiguousarray(block[a][start:start + take], dtype=self.dtypes[a])
                assert part.shape == (take, self.seq_len), (a, part.shape)
                data = part.data
                self._files[a].write(data)
                self._hash[a].update(data)
            self._rows_in_shard += take
            self.rows += take
            start += take
            if self._rows_in_shard == self.shard_rows:
                self._close()

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Close the last shard and write ``manifest.json`` atomically; return the manifest."""
        if self._files:
            self._close()
        full = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "seq_len": self.seq_len,
            "arrays": list(self.arrays),
            "dtypes": {a: self.dtypes[a].str for a in self.arrays},
            "rows": self.rows,
            **manifest,
            "shards": self.shards,
        }
        atomic_write_bytes(self.out / MANIFEST,
                           (json.dumps(full, indent=2, sort_keys=False) + "\n").encode())
        return full

    def abort(self) -> None:
        """Remove every file this writer created (used when a run fails): no partial dataset stays
        visible."""
        for f in self._files.values():
            f.close()
        names = [f.name for f in self._files.values()]
        names += [str(self.out / info["file"]) for shard in self.shards for info in shard["files"].values()]
        for name in names:
            try:
                os.unlink(name)
            except OSError:
                pass
        self._files.clear()
        self.shards.clear()
