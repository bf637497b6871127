"""A trace writer built from docs/trace-format.md alone (no macssim import), so the tests
check that the spec is enough to write a trace, and can forge broken ones."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np


def model_facts(**over):
    facts = {"name": "spec-model", "num_layers": 2, "moe_layers": [0, 1], "num_experts": 8,
             "top_k": 2, "hidden_size": 16, "expert_intermediate_size": 8}
    facts.update(over)
    return facts


def step_arrays(T=5, L=2, k=2, E=8, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((L, T, E))
    scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ids = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    weights = np.take_along_axis(scores, ids, -1)
    return {
        "modality": (np.arange(T) % 2).astype("|u1"),
        "request_id": np.zeros(T, dtype="<i8"),
        "position": np.arange(T, dtype="<i4"),
        "topk_ids": ids.astype("<i2"),
        "topk_weights": (weights / weights.sum(-1, keepdims=True)).astype("<f4"),
        "scores": scores.astype("<f2"),
        "entropy": rng.uniform(4, 6, size=(L, T)).astype("<f4"),
    }


def encode_step(index, arrays, kind="prefill", compress=False, crc_delta=0, meta_over=None):
    specs, chunks, offset = [], [], 0
    for name, arr in arrays.items():
        raw = np.ascontiguousarray(arr).tobytes()
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                      "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    payload = b"".join(chunks)
    stored = zlib.compress(payload) if compress else payload
    T = len(next(iter(arrays.values())))
    meta = {"step": index, "kind": kind, "num_tokens": T, "arrays": specs,
            "payload_bytes": len(payload), "stored_bytes": len(stored),
            "compression": "zlib" if compress else "none",
            "crc32": zlib.crc32(stored) + crc_delta}
    meta.update(meta_over or {})
    blob = json.dumps(meta).encode()
    return b"STEP" + struct.pack("<I", len(blob)) + blob + stored


def encode_trace(steps, model=None, fields=None, version=1, header_over=None):
    """steps: list of already encoded STEP records (bytes)."""
    header = {"format": "macssim-trace", "format_version": version,
              "model": model or model_facts(), "provenance": {"source": "spec-writer"},
              "fields": fields or ["modality", "request_id", "position", "topk_ids",
                                   "topk_weights", "scores", "entropy"],
              "modalities": ["text", "image", "video", "audio"]}
    header.update(header_over or {})
    blob = json.dumps(header).encode()
    out = bytearray(b"MACSTRC\0" + struct.pack("<II", version, len(blob)) + blob)
    offsets, tokens = [], 0
    for rec in steps:
        offsets.append(len(out))
        out += rec
        tokens += _tokens_of(rec)
    index = json.dumps({"num_steps": len(offsets),
                        "num_tokens": tokens, "step_offsets": offsets}).encode()
    at = len(out)
    out += b"INDX" + struct.pack("<I", len(index)) + index + struct.pack("<Q", at) + b"MACSEND\0"
    return bytes(out)


def _tokens_of(record: bytes) -> int:
    """T of one step record, from its metadata (0 for a record a test broke on purpose)."""
    try:
        (mlen,) = struct.unpack("<I", record[4:8])
        return int(json.loads(record[8:8 + mlen])["num_tokens"])
    except (ValueError, KeyError, TypeError, struct.error):
        return 0
