"""Trace format v1: one file, a JSON header, then one self-describing record per forward
step, then an index. Specified for outside writers in ``traces/README.md``.

Why this shape: a trace can be far larger than memory (a 16k-token prefill of a
48-layer, 128-expert model holds ~200 MB of router scores), so a reader must hold one
step at a time; a trace may come from a stranger, so it holds only raw little-endian
arrays and JSON, never pickles; a crash while writing must leave nothing under the final
name, so the writer fills a temporary file and renames it at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from macssim._errors import TraceError
from macssim.trace._model import ModelFacts
from macssim.trace._step import (
    FIELD_NAMES,
    FIELDS,
    MODALITIES,
    Step,
    check_step,
    normalise_step,
)

__all__ = [
    "FORMAT_VERSION",
    "MODALITIES",
    "Step",
    "Trace",
    "TraceWriter",
    "open_trace",
    "write_trace",
]

FORMAT_VERSION = 1
MAGIC = b"MACSTRC\x00"
END_MAGIC = b"MACSEND\x00"
STEP_TAG = b"STEP"
INDEX_TAG = b"INDX"

def _disk_dtype(name: str, arr: np.ndarray, model: ModelFacts) -> np.dtype:
    if name == "topk_ids":
        return np.dtype("<i2") if model.num_experts <= np.iinfo(np.int16).max else np.dtype("<i4")
    if name == "scores":
        return np.dtype("<f2")
    return np.dtype(FIELDS[name][0][0])


class TraceWriter:
    """Writes a trace step by step; the file appears under its name only on success.

    Use as a context manager: on an exception the temporary file is removed and nothing
    is left under ``path``.
    """

    def __init__(self, path: str | os.PathLike, model: ModelFacts,
                 provenance: dict[str, Any], *, fields: tuple[str, ...] | None = None,
                 compress: bool = False) -> None:
        self._path = Path(path)
        self._model = model
        self._fields = tuple(fields) if fields is not None else FIELD_NAMES
        unknown = set(self._fields) - set(FIELD_NAMES)
        if unknown:
            raise TraceError(f"{self._path}: unknown field(s) {sorted(unknown)}; "
                             f"known: {list(FIELD_NAMES)}")
        missing = [n for n, spec in FIELDS.items() if spec[3] and n not in self._fields]
        if missing:
            raise TraceError(f"{self._path}: required field(s) {missing} not in fields")
        self._compress = compress
        self._tmp = self._path.with_name(f".{self._path.name}.tmp-{os.getpid()}")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115
        self._offsets: list[int] = []
        self._tokens = 0
        header = {
            "format": "macssim-trace",
            "format_version": FORMAT_VERSION,
            "model": model.to_dict(),
            "provenance": provenance,
            "fields": list(self._fields),
            "modalities": list(MODALITIES),
        }
        blob = json.dumps(header, sort_keys=True).encode()
        self._fh.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(blob)) + blob)

    @property
    def num_steps(self) -> int:
        return len(self._offsets)

    def write(self, step: Step) -> None:
        """Validate and append one step; steps are numbered in the order written."""
        assert self._fh is not None, "writer is closed"
        where = f"{self._path}, step {len(self._offsets)}"
        step = normalise_step(step, self._model, self._fields, where)
        check_step(step, self._model, self._fields, where)
        arrays, chunks, offset = [], [], 0
        for name, arr in step.arrays().items():
            data = np.ascontiguousarray(arr, dtype=_disk_dtype(name, arr, self._model))
            arrays.append({"name": name, "dtype": data.dtype.str, "shape": list(data.shape),
                           "offset": offset, "nbytes": data.nbytes})
            chunks.append(memoryview(data).cast("B"))  # no copy
            offset += data.nbytes
        if self._compress:
            packer = zlib.compressobj(1)
            chunks = [b"".join([packer.compress(c) for c in chunks] + [packer.flush()])]
        stored_bytes, crc = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            stored_bytes += len(chunk)
        meta = {"step": len(self._offsets), "kind": step.kind, "num_tokens": step.num_tokens,
                "arrays": arrays, "payload_bytes": offset, "stored_bytes": stored_bytes,
                "compression": "zlib" if self._compress else "none", "crc32": crc}
        blob = json.dumps(meta, sort_keys=True).encode()
        self._offsets.append(self._fh.tell())
        self._fh.write(STEP_TAG + struct.pack("<I", len(blob)) + blob)
        for chunk in chunks:
            self._fh.write(chunk)
        self._tokens += step.num_tokens

    def close(self) -> Path:
        """Write the index, flush to disk and move the file to its final name."""
        if self._fh is None:
            return self._path
        index = {"num_steps": len(self._offsets), "num_tokens": self._tokens,
                 "step_offsets": self._offsets}
        blob = json.dumps(index).encode()
        at = self._fh.tell()
        self._fh.write(INDEX_TAG + struct.pack("<I", len(blob)) + blob
                       + struct.pack("<Q", at) + END_MAGIC)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self._tmp, self._path)
        return self._path

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_trace(path: str | os.PathLike, model: ModelFacts, provenance: dict[str, Any],
                steps, **kwargs) -> Path:
    """Write an iterable of steps as one trace (atomically)."""
    with TraceWriter(path, model, provenance, **kwargs) as writer:
        for step in steps:
            writer.write(step)
    return Path(path)


class Trace:
    """A trace on disk, read one step at a time.

    Opening reads the header and the index only; iterating reads, checks (CRC, shapes,
    dtypes, values) and yields one ``Step`` at a time, so memory stays at one step
    whatever the file's size.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                self._read_header(fh)
                self._read_index(fh)
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read trace: {e.strerror or e}") from e

    # -- header and index ---------------------------------------------------------------
    def _read_header(self, fh: BinaryIO) -> None:
        head = fh.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise TraceError(f"{self.path}: not a macssim trace (bad magic bytes; expected a "
                             "file written by macssim format v1, see traces/README.md)")
        version, hlen = struct.unpack("<II", head[8:16])
        if version != FORMAT_VERSION:
            raise TraceError(f"{self.path}: format_version {version} is not supported; this "
                             f"macssim reads version {FORMAT_VERSION}")
        blob = fh.read(hlen)
        if len(blob) < hlen:
            raise TraceError(f"{self.path}: truncated file: header cut short")
        try:
            header = json.loads(blob)
        except ValueError as e:
            raise TraceError(f"{self.path}: header is not valid JSON: {e}") from e
        for key in ("format_version", "model", "provenance", "fields"):
            if key not in header:
                raise TraceError(f'{self.path}: header: missing field "{key}"')
        if header["format_version"] != FORMAT_VERSION:
            raise TraceError(f'{self.path}: header: "format_version" is '
                             f"{header['format_version']!r}, expected {FORMAT_VERSION}")
        self.model = ModelFacts.from_dict(header["model"], where=f"{self.path}: header.model")
        fields = header["fields"]
        if not isinstance(fields, list) or set(fields) - set(FIELD_NAMES):
            raise TraceError(f'{self.path}: header: "fields" must be a list drawn from '
                             f"{list(FIELD_NAMES)}, got {fields!r}")
        missing = [n for n, spec in FIELDS.items() if spec[3] and n not in fields]
        if missing:
            raise TraceError(f'{self.path}: header: "fields" lacks required {missing}')
        self.fields: tuple[str, ...] = tuple(fields)
        self.provenance: dict[str, Any] = dict(header["provenance"])
        self._data_start = 16 + hlen

    def _read_index(self, fh: BinaryIO) -> None:
        tail = 16
        if self._size < self._data_start + tail:
            raise TraceError(f"{self.path}: truncated file: no index at the end (the writer "
                             "did not finish)")
        fh.seek(self._size - tail)
        end = fh.read(tail)
        if end[8:] != END_MAGIC:
            raise TraceError(f"{self.path}: truncated file: no index at the end (the writer "
                             "did not finish, or the file was cut)")
        (at,) = struct.unpack("<Q", end[:8])
        fh.seek(at)
        tag = fh.read(8)
        if len(tag) < 8 or tag[:4] != INDEX_TAG:
            raise TraceError(f"{self.path}: corrupt index")
        (ilen,) = struct.unpack("<I", tag[4:])
        try:
            index = json.loads(fh.read(ilen))
            self._offsets = [int(o) for o in index["step_offsets"]]
            self.num_tokens = int(index["num_tokens"])
        except (ValueError, KeyError, TypeError) as e:
            raise TraceError(f"{self.path}: corrupt index: {e}") from e
        self._index_at = at
        if len(self._offsets) != int(index.get("num_steps", -1)):
            raise TraceError(f"{self.path}: corrupt index: num_steps disagrees with offsets")

    # -- public -------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self._offsets)

    def __len__(self) -> int:
        return self.num_steps

    def has(self, field_name: str) -> bool:
        return field_name in self.fields

    def __iter__(self) -> Iterator[Step]:
        with open(self.path, "rb") as fh:
            for i in range(self.num_steps):
                yield self._read_step(fh, i)

    def step(self, i: int) -> Step:
        if not 0 <= i < self.num_steps:
            raise IndexError(f"{self.path}: step {i} out of range [0, {self.num_steps})")
        with open(self.path, "rb") as fh:
            return self._read_step(fh, i)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
        return digest.hexdigest()

    # -- one step -----------------------------------------------------------------------
    def _read_step(self, fh: BinaryIO, i: int) -> Step:
        where = f"{self.path}, step {i}"
        at = self._offsets[i]
        limit = self._offsets[i + 1] if i + 1 < self.num_steps else self._index_at
        fh.seek(at)
        tag = fh.read(8)
        if len(tag) < 8 or tag[:4] != STEP_TAG:
            raise TraceError(f"{where}: corrupt record (bad step tag at byte {at})")
        (mlen,) = struct.unpack("<I", tag[4:])
        try:
            meta = json.loads(fh.read(mlen))
            arrays = meta["arrays"]
            stored_bytes = int(meta["stored_bytes"])
            payload_bytes = int(meta["payload_bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise TraceError(f"{where}: corrupt step metadata: {e}") from e
        if at + 8 + mlen + stored_bytes > limit:
            raise TraceError(f"{where}: truncated record: payload runs past the next record")
        stored = fh.read(stored_bytes)
        if len(stored) < stored_bytes:
            raise TraceError(f"{where}: truncated file: payload cut short")
        if zlib.crc32(stored) != meta.get("crc32"):
            raise TraceError(f"{where}: checksum mismatch (crc32): the bytes are corrupt")
        compression = meta.get("compression", "none")
        if compression == "zlib":
            payload = zlib.decompress(stored)
        elif compression == "none":
            payload = stored
        else:
            raise TraceError(f'{where}: "compression" is {compression!r}, expected none or zlib')
        if len(payload) != payload_bytes:
            raise TraceError(f"{where}: payload is {len(payload)} bytes, header says "
                             f"{payload_bytes}")
        values: dict[str, np.ndarray] = {}
        for spec in arrays:
            values[spec["name"]] = self._decode_array(payload, spec, where)
        for name in FIELD_NAMES:
            if FIELDS[name][3] and name not in values:
                raise TraceError(f'{where}: field "{name}" is missing')
        unknown = set(values) - set(FIELD_NAMES)
        if unknown:
            raise TraceError(f"{where}: unknown field(s) {sorted(unknown)}")
        step = Step(index=i, kind=meta.get("kind", ""), **values)
        check_step(step, self.model, self.fields, where)
        return step

    @staticmethod
    def _decode_array(payload: bytes, spec: dict[str, Any], where: str) -> np.ndarray:
        name = spec.get("name", "?")
        if name not in FIELDS:
            raise TraceError(f'{where}: unknown field "{name}"; known: {list(FIELD_NAMES)}')
        allowed, out_dtype, _, _ = FIELDS[name]
        if spec.get("dtype") not in allowed:
            raise TraceError(f'{where}: "{name}" has dtype {spec.get("dtype")!r}, expected one '
                             f"of {list(allowed)}")
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape)) if shape else 1
        offset, nbytes = int(spec["offset"]), int(spec["nbytes"])
        if nbytes != count * dtype.itemsize or offset < 0 or offset + nbytes > len(payload):
            raise TraceError(f'{where}: "{name}" declares {nbytes} bytes at offset {offset}, '
                             f"which does not fit shape {list(shape)} of {dtype.str} in the "
                             f"{len(payload)}-byte payload")
        arr = np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
        return arr.astype(out_dtype)


def open_trace(path: str | os.PathLike) -> Trace:
    """Open a trace for step-by-step reading; raises TraceError if it is not valid v1."""
    return Trace(path)
