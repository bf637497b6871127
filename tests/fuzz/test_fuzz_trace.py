"""Fuzzing the trace reader on format v1 (v2: test_fuzz_trace_v2.py): a file from a
stranger either reads or fails with one ``TraceError`` naming the file (and the step at
fault), in bounded time and memory.

The corpus is two small valid traces (plain and zlib-compressed) written by
``write_trace``; each case mutates one of them: truncation at every byte, a bit flip at
every byte, JSON edits of the header, the model facts, the step metadata, the array specs
and the index (re-encoded so that lengths and offsets stay consistent and only the edit is
wrong), zlib bombs with a correct CRC, and a header claiming 10⁹ experts. Hypothesis adds
random truncations, flips, splices and JSON values (derandomised, so CI is deterministic).
Counts of cases that must fail keep the suite honest: a reader that accepted everything
would pass no test here.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macssim._errors import MacssimError, TraceError
from macssim._validate import Limits
from macssim.trace import ModelFacts, Step, open_trace, write_trace

from ._harness import DELETE, Outcome, assert_names, edited, invoke_cli, run_bounded

MODEL = ModelFacts(name="fuzz", num_layers=3, moe_layers=(0, 2), num_experts=8, top_k=2,
                   hidden_size=16, expert_intermediate_size=8)
TOKENS = (3, 2, 2)
"""Tokens per step: a prefill of two requests, two decode steps."""


def fuzz(examples: int) -> settings:
    """Hypothesis settings for CI: deterministic, no example database, no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


SWAPS: tuple[Any, ...] = (DELETE, "x", "", [], [1], {}, {"a": 1}, 1.5, 2.0, True, False, None,
                          10**18, 10**9, 2**64, -1, 0, float("nan"), float("inf"),
                          float("-inf"))
"""Replacement values for JSON fields: every JSON type, huge and negative ints, and the
NaN/Infinity literals ``json.dumps`` writes for non-finite floats."""


def _steps() -> list[Step]:
    rng = np.random.default_rng(0)
    L, k, E = MODEL.num_moe_layers, MODEL.top_k, MODEL.num_experts
    out = []
    for i, T in enumerate(TOKENS):
        logits = rng.standard_normal((L, T, E))
        scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        ids = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
        weights = np.take_along_axis(scores, ids, -1)
        out.append(Step(index=i, kind="prefill" if i == 0 else "decode",
                        modality=(np.arange(T) % 2).astype(np.uint8),
                        request_id=np.arange(T) % 2, position=np.arange(T) + 3 * i,
                        topk_ids=ids, topk_weights=weights.astype(np.float32),
                        scores=scores.astype(np.float32),
                        entropy=rng.uniform(4, 6, (L, T)).astype(np.float32)))
    return out


# -- the layout, parsed and re-assembled from the spec alone ---------------------------
@dataclass
class Parsed:
    header: dict
    metas: list[dict]
    stored: list[bytes]
    index: dict
    regions: list[tuple[int, int, str, int | None]] = field(default_factory=list)
    """(start, end, what, step): "magic", "hlen", "header", "tag", "meta", "payload",
    "index-tag", "index", "tail"."""


def parse(data: bytes) -> Parsed:
    hlen = struct.unpack("<I", data[12:16])[0]
    regions = [(0, 12, "magic", None), (12, 16, "hlen", None), (16, 16 + hlen, "header", None)]
    header = json.loads(data[16:16 + hlen])
    (at,) = struct.unpack("<Q", data[-16:-8])
    (ilen,) = struct.unpack("<I", data[at + 4:at + 8])
    index = json.loads(data[at + 8:at + 8 + ilen])
    metas, stored = [], []
    for i, off in enumerate(index["step_offsets"]):
        (mlen,) = struct.unpack("<I", data[off + 4:off + 8])
        meta = json.loads(data[off + 8:off + 8 + mlen])
        start = off + 8 + mlen
        metas.append(meta)
        stored.append(data[start:start + meta["stored_bytes"]])
        regions += [(off, off + 8, "tag", i), (off + 8, start, "meta", i),
                    (start, start + meta["stored_bytes"], "payload", i)]
    regions += [(at, at + 8, "index-tag", None), (at + 8, at + 8 + ilen, "index", None),
                (len(data) - 16, len(data), "tail", None)]
    return Parsed(header, metas, stored, index, regions)


def assemble(header: Any, metas: list[Any], stored: list[bytes], index: Any = None,
             version: int = 1) -> bytes:
    """Bytes of a trace with these parts; lengths, offsets and the index (unless given)
    are recomputed, so whatever is wrong is only what the caller edited."""
    blob = json.dumps(header).encode()
    out = bytearray(b"MACSTRC\0" + struct.pack("<II", version, len(blob)) + blob)
    offsets = []
    for meta, payload in zip(metas, stored, strict=True):
        offsets.append(len(out))
        m = json.dumps(meta).encode()
        out += b"STEP" + struct.pack("<I", len(m)) + m + payload
    if index is None:
        index = {"num_steps": len(offsets), "num_tokens": sum(TOKENS[:len(offsets)]),
                 "step_offsets": offsets}
    ib = json.dumps(index).encode()
    at = len(out)
    out += b"INDX" + struct.pack("<I", len(ib)) + ib + struct.pack("<Q", at) + b"MACSEND\0"
    return bytes(out)


# -- the check every case passes -------------------------------------------------------
def _read_all(path: Path) -> int:
    trace = open_trace(path)
    return sum(1 for _ in trace)


def put(path: Path, data: bytes) -> None:
    """Overwrite ``path`` with ``data``: rewriting in place and cutting the tail is ~20x
    faster than ``write_bytes`` (which empties the file first) for thousands of cases."""
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.write(data)
        fh.truncate()


def check(path: Path, data: bytes, name: str, *, step: int | None = None,
          must_fail: bool = False) -> Outcome:
    """Write ``data`` to ``path``, open it and read every step: a result or a
    MacssimError naming the file (and ``step`` when given), nothing else."""
    put(path, data)
    outcome = run_bounded(lambda: _read_all(path), name=name)
    if outcome.error is not None:
        assert isinstance(outcome.error, TraceError), name
        assert_names(outcome.error, str(path))
        if step is not None:
            assert_names(outcome.error, f"step {step}")
        assert "\n" not in str(outcome.error), f"{name}: message spans lines"
    elif must_fail:
        raise AssertionError(f"{name}: the reader accepted it")
    return outcome


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz-trace")
    steps = _steps()
    plain = write_trace(root / "plain.mtrace", MODEL, {"source": "fuzz"}, steps,
                        format_version=1).read_bytes()
    packed = write_trace(root / "zlib.mtrace", MODEL, {"source": "fuzz"}, steps,
                         compress=True, format_version=1).read_bytes()
    assert _read_all(root / "plain.mtrace") == _read_all(root / "zlib.mtrace") == 3
    # The test-side assembler reproduces the writer's files, so edits differ only in the edit.
    for data in (plain, packed):
        p = parse(data)
        assert open_trace_bytes(root, assemble(p.header, p.metas, p.stored)) == 3
    return {"root": root, "plain": plain, "zlib": packed}


def open_trace_bytes(root: Path, data: bytes) -> int:
    path = root / "roundtrip.mtrace"
    path.write_bytes(data)
    return _read_all(path)


# -- truncation ------------------------------------------------------------------------
def _cut_points(data: bytes) -> list[int]:
    """Every record boundary and the bytes around it, every byte of the fixed-size fields
    at both ends, and every 17th byte in between."""
    points = set(range(0, 40)) | set(range(len(data) - 40, len(data))) | \
        set(range(0, len(data), 17))
    for start, end, _, _ in parse(data).regions:
        points |= {start - 1, start, start + 1, end - 1}
    return sorted(p for p in points if 0 <= p < len(data))


def test_every_truncation_is_refused(corpus):
    """Cutting either trace at a record boundary (or near one, or anywhere on a stride)
    is an error."""
    path = corpus["root"] / "cut.mtrace"
    cases = 0
    for kind in ("plain", "zlib"):
        data = corpus[kind]
        for cut in _cut_points(data):
            check(path, data[:cut], f"{kind} cut at {cut}", must_fail=True)
            cases += 1
    assert cases > 500, cases


def test_junk_after_the_end_marker_is_refused(corpus):
    path = corpus["root"] / "long.mtrace"
    for extra in (b"\0", b"MACSEND\0", corpus["plain"][-16:]):
        check(path, corpus["plain"] + extra, f"extra {extra!r}", must_fail=True)


@fuzz(60)
@given(cut=st.floats(0, 1, exclude_max=True), kind=st.sampled_from(["plain", "zlib"]))
def test_random_truncation_is_refused(corpus, cut, kind):
    data = corpus[kind]
    check(corpus["root"] / "rcut.mtrace", data[:int(cut * len(data))], f"cut {cut}",
          must_fail=True)


# -- bit flips -------------------------------------------------------------------------
MUST_FAIL_REGIONS = ("magic", "hlen", "tag", "payload", "index-tag", "tail")
"""Binary fields and payloads: any flip there is caught (CRC, lengths, magic)."""


def test_a_bit_flip_at_every_payload_and_binary_byte(corpus):
    """One bit flipped in every byte of every payload and every binary field (magic,
    lengths, tags, index offset) of both traces, and in every 7th byte of the JSON: a flip
    in a payload always fails the CRC and names its step; one in a binary field always
    fails; one inside JSON may be harmless (a provenance letter) but never escapes as
    another exception."""
    path = corpus["root"] / "flip.mtrace"
    must, failed_must, crc = 0, 0, 0
    for kind in ("plain", "zlib"):
        data = corpus[kind]
        for start, end, what, step in parse(data).regions:
            # every byte of plain payloads and binary fields; every other byte of the
            # zlib payloads; a stride through the JSON
            stride = 1 if what in MUST_FAIL_REGIONS else 19
            if what == "payload" and kind == "zlib":
                stride = 2
            for pos in range(start, end, stride):
                flipped = bytearray(data)
                flipped[pos] ^= 1 << (pos * 5 % 8)
                out = check(path, bytes(flipped), f"{kind} flip at {pos} ({what})", step=step,
                            must_fail=what in MUST_FAIL_REGIONS)
                if what in MUST_FAIL_REGIONS:
                    must += 1
                    failed_must += out.error is not None
                if what == "payload":
                    assert "checksum mismatch" in str(out.error), str(out.error)
                    crc += 1
    payloads = sum(len(range(s, e, 1 if kind == "plain" else 2))
                   for kind in ("plain", "zlib") for s, e, what, _ in
                   parse(corpus[kind]).regions if what == "payload")
    assert failed_must == must and crc == payloads > 500, (must, crc)


@fuzz(150)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       kind=st.sampled_from(["plain", "zlib"]))
def test_random_bit_flips(corpus, where, bit, kind):
    data = bytearray(corpus[kind])
    pos = int(where * len(data))
    data[pos] ^= 1 << bit
    region = next(r for r in parse(corpus[kind]).regions if r[0] <= pos < r[1])
    check(corpus["root"] / "rflip.mtrace", bytes(data), f"flip {pos}.{bit}", step=region[3],
          must_fail=region[2] in MUST_FAIL_REGIONS)


@fuzz(100)
@given(where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=64),
       replace=st.booleans(), kind=st.sampled_from(["plain", "zlib"]))
def test_random_splices(corpus, where, junk, replace, kind):
    """Random bytes written over, or inserted into, the file."""
    data = corpus[kind]
    pos = int(where * len(data))
    spliced = data[:pos] + junk + data[pos + (len(junk) if replace else 0):]
    check(corpus["root"] / "splice.mtrace", spliced, f"splice at {pos}",
          must_fail=not replace)


# -- JSON edits ------------------------------------------------------------------------
INT_FIELDS = ("num_layers", "num_experts", "top_k", "hidden_size", "expert_intermediate_size",
              "num_shared_experts", "shared_intermediate_size", "dense_intermediate_size",
              "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size")
OPTIONAL_MODEL = ("num_shared_experts", "shared_intermediate_size", "dense_intermediate_size",
                  "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size", "dtype",
                  "score_function", "vision_flops_per_token", "expert_sets", "source")


def _model_edit_may_pass(key: str, value: Any) -> bool:
    """Which edits of the header's model leave a valid model (everything else must fail)."""
    if value is DELETE:
        return key in OPTIONAL_MODEL
    if key in ("name", "source"):
        return isinstance(value, str)
    if key == "vision_flops_per_token":
        return type(value) in (int, float) and 0 <= value < float("inf")
    if key in ("num_shared_experts", "shared_intermediate_size", "dense_intermediate_size"):
        return type(value) is int and value == 0
    if key == "expert_sets":
        return value == []
    return False


def test_header_and_model_edits(corpus):
    root = corpus["root"]
    must, failed = 0, 0
    for kind in ("plain",):  # the header is read the same way whatever the compression
        p = parse(corpus[kind])
        cases = [(("model", key), value, _model_edit_may_pass(key, value))
                 for key in p.header["model"] for value in SWAPS]
        cases += [((key,), value, (key == "modalities" and value is DELETE)
                   or (key == "provenance" and value in ({}, {"a": 1})))
                  for key in p.header for value in SWAPS]
        cases += [(("model", "moe_layers"), v, False)
                  for v in ([2, 0], [0, 0], [0, 3], [0, -1], [0, 2.0], [0, True], [0, "2"],
                            list(range(4)))]
        cases += [(("model", "expert_sets"), v, ok) for v, ok in (
            ([{"name": "t", "first": 0, "count": 4}, {"name": "v", "first": 4, "count": 4}],
             True),
            ([{"name": "t", "first": 0, "count": 5}, {"name": "v", "first": 4, "count": 4}],
             False),
            ([{"name": "t", "first": 6, "count": 4}], False),
            ([{"name": "t", "first": 0}], False), (["t"], False), ([None], False),
            ([{"name": "", "first": 0, "count": 1}], False),
            ([{"name": "t", "first": 0.0, "count": 1}], False))]
        cases += [(("model", "top_k"), 9, False), (("model", "dtype"), "float8", True),
                  (("model", "score_function"), "sigmoid", True),
                  (("model", "num_experts"), 10**9, False), (("model", "extra"), 1, False),
                  (("fields",), ["modality", "request_id", "position", "topk_ids",
                                 "topk_ids"], False),
                  (("fields",), ["modality", "request_id", "position"], False)]
        for path, value, may_pass in cases:
            data = assemble(edited(p.header, path, value), p.metas, p.stored)
            name = f"{kind} header {'.'.join(path)} = {value!r}"
            out = check(root / "header.mtrace", data, name, must_fail=not may_pass)
            if not may_pass:
                must += 1
                failed += out.error is not None
                finite = not isinstance(value, float) or value == value and \
                    abs(value) != float("inf")
                if len(path) == 2 and out.error is not None and finite:
                    # (NaN and Infinity are refused by the JSON parser, before any field;
                    # a model that is valid but not the steps' fails at step 0)
                    assert "header.model" in str(out.error) or "step 0" in str(out.error), \
                        str(out.error)
    assert failed == must > 350, (failed, must)


def test_step_metadata_edits(corpus):
    """Every edit of a step's metadata (a type swap, a huge, negative or wrong number, a
    deleted key) is refused, and names that step."""
    root = corpus["root"]
    cases = 0
    for kind in ("plain", "zlib"):
        p = parse(corpus[kind])
        for i in (0, 2):
            for key in p.metas[i]:
                if key == "arrays":
                    continue
                current = p.metas[i][key]
                for value in SWAPS + (current + ("!" if isinstance(current, str) else 1),):
                    if value is not DELETE and type(value) is type(current) \
                            and value == current:
                        continue  # not an edit
                    metas = list(p.metas)
                    metas[i] = edited(p.metas[i], (key,), value)
                    check(root / "meta.mtrace", assemble(p.header, metas, p.stored),
                          f"{kind} step {i} {key} = {value!r}", step=i, must_fail=True)
                    cases += 1
    assert cases > 250


def _spec_edits(spec: dict, payload_bytes: int, others: list[str]):
    """(key, value, may_pass) edits of one array spec of step 0."""
    size = spec["nbytes"]
    values = [(key, v, False) for key in ("name", "dtype", "shape", "offset", "nbytes")
              for v in SWAPS]
    ndim = len(spec["shape"])
    values += [("shape", s, False) for s in (
        [10**9] * ndim, [-1] + spec["shape"][1:], [float(d) for d in spec["shape"]],
        spec["shape"] + [1], spec["shape"][:-1] + [spec["shape"][-1] + 1], [[1]] * ndim,
        [2**63] + spec["shape"][1:])]
    values += [("dtype", d, False) for d in ("<f8", "|O", ">i2", "<i8", "<f2", "<f4", "<i4",
                                              "|u1", "V8")
               if d != spec["dtype"]]
    values += [("nbytes", size + d, False) for d in (1, -1, 10**6)]
    values += [("name", n, False) for n in ("bogus", *others)]
    # Offsets that keep the array inside the payload may read other bytes that happen to
    # pass; offsets past it must fail.
    values += [("offset", o, 0 <= o <= payload_bytes - size)
               for o in (spec["offset"] + 1, payload_bytes - size, payload_bytes - size + 1,
                         payload_bytes, 2**40)]
    return [(k, v, ok or (k == "offset" and type(v) is int and 0 <= v <= payload_bytes - size))
            for k, v, ok in values]


def test_array_spec_edits(corpus):
    root = corpus["root"]
    must, failed = 0, 0
    for kind in ("plain",):  # specs are checked before the payload is read or inflated
        p = parse(corpus[kind])
        meta = p.metas[0]
        names = [s["name"] for s in meta["arrays"]]
        for j, spec in enumerate(meta["arrays"]):
            for key, value, may_pass in _spec_edits(spec, meta["payload_bytes"],
                                                    [n for n in names if n != spec["name"]]):
                metas = list(p.metas)
                metas[0] = edited(meta, ("arrays", j, key), value)
                out = check(root / "spec.mtrace", assemble(p.header, metas, p.stored),
                            f"{kind} {spec['name']}.{key} = {value!r}", step=0,
                            must_fail=not may_pass)
                must += not may_pass
                failed += (not may_pass) and out.error is not None
        # whole-list edits
        for arrays, may_pass in ((meta["arrays"][::-1], True), (meta["arrays"][:3], False),
                                 (meta["arrays"] + [meta["arrays"][0]], False),
                                 (meta["arrays"] * 200, False), ({"a": 1}, False)):
            metas = list(p.metas)
            metas[0] = edited(meta, ("arrays",), arrays)
            check(root / "spec.mtrace", assemble(p.header, metas, p.stored),
                  f"{kind} arrays list edit", step=0, must_fail=not may_pass)
    assert failed == must > 700, (failed, must)


def test_index_edits(corpus):
    root = corpus["root"]
    for kind in ("plain", "zlib"):
        p = parse(corpus[kind])
        data = corpus[kind]
        offsets = p.index["step_offsets"]
        for key in p.index:
            for value in SWAPS:
                index = edited(p.index, (key,), value)
                # num_tokens is a total the reader cannot check without reading every
                # step; `trace validate` does (below). Any other edit must fail.
                may_pass = key == "num_tokens" and type(value) is int and \
                    0 <= value <= len(offsets) * Limits.MAX_TOKENS_PER_STEP
                check(root / "index.mtrace", assemble(p.header, p.metas, p.stored, index),
                      f"{kind} index {key} = {value!r}", must_fail=not may_pass)
        bad_offsets = ([offsets[0], offsets[2], offsets[1]], [offsets[0], offsets[0] + 8,
                       offsets[2]], [offsets[0] - 1, offsets[1], offsets[2]],
                       [offsets[0], offsets[1], len(data)], offsets[:2], offsets + [offsets[2]],
                       [offsets[0], offsets[1] + 1, offsets[2]], [offsets[0]] * 3)
        for value in bad_offsets:
            index = dict(p.index, step_offsets=value, num_steps=len(value))
            check(root / "index.mtrace", assemble(p.header, p.metas, p.stored, index),
                  f"{kind} offsets {value}", must_fail=True)


@fuzz(200)
@given(target=st.sampled_from(["header", "model", "meta", "spec", "index"]),
       pick=st.integers(0, 1000),
       value=st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                       st.lists(st.integers(-3, 10**6), max_size=4),
                       st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
       kind=st.sampled_from(["plain", "zlib"]))
def test_random_json_values(corpus, target, pick, value, kind):
    """Any JSON value in any field: read or refused, never another exception."""
    p = parse(corpus[kind])
    header, metas, index, step = p.header, list(p.metas), None, None
    if target == "header":
        header = edited(header, (sorted(header)[pick % len(header)],), value)
    elif target == "model":
        keys = sorted(header["model"])
        header = edited(header, ("model", keys[pick % len(keys)]), value)
    elif target == "meta":
        step = pick % 3
        keys = sorted(metas[step])
        metas[step] = edited(metas[step], (keys[pick % len(keys)],), value)
    elif target == "spec":
        step, j = pick % 3, pick % 7
        metas[step] = edited(metas[step], ("arrays", j, ("name", "dtype", "shape", "offset",
                                                         "nbytes")[pick % 5]), value)
    else:
        keys = sorted(p.index)
        index = edited(p.index, (keys[pick % len(keys)],), value)
    check(corpus["root"] / "rjson.mtrace", assemble(header, metas, p.stored, index),
          f"{target}[{pick}] = {value!r}", step=step)


# -- bombs and huge claims ---------------------------------------------------------------
def _zeros_stream(prefix: bytes, zeros: int) -> bytes:
    """A valid zlib stream of ``prefix`` then ``zeros`` zero bytes, built without
    compressing them all: after a full flush, deflating 1 MiB of zeros gives the same
    bytes every time, so the chunk is repeated and the Adler-32 is computed alongside."""
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    chunk = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    assert packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH) == chunk
    tail = packer.flush()[:-4]  # the final empty block, without the Adler-32
    adler = zlib.adler32(prefix)
    for _ in range(zeros >> 20):
        adler = zlib.adler32(mib, adler)
    return head + chunk * (zeros >> 20) + tail + struct.pack(">I", adler)


def test_zeros_stream_is_valid_zlib():
    assert zlib.decompress(_zeros_stream(b"abc", 3 << 20)) == b"abc" + bytes(3 << 20)


def _with_step(p: Parsed, i: int, stored: bytes, **meta) -> bytes:
    metas, blobs = list(p.metas), list(p.stored)
    metas[i] = {**p.metas[i], "stored_bytes": len(stored), "crc32": zlib.crc32(stored),
                "compression": "zlib", **meta}
    blobs[i] = stored
    return assemble(p.header, metas, blobs)


def test_zlib_bomb_with_a_correct_crc_is_refused_without_inflating(corpus):
    """Step 1's payload replaced by a ~1 MB stream inflating to 1 GiB (its real payload,
    then zeros), CRC recomputed: refused, and memory stays far below 1 GiB."""
    p = parse(corpus["zlib"])
    payload = zlib.decompress(p.stored[1])
    bomb = _zeros_stream(payload, 1 << 30)
    assert len(bomb) < 2 << 20
    out = check(corpus["root"] / "bomb.mtrace", _with_step(p, 1, bomb), "zlib bomb", step=1,
                must_fail=True)
    assert_names(out.error, "inflates to more than", "payload_bytes")
    assert out.peak_bytes < 64 << 20, out.peak_bytes


def test_zlib_payload_claims(corpus):
    root = corpus["root"] / "claims.mtrace"
    p = parse(corpus["zlib"])
    payload = zlib.decompress(p.stored[1])
    n = len(payload)
    cases = {
        # a declared size beyond what zlib can inflate from the stored bytes
        "ratio": _with_step(p, 1, zlib.compress(payload), payload_bytes=n * 5000),
        # the stream ends before the declared size
        "short": _with_step(p, 1, zlib.compress(payload[:-8])),
        # bytes after the end of the stream
        "trailing": _with_step(p, 1, zlib.compress(payload) + b"junk"),
        # not zlib at all, with a correct CRC
        "garbage": _with_step(p, 1, os.urandom(0) + b"\x78\x9c" + b"\xff" * 40),
        # a stream cut in the middle
        "cut": _with_step(p, 1, zlib.compress(payload)[:-10]),
        # zlib but declared "none"
        "undeclared": _with_step(p, 1, zlib.compress(payload), compression="none"),
    }
    for name, data in cases.items():
        check(root, data, name, step=1, must_fail=True)


def test_a_big_honest_stream_is_read_within_bounds(corpus):
    """A step claiming 2¹⁸ tokens whose zlib payload (300 kB stored) honestly inflates to
    the ~20 MB its shapes need: read within the memory bound, then refused for its values
    (all-zero ids repeat an expert), naming the step and layer."""
    p = parse(corpus["zlib"])
    T = 1 << 18
    L, k, E = MODEL.num_moe_layers, MODEL.top_k, MODEL.num_experts
    shapes = {"modality": ([T], "|u1"), "request_id": ([T], "<i8"), "position": ([T], "<i4"),
              "topk_ids": ([L, T, k], "<i2"), "topk_weights": ([L, T, k], "<f4"),
              "scores": ([L, T, E], "<f2"), "entropy": ([L, T], "<f4")}
    arrays, offset = [], 0
    for name, (shape, dtype) in shapes.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        arrays.append({"name": name, "dtype": dtype, "shape": shape, "offset": offset,
                       "nbytes": nbytes})
        offset += nbytes
    size = offset
    stored = _zeros_stream(bytes(size & ((1 << 20) - 1)), size & ~((1 << 20) - 1))
    data = _with_step(p, 1, stored, payload_bytes=size, num_tokens=T, arrays=arrays)
    out = check(corpus["root"] / "honest.mtrace", data, "big honest stream", step=1,
                must_fail=True)
    assert_names(out.error, "layer 0", "names one expert twice")
    assert out.peak_bytes > size  # it really was inflated and decoded


def test_header_claiming_a_billion_experts(corpus):
    """CRCs, lengths and offsets all consistent; only the claim is absurd."""
    root = corpus["root"]
    p = parse(corpus["plain"])
    for key, value in (("num_experts", 10**9), ("num_layers", 10**9), ("top_k", 10**9),
                       ("hidden_size", 10**9), ("vocab_size", -5), ("num_kv_heads", 0)):
        header = edited(p.header, ("model", key), value)
        out = check(root / "claim.mtrace", assemble(header, p.metas, p.stored),
                    f"{key} = {value}", must_fail=True)
        assert_names(out.error, "header.model", f'"{key}"')
    # At the limits: accepted at open (it is a legal model), refused at step 0 because the
    # step's arrays are not that model's; memory stays bounded all along.
    header = edited(p.header, ("model",), dict(
        p.header["model"], num_experts=Limits.MAX_EXPERTS, top_k=Limits.MAX_TOP_K,
        num_layers=Limits.MAX_LAYERS, moe_layers=list(range(Limits.MAX_LAYERS))))
    out = check(root / "limits.mtrace", assemble(header, p.metas, p.stored), "at limits",
                step=0, must_fail=True)
    path = root / "limits-cli.mtrace"
    path.write_bytes(assemble(header, p.metas, p.stored))
    res = invoke_cli(["trace", "info", str(path)], name="info at limits")
    assert res.exit_code == 1 and res.output.startswith(f"Error: {path}, step 0")


# -- the command line ------------------------------------------------------------------
def _one_line_error(args: list[str], path: Path, name: str) -> str:
    res = invoke_cli(args, name=name)
    assert res.exit_code == 1, f"{name}: exit {res.exit_code}\n{res.output}"
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}"), res.output
    return lines[0]


def test_cli_refuses_bad_traces_in_one_line(corpus):
    root = corpus["root"]
    plain = corpus["plain"]
    p = parse(plain)
    payload = zlib.decompress(parse(corpus["zlib"]).stored[1])
    bad = {
        "cut.mtrace": plain[:len(plain) // 2],
        "flip.mtrace": plain[:p.regions[5][0] + 3] + bytes([plain[p.regions[5][0] + 3] ^ 4])
        + plain[p.regions[5][0] + 4:],
        "experts.mtrace": assemble(edited(p.header, ("model", "num_experts"), 10**9),
                                   p.metas, p.stored),
        "nan.mtrace": assemble(edited(p.header, ("model", "vision_flops_per_token"),
                                      float("nan")), p.metas, p.stored),
        "bomb.mtrace": _with_step(parse(corpus["zlib"]), 1, _zeros_stream(payload, 64 << 20)),
        "tokens.mtrace": assemble(p.header, p.metas, p.stored,
                                  dict(p.index, num_tokens=6)),
        "empty.mtrace": b"",
        "zip.mtrace": b"PK\x03\x04" + bytes(100),
    }
    for name, data in bad.items():
        path = root / name
        path.write_bytes(data)
        for command in ("validate", "info"):
            if name == "tokens.mtrace" and command == "info":
                continue  # the index total is checked by validate only
            _one_line_error(["trace", command, str(path)], path, f"{command} {name}")
    good = root / "good.mtrace"
    good.write_bytes(plain)
    res = invoke_cli(["trace", "validate", str(good)], name="good")
    assert res.exit_code == 0 and "valid macssim trace v1, 3 steps, 7 tokens" in res.output


def test_cli_on_paths_that_are_not_trace_files(corpus, tmp_path, monkeypatch):
    cases = {tmp_path: "is a directory", tmp_path / "absent.mtrace": "No such file",
             Path(os.devnull): "not a regular file"}
    unreadable = tmp_path / "locked.mtrace"
    unreadable.write_bytes(corpus["plain"])
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make open() say what it says to others
        def locked_open(file, *args, **kwargs):
            if Path(file) == unreadable:
                raise PermissionError(13, "Permission denied", str(file))
            return open(file, *args, **kwargs)

        monkeypatch.setattr("macssim.trace._format.open", locked_open, raising=False)
    for command in ("validate", "info"):
        for path, message in cases.items():
            assert message in _one_line_error(["trace", command, str(path)], path,
                                              f"{command} {path}")
        assert "Permission denied" in _one_line_error(["trace", command, str(unreadable)],
                                                      unreadable, f"{command} unreadable")
    unreadable.chmod(0o600)
    with pytest.raises(MacssimError, match="cannot read trace"):
        open_trace(tmp_path / "absent.mtrace")
