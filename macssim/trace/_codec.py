"""Byte-level pieces of trace format v2 (``docs/trace-format.md``): the codecs a step's
payload may be stored with, the two filters an array may pass through before that, the
rule that lets a step leave out gate weights it can recompute, and the choice of the
top-N router scores a v2 trace keeps.

Everything here treats its input as a stranger's: a compressed payload is inflated only
after its declared size has been checked, and never past it.
"""

from __future__ import annotations

import math
import threading
import zlib

import numpy as np
import zstandard

from macssim._errors import TraceError
from macssim._validate import Limits

__all__ = ["CODECS", "FILTERS", "choose_candidates", "compress", "decode_filters",
           "decompress", "derive_weights", "encode_filters"]

CODECS = ("none", "zlib", "zstd")
FILTERS = ("delta", "shuffle")
"""Filters in the order a writer applies them (a reader undoes them in reverse)."""

ZSTD_LEVEL = 3
"""Level 3 (zstd's default): within a few per cent of level 19's size on trace arrays at a
fraction of its time; decompression speed does not depend on it."""

_ZLIB_MAX_RATIO = 1032
"""Deflate's largest expansion: one 258-byte match per ~2 bits."""


# -- codecs ------------------------------------------------------------------------------
def compress(chunks: list[memoryview], codec: str) -> list[bytes | memoryview]:
    """The stored form of a payload given as consecutive chunks."""
    if codec == "none":
        return chunks
    if codec == "zlib":
        packer = zlib.compressobj(1)
        return [b"".join([packer.compress(c) for c in chunks] + [packer.flush()])]
    size = sum(len(c) for c in chunks)
    # One frame per step, its content size written in the frame header (the reader checks
    # it before inflating), a checksum-free frame (the record carries a CRC-32).
    packer = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return [packer.compress(b"".join(chunks) if len(chunks) != 1 else chunks[0])] \
        if size else [packer.compress(b"")]


def decompress(stored: bytes, codec: str, payload_bytes: int, where: str) -> bytes:
    """Inflate ``stored`` to exactly ``payload_bytes`` bytes, refusing (before allocating)
    a stream that declares or would produce any other size."""
    if codec == "none":
        return stored
    if codec == "zlib":
        return _inflate_zlib(stored, payload_bytes, where)
    try:
        params = zstandard.get_frame_parameters(stored)
    except zstandard.ZstdError as e:
        raise TraceError(f"{where}: compressed payload is not a zstd frame ({e})") from None
    if params.content_size != payload_bytes:
        declared = ("no size" if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN,
                                                          zstandard.CONTENTSIZE_ERROR)
                    else f"{params.content_size} bytes")
        raise TraceError(f'{where}: the zstd frame declares {declared}, but "payload_bytes" '
                         f"is {payload_bytes} (refused before inflating)")
    if params.window_size > Limits.MAX_ZSTD_WINDOW_BYTES:
        raise TraceError(f"{where}: the zstd frame asks for a {params.window_size}-byte "
                         f"window, at most {Limits.MAX_ZSTD_WINDOW_BYTES} allowed")
    if payload_bytes == 0:
        if stored != zstandard.ZstdCompressor(level=ZSTD_LEVEL,
                                              write_content_size=True).compress(b""):
            raise TraceError(f"{where}: an empty payload must be stored as the empty zstd "
                             "frame")
        return b""
    try:
        out = _decompressor().decompress(stored, max_output_size=payload_bytes,
                                         allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise TraceError(f"{where}: compressed payload is not a valid zstd frame ({e})") \
            from None
    if len(out) != payload_bytes:
        raise TraceError(f"{where}: payload is {len(out)} bytes, \"payload_bytes\" says "
                         f"{payload_bytes}")
    return out


_LOCAL = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompression context per thread, reused across steps (a fresh one per small
    decode step costs more than inflating it)."""
    d = getattr(_LOCAL, "zstd", None)
    if d is None:
        d = _LOCAL.zstd = zstandard.ZstdDecompressor(
            max_window_size=Limits.MAX_ZSTD_WINDOW_BYTES)
    return d


def _inflate_zlib(stored: bytes, payload_bytes: int, where: str) -> bytes:
    """Inflate a zlib payload, never producing more than ``payload_bytes + 1`` bytes: a
    stream that would give more (a zlib bomb) is refused without being inflated."""
    if payload_bytes > _ZLIB_MAX_RATIO * len(stored) + 64:
        raise TraceError(f'{where}: "payload_bytes" is {payload_bytes}: more than zlib can '
                         f"inflate from {len(stored)} stored bytes")
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(stored, payload_bytes + 1)
    except zlib.error as e:
        raise TraceError(f"{where}: compressed payload is not a valid zlib stream ({e})") from e
    if len(payload) > payload_bytes:
        raise TraceError(f'{where}: compressed payload inflates to more than the '
                         f'{payload_bytes} bytes "payload_bytes" declares (a zlib bomb?)')
    if not inflater.eof:
        raise TraceError(f'{where}: compressed payload ends early: {len(payload)} bytes, '
                         f'"payload_bytes" says {payload_bytes}')
    if inflater.unused_data:
        raise TraceError(f"{where}: {len(inflater.unused_data)} stray bytes after the "
                         "compressed payload")
    if len(payload) != payload_bytes:
        raise TraceError(f"{where}: payload is {len(payload)} bytes, header says "
                         f"{payload_bytes}")
    return payload


# -- filters -----------------------------------------------------------------------------
def _unsigned(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"<u{dtype.itemsize}") if dtype.itemsize > 1 else np.dtype("|u1")


def encode_filters(data: np.ndarray, filters: tuple[str, ...]) -> np.ndarray:
    """``data`` (C-contiguous, its disk dtype) as the bytes stored: ``delta`` replaces each
    element but the first of the last axis by its difference from the one before, on the
    unsigned integers of the same width, modulo 2^bits; ``shuffle`` then stores byte 0 of
    every element, then byte 1 of every element, and so on. Returns a flat uint8 array."""
    out = data
    if "delta" in filters and out.ndim and out.shape[-1] > 1:
        u = out.view(_unsigned(out.dtype))
        d = u.copy()
        np.subtract(u[..., 1:], u[..., :-1], out=d[..., 1:])
        out = d
    raw = np.ascontiguousarray(out).reshape(-1).view(np.uint8)
    if "shuffle" in filters and data.dtype.itemsize > 1:
        raw = raw.reshape(-1, data.dtype.itemsize).T.copy().reshape(-1)
    return raw


_CUMSUM_ROWS = 640
"""Up to this many rows, ``np.cumsum`` undoes the delta filter faster than the column loop
(uint16, 24 columns: 28 against 37 µs at 384 rows, 41 against 71 at 512; the loop wins
from ~700 rows on: 46 against 52 µs at 768, 79 against 140 at 2048)."""


def decode_filters(raw: bytes | memoryview, offset: int, dtype: np.dtype,
                   shape: tuple[int, ...], filters: tuple[str, ...]) -> np.ndarray:
    """Undo ``encode_filters``: the array of ``shape`` and ``dtype`` whose stored bytes
    start at ``offset`` of ``raw``."""
    count = math.prod(shape)
    width = dtype.itemsize
    if "shuffle" in filters and width > 1:
        planes = np.frombuffer(raw, dtype=np.uint8, count=count * width, offset=offset)
        data = np.ascontiguousarray(planes.reshape(width, count).T).view(dtype).reshape(shape)
    else:
        data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)
    if "delta" in filters and data.ndim and data.shape[-1] > 1:
        # A running sum column by column (modulo 2^bits, as unsigned numpy adds wrap):
        # for short last axes far quicker than cumsum's per-row loop.
        u = data.view(_unsigned(dtype)).reshape(-1, data.shape[-1])
        if u.shape[0] <= _CUMSUM_ROWS:   # small arrays: one call beats a call per column
            out = np.cumsum(u, axis=1, dtype=u.dtype)
        else:
            out = u.copy()
            for j in range(1, out.shape[1]):
                np.add(out[:, j - 1], out[:, j], out=out[:, j])
        data = out.view(dtype).reshape(shape)
    return data


# -- derived gate weights ------------------------------------------------------------------
def derive_weights(topk_scores: np.ndarray, exact_sum: bool = False) -> np.ndarray:
    """The ``renormalised`` rule: w_i = float32(s_i) / float32(S) with S = s_0 + ... +
    s_{k-1} summed left to right in float64, and w = 0 where S = 0. ``topk_scores``
    [..., k] (float16, or float32). ``exact_sum``: the values are float16 ones (widened or
    not), whose float64 sum is exact in any order (k <= 64 values within float16's
    2^-24..2^16 span need < 53 bits), so numpy's faster pairwise sum gives the same S."""
    s = np.asarray(topk_scores)
    if exact_sum or s.dtype == np.float16:
        total = s.sum(axis=-1, dtype=np.float64)
    else:
        total = s[..., 0].astype(np.float64)
        for j in range(1, s.shape[-1]):
            total = total + s[..., j].astype(np.float64)
    total32 = total.astype(np.float32)[..., None]
    w = np.zeros(s.shape, dtype=np.float32)
    np.divide(s.astype(np.float32, copy=False), total32, out=w,
              where=np.broadcast_to(total32 > 0, s.shape))
    return w


# -- top-N scores ------------------------------------------------------------------------
def choose_candidates(scores16: np.ndarray, topk_ids: np.ndarray, available: np.ndarray | None,
                      m: int, where: str) -> np.ndarray:
    """[L, T, m] ids of the m highest-scored experts that are not among the token's top-k
    (and are ``available``, when given), by descending score, ties to the lower id.

    ``scores16`` [L, T, E] float16 (non-negative), ``topk_ids`` [L, T, k] int64."""
    num_layers, num_tokens, num_experts = scores16.shape
    k = topk_ids.shape[-1]
    if m == 0 or num_tokens == 0:
        return np.zeros((num_layers, num_tokens, m), dtype=np.int64)
    rows = num_layers * num_tokens
    # One unique uint32 key per (token, expert), ascending = descending score, then
    # ascending id: the bits of a non-negative float16 order as the floats do, E < 2^16.
    key = (0xFFFF - scores16.reshape(rows, num_experts).view(np.uint16)).astype(np.uint32)
    key <<= 16
    key |= np.arange(num_experts, dtype=np.uint32)
    excluded = np.uint32(0xFFFFFFFF)
    flat = (np.arange(rows, dtype=np.int64)[:, None] * num_experts
            + topk_ids.reshape(rows, k)).reshape(-1)
    key.reshape(-1)[flat] = excluded
    if available is not None:
        key[~available.reshape(rows, num_experts)] = excluded
    # A row sort (numpy's SIMD sort on uint32) beats a partition plus a gather here; the
    # low 16 bits of a sorted key are its expert id.
    best = np.sort(key, axis=1)[:, :m]
    if (best == excluded).any():
        layer = int(np.argmax((best == excluded).any(axis=1))) // num_tokens
        raise TraceError(f"{where}, layer {layer}: fewer than {m} scored experts besides the "
                         f"top-k to keep as candidates; write fewer scores")
    return (best & np.uint32(0xFFFF)).astype(np.int64).reshape(num_layers, num_tokens, m)
