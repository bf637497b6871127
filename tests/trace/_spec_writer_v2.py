"""A format v2 writer built from docs/trace-format.md alone (no macssim import): it checks
that the spec is enough to write a v2 trace, and forges broken ones for the fuzz tests.
Written independently of macssim's writer: its own top-N selection (a lexsort), its own
filters (Python-level byte loops over numpy), its own weight rule."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import zstandard

from ._spec_writer import encode_trace as _encode_v1_container
from ._spec_writer import model_facts, step_arrays

__all__ = ["encode_step_v2", "encode_trace_v2", "model_facts", "step_arrays", "top_n_arrays"]


def top_n_arrays(scores16: np.ndarray, topk_ids: np.ndarray, m: int):
    """(topk_scores, cand_ids, cand_scores) as the spec defines them: the m highest-scored
    experts not in the top-k, by descending score, ties to the lower id."""
    L, T, E = scores16.shape
    cand = np.zeros((L, T, m), dtype=np.int64)
    for layer in range(L):
        for t in range(T):
            row = scores16[layer, t].astype(np.float64)
            chosen = set(topk_ids[layer, t].tolist())
            # lexsort: last key is primary -> descending score, then ascending id
            order = np.lexsort((np.arange(E), -row))
            cand[layer, t] = [e for e in order.tolist() if e not in chosen][:m]
    top = np.take_along_axis(scores16, topk_ids, axis=-1)
    return top, cand, np.take_along_axis(scores16, cand, axis=-1)


def derived_weights(top: np.ndarray) -> np.ndarray:
    """The spec's rule, element by element."""
    out = np.zeros(top.shape, dtype=np.float32)
    for idx in np.ndindex(top.shape[:-1]):
        total = 0.0
        for v in top[idx]:
            total += float(v)
        s = np.float32(total)
        for j, v in enumerate(top[idx]):
            out[idx + (j,)] = np.float32(v) / s if s > 0 else np.float32(0)
    return out


def _delta(arr: np.ndarray) -> np.ndarray:
    u = arr.view(f"<u{arr.dtype.itemsize}") if arr.dtype.itemsize > 1 else arr.view("|u1")
    flat = u.reshape(-1, u.shape[-1])
    out = flat.copy()
    mod = 1 << (8 * arr.dtype.itemsize)
    for r in range(flat.shape[0]):
        for c in range(1, flat.shape[1]):
            out[r, c] = (int(flat[r, c]) - int(flat[r, c - 1])) % mod
    return out.reshape(arr.shape)


def _shuffle(raw: bytes, width: int) -> bytes:
    if width == 1:
        return raw
    return b"".join(raw[b::width] for b in range(width))


def encode_step_v2(index, arrays, filters=None, derived=(), compression="zstd", kind="prefill",
                   meta_over=None, frame=None):
    """arrays: name -> array in its disk dtype; filters: name -> list of filters."""
    filters = filters or {}
    specs, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        f = filters.get(name, [])
        data = _delta(arr) if "delta" in f else arr
        raw = data.tobytes()
        if "shuffle" in f:
            raw = _shuffle(raw, arr.dtype.itemsize)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                      "offset": offset, "nbytes": len(raw), "filters": list(f)})
        chunks.append(raw)
        offset += len(raw)
    payload = b"".join(chunks)
    if frame is not None:
        stored = frame
    elif compression == "zstd":
        stored = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(payload)
    elif compression == "zlib":
        stored = zlib.compress(payload)
    else:
        stored = payload
    T = len(arrays["modality"])
    meta = {"step": index, "kind": kind, "num_tokens": T, "arrays": specs,
            "payload_bytes": len(payload), "stored_bytes": len(stored),
            "compression": compression, "crc32": zlib.crc32(stored), "derived": list(derived)}
    meta.update(meta_over or {})
    blob = json.dumps(meta).encode()
    return b"STEP" + struct.pack("<I", len(blob)) + blob + stored


def encode_trace_v2(steps, model=None, fields=None, candidates=None, header_over=None):
    over = dict(header_over or {})
    if candidates is not None:
        over.setdefault("score_candidates", candidates)
    fields = fields or ["modality", "request_id", "position", "topk_ids", "topk_weights",
                        "topk_scores", "cand_ids", "cand_scores", "entropy"]
    return _encode_v1_container(steps, model=model, fields=fields, version=2,
                                header_over=over)


def v2_step_from(arrays, m, derive=True):
    """A v1-style dict of arrays (step_arrays) -> the v2 arrays, filters and derived list
    macssim's writer would choose, computed by this module."""
    scores16 = arrays["scores"].astype("<f2")
    ids = arrays["topk_ids"].astype(np.int64)
    top, cand, cand_s = top_n_arrays(scores16, ids, m)
    out = {"modality": arrays["modality"].astype("|u1"),
           "request_id": arrays["request_id"].astype("<i4"),
           "position": arrays["position"].astype("<i4"),
           "topk_ids": ids.astype("|u1"),
           "topk_scores": top.astype("<f2"),
           "cand_ids": cand.astype("|u1"),
           "cand_scores": cand_s.astype("<f2")}
    filters = {"request_id": ["shuffle"], "position": ["shuffle"],
               "topk_scores": ["delta", "shuffle"], "cand_scores": ["delta", "shuffle"]}
    derived = []
    w = arrays["topk_weights"].astype("<f4")
    if derive and np.array_equal(derived_weights(top).view(np.uint32), w.view(np.uint32)):
        derived.append("topk_weights")
    else:
        out["topk_weights"] = w
        filters["topk_weights"] = ["shuffle"]
    out["entropy"] = arrays["entropy"].astype("<f4")
    filters["entropy"] = ["shuffle"]
    return out, filters, derived
