"""Trace formats v1 and v2: one file, a JSON header, then one self-describing record per
forward step, then an index. Specified for outside writers in ``docs/trace-format.md``.
Writers write v2 (top-N router scores, compact dtypes, zstd) unless asked for v1; the
reader reads both.

Why this shape: a trace can be far larger than memory (a 16k-token prefill of a
48-layer, 128-expert model holds ~200 MB of router scores), so a reader must hold one
step at a time; a trace may come from a stranger, so it holds only raw little-endian
arrays and JSON, never pickles; a crash while writing must leave nothing under the final
name, so the writer fills a temporary file and renames it at the end.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from macssim._errors import TraceError
from macssim._process import process_alive
from macssim._validate import Limits, brief, check_choice, check_int, load_json, mapping
from macssim.trace import _codec
from macssim.trace._model import ModelFacts
from macssim.trace._step import (
    FIELD_NAMES,
    FIELDS,
    FIELDS_V2,
    MODALITIES,
    TOPN_FIELDS,
    Step,
    check_ids_in_range,
    check_modality_codes,
    check_step,
    check_topk_ids,
    normalise_step,
)

__all__ = [
    "DEFAULT_TOP_N",
    "FORMAT_VERSION",
    "MODALITIES",
    "SUPPORTED_VERSIONS",
    "Step",
    "Trace",
    "TraceWriter",
    "check_trace_target",
    "open_trace",
    "write_trace",
]

FORMAT_VERSION = 2
"""What writers write by default; ``SUPPORTED_VERSIONS`` what the reader reads."""
SUPPORTED_VERSIONS = (1, 2)
MAGIC = b"MACSTRC\x00"
END_MAGIC = b"MACSEND\x00"
STEP_TAG = b"STEP"
INDEX_TAG = b"INDX"

DEFAULT_TOP_N = "2k"
"""Scores a v2 writer keeps per token and layer unless told: the top-k experts' and the k
highest-scored others' (N = 2k, at most E). See docs/trace-format.md for what is lost."""


def resolve_top_n(top_n: int | str | None, model: ModelFacts) -> int | None:
    """N scores per token and layer, or None for all E. ``"2k"``: 2k; an int N in
    (k, E]; ``None`` or ``"all"``: all. N >= E keeps all."""
    k, num_experts = model.top_k, model.num_experts
    if top_n is None or top_n == "all":
        return None
    if top_n == DEFAULT_TOP_N:
        n = 2 * k
    elif isinstance(top_n, int) and not isinstance(top_n, bool):
        n = top_n
    else:
        raise TraceError(f'top_n must be an integer, "2k" or "all", got {brief(top_n)}')
    if n <= k:
        raise TraceError(f"top_n must exceed top_k = {k} (the chosen experts plus at least "
                         f"one candidate), got {n}")
    return None if n >= num_experts else n


def _disk_dtype(name: str, arr: np.ndarray, model: ModelFacts) -> np.dtype:
    if name == "topk_ids":
        return np.dtype("<i2") if model.num_experts <= np.iinfo(np.int16).max else np.dtype("<i4")
    if name == "scores":
        return np.dtype("<f2")
    return np.dtype(FIELDS[name][0][0])


class TraceWriter:
    """Writes a trace step by step; the file appears under its name only on success.

    Use as a context manager: on an exception the temporary file is removed and nothing
    is left under ``path``. A file already at ``path`` is never overwritten unless it is
    a macssim trace and ``replace`` is true; temporaries of killed writers
    (``.NAME.tmp-PID``, their process gone) are removed.
    """

    def __init__(self, path: str | os.PathLike, model: ModelFacts,
                 provenance: dict[str, Any], *, fields: tuple[str, ...] | None = None,
                 compress: bool = False, replace: bool = False,
                 format_version: int = FORMAT_VERSION, codec: str | None = None,
                 top_n: int | str | None = DEFAULT_TOP_N) -> None:
        """``fields``: the step fields to store (default all). ``format_version`` 2
        (default) or 1. ``codec``: "zstd" (v2's default), "zlib" or "none"; None means
        v2's default, or for v1 "zlib" when ``compress`` else "none" (``compress`` is a
        v1 switch: v2 always compresses unless ``codec="none"``). ``top_n`` (v2): scores
        kept per token and layer: ``"2k"`` (default), an int N > k, or ``None``/"all"
        for every expert's."""
        self._path = Path(path)
        self._replace = replace
        _check_target(self._path, replace)
        self._model = model
        if format_version not in SUPPORTED_VERSIONS:
            raise TraceError(f"{self._path}: format_version must be one of "
                             f"{list(SUPPORTED_VERSIONS)}, got {brief(format_version)}")
        self._version = format_version
        if codec is None:
            codec = "zstd" if format_version >= 2 else ("zlib" if compress else "none")
        allowed = _codec.CODECS if format_version >= 2 else ("none", "zlib")
        if codec not in allowed:
            raise TraceError(f"{self._path}: codec must be one of {list(allowed)} for "
                             f"format v{format_version}, got {brief(codec)}")
        self._codec = codec
        self._fields = tuple(fields) if fields is not None else FIELD_NAMES
        unknown = set(self._fields) - set(FIELD_NAMES)
        if unknown:
            raise TraceError(f"{self._path}: unknown field(s) {sorted(unknown)}; "
                             f"known: {list(FIELD_NAMES)}")
        missing = [n for n, spec in FIELDS.items() if spec[3] and n not in self._fields]
        if missing:
            raise TraceError(f"{self._path}: required field(s) {missing} not in fields")
        if len(set(self._fields)) != len(self._fields):
            raise TraceError(f"{self._path}: a field is listed twice in {list(self._fields)}")
        self._top_n = (resolve_top_n(top_n, model)
                       if format_version >= 2 and "scores" in self._fields else None)
        self._offsets: list[int] = []
        self._tokens = 0
        stored = list(self._fields)
        header: dict[str, Any] = {
            "format": "macssim-trace",
            "format_version": format_version,
            "model": model.to_dict(),
            "provenance": provenance,
            "modalities": list(MODALITIES),
        }
        if self._top_n is not None:
            at = stored.index("scores")
            stored[at:at + 1] = list(TOPN_FIELDS)
            header["score_candidates"] = self._top_n - model.top_k
        header["fields"] = stored
        try:  # plain, finite JSON only: what a reader accepts
            blob = json.dumps(header, sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as e:
            raise TraceError(f"{self._path}: provenance must be plain JSON (strings, finite "
                             f"numbers, lists, objects): {e}") from None
        self._tmp = self._path.with_name(f".{self._path.name}.tmp-{os.getpid()}")
        self._fh: BinaryIO | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(self._path)
            self._fh = open(self._tmp, "wb")  # noqa: SIM115
            self._fh.write(MAGIC + struct.pack("<II", format_version, len(blob)) + blob)
        except OSError as e:
            self.abort()
            raise TraceError(f"{self._path}: cannot write trace: {e.strerror or e}") from e

    @property
    def num_steps(self) -> int:
        return len(self._offsets)

    def write(self, step: Step) -> None:
        """Validate and append one step; steps are numbered in the order written."""
        assert self._fh is not None, "writer is closed"
        where = f"{self._path}, step {len(self._offsets)}"
        if len(self._offsets) >= Limits.MAX_STEPS:
            raise TraceError(f"{where}: a trace holds at most {Limits.MAX_STEPS} steps")
        step = normalise_step(step, self._model, self._fields, where)
        check_step(step, self._model, self._fields, where)
        if step.num_tokens > Limits.MAX_TOKENS_PER_STEP:
            raise TraceError(f"{where}: {step.num_tokens} tokens, at most "
                             f"{Limits.MAX_TOKENS_PER_STEP} in one step")
        derived: list[str] = []
        if self._version >= 2:
            planned, derived = self._encode_v2(step, where)
        else:
            if step.score_known is not None:
                raise TraceError(f"{where}: the step keeps only the top-N router scores; "
                                 "format v1 stores every expert's: write format v2")
            planned = []
            for name, arr in step.arrays().items():
                data = np.ascontiguousarray(arr, dtype=_disk_dtype(name, arr, self._model))
                _check_representable(data, name, where)
                planned.append((name, data, ()))
        arrays, chunks, offset = [], [], 0
        for name, data, filters in planned:
            raw = _codec.encode_filters(data, filters) if filters else \
                data.reshape(-1).view(np.uint8)  # no copy
            entry = {"name": name, "dtype": data.dtype.str, "shape": list(data.shape),
                     "offset": offset, "nbytes": data.nbytes}
            if self._version >= 2:
                entry["filters"] = list(filters)
            arrays.append(entry)
            chunks.append(memoryview(raw))
            offset += data.nbytes
        if offset > Limits.MAX_STEP_PAYLOAD_BYTES:
            raise TraceError(f"{where}: the step's arrays take {offset} bytes, at most "
                             f"{Limits.MAX_STEP_PAYLOAD_BYTES} in one step; split it")
        chunks = _codec.compress(chunks, self._codec)
        stored_bytes, crc = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            stored_bytes += len(chunk)
        meta = {"step": len(self._offsets), "kind": step.kind, "num_tokens": step.num_tokens,
                "arrays": arrays, "payload_bytes": offset, "stored_bytes": stored_bytes,
                "compression": self._codec, "crc32": crc}
        if self._version >= 2:
            meta["derived"] = derived
        blob = json.dumps(meta, sort_keys=True).encode()
        try:
            at = self._fh.tell()
            self._fh.write(STEP_TAG + struct.pack("<I", len(blob)) + blob)
            for chunk in chunks:
                self._fh.write(chunk)
        except OSError as e:
            raise TraceError(f"{where}: cannot write trace: {e.strerror or e}") from e
        self._offsets.append(at)
        self._tokens += step.num_tokens

    def _encode_v2(self, step: Step, where: str
                   ) -> tuple[list[tuple[str, np.ndarray, tuple[str, ...]]], list[str]]:
        """The arrays a v2 step stores, each with its disk dtype and filters, and the
        fields it leaves for the reader to derive."""
        model = self._model
        id_dtype = np.dtype("|u1") if model.num_experts <= 256 else _disk_dtype(
            "topk_ids", step.topk_ids, model)
        shuffle: tuple[str, ...] = ("shuffle",)
        scores_f = ("delta", "shuffle")
        ids = np.ascontiguousarray(step.topk_ids, dtype=id_dtype)
        out: list[tuple[str, np.ndarray, tuple[str, ...]]] = []
        derived: list[str] = []
        rid = np.asarray(step.request_id)
        rid_dtype = np.dtype("<i4") if (not rid.size or (
            int(rid.min()) >= np.iinfo(np.int32).min
            and int(rid.max()) <= np.iinfo(np.int32).max)) else np.dtype("<i8")
        out.append(("modality", np.ascontiguousarray(step.modality, dtype="|u1"), ()))
        out.append(("request_id", np.ascontiguousarray(rid, dtype=rid_dtype), shuffle))
        out.append(("position", np.ascontiguousarray(step.position, dtype="<i4"), shuffle))
        out.append(("topk_ids", ids, shuffle))
        topk_src = None
        if step.scores is not None:
            s16 = np.ascontiguousarray(step.scores, dtype="<f2")
            _check_representable(s16, "scores", where)
            topk_src = np.take_along_axis(s16, step.topk_ids, axis=2)
            if self._top_n is None:
                if step.score_known is not None:
                    raise TraceError(f"{where}: the step keeps only the top-N router scores; "
                                     "it cannot be written with every expert's (top_n=None)")
                out.append(("scores", s16, shuffle))
            else:
                m = self._top_n - model.top_k
                cand = _codec.choose_candidates(s16, step.topk_ids, step.score_known, m, where)
                out.append(("topk_scores", np.ascontiguousarray(topk_src), scores_f))
                out.append(("cand_ids", np.ascontiguousarray(cand, dtype=id_dtype), shuffle))
                out.append(("cand_scores", np.ascontiguousarray(
                    np.take_along_axis(s16, cand, axis=2)), scores_f))
        if step.topk_weights is not None:
            w = np.ascontiguousarray(step.topk_weights, dtype="<f4")
            _check_representable(w, "topk_weights", where)
            if topk_src is not None and np.array_equal(
                    _codec.derive_weights(topk_src).view(np.uint32), w.view(np.uint32)):
                derived.append("topk_weights")
            else:
                out.append(("topk_weights", w, shuffle))
        if step.entropy is not None:
            e = np.ascontiguousarray(step.entropy, dtype="<f4")
            _check_representable(e, "entropy", where)
            out.append(("entropy", e, shuffle))
        return out, derived

    def close(self) -> Path:
        """Write the index, flush to disk and move the file to its final name."""
        if self._fh is None:
            return self._path
        index = {"num_steps": len(self._offsets), "num_tokens": self._tokens,
                 "step_offsets": self._offsets}
        blob = json.dumps(index).encode()
        try:
            at = self._fh.tell()
            self._fh.write(INDEX_TAG + struct.pack("<I", len(blob)) + blob
                           + struct.pack("<Q", at) + END_MAGIC)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            _check_target(self._path, self._replace)  # again: it may have appeared meanwhile
            os.replace(self._tmp, self._path)
        except OSError as e:
            self.abort()
            raise TraceError(f"{self._path}: cannot write trace: {e.strerror or e}") from e
        return self._path

    def abort(self) -> None:
        try:
            if self._fh is not None:
                self._fh.close()
        except OSError:
            pass  # the temporary file goes anyway
        finally:
            self._fh = None
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                pass  # nothing left under the final name either way

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_representable(data: np.ndarray, name: str, where: str) -> None:
    if data.dtype.kind == "f" and data.size and not np.isfinite(data).all():
        raise TraceError(f'{where}: "{name}" holds values beyond the range of the '
                         f"{data.dtype} it is stored as (a reader would refuse them)")


def check_trace_target(path: str | os.PathLike, *, replace: bool = False) -> None:
    """Raise TraceError unless a trace may be written to ``path``: nothing is there, or an
    earlier macssim trace is and ``replace`` is true. Commands call it before long work."""
    _check_target(Path(path), replace)


def _check_target(path: Path, replace: bool) -> None:
    """Refuse to overwrite anything but an earlier macssim trace, and that only when asked."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise TraceError(f"{path}: exists and is not a regular file; give another output path")
    try:
        with open(path, "rb") as fh:
            ours = fh.read(len(MAGIC)) == MAGIC
    except OSError as e:
        raise TraceError(f"{path}: exists and cannot be read ({e.strerror or e}); macssim "
                         "overwrites only its own traces") from e
    if not ours:
        raise TraceError(f"{path}: exists and is not a macssim trace; macssim never "
                         "overwrites a file it did not write — give another output path")
    if not replace:
        raise TraceError(f"{path}: holds a macssim trace already; pass --force to replace it "
                         "(or give another output path)")


def _remove_stale_temporaries(path: Path) -> None:
    """``.NAME.tmp-PID`` files beside ``path`` whose writing process is gone."""
    prefix = f".{path.name}.tmp-"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()


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

    The file may come from a stranger: every length, offset and count it holds is
    checked against the file's size and ``macssim._validate.Limits`` before anything is
    read or allocated, a compressed payload is inflated only up to the size its metadata
    declares, and every problem is a ``TraceError`` naming the file, the step (and layer)
    and the field.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            info = self.path.stat()
            if stat.S_ISDIR(info.st_mode):
                raise TraceError(f"{self.path}: is a directory, not a trace file")
            if not stat.S_ISREG(info.st_mode):
                raise TraceError(f"{self.path}: not a regular file (a trace is a file on "
                                 "disk)")
            with open(self.path, "rb") as fh:
                self._size = os.fstat(fh.fileno()).st_size
                self._read_header(fh)
                self._read_index(fh)
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read trace: {e.strerror or e}") from e
        except ValueError as e:  # a NUL byte in the path
            raise TraceError(f"{self.path}: cannot read trace: {e}") from e

    # -- header and index ---------------------------------------------------------------
    def _read_header(self, fh: BinaryIO) -> None:
        if self._size == 0:
            raise TraceError(f"{self.path}: empty file, not a macssim trace")
        head = fh.read(_HEAD)
        if head[:8] != MAGIC[:len(head)]:
            raise TraceError(f"{self.path}: not a macssim trace (bad magic bytes; expected a "
                             "file written by macssim format v1 or v2, see "
                             "docs/trace-format.md)")
        if len(head) < _HEAD:
            raise TraceError(f"{self.path}: truncated file: cut inside the first {_HEAD} "
                             "bytes (magic, version, header length)")
        version, hlen = struct.unpack("<II", head[8:16])
        if version not in SUPPORTED_VERSIONS:
            raise TraceError(f"{self.path}: format_version {version} is not supported; this "
                             f"macssim reads versions {list(SUPPORTED_VERSIONS)}")
        self.version: int = version
        room = self._size - _HEAD - _TAIL
        if hlen > room:
            raise TraceError(f"{self.path}: truncated file or corrupt header length: the "
                             f"header claims {hlen} bytes, but the file holds {max(room, 0)} "
                             f"bytes between its first {_HEAD} and its last {_TAIL}")
        if hlen > Limits.MAX_JSON_BYTES:
            raise TraceError(f"{self.path}: header is {hlen} bytes, at most "
                             f"{Limits.MAX_JSON_BYTES} allowed")
        blob = fh.read(hlen)
        if len(blob) < hlen:
            raise TraceError(f"{self.path}: truncated file: header cut short")
        where = f"{self.path}: header"
        header = mapping(load_json(blob, str(self.path), what="header JSON",
                                   error=TraceError),
                         str(self.path), "header", error=TraceError)
        for key in ("format", "format_version", "model", "provenance", "fields"):
            if key not in header:
                raise TraceError(f'{where}: missing field "{key}"')
        check_choice(header["format"], where, "format", ("macssim-trace",), error=TraceError)
        fv = header["format_version"]
        if isinstance(fv, bool) or not isinstance(fv, int) or fv != version:
            raise TraceError(f'{where}: "format_version" is {brief(fv)}, expected '
                             f"{version} (the binary version field)")
        self.model = ModelFacts.from_dict(header["model"], where=f"{where}.model")
        table = FIELDS_V2 if version >= 2 else FIELDS
        self._table = table
        fields = header["fields"]
        if (not isinstance(fields, list) or len(fields) > len(table)
                or not all(isinstance(f, str) and f in table for f in fields)
                or len(set(fields)) != len(fields)):
            raise TraceError(f'{where}: "fields" must be a list of distinct names drawn from '
                             f"{list(table)}, got {brief(fields)}")
        missing = [n for n, spec in table.items() if spec[3] and n not in fields]
        if missing:
            raise TraceError(f'{where}: "fields" lacks required {missing}')
        if "modalities" in header and header["modalities"] != list(MODALITIES):
            raise TraceError(f'{where}: "modalities" must be {list(MODALITIES)} (format '
                             f"v{version}), got {brief(header['modalities'])}")
        topn = [f for f in TOPN_FIELDS if f in fields]
        self._candidates = 0
        if topn:
            if len(topn) != len(TOPN_FIELDS) or "scores" in fields:
                raise TraceError(f'{where}: "fields" must hold all of {list(TOPN_FIELDS)} (top-N '
                                 f'scores) or none, and never with "scores", got {fields}')
            if "score_candidates" not in header:
                raise TraceError(f'{where}: missing field "score_candidates" (top-N scores)')
            self._candidates = check_int(
                header["score_candidates"], where, "score_candidates", low=1,
                high=self.model.num_experts - self.model.top_k, error=TraceError)
        elif "score_candidates" in header:
            raise TraceError(f'{where}: "score_candidates" without the top-N score fields '
                             f"{list(TOPN_FIELDS)}")
        self.stored_fields: tuple[str, ...] = tuple(fields)
        """The fields as the file stores them (v2: top-N scores as topk_scores, cand_ids,
        cand_scores)."""
        self.fields: tuple[str, ...] = tuple(
            "scores" if f == TOPN_FIELDS[0] else f for f in fields if f not in TOPN_FIELDS[1:])
        """The step fields a reader gets (``scores`` whether all or the top-N are kept)."""
        self.scores_top_n: int | None = (self.model.top_k + self._candidates
                                         if self._candidates else None)
        """N scores kept per token and layer, or None (all of them, or no scores)."""
        self.provenance: dict[str, Any] = dict(
            mapping(header["provenance"], where, "provenance", error=TraceError))
        self._data_start = _HEAD + hlen
        self._spec_cache: dict[tuple[int, str], list[_Spec]] = {}
        """Array descriptions already checked (``_checked_specs``)."""

    def _read_index(self, fh: BinaryIO) -> None:
        end_at = self._size - _TAIL
        fh.seek(end_at)
        end = fh.read(_TAIL)
        if len(end) < _TAIL or end[8:] != END_MAGIC:
            raise TraceError(f"{self.path}: truncated file: no index at the end (the writer "
                             "did not finish, or the file was cut)")
        where = f"{self.path}: index"
        (at,) = struct.unpack("<Q", end[:8])
        if not self._data_start <= at <= end_at - 8:
            raise TraceError(f"{where}: corrupt index: it is said to start at byte {at}, "
                             f"expected a byte in [{self._data_start}, {end_at - 8}] (after "
                             "the header, before the end marker)")
        fh.seek(at)
        tag = fh.read(8)
        if len(tag) < 8 or tag[:4] != INDEX_TAG:
            raise TraceError(f"{where}: corrupt index: no INDX tag at byte {at}")
        (ilen,) = struct.unpack("<I", tag[4:])
        if at + 8 + ilen != end_at:
            raise TraceError(f"{where}: corrupt index: its length {ilen} does not end where "
                             f"the end marker starts (byte {end_at}); expected "
                             f"{end_at - at - 8}")
        index = mapping(load_json(fh.read(ilen), where, what="index JSON", error=TraceError),
                        where, "index", error=TraceError)
        for key in ("num_steps", "num_tokens", "step_offsets"):
            if key not in index:
                raise TraceError(f'{where}: missing field "{key}"')
        num_steps = check_int(index["num_steps"], where, "num_steps", low=0,
                              high=Limits.MAX_STEPS, error=TraceError)
        offsets = index["step_offsets"]
        if not isinstance(offsets, list) or len(offsets) != num_steps:
            raise TraceError(f'{where}: "step_offsets" must be a list of "num_steps" = '
                             f"{num_steps} byte offsets, got {brief(offsets)}")
        previous = None
        for i, value in enumerate(offsets):
            low = self._data_start if previous is None else previous + 8
            offset = check_int(value, where, f"step_offsets[{i}]", low=low, high=at - 8,
                               error=TraceError)
            if previous is None and offset != self._data_start:
                raise TraceError(f'{where}: "step_offsets[0]" is {offset}, expected '
                                 f"{self._data_start} (the first step follows the header)")
            previous = offset
        if not offsets and at != self._data_start:
            raise TraceError(f"{where}: corrupt index: no steps, yet {at - self._data_start} "
                             "bytes lie between the header and the index")
        self.num_tokens = check_int(index["num_tokens"], where, "num_tokens", low=0,
                                    high=num_steps * Limits.MAX_TOKENS_PER_STEP,
                                    error=TraceError)
        self._offsets: list[int] = offsets
        self._index_at = at

    # -- public -------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self._offsets)

    def __len__(self) -> int:
        return self.num_steps

    def has(self, field_name: str) -> bool:
        """Whether steps carry ``field_name``; ``has("scores")`` is True for top-N scores
        too: ask ``scores_complete`` whether every expert's score is there."""
        return field_name in self.fields

    @property
    def scores_complete(self) -> bool:
        """True when the steps hold every expert's router score; False when they hold none
        or only the top-N (``scores_top_n``), each step's ``score_known`` saying which."""
        return "scores" in self.stored_fields

    def __iter__(self) -> Iterator[Step]:
        """Every step in order; after the last, the index's token total is checked against
        what the steps held (a reader that stops early checks nothing it did not read)."""
        tokens = 0
        with self._open() as fh:
            for i in range(self.num_steps):
                step = self._read_step(fh, i)
                tokens += step.num_tokens
                yield step
        if tokens != self.num_tokens:
            raise TraceError(f'{self.path}: index: "num_tokens" is {self.num_tokens}, but the '
                             f"steps hold {tokens} tokens")

    def expert_choices(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(topk_ids [L, T, k], modality [T]) of every step in order, each checked, without
        the rest of the step: what counting expert loads per modality needs (MACS's
        expert labels read a whole trace for these alone; spreading a prefill's top-N
        scores to [L, T, E] would take most of the time)."""
        with self._open() as fh:
            for i in range(self.num_steps):
                yield self._read_step(fh, i, choices_only=True)

    def step(self, i: int) -> Step:
        if not 0 <= i < self.num_steps:
            raise IndexError(f"{self.path}: step {i} out of range [0, {self.num_steps})")
        with self._open() as fh:
            return self._read_step(fh, i)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with self._open() as fh:
            try:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
            except OSError as e:
                raise TraceError(f"{self.path}: cannot read trace: {e.strerror or e}") from e
        return digest.hexdigest()

    def _open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")  # noqa: SIM115 - the callers close it
        except OSError as e:
            raise TraceError(f"{self.path}: cannot read trace: {e.strerror or e}") from e

    # -- one step -----------------------------------------------------------------------
    def _read_step(self, fh: BinaryIO, i: int, choices_only: bool = False) -> Any:
        where = f"{self.path}, step {i}"
        try:
            return self._read_step_unguarded(fh, i, where, choices_only)
        except OSError as e:
            raise TraceError(f"{where}: cannot read: {e.strerror or e}") from e

    def _expert_choices(self, payload: bytes, specs: list, num_tokens: int, where: str
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(topk_ids, modality) of a step's payload, decoded and checked alone."""
        model = self.model
        got = {spec[0]: _decode_array(payload, spec, self._table) for spec in specs
               if spec[0] in ("topk_ids", "modality")}
        ids, modality = got["topk_ids"], got["modality"]
        _check_token_count(modality, num_tokens, where)
        want = (model.num_moe_layers, num_tokens, model.top_k)
        if ids.shape != want:
            raise TraceError(f'{where}: "topk_ids" has shape {list(ids.shape)}, expected '
                             f"[L, T, k] = {list(want)}")
        check_topk_ids(ids, model.num_experts, where)
        check_modality_codes(modality, where)
        return ids, modality

    def _read_step_unguarded(self, fh: BinaryIO, i: int, where: str,
                             choices_only: bool = False) -> Step | tuple[np.ndarray, ...]:
        at = self._offsets[i]
        end = self._offsets[i + 1] if i + 1 < self.num_steps else self._index_at
        fh.seek(at)
        tag = fh.read(8)
        if len(tag) < 8:
            raise TraceError(f"{where}: truncated file: record cut short at byte {at}")
        if tag[:4] != STEP_TAG:
            raise TraceError(f"{where}: corrupt record (bad step tag at byte {at})")
        (mlen,) = struct.unpack("<I", tag[4:])
        if mlen > end - at - 8:
            raise TraceError(f"{where}: corrupt record: metadata length {mlen} runs past the "
                             f"record's end at byte {end} (at most {end - at - 8})")
        meta = mapping(load_json(fh.read(mlen), where, what="step metadata",
                                 error=TraceError), where, "step metadata", error=TraceError)
        for key in _META_KEYS + (("derived",) if self.version >= 2 else ()):
            if key not in meta:
                raise TraceError(f'{where}: step metadata: missing field "{key}"')
        number = check_int(meta["step"], where, "step", low=0, error=TraceError)
        if number != i:
            raise TraceError(f'{where}: "step" is {number}, expected {i} (records out of '
                             "order, or an index pointing at the wrong record)")
        kind = check_choice(meta["kind"], where, "kind", _STEP_KINDS, error=TraceError)
        num_tokens = check_int(meta["num_tokens"], where, "num_tokens", low=0,
                               high=Limits.MAX_TOKENS_PER_STEP, error=TraceError)
        compression = check_choice(meta["compression"], where, "compression",
                                   _codec.CODECS if self.version >= 2 else ("none", "zlib"),
                                   error=TraceError)
        room = end - at - 8 - mlen
        stored_bytes = check_int(meta["stored_bytes"], where, "stored_bytes", low=0,
                                 error=TraceError)
        if stored_bytes != room:
            raise TraceError(f'{where}: truncated or corrupt record: "stored_bytes" is '
                             f"{stored_bytes}, but {room} bytes lie between the metadata and "
                             f"the next record (byte {end})")
        crc = check_int(meta["crc32"], where, "crc32", low=0, high=0xFFFFFFFF,
                        error=TraceError)
        payload_bytes = check_int(meta["payload_bytes"], where, "payload_bytes", low=0,
                                  error=TraceError)
        if payload_bytes > Limits.MAX_STEP_PAYLOAD_BYTES:
            raise TraceError(f'{where}: "payload_bytes" is {payload_bytes}, more than the '
                             f"{Limits.MAX_STEP_PAYLOAD_BYTES} bytes one step may hold")
        most = self._max_payload(num_tokens)
        if payload_bytes > most:
            raise TraceError(f'{where}: "payload_bytes" is {payload_bytes}, more than the '
                             f"{most} bytes the header's fields take for {num_tokens} tokens")
        if compression == "none" and payload_bytes != stored_bytes:
            raise TraceError(f'{where}: "payload_bytes" is {payload_bytes}, but an '
                             f'uncompressed payload stores {stored_bytes} ("stored_bytes")')
        derived = self._check_derived(meta.get("derived", []), where)
        specs = self._checked_specs(meta["arrays"], payload_bytes, where)
        stored = fh.read(stored_bytes)
        if len(stored) < stored_bytes:
            raise TraceError(f"{where}: truncated file: payload cut short")
        if zlib.crc32(stored) != crc:
            raise TraceError(f"{where}: checksum mismatch (crc32): the bytes are corrupt")
        payload = _codec.decompress(stored, compression, payload_bytes, where)
        del stored
        for name in self.stored_fields:
            if name not in derived and not any(spec[0] == name for spec in specs):
                raise TraceError(f'{where}: field "{name}" is missing')
        if choices_only:
            return self._expert_choices(payload, specs, num_tokens, where)
        values = {spec[0]: _decode_array(payload, spec, self._table) for spec in specs}
        half = any(sp[0] in ("topk_scores", "scores") and sp[1].str == "<f2" for sp in specs)
        del payload
        _check_token_count(values["modality"], num_tokens, where)
        if self.version >= 2:
            values = self._assemble_v2(values, derived, num_tokens, where, half)
        step = Step(index=i, kind=kind, **values)
        # v2 top-N scores were checked as stored (finite, >= 0) before being spread out
        # (and topk_ids: in range by check_ids_in_range, without repeats by the slot count)
        check_step(step, self.model, self.fields, where,
                   checked=("scores", "topk_ids") if step.score_known is not None else ())
        return step

    def _check_derived(self, derived: Any, where: str) -> tuple[str, ...]:
        if (not isinstance(derived, list) or len(derived) > 1
                or any(d != "topk_weights" for d in derived)):
            raise TraceError(f'{where}: "derived" must be [] or ["topk_weights"], got '
                             f"{brief(derived)}")
        if derived and ("topk_weights" not in self.fields or "scores" not in self.fields):
            raise TraceError(f'{where}: "derived" names "topk_weights", which needs the field '
                             'listed in the header and scores to derive it from')
        return tuple(derived)

    def _assemble_v2(self, values: dict[str, np.ndarray], derived: tuple[str, ...],
                     num_tokens: int, where: str, half: bool) -> dict[str, Any]:
        """Stored v2 arrays -> the Step's fields: top-N scores spread over [L, T, E] with
        the mask of what is known, derived weights recomputed (``half``: the scores were
        stored as float16)."""
        model = self.model
        dims = {"L": model.num_moe_layers, "T": num_tokens, "k": model.top_k,
                "E": model.num_experts, "M": self._candidates}
        for name, arr in values.items():
            want = tuple(dims[d] for d in self._table[name][2])
            if arr.shape != want:
                raise TraceError(f'{where}: "{name}" has shape {list(arr.shape)}, expected '
                                 f"[{', '.join(self._table[name][2])}] = {list(want)}")
        ids = values["topk_ids"]
        if "scores" in values:
            _check_nonneg_finite(values["scores"], "scores", where)
        if "topk_weights" in derived and "topk_weights" in values:
            raise TraceError(f'{where}: "topk_weights" is both stored and "derived"')
        out = {n: v for n, v in values.items() if n not in TOPN_FIELDS}
        if "topk_scores" not in values:
            check_ids_in_range(ids, model.num_experts, "topk_ids", where)
        else:
            top, cand, cand_s = values["topk_scores"], values["cand_ids"], values["cand_scores"]
            dims = (model.num_moe_layers, num_tokens)
            # one pass over top-k and candidates together; on a failure, the field at fault
            both = np.concatenate([ids, cand], axis=2)
            kept = np.concatenate([top, cand_s], axis=2)
            if both.size and (int(both.min()) < 0 or int(both.max()) >= model.num_experts):
                check_ids_in_range(ids, model.num_experts, "topk_ids", where)
                check_ids_in_range(cand, model.num_experts, "cand_ids", where)
            if kept.size and not (np.isfinite(kept).all() and kept.min() >= 0):
                _check_nonneg_finite(top, "topk_scores", where)
                _check_nonneg_finite(cand_s, "cand_scores", where)
            rising = (cand_s[..., 1:] > cand_s[..., :-1]).any(axis=2)
            if rising.any():
                layer = int(np.argmax(rising.any(axis=1)))
                raise TraceError(f'{where}, layer {layer}: "cand_scores" must not increase '
                                 f"along a token's candidates (token "
                                 f"{int(np.argmax(rising[layer]))})")
            num_experts = model.num_experts
            dense = np.zeros(dims + (num_experts,), dtype=np.float32)
            known = np.zeros(dense.shape, dtype=bool)
            base = (np.arange(dims[0] * dims[1], dtype=np.int64) * num_experts).reshape(
                dims + (1,))
            flat = (base + both).reshape(-1)
            dense.reshape(-1)[flat] = kept.reshape(-1)
            known.reshape(-1)[flat] = True
            # ids are in range, so rows never share a slot: a repeat within a row (topk_ids
            # are checked alike later) shows as fewer slots set than written.
            if np.count_nonzero(known) != flat.size:
                for name, arr in (("topk_ids", ids), ("cand_ids", both)):
                    srt = np.sort(arr, axis=2)
                    dup = (srt[..., 1:] == srt[..., :-1]).any(axis=2)
                    if dup.any():
                        layer = int(np.argmax(dup.any(axis=1)))
                        token = int(np.argmax(dup[layer]))
                        raise TraceError(
                            f'{where}, layer {layer}: "{name}" names one expert twice (among '
                            f"{'the top-k' if name == 'topk_ids' else 'top-k and candidates'})"
                            f" for token {token}: {arr[layer, token].tolist()}")
            out["scores"] = dense
            out["score_known"] = known
            out["score_floor"] = np.ascontiguousarray(cand_s[..., -1])
        if "topk_weights" in derived:
            # float16 -> float32 is exact, so deriving from the widened scores is the rule.
            topk_src = (values["topk_scores"] if "topk_scores" in values
                        else np.take_along_axis(values["scores"], ids, axis=2))
            out["topk_weights"] = _codec.derive_weights(
                topk_src, exact_sum=half)
        return out

    def _max_payload(self, num_tokens: int) -> int:
        per_token = getattr(self, "_per_token_bytes", None)
        if per_token is None:
            per_token = self._per_token_bytes = self._max_payload_of(1)
        return per_token * num_tokens

    def _max_payload_of(self, num_tokens: int) -> int:
        """Bytes a step of ``num_tokens`` tokens needs at most for the header's fields (each
        in its widest allowed dtype): a payload claiming more is not this trace's."""
        dims = {"L": self.model.num_moe_layers, "T": num_tokens, "k": self.model.top_k,
                "E": self.model.num_experts, "M": self._candidates}
        total = 0
        for name in self.stored_fields:
            allowed, _, template, _ = self._table[name]
            total += math.prod(dims[d] for d in template) * max(
                np.dtype(d).itemsize for d in allowed)
        return total

    def _checked_specs(self, specs: Any, payload_bytes: int, where: str) -> list[_Spec]:
        """``_check_specs``, remembered: steps of one size (a trace's decode steps) describe
        their arrays identically, and a description that passed once passes again. The key
        is the description's text, so nothing unchecked is ever reused."""
        key = (payload_bytes, repr(specs))
        hit = self._spec_cache.get(key)
        if hit is None:
            hit = self._check_specs(specs, payload_bytes, where)
            if len(self._spec_cache) < 256:
                self._spec_cache[key] = hit
        return hit

    def _check_specs(self, specs: Any, payload_bytes: int, where: str) -> list[_Spec]:
        """The ``arrays`` entries of a step's metadata, each checked to describe an array
        inside the payload: (name, dtype, shape, offset, filters)."""
        v2 = self.version >= 2
        known = self.stored_fields if v2 else FIELD_NAMES
        if not isinstance(specs, list) or len(specs) > len(known):
            raise TraceError(f'{where}: "arrays" must be a list of at most '
                             f"{len(known)} array descriptions, got {brief(specs)}")
        out: list[_Spec] = []
        for j, spec in enumerate(specs):
            mapping(spec, where, f"arrays[{j}]", error=TraceError)
            name = spec.get("name")
            if not isinstance(name, str) or name not in known:
                raise TraceError(f'{where}: unknown field {brief(name)} in "arrays[{j}].name"; '
                                 f"known: {list(known)}")
            if any(name == o[0] for o in out):
                raise TraceError(f'{where}: field "{name}" appears twice in "arrays"')
            for key in ("dtype", "shape", "offset", "nbytes") + (("filters",) if v2 else ()):
                if key not in spec:
                    raise TraceError(f'{where}: "arrays.{name}" lacks "{key}"')
            filters: tuple[str, ...] = ()
            if v2:
                f = spec["filters"]
                if (not isinstance(f, list) or any(x not in _codec.FILTERS for x in f)
                        or len(set(f)) != len(f)
                        or f != [x for x in _codec.FILTERS if x in f]):
                    raise TraceError(f'{where}: "arrays.{name}.filters" must list distinct '
                                     f"filters from {list(_codec.FILTERS)} in that order, got "
                                     f"{brief(f)}")
                filters = tuple(f)
            allowed, _, template, _ = self._table[name]
            if not isinstance(spec["dtype"], str) or spec["dtype"] not in allowed:
                raise TraceError(f'{where}: "{name}" has dtype {brief(spec["dtype"])}, expected '
                                 f"one of {list(allowed)}")
            dtype = np.dtype(spec["dtype"])
            shape = spec["shape"]
            if not isinstance(shape, list) or len(shape) != len(template):
                raise TraceError(f'{where}: "arrays.{name}.shape" must be a list of '
                                 f"{len(template)} sizes [{', '.join(template)}], got "
                                 f"{brief(shape)}")
            dims = tuple(check_int(s, where, f"arrays.{name}.shape[{d}]", low=0,
                                   high=_MAX_DIM, error=TraceError)
                         for d, s in enumerate(shape))
            offset = check_int(spec["offset"], where, f"arrays.{name}.offset", low=0,
                               high=payload_bytes, error=TraceError)
            nbytes = check_int(spec["nbytes"], where, f"arrays.{name}.nbytes", low=0,
                               high=payload_bytes, error=TraceError)
            if nbytes != math.prod(dims) * dtype.itemsize or offset + nbytes > payload_bytes:
                raise TraceError(f'{where}: "{name}" declares {nbytes} bytes at offset {offset}, '
                                 f"which does not fit shape {list(dims)} of {dtype.str} in the "
                                 f"{payload_bytes}-byte payload")
            out.append((name, dtype, dims, offset, filters))
        return out


_Spec = tuple[str, np.dtype, tuple[int, ...], int, tuple[str, ...]]
_HEAD = 16
"""Magic, version, header length."""
_TAIL = 16
"""Index offset and end magic."""
_META_KEYS = ("step", "kind", "num_tokens", "arrays", "payload_bytes", "stored_bytes",
              "compression", "crc32")
_STEP_KINDS = ("prefill", "decode")
_MAX_DIM = max(Limits.MAX_LAYERS, Limits.MAX_TOKENS_PER_STEP, Limits.MAX_TOP_K,
               Limits.MAX_EXPERTS)
"""Largest size of one axis of a step array (an empty array may have a large axis; its
bytes are still checked against the payload)."""
def _decode_array(payload: bytes, spec: _Spec, table) -> np.ndarray:
    name, dtype, shape, offset, filters = spec
    out_dtype = table[name][1]
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype=out_dtype)
    arr = _codec.decode_filters(payload, offset, dtype, shape, filters)
    return arr.astype(out_dtype, copy=not arr.flags.writeable)


def _check_nonneg_finite(arr: np.ndarray, name: str, where: str) -> None:
    if not arr.size:
        return
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        layer = int(np.argmax(bad.reshape(bad.shape[0], -1).any(axis=1)))
        raise TraceError(f'{where}, layer {layer}: "{name}" holds NaN, inf or a negative '
                         "value, expected finite scores >= 0")


def _check_token_count(modality: np.ndarray, num_tokens: int, where: str) -> None:
    if modality.shape[0] != num_tokens:
        raise TraceError(f'{where}: "num_tokens" is {num_tokens}, but "modality" holds '
                         f"{modality.shape[0]} tokens")


def open_trace(path: str | os.PathLike) -> Trace:
    """Open a trace (v1 or v2) for step-by-step reading; raises TraceError if it is not
    valid."""
    return Trace(path)
