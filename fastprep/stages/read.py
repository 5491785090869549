"""Readers: stream raw records out of JSONL (plain, ``.gz``, ``.zst``), Parquet and plain-text files.

A reader never holds a whole file in memory: JSONL is read a line at a time with a byte limit per
line (a longer line is skipped by streaming through it and quarantined as ``record_too_large``),
Parquet one row group batch at a time, text files up to the same per-record limit.
Decompression is bounded too: ``.zst`` is fed to the decompressor in small slices so a
decompression bomb cannot materialise gigabytes at once, and a truncated ``.gz``/``.zst`` ends that
file with a ``truncated_file`` quarantine entry after every complete record before the damage has
been delivered.

Each reader yields :class:`Raw` items, a source position plus either a parsed value or a
:class:`Bad` reason. Parsing JSON costs ~1 µs per short line with orjson (hundreds of MB/s), two
orders of magnitude below tokenization, so a Python loop per *line* is acceptable here; nothing
in this module loops per character or per token.

Input order is deterministic: files are expanded from files, folders (recursively) and globs,
then de-duplicated and sorted by path.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from ..flags import option

JSONL_EXTS = (".jsonl", ".ndjson", ".json")
TEXT_EXTS = (".txt", ".text", ".md")
COMPRESSED = (".gz", ".zst", ".zstd")
UTF8_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """An input path that does not exist or has a format fastprep cannot read."""


@dataclass(frozen=True)
class ReadConfig:
    """How input files are found and split into raw records."""

    paths: tuple[str, ...] = option(
        help="JSONL (.jsonl/.ndjson/.json, optionally .gz/.zst), Parquet or text files, "
             "folders (searched recursively), or globs", positional=True, metavar="inputs")
    text_unit: Literal["file", "line", "paragraph"] = option(
        "file", "record unit of plain-text files: a whole file, each non-empty line, or each "
        "blank-line separated paragraph")
    max_record_bytes: int = option(
        64 << 20, "a JSONL line / text record larger than this is skipped and quarantined as "
        "record_too_large (memory stays bounded by it)")
    invalid_utf8: Literal["drop", "replace"] = option(
        "drop", "drop: quarantine a record with invalid UTF-8; replace: repair it with U+FFFD "
        "and count it as repaired")

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError("no input paths given")
        if self.text_unit not in ("file", "line", "paragraph"):
            raise ValueError(f"--text-unit must be file, line or paragraph, not {self.text_unit!r}")
        if self.max_record_bytes < 1:
            raise ValueError("--max-record-bytes must be positive")
        if self.invalid_utf8 not in ("drop", "replace"):
            raise ValueError(f"--invalid-utf8 must be drop or replace, not {self.invalid_utf8!r}")


@dataclass(frozen=True)
class Bad:
    reason: str
    detail: str
    excerpt: bytes = b""


@dataclass(frozen=True)
class Raw:
    """One raw record: where it came from and either its value (dict or str) or why it is bad."""

    file: int          # index into the expanded, sorted file list
    line: int          # 1-based line (JSONL/text) or row (Parquet) number
    value: Any         # dict for JSONL/Parquet, str for text files; None when ``bad`` is set
    bad: Bad | None = None
    # repairs applied while reading, for the counts: "utf8" (invalid bytes replaced), "bom"
    # (a UTF-8 byte-order mark removed from the file's first line)
    repaired: tuple[str, ...] = ()


def is_compressed(path: str) -> bool:
    """Whether the file is read through a decompressor (``.gz``, ``.zst``)."""
    return path.lower().endswith(COMPRESSED)


def splittable(path: str) -> bool:
    """Whether byte ranges of the file can be read on their own: uncompressed JSON Lines."""
    return file_kind(path) == "jsonl" and not is_compressed(path)


def file_kind(path: str) -> str | None:
    """'jsonl', 'parquet' or 'text' from the extension (after a compression suffix), else None."""
    name = path.lower()
    for c in COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    else:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return "parquet"
    if name.endswith(JSONL_EXTS):
        return "jsonl"
    if name.endswith(TEXT_EXTS):
        return "text"
    return None


def expand_paths(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Files named directly, found under folders, or matched by globs; sorted, without repeats."""
    found: set[str] = set()
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(os.path.join(root, f) for f in files
                             if not f.startswith(".") and file_kind(f) is not None)
        elif os.path.isfile(p):
            if file_kind(p) is None:
                raise InputError(f"{p}: unsupported file type; fastprep reads .jsonl/.ndjson/.json "
                                 f"(JSON Lines), .parquet and .txt/.md, optionally .gz or .zst compressed")
            found.add(p)
        elif any(ch in p for ch in "*?["):
            matches = [m for m in glob.glob(p, recursive=True)
                       if os.path.isfile(m) and file_kind(m) is not None]
            if not matches:
                raise InputError(f"{p}: the pattern matches no readable input file")
            found.update(matches)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not found:
        raise InputError(f"no input files found under {', '.join(paths)}")
    return sorted(os.path.normpath(f) for f in found)


class _ZstdRaw(io.RawIOBase):
    """Bounded, truncation-aware .zst decompression (multi-frame).

    ``zstandard``'s ``stream_reader`` silently returns a short stream for a truncated file; a
    decompression object exposes ``eof``, so the end of input inside a frame is detected and raised
    as EOFError like gzip does. Input is fed 1 KiB at a time: zstd's maximal ratio (an RLE block
    of 128 KiB costs 4 bytes) bounds one call's output to 32 MiB even for a hostile file, ~4 KiB
    for real text (the per-call overhead, ~1 µs per KiB, is invisible next to tokenization).
    """

    _SLICE = 1024

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._pending = memoryview(b"")
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._pending):
            chunk = self._raw.read(self._SLICE)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame (truncated file)")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._obj.decompress(chunk))
                chunk = b""
                if self._obj.eof:
                    self._in_frame = False
                    chunk = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
            self._pending = memoryview(b"".join(out))
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str) -> BinaryIO:
    """A buffered binary stream of the decompressed file."""
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if low.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdRaw(open(path, "rb")), buffer_size=1 << 16)  # type: ignore[return-value]
    return open(path, "rb", buffering=1 << 20)


# Errors that mean "this compressed stream is damaged from here on".
_STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, OSError)
try:  # zstandard's error type, when the module is importable
    import zstandard as _zstd

    _STREAM_ERRORS = _STREAM_ERRORS + (_zstd.ZstdError,)
except ImportError:  # pragma: no cover
    pass


def _iter_lines(stream: BinaryIO, limit: int, budget: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; bytes None for a line longer than ``limit`` (skipped).

    With ``budget``, only lines that *start* within the next ``budget`` bytes are read (the last
    one is finished even if it runs past): how a byte-range task reads its share of a file.
    """
    lineno = 0
    pos = 0
    while budget is None or pos < budget:
        line = stream.readline(limit + 1)
        if not line:
            return
        lineno += 1
        pos += len(line)
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # stream through the rest of the oversized line without keeping it
                rest = stream.readline(1 << 20)
                pos += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield lineno, None
            continue
        yield lineno, line


def _excerpt(data: bytes, n: int = 200) -> bytes:
    return data[:n]


def _decode(data: bytes, policy: str) -> tuple[str | None, bool]:
    """(text, repaired); text None when invalid and the policy drops it."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        if policy == "replace":
            return data.decode("utf-8", errors="replace"), True
        return None, False


def read_jsonl(path: str, file_index: int, cfg: ReadConfig, start: int = 0,
               end: int | None = None) -> Iterator[Raw]:
    """Records of a JSON Lines file; with ``start``/``end`` (uncompressed files only) just the lines
    that start in ``[start, end)``, numbered from 1 at the first of them."""
    limit = cfg.max_record_bytes
    with open_binary(path) as stream:
        lineno = 0
        budget = None
        if start or end is not None:
            if start:
                # The line in progress at `start` belongs to the previous range: skip it in
                # bounded chunks (it may be an oversized line).
                stream.seek(start - 1)
                start -= 1
                while True:
                    chunk = stream.readline(1 << 20)
                    start += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
            budget = None if end is None else max(0, end - start)
        try:
            for lineno, line in _iter_lines(stream, limit, budget):
                if line is None:
                    yield Raw(file_index, lineno, None,
                              Bad("record_too_large", f"line longer than --max-record-bytes {limit}"))
                    continue
                fix: tuple[str, ...] = ()
                if lineno == 1 and start == 0 and line.startswith(UTF8_BOM):
                    line, fix = line[3:], ("bom",)
                if not line.strip():
                    yield Raw(file_index, lineno, None, Bad("blank_line", "empty line"), fix)
                    continue
                repaired = fix
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError as first:
                    error: Exception = first
                    text, fixed = _decode(line, cfg.invalid_utf8)
                    if text is None:
                        yield Raw(file_index, lineno, None,
                                  Bad("invalid_utf8", "line is not valid UTF-8", _excerpt(line)), fix)
                        continue
                    value = None
                    if fixed:  # invalid UTF-8 repaired with U+FFFD: parse the repaired text
                        try:
                            value = orjson.loads(text)
                        except orjson.JSONDecodeError as second:
                            error = second
                    if value is None:
                        yield Raw(file_index, lineno, None,
                                  Bad("malformed_json", str(error), _excerpt(line)), fix)
                        continue
                    repaired += ("utf8",)
                if not isinstance(value, dict):
                    yield Raw(file_index, lineno, None,
                              Bad("not_an_object", f"line holds a JSON {type(value).__name__}, "
                                  f"not an object", _excerpt(line)), fix)
                    continue
                yield Raw(file_index, lineno, value, None, repaired)
        except _STREAM_ERRORS as e:
            yield _damaged(file_index, lineno, e)


def read_text(path: str, file_index: int, cfg: ReadConfig) -> Iterator[Raw]:
    limit = cfg.max_record_bytes
    with open_binary(path) as stream:
        lineno = 0
        try:
            if cfg.text_unit == "file":
                data = stream.read(limit + 1)
                if len(data) > limit:
                    yield Raw(file_index, 1, None,
                              Bad("record_too_large", f"file larger than --max-record-bytes {limit}"))
                    return
                fix: tuple[str, ...] = ()
                if data.startswith(UTF8_BOM):
                    data, fix = data[3:], ("bom",)
                yield _text_raw(file_index, 1, data, cfg, fix, "file is not valid UTF-8")
                return
            para: list[bytes] = []
            para_line = 0
            para_size = 0
            bom: tuple[str, ...] = ()  # a BOM removed from line 1: counted on its record
            for lineno, line in _iter_lines(stream, limit):
                if line is None:
                    yield Raw(file_index, lineno, None,
                              Bad("record_too_large", f"line longer than --max-record-bytes {limit}"))
                    continue
                if lineno == 1 and line.startswith(UTF8_BOM):
                    line, bom = line[3:], ("bom",)
                if cfg.text_unit == "line":
                    if line.strip():
                        yield _text_raw(file_index, lineno, line, cfg, bom)
                    bom = ()
                    continue
                if line.strip():
                    if not para:
                        para_line = lineno
                    para.append(line)
                    para_size += len(line)
                    if para_size > limit:
                        yield Raw(file_index, para_line, None,
                                  Bad("record_too_large", f"paragraph larger than --max-record-bytes {limit}"))
                        para, para_size = [], 0
                elif para:
                    yield _text_raw(file_index, para_line, b"".join(para), cfg, bom)
                    para, para_size, bom = [], 0, ()
            if para:
                yield _text_raw(file_index, para_line, b"".join(para), cfg, bom)
        except _STREAM_ERRORS as e:
            yield _damaged(file_index, lineno, e)


def _damaged(file_index: int, lineno: int, e: BaseException) -> Raw:
    """The rest of a file is unreadable; every record before ``lineno`` was already delivered."""
    reason = "truncated_file" if isinstance(e, EOFError) else "corrupt_file"
    return Raw(file_index, lineno + 1, None,
               Bad(reason, f"stream unreadable after line {lineno}: {type(e).__name__}: {e}"))


def _text_raw(file_index: int, lineno: int, data: bytes, cfg: ReadConfig,
              fix: tuple[str, ...] = (), invalid: str = "text is not valid UTF-8") -> Raw:
    text, fixed = _decode(data, cfg.invalid_utf8)
    if text is None:
        return Raw(file_index, lineno, None, Bad("invalid_utf8", invalid, _excerpt(data)), fix)
    return Raw(file_index, lineno, text, None, fix + ("utf8",) if fixed else fix)


def read_parquet(path: str, file_index: int, cfg: ReadConfig, batch_rows: int = 8192) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        n_groups = pf.num_row_groups
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for damaged files
        yield Raw(file_index, 0, None, Bad("unreadable_file", f"not a readable Parquet file: {e}"))
        return
    row = 0
    for g in range(n_groups):
        # Row groups are read one at a time so a damaged group costs only its own rows.
        expected = pf.metadata.row_group(g).num_rows
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[g]):
                for value in batch.to_pylist():
                    row += 1
                    yield Raw(file_index, row, value)
                expected -= batch.num_rows
        except Exception as e:
            yield Raw(file_index, row + 1, None,
                      Bad("unreadable_row_group", f"row group {g} damaged ({expected} rows lost): {e}"))
            row += max(expected, 0)


def read_file(path: str, file_index: int, cfg: ReadConfig) -> Iterator[Raw]:
    kind = file_kind(path)
    try:
        if kind == "jsonl":
            yield from read_jsonl(path, file_index, cfg)
        elif kind == "parquet":
            yield from read_parquet(path, file_index, cfg)
        elif kind == "text":
            yield from read_text(path, file_index, cfg)
        else:  # expand_paths only admits known kinds
            raise InputError(f"{path}: unsupported file type")
    except OSError as e:  # unreadable from the start: permissions, vanished file, not gzip...
        yield Raw(file_index, 0, None, Bad("unreadable_file", f"{type(e).__name__}: {e}"))


def read_all(files: list[str], cfg: ReadConfig) -> Iterator[Raw]:
    """Every raw record of every file, in file order then line order."""
    for i, path in enumerate(files):
        yield from read_file(path, i, cfg)


def file_sizes(files: list[str]) -> list[dict[str, Any]]:
    return [{"name": f, "bytes": Path(f).stat().st_size} for f in files]
