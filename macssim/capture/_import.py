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

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from macssim._errors import CaptureError
from macssim.trace import ModelFacts, Step, TraceWriter

__all__ = ["ImportResult", "import_sglang", "import_vllm"]

ID_FIELDS = ("modality", "request_id", "position", "topk_ids")
LIMITS = ("ids only: no router scores, gate weights or feature entropy; policies that "
          "reroute to next-best experts (expanded-drop, macs) or weight tokens by entropy "
          "cannot run on this trace")
SGLANG_DECODE_MODE = 2
"""``ForwardMode.DECODE`` in SGLang's ``forward_batch_info.py`` (EXTEND is 1)."""


@dataclass(frozen=True)
class ImportResult:
    path: Path
    source: str
    num_requests: int | None
    """None when the source does not say (SGLang)."""
    num_steps: int
    num_tokens: int


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
    """[num_tokens, L, k]"""
    prompt_len: int
    token_ids: np.ndarray | None


def _vllm_request(name: str, ids: Any, prompt_len: Any, token_ids: Any, facts: ModelFacts,
                  where: str) -> _Request:
    arr = np.asarray(ids)
    if arr.ndim != 3 or arr.dtype.kind not in "iu":
        raise CaptureError(f'{where}: "routed_experts" must be an integer array [num_tokens, '
                           f"num_layers, top_k], got {arr.dtype} of shape {list(arr.shape)}")
    arr = _select_layers(arr, facts, 1, where)
    if arr.shape[2] != facts.top_k:
        raise CaptureError(f'{where}: "routed_experts" has top-k {arr.shape[2]}, expected '
                           f"{facts.top_k} for {facts.name}")
    n = arr.shape[0]
    plen = n if prompt_len is None else int(np.asarray(prompt_len))
    if not 1 <= plen <= n:
        raise CaptureError(f'{where}: "prompt_len" {plen} must lie in [1, {n}]')
    toks = None if token_ids is None else np.asarray(token_ids).reshape(-1)
    if toks is not None and toks.shape[0] < n:
        raise CaptureError(f'{where}: "token_ids" has {toks.shape[0]} entries, fewer than '
                           f"the {n} routed tokens")
    return _Request(name, arr.astype(np.int64), plen, None if toks is None else toks[:n])


def _read_vllm(path: Path, facts: ModelFacts) -> list[_Request]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return [_vllm_request(path.stem, np.load(path, allow_pickle=False), None, None,
                                  facts, str(path))]
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = [k for k in data.files if "." not in k]
                return [_vllm_request(k, data[k], data.get(f"{k}.prompt_len"),
                                      data.get(f"{k}.token_ids"), facts, f"{path}, {k}")
                        for k in keys]
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise CaptureError(f"{path}: cannot read vLLM routed experts: {e}") from e
    if suffix == ".jsonl":
        rows = [(f"{path}, line {i}", line) for i, line in enumerate(text.splitlines(), 1)
                if line.strip()]
        records = [(where, _json(line, where)) for where, line in rows]
    elif suffix == ".json":
        data = _json(text, str(path))
        if not isinstance(data, list):
            raise CaptureError(f"{path}: expected a JSON list of requests")
        records = [(f"{path}, request {i}", r) for i, r in enumerate(data)]
    else:
        raise CaptureError(f"{path}: unknown file type {suffix!r}; vLLM routed experts are "
                           "read from .npy, .npz, .json or .jsonl")
    out = []
    for i, (where, rec) in enumerate(records):
        if not isinstance(rec, dict) or "routed_experts" not in rec:
            raise CaptureError(f'{where}: expected an object with "routed_experts"')
        out.append(_vllm_request(str(rec.get("request_id", i)), rec["routed_experts"],
                                 rec.get("prompt_len"), rec.get("token_ids"), facts, where))
    return out


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CaptureError(f"{where}: not valid JSON: {e}") from e


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


def import_vllm(path: str | os.PathLike, out: str | os.PathLike, facts: ModelFacts, *,
                batch_size: int = 8, image_token_id: int | None = None,
                video_token_id: int | None = None) -> ImportResult:
    """Convert vLLM's returned routed experts (module docstring) to a format-v1 trace."""
    path = Path(path)
    if batch_size < 1:
        raise CaptureError(f"batch_size must be >= 1, got {batch_size}")
    requests = _read_vllm(path, facts)
    if not requests:
        raise CaptureError(f"{path}: holds no requests")
    provenance = {"source": "vllm-import", "file": str(path), "limits": LIMITS,
                  "schedule": f"rebuilt: batches of {batch_size} requests, one prefill step "
                              "then one decode step per generated token",
                  "requests": [{"request_id": i, "name": r.name, "tokens": int(r.ids.shape[0]),
                                "prompt_len": r.prompt_len} for i, r in enumerate(requests)],
                  "image_token_id": image_token_id, "video_token_id": video_token_id}
    tokens = 0
    with TraceWriter(out, facts, provenance, fields=ID_FIELDS) as writer:
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
    try:
        raw = np.asarray(rec["topk_ids_of_layer"], dtype=np.int64)
        positions = np.asarray(rec["positions"], dtype=np.int64)
        token_ids = np.asarray(rec["input_ids"], dtype=np.int64)
        mode = int(rec["forward_mode"])
    except (KeyError, TypeError, ValueError) as e:
        raise CaptureError(f"{where}: bad record: {e}") from e
    n = positions.shape[0]
    if raw.ndim != 3 or raw.shape[1] < n or raw.shape[2] < facts.top_k:
        raise CaptureError(f'{where}: "topk_ids_of_layer" has shape {list(raw.shape)}, '
                           f"expected [layers, >= {n} tokens, >= {facts.top_k}]")
    layers_all = raw[:, :n, :]
    if phys_to_log is not None:
        safe = np.where(layers_all < 0, 0, layers_all)
        mapped = np.take_along_axis(phys_to_log[:, None, :],
                                    safe.reshape(raw.shape[0], 1, -1), axis=2)
        layers_all = np.where(layers_all < 0, -1, mapped.reshape(layers_all.shape))
    ids = _select_layers(layers_all, facts, 0, where)
    if (ids[..., facts.top_k:] >= 0).any() or (ids[..., :facts.top_k] < 0).any():
        raise CaptureError(f"{where}: a MoE layer does not route every token to exactly "
                           f"top_k = {facts.top_k} experts (-1 slots in the first "
                           f"{facts.top_k} columns or ids beyond them)")
    lens = rec.get("extend_seq_lens")
    if mode == SGLANG_DECODE_MODE or not lens:
        request = np.arange(n, dtype=np.int64)
    else:
        if sum(int(x) for x in lens) != n:
            raise CaptureError(f'{where}: "extend_seq_lens" sums to {sum(lens)}, but the '
                               f"pass has {n} tokens")
        request = np.repeat(np.arange(len(lens), dtype=np.int64), [int(x) for x in lens])
    kind = "decode" if mode == SGLANG_DECODE_MODE else "prefill"
    return Step(index=index, kind=kind,
                modality=_modality(token_ids[:n], image_token_id, video_token_id, n),
                request_id=request, position=positions,
                topk_ids=np.ascontiguousarray(ids[..., :facts.top_k]))


def import_sglang(path: str | os.PathLike, out: str | os.PathLike, facts: ModelFacts, *,
                  rank: int | None = None, image_token_id: int | None = None,
                  video_token_id: int | None = None) -> ImportResult:
    """Convert an SGLang per-token expert-distribution dump, converted to JSON (module
    docstring), to a format-v1 trace. Records of one ``rank`` (default: the lowest) are
    taken in forward-pass order. SGLang records no request ids: ``request_id`` is the
    request's slot within each forward pass."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        raise CaptureError(f"{path}: .pt dumps are pickles and are never loaded; convert it "
                           "to JSON first (docs/capture.md, 'SGLang')")
    try:
        data = _json(path.read_text(encoding="utf-8"), str(path))
    except OSError as e:
        raise CaptureError(f"{path}: cannot read: {e.strerror or e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise CaptureError(f'{path}: expected an object with a "records" list')
    records = [r for r in data["records"] if isinstance(r, dict)]
    ranks = sorted({int(r.get("rank", 0)) for r in records})
    if not ranks:
        raise CaptureError(f"{path}: holds no records")
    chosen = ranks[0] if rank is None else rank
    if chosen not in ranks:
        raise CaptureError(f"{path}: no records of rank {chosen}; ranks present: {ranks}")
    mine = sorted((r for r in records if int(r.get("rank", 0)) == chosen),
                  key=lambda r: int(r.get("forward_pass_id", 0)))
    p2l = data.get("last_physical_to_logical_map")
    phys_to_log = None if p2l is None else np.asarray(p2l, dtype=np.int64)
    provenance = {"source": "sglang-import", "file": str(path), "rank": chosen,
                  "limits": LIMITS + "; request_id is the request's slot in each forward "
                  "pass (SGLang records no request ids)",
                  "image_token_id": image_token_id, "video_token_id": video_token_id}
    tokens = 0
    with TraceWriter(out, facts, provenance, fields=ID_FIELDS) as writer:
        for rec in mine:
            where = f"{path}, forward pass {rec.get('forward_pass_id')}"
            step = _sglang_step(writer.num_steps, rec, phys_to_log, facts, image_token_id,
                                video_token_id, where)
            writer.write(step)
            tokens += step.num_tokens
        steps = writer.num_steps
    return ImportResult(Path(out), "sglang", None, steps, tokens)
