"""Importing what serving engines already export into format v1 (ids only).

vLLM (``enable_return_routed_experts=True``) returns, per request,
``CompletionOutput.routed_experts``: an int array ``[num_tokens, num_moe_layers, top_k]``
over the prompt and the generated tokens. Accepted files:
    * ``.npy``: one request's array;
    * ``.npz``: one array per request (key = request name); optional companions
      ``<name>.prompt_len`` (scalar) and ``<name>.token_ids`` ([num_tokens]);
    * ``.json`` (a list) or ``.jsonl`` (one per line) of objects
      ``{"request_id", "routed_experts", "prompt_len"?, "token_ids"?}``.
vLLM records no batch schedule, so steps are rebuilt: requests are taken ``batch_size`` at
a time; a batch's first step holds every prompt token of its requests (the prefill), each
later step one token per request still generating. Without ``prompt_len`` a request's
whole sequence counts as prompt.

SGLang's expert-distribution recorder in ``per_token`` mode dumps a ``.pt`` (a pickle:
never loaded here). Convert it once, where you trust the file, to the JSON this importer
reads (``docs/capture.md`` has the five-line script):
``{"records": [{"forward_pass_id", "rank", "input_ids", "positions", "extend_seq_lens",
"forward_mode", "topk_ids_of_layer": [layers][tokens][k]}],
"last_physical_to_logical_map": [layers][physical experts]}``. One record is one forward
pass; ids are physical (mapped back to logical with the map); unused top-k slots are -1.

Both give ids only: the trace has no router scores, gate weights or feature entropy, so
policies that reroute (expanded-drop, macs) or weight by entropy cannot run on it; the
provenance says so. Modality is text unless the token ids are present and an image or
video token id is given.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import IO, Any

import numpy as np

from macssim._errors import CaptureError
from macssim._validate import Limits, brief, check_int, load_json, mapping
from macssim.trace import ModelFacts, Step, TraceWriter

__all__ = ["ImportResult", "import_sglang", "import_vllm"]

ID_FIELDS = ("modality", "request_id", "position", "topk_ids")
LIMITS = ("ids only: no router scores, gate weights or feature entropy; policies that "
          "reroute to next-best experts (expanded-drop, macs) or weight tokens by entropy "
          "cannot run on this trace")
SGLANG_DECODE_MODE = 2
"""``ForwardMode.DECODE`` in SGLang's ``forward_batch_info.py`` (EXTEND is 1)."""
_MAX_POSITION = np.iinfo(np.int32).max
"""Positions are stored as int32 in a trace."""
_MAX_ID = (1 << 62)
"""Token ids, forward-pass ids: anything an int64 holds comfortably."""


@dataclass(frozen=True)
class ImportResult:
    path: Path
    source: str
    num_requests: int | None
    """None when the source does not say (SGLang)."""
    num_steps: int
    num_tokens: int


# -- checks shared by both importers ------------------------------------------------------
def _read_file(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, refusing a directory, a device and anything over
    ``max_bytes`` before reading it."""
    with _opened(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise CaptureError(f"{path}: {what} is {size} bytes, at most {max_bytes} allowed")
        data = fh.read(size + 1)  # (read(n) allocates n bytes up front: never the limit)
    if len(data) > size:
        raise CaptureError(f"{path}: {what} grew while being read")
    return data


class _opened:
    """``open(path, "rb")`` for a regular file, every OSError a CaptureError."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> IO[bytes]:
        try:
            info = self.path.stat()
            if stat.S_ISDIR(info.st_mode):
                raise CaptureError(f"{self.path}: is a directory, not a {self.what} file")
            if not stat.S_ISREG(info.st_mode):
                raise CaptureError(f"{self.path}: not a regular file")
            self.fh = open(self.path, "rb")  # noqa: SIM115 - closed in __exit__
        except (OSError, ValueError) as e:
            raise CaptureError(f"{self.path}: cannot read {self.what}: "
                               f"{getattr(e, 'strerror', None) or e}") from e
        return self.fh

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()


def _int_array(value: Any, where: str, field: str, ndim: int) -> np.ndarray:
    """``value`` (JSON lists or a loaded array) as an int64 array of ``ndim`` dimensions;
    floats, bools, strings, ragged lists and integers beyond int64 are refused."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            raise CaptureError(f'{where}: "{field}" must be a rectangular array of integers '
                               f"({brief(str(e))})") from None
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(value, np.ndarray):
        arr = arr.astype(np.int64)  # JSON [] parses as float
    if arr.dtype.kind not in "iu":
        raise CaptureError(f'{where}: "{field}" must hold integers, got {arr.dtype} values')
    if arr.ndim != ndim:
        raise CaptureError(f'{where}: "{field}" must be a {ndim}-dimensional integer array, '
                           f"got shape {list(arr.shape)}")
    if not isinstance(value, np.ndarray) and arr.size:
        # JSON true/false mixed with integers parse into an int array as 1/0: refuse them
        items = np.asarray(value, dtype=object).ravel().tolist()
        if any(map(operator.is_, items, repeat(True))) or \
                any(map(operator.is_, items, repeat(False))):
            raise CaptureError(f'{where}: "{field}" must hold integers, got true/false')
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise CaptureError(f'{where}: "{field}" holds {int(arr.max())}, beyond int64')
    return arr.astype(np.int64, copy=False)


def _int_scalar(value: Any, where: str, field: str, *, low: int, high: int) -> int:
    """A JSON integer, or a one-element integer array (an .npz companion)."""
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iu":
            raise CaptureError(f'{where}: "{field}" must be one integer, got {value.dtype} '
                               f"of shape {list(value.shape)}")
        value = int(value.reshape(()))
    return check_int(value, where, field, low=low, high=high, error=CaptureError)


def _check_ids(ids: np.ndarray, num_experts: int, where: str, field: str,
               token_axis: int) -> None:
    """Expert ids [.., k] in [0, E), no expert twice for one token; the message names the
    layer and the token (``token_axis``: which axis of ``ids`` counts tokens)."""
    bad = (ids < 0) | (ids >= num_experts)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CaptureError(f'{where}: "{field}" holds expert {int(ids[at])} at '
                           f"{_place(at, token_axis)}, expected 0 <= id < E = {num_experts}")
    srt = np.sort(ids, axis=-1)
    dup = srt[..., 1:] == srt[..., :-1]
    if dup.any():
        at = tuple(int(i) for i in np.argwhere(dup)[0][:-1])
        raise CaptureError(f'{where}: "{field}" names one expert twice at '
                           f"{_place(at, token_axis)}: {ids[at].tolist()}")


def _place(at: tuple[int, ...], token_axis: int) -> str:
    layer_axis = 1 - token_axis
    return f"token {at[token_axis]}, layer {at[layer_axis]}"


def _check_token_id(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    return check_int(value, "import", field, low=0, high=_MAX_ID, error=CaptureError)


def _modality(token_ids: np.ndarray | None, image_token_id: int | None,
              video_token_id: int | None, n: int) -> np.ndarray:
    codes = np.zeros(n, dtype=np.uint8)
    if token_ids is not None:
        if image_token_id is not None:
            codes[token_ids == image_token_id] = 1
        if video_token_id is not None:
            codes[token_ids == video_token_id] = 2
    return codes


def _select_layers(ids: np.ndarray, facts: ModelFacts, axis: int, where: str) -> np.ndarray:
    """Keep the MoE layers: accept either one entry per MoE layer or one per decoder layer."""
    layers = ids.shape[axis]
    if layers == facts.num_moe_layers:
        return ids
    if layers == facts.num_layers:
        return np.take(ids, list(facts.moe_layers), axis=axis)
    raise CaptureError(f"{where}: {layers} layers, expected {facts.num_moe_layers} MoE layers "
                       f"or {facts.num_layers} decoder layers of {facts.name}")


# -- vLLM ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Request:
    name: str
    ids: np.ndarray
    """[num_tokens, L, k], int16 (E <= Limits.MAX_EXPERTS)"""
    prompt_len: int
    token_ids: np.ndarray | None


def _vllm_request(name: str, ids: Any, prompt_len: Any, token_ids: Any, facts: ModelFacts,
                  where: str) -> _Request:
    try:
        arr = _int_array(ids, where, "routed_experts", 3)
    except CaptureError as e:
        raise CaptureError(f'{e} (expected an integer array [num_tokens, num_layers, '
                           "top_k])") from None
    n = arr.shape[0]
    if not 1 <= n <= Limits.MAX_TOKENS_PER_STEP:
        raise CaptureError(f'{where}: "routed_experts" holds {n} tokens, expected 1 to '
                           f"{Limits.MAX_TOKENS_PER_STEP}")
    arr = _select_layers(arr, facts, 1, where)
    if arr.shape[2] != facts.top_k:
        raise CaptureError(f'{where}: "routed_experts" has top-k {arr.shape[2]}, expected '
                           f"{facts.top_k} for {facts.name}")
    _check_ids(arr, facts.num_experts, where, "routed_experts", token_axis=0)
    plen = n if prompt_len is None else _int_scalar(prompt_len, where, "prompt_len", low=1,
                                                    high=n)
    toks = None
    if token_ids is not None:
        if isinstance(token_ids, np.ndarray):
            token_ids = token_ids.reshape(-1)
        toks = _int_array(token_ids, where, "token_ids", 1)
        if toks.shape[0] < n:
            raise CaptureError(f'{where}: "token_ids" has {toks.shape[0]} entries, fewer than '
                               f"the {n} routed tokens")
        toks = toks[:n].copy()
    return _Request(name, arr.astype(np.int16), plen, toks)


def _request_name(value: Any, default: int, where: str) -> str:
    if value is None:
        return str(default)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or \
            (isinstance(value, str) and not 0 < len(value) <= 200):
        raise CaptureError(f'{where}: "request_id" must be a string of 1 to 200 characters '
                           f"or an integer, got {brief(value)}")
    return str(value)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 1 << 16
"""numpy writes a few hundred bytes; its own reader refuses more than 10,000."""
_NPY_INT = re.compile(r"[<>|=]?[iu][1248]")
"""The dtypes an id array may have: plain integers, either byte order."""


def _read_npy(fh: IO[bytes], size: int, where: str) -> np.ndarray:
    """One .npy array (format 1.0 or 2.0), parsed here rather than by ``np.load``: the
    header is a Python literal read with ``ast.literal_eval`` (no code), bounded in
    length, and its shape is checked against the bytes that follow before anything is
    allocated (``np.load`` allocates whatever shape the header claims)."""
    try:
        head = fh.read(8)
        if len(head) < 8 or head[:6] != _NPY_MAGIC:
            raise CaptureError(f"{where}: not a .npy array (bad magic bytes)")
        version = (head[6], head[7])
        if version not in ((1, 0), (2, 0)):
            raise CaptureError(f"{where}: .npy format version {version[0]}.{version[1]} is "
                               "not supported (1.0 or 2.0)")
        width = 2 if version == (1, 0) else 4
        raw = fh.read(width)
        if len(raw) < width:
            raise CaptureError(f"{where}: truncated .npy header")
        hlen = int.from_bytes(raw, "little")
        start = 8 + width
        if hlen > min(_NPY_MAX_HEADER, size - start):
            raise CaptureError(f"{where}: the .npy header claims {hlen} bytes; the file holds "
                               f"{max(size - start, 0)} after it and at most "
                               f"{_NPY_MAX_HEADER} are allowed")
        text = fh.read(hlen)
    except OSError as e:
        raise CaptureError(f"{where}: cannot read the array ({brief(str(e))})") from None
    except (EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise CaptureError(f"{where}: cannot read the array ({brief(str(e))})") from None
    if len(text) < hlen:
        raise CaptureError(f"{where}: truncated .npy header")
    try:
        header = ast.literal_eval(text.decode("latin1"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise CaptureError(f"{where}: the .npy header is not a Python literal "
                           f"({type(e).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise CaptureError(f"{where}: the .npy header must be a dict of descr, fortran_order "
                           f"and shape, got {brief(header)}")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not _NPY_INT.fullmatch(descr):
        pickled = isinstance(descr, str) and "O" in descr
        raise CaptureError(f"{where}: the array must hold integers, got dtype {brief(descr)}"
                           + (" (object arrays are pickles and are never loaded)"
                              if pickled else ""))
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise CaptureError(f"{where}: bad .npy header: fortran_order {brief(fortran)}, shape "
                           f"{brief(shape)}")
    dtype = np.dtype(descr)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - start - hlen:
        raise CaptureError(f"{where}: the .npy header declares shape {list(shape)} of {dtype} "
                           f"({nbytes} bytes), but {size - start - hlen} bytes follow it")
    try:
        data = fh.read(nbytes)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise CaptureError(f"{where}: cannot read the array ({brief(str(e))})") from None
    if len(data) != nbytes:
        raise CaptureError(f"{where}: truncated .npy: {len(data)} of {nbytes} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_vllm(path: Path, facts: ModelFacts) -> list[_Request]:
    suffix = path.suffix.lower()
    what = "vLLM routed experts"
    if suffix == ".npy":
        with _opened(path, what) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > Limits.MAX_IMPORT_BYTES:
                raise CaptureError(f"{path}: {size} bytes, at most {Limits.MAX_IMPORT_BYTES} "
                                   "allowed")
            arr = _read_npy(fh, size, str(path))
        return [_vllm_request(path.stem, arr, None, None, facts, str(path))]
    if suffix == ".npz":
        return _read_npz(path, facts)
    if suffix == ".jsonl":
        blob = _read_file(path, Limits.MAX_IMPORT_BYTES, what)
        out = []
        for i, line in enumerate(blob.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{path}, line {i}"
            out.append(_vllm_record(load_json(line, where, what="the line", error=CaptureError),
                                    len(out), facts, where))
        return out
    if suffix == ".json":
        data = load_json(_read_file(path, Limits.MAX_JSON_BYTES, what), str(path),
                         what="the file", error=CaptureError)
        if not isinstance(data, list):
            raise CaptureError(f"{path}: expected a JSON list of requests, got {brief(data)}")
        return [_vllm_record(r, i, facts, f"{path}, request {i}") for i, r in enumerate(data)]
    raise CaptureError(f"{path}: unknown file type {suffix!r}; vLLM routed experts are "
                       "read from .npy, .npz, .json or .jsonl")


def _vllm_record(rec: Any, i: int, facts: ModelFacts, where: str) -> _Request:
    if not isinstance(rec, dict) or "routed_experts" not in rec:
        raise CaptureError(f'{where}: expected an object with "routed_experts", got '
                           f"{brief(rec)}")
    return _vllm_request(_request_name(rec.get("request_id"), i, where), rec["routed_experts"],
                         rec.get("prompt_len"), rec.get("token_ids"), facts, where)


def _read_npz(path: Path, facts: ModelFacts) -> list[_Request]:
    """Every request of an .npz, reading each member through ``_read_npy`` with the size
    the archive declares (zipfile never inflates a member past it)."""
    with _opened(path, "vLLM routed experts") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > Limits.MAX_IMPORT_BYTES:
            raise CaptureError(f"{path}: {size} bytes, at most {Limits.MAX_IMPORT_BYTES} "
                               "allowed")
        directory = _zip_directory_size(fh, size, path)
        if directory > _MAX_ZIP_DIRECTORY:
            raise CaptureError(f"{path}: the archive's directory is {directory} bytes (each "
                               f"array takes ~100), at most {_MAX_ZIP_DIRECTORY} allowed")
        try:
            archive = zipfile.ZipFile(fh)
            infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
                NotImplementedError, UnicodeError) as e:
            raise CaptureError(f"{path}: not a valid .npz (zip) archive "
                               f"({brief(str(e))})") from None
        total = sum(info.file_size for info in infos)
        if total > Limits.MAX_IMPORT_BYTES:
            raise CaptureError(f"{path}: the archive's arrays take {total} bytes unpacked, at "
                               f"most {Limits.MAX_IMPORT_BYTES} allowed")
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.filename[:-4] in members:
                raise CaptureError(f"{path}: archive member {brief(info.filename)} is not a "
                                   "distinct .npy array")
            members[info.filename[:-4]] = info

        def read(key: str) -> np.ndarray | None:
            info = members.get(key)
            if info is None:
                return None
            where = f"{path}, {key}"
            try:
                with archive.open(info) as member:
                    return _read_npy(member, info.file_size, where)
            except CaptureError:
                raise
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
                    NotImplementedError, RuntimeError, zlib.error) as e:
                raise CaptureError(f"{where}: cannot read archive member "
                                   f"({brief(str(e))})") from None

        return [_vllm_request(k, read(k), read(f"{k}.prompt_len"), read(f"{k}.token_ids"),
                              facts, f"{path}, {k}")
                for k in members if "." not in k]


_MAX_ZIP_DIRECTORY = 16 << 20
"""Bytes of an .npz's central directory (~100k requests): zipfile builds an object per
entry, so a small file of millions of empty entries would take gigabytes."""


def _zip_directory_size(fh: IO[bytes], size: int, path: Path) -> int:
    """The size an archive's end record gives its central directory (zip64 included), read
    before ``zipfile`` parses the directory; 0 when there is no end record (then zipfile
    says the file is not a zip)."""
    try:
        back = min(size, 22 + 0xFFFF)
        fh.seek(size - back)
        tail = fh.read(back)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return 0
        directory = int.from_bytes(tail[at + 12:at + 16], "little")
        locator = tail[at - 20:at] if at >= 20 else b""
        if directory == 0xFFFFFFFF and locator[:4] == b"PK\x06\x07":
            fh.seek(int.from_bytes(locator[8:16], "little"))
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                directory = int.from_bytes(record[40:48], "little")
        fh.seek(0)
        return directory
    except (OSError, ValueError) as e:
        raise CaptureError(f"{path}: cannot read the archive ({brief(str(e))})") from None


def _vllm_steps(requests: list[_Request], batch_size: int):
    """Steps under the rebuilt schedule (module docstring), batch after batch."""
    for start in range(0, len(requests), batch_size):
        batch = list(enumerate(requests[start:start + batch_size], start=start))
        rows = [(rid, r, np.arange(r.prompt_len)) for rid, r in batch]
        yield "prefill", rows
        longest = max(r.ids.shape[0] - r.prompt_len for _, r in batch)
        for t in range(longest):
            rows = [(rid, r, np.array([r.prompt_len + t])) for rid, r in batch
                    if r.prompt_len + t < r.ids.shape[0]]
            yield "decode", rows


def _check_schedule(requests: list[_Request], batch_size: int, path: Path) -> None:
    """The rebuilt schedule fits a trace: no prefill over the per-step token limit, no
    more steps than a trace holds."""
    steps = 0
    for start in range(0, len(requests), batch_size):
        batch = requests[start:start + batch_size]
        prompt = sum(r.prompt_len for r in batch)
        if prompt > Limits.MAX_TOKENS_PER_STEP:
            raise CaptureError(f"{path}: the prefill of requests {start}..{start + len(batch) - 1} "
                               f"holds {prompt} tokens, more than the "
                               f"{Limits.MAX_TOKENS_PER_STEP} a step may hold; use a smaller "
                               "batch size")
        steps += 1 + max(r.ids.shape[0] - r.prompt_len for r in batch)
    if steps > Limits.MAX_STEPS:
        raise CaptureError(f"{path}: the rebuilt schedule has {steps} steps, more than the "
                           f"{Limits.MAX_STEPS} a trace may hold")


def _step_from_rows(index: int, kind: str, rows: list, image_token_id: int | None,
                    video_token_id: int | None) -> Step:
    ids = np.concatenate([r.ids[pos] for _, r, pos in rows], axis=0)  # [T, L, k]
    toks = [None if r.token_ids is None else r.token_ids[pos] for _, r, pos in rows]
    modality = np.concatenate([_modality(t, image_token_id, video_token_id, len(pos))
                               for t, (_, _, pos) in zip(toks, rows, strict=True)])
    return Step(index=index, kind=kind, modality=modality,
                request_id=np.concatenate([np.full(len(pos), rid) for rid, _, pos in rows]),
                position=np.concatenate([pos for _, _, pos in rows]),
                topk_ids=np.ascontiguousarray(ids.transpose(1, 0, 2)))


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
            not 1 <= batch_size <= Limits.MAX_BATCH:
        raise CaptureError(f'"batch_size" must be >= 1 and <= {Limits.MAX_BATCH}, got '
                           f"{brief(batch_size)}")
    return batch_size


def import_vllm(path: str | os.PathLike, out: str | os.PathLike, facts: ModelFacts, *,
                batch_size: int = 8, image_token_id: int | None = None,
                video_token_id: int | None = None, replace: bool = False) -> ImportResult:
    """Convert vLLM's returned routed experts (module docstring) to a format-v1 trace.

    The file is untrusted: sizes, types and ranges are checked before anything is
    allocated (an .npy header claiming a huge shape, a zip bomb, a JSON list of strings),
    nothing is unpickled, and every problem is a CaptureError naming the file, the request
    and the field."""
    path = Path(path)
    batch_size = _check_batch_size(batch_size)
    image_token_id = _check_token_id(image_token_id, "image_token_id")
    video_token_id = _check_token_id(video_token_id, "video_token_id")
    requests = _read_vllm(path, facts)
    if not requests:
        raise CaptureError(f"{path}: holds no requests")
    _check_schedule(requests, batch_size, path)
    provenance = {"source": "vllm-import", "file": str(path), "limits": LIMITS,
                  "schedule": f"rebuilt: batches of {batch_size} requests, one prefill step "
                              "then one decode step per generated token",
                  "requests": [{"request_id": i, "name": r.name, "tokens": int(r.ids.shape[0]),
                                "prompt_len": r.prompt_len} for i, r in enumerate(requests)],
                  "image_token_id": image_token_id, "video_token_id": video_token_id}
    tokens = 0
    with TraceWriter(out, facts, provenance, fields=ID_FIELDS, replace=replace) as writer:
        for kind, rows in _vllm_steps(requests, batch_size):
            step = _step_from_rows(writer.num_steps, kind, rows, image_token_id,
                                   video_token_id)
            writer.write(step)
            tokens += step.num_tokens
        steps = writer.num_steps
    return ImportResult(Path(out), "vllm", len(requests), steps, tokens)


# -- SGLang -------------------------------------------------------------------------------
def _sglang_step(index: int, rec: dict[str, Any], phys_to_log: np.ndarray | None,
                 facts: ModelFacts, image_token_id: int | None, video_token_id: int | None,
                 where: str) -> Step:
    for key in ("topk_ids_of_layer", "positions", "input_ids", "forward_mode"):
        if key not in rec:
            raise CaptureError(f'{where}: bad record: missing field "{key}"')
    positions = _int_array(rec["positions"], where, "positions", 1)
    n = positions.shape[0]
    if n > Limits.MAX_TOKENS_PER_STEP:
        raise CaptureError(f'{where}: "positions" holds {n} tokens, at most '
                           f"{Limits.MAX_TOKENS_PER_STEP} in one forward pass")
    if n and (int(positions.min()) < 0 or int(positions.max()) > _MAX_POSITION):
        raise CaptureError(f'{where}: "positions" must lie in [0, {_MAX_POSITION}], got '
                           f"{int(positions.min())}..{int(positions.max())}")
    token_ids = _int_array(rec["input_ids"], where, "input_ids", 1)
    if token_ids.shape[0] < n:
        raise CaptureError(f'{where}: "input_ids" has {token_ids.shape[0]} entries, fewer '
                           f'than the {n} "positions"')
    mode = check_int(rec["forward_mode"], where, "forward_mode", low=0, high=1 << 16,
                     error=CaptureError)
    raw = _int_array(rec["topk_ids_of_layer"], where, "topk_ids_of_layer", 3)
    if raw.shape[1] < n or raw.shape[2] < facts.top_k:
        raise CaptureError(f'{where}: "topk_ids_of_layer" has shape {list(raw.shape)}, '
                           f"expected [layers, >= {n} tokens, >= {facts.top_k}]")
    layers_all = raw[:, :n, :]
    physical = facts.num_experts if phys_to_log is None else phys_to_log.shape[1]
    bad = (layers_all < -1) | (layers_all >= physical)
    if bad.any():
        layer, token, slot = (int(i) for i in np.argwhere(bad)[0])
        kind = "a physical expert id" if phys_to_log is not None else "an expert id"
        value = int(layers_all[layer, token, slot])
        raise CaptureError(f'{where}: "topk_ids_of_layer" holds {value} at layer {layer}, '
                           f"token {token}, expected -1 (unused) or {kind} "
                           f"in [0, {physical})")
    if phys_to_log is not None:
        if phys_to_log.shape[0] != raw.shape[0]:
            raise CaptureError(f'{where}: "last_physical_to_logical_map" has '
                               f"{phys_to_log.shape[0]} layers, the record "
                               f"{raw.shape[0]}")
        safe = np.where(layers_all < 0, 0, layers_all)
        mapped = np.take_along_axis(phys_to_log[:, None, :],
                                    safe.reshape(raw.shape[0], 1, -1), axis=2)
        layers_all = np.where(layers_all < 0, -1, mapped.reshape(layers_all.shape))
    ids = _select_layers(layers_all, facts, 0, where)
    if (ids[..., facts.top_k:] >= 0).any() or (ids[..., :facts.top_k] < 0).any():
        raise CaptureError(f"{where}: a MoE layer does not route every token to exactly "
                           f"top_k = {facts.top_k} experts (-1 slots in the first "
                           f"{facts.top_k} columns or ids beyond them)")
    ids = ids[..., :facts.top_k]
    _check_ids(ids, facts.num_experts, where, "topk_ids_of_layer", token_axis=1)
    lens = rec.get("extend_seq_lens")
    if lens is not None and (not isinstance(lens, list) or len(lens) > max(n, 1)):
        raise CaptureError(f'{where}: "extend_seq_lens" must be a list of at most {n} '
                           f"request lengths, got {brief(lens)}")
    counts = [check_int(x, where, f"extend_seq_lens[{j}]", low=0, high=n, error=CaptureError)
              for j, x in enumerate(lens or ())]
    if mode == SGLANG_DECODE_MODE or not counts:
        request = np.arange(n, dtype=np.int64)
    else:
        if sum(counts) != n:
            raise CaptureError(f'{where}: "extend_seq_lens" sums to {sum(counts)}, but the '
                               f"pass has {n} tokens")
        request = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    kind = "decode" if mode == SGLANG_DECODE_MODE else "prefill"
    return Step(index=index, kind=kind,
                modality=_modality(token_ids[:n], image_token_id, video_token_id, n),
                request_id=request, position=positions,
                topk_ids=np.ascontiguousarray(ids))


def import_sglang(path: str | os.PathLike, out: str | os.PathLike, facts: ModelFacts, *,
                  rank: int | None = None, image_token_id: int | None = None,
                  video_token_id: int | None = None, replace: bool = False) -> ImportResult:
    """Convert an SGLang per-token expert-distribution dump, converted to JSON (module
    docstring), to a format-v1 trace. Records of one ``rank`` (default: the lowest) are
    taken in forward-pass order. SGLang records no request ids: ``request_id`` is the
    request's slot within each forward pass.

    The file is untrusted: at most ``Limits.MAX_JSON_BYTES``, every field type- and
    range-checked (ids against the map and E), every problem a CaptureError naming the
    file, the forward pass and the field."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        raise CaptureError(f"{path}: .pt dumps are pickles and are never loaded; convert it "
                           "to JSON first (docs/capture.md, 'SGLang')")
    if rank is not None:
        rank = check_int(rank, "import", "rank", low=0, high=_MAX_ID, error=CaptureError)
    image_token_id = _check_token_id(image_token_id, "image_token_id")
    video_token_id = _check_token_id(video_token_id, "video_token_id")
    data = load_json(_read_file(path, Limits.MAX_JSON_BYTES, "SGLang dump"), str(path),
                     what="the file", error=CaptureError)
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise CaptureError(f'{path}: expected an object with a "records" list')
    mapping(data, str(path), "top level", error=CaptureError)
    keyed = []
    for i, r in enumerate(data["records"]):
        where = f"{path}, records[{i}]"
        mapping(r, str(path), f"records[{i}]", error=CaptureError)
        keyed.append((check_int(r.get("rank", 0), where, "rank", low=0, high=_MAX_ID,
                                error=CaptureError),
                      check_int(r.get("forward_pass_id", 0), where, "forward_pass_id", low=0,
                                high=_MAX_ID, error=CaptureError), i, r))
    ranks = sorted({k[0] for k in keyed})
    if not ranks:
        raise CaptureError(f"{path}: holds no records")
    chosen = ranks[0] if rank is None else rank
    if chosen not in ranks:
        raise CaptureError(f"{path}: no records of rank {chosen}; ranks present: "
                           f"{brief(ranks)}")
    mine = sorted((k for k in keyed if k[0] == chosen), key=lambda k: (k[1], k[2]))
    if len(mine) > Limits.MAX_STEPS:
        raise CaptureError(f"{path}: {len(mine)} forward passes, more than the "
                           f"{Limits.MAX_STEPS} steps a trace may hold")
    p2l = data.get("last_physical_to_logical_map")
    phys_to_log = None
    if p2l is not None:
        phys_to_log = _int_array(p2l, str(path), "last_physical_to_logical_map", 2)
        if phys_to_log.shape[1] == 0 or phys_to_log.size and (
                int(phys_to_log.min()) < 0 or int(phys_to_log.max()) >= facts.num_experts):
            raise CaptureError(f'{path}: "last_physical_to_logical_map" must map each '
                               "physical expert to a logical one in "
                               f"[0, {facts.num_experts}), got shape "
                               f"{list(phys_to_log.shape)}, values "
                               f"{int(phys_to_log.min()) if phys_to_log.size else '-'}.."
                               f"{int(phys_to_log.max()) if phys_to_log.size else '-'}")
    provenance = {"source": "sglang-import", "file": str(path), "rank": chosen,
                  "limits": LIMITS + "; request_id is the request's slot in each forward "
                  "pass (SGLang records no request ids)",
                  "image_token_id": image_token_id, "video_token_id": video_token_id}
    tokens = 0
    with TraceWriter(out, facts, provenance, fields=ID_FIELDS, replace=replace) as writer:
        for _, pass_id, _, rec in mine:
            where = f"{path}, forward pass {pass_id}"
            step = _sglang_step(writer.num_steps, rec, phys_to_log, facts, image_token_id,
                                video_token_id, where)
            writer.write(step)
            tokens += step.num_tokens
        steps = writer.num_steps
    return ImportResult(Path(out), "sglang", None, steps, tokens)
