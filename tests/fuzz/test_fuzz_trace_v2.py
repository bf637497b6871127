"""Fuzzing the trace reader on format v2: zstd payloads, filters, top-N score arrays and
derived weights. Same rule as v1 (test_fuzz_trace.py): a file from a stranger either reads
or fails with one ``TraceError`` naming the file (and the step at fault), within bounded
time and memory; counts of cases that must fail keep the suite honest.

The corpus is two small valid v2 traces written by ``write_trace``: the default (top-N
scores, zstd, weights derived) and every score (``top_n=None``) with weights stored.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from macssim._validate import Limits
from macssim.trace import Step, open_trace, write_trace

from ._harness import DELETE, assert_names, edited, invoke_cli
from .test_fuzz_trace import (
    MODEL,
    MUST_FAIL_REGIONS,
    SWAPS,
    TOKENS,
    _cut_points,
    _read_all,
    _spec_edits,
    _steps,
    check,
    fuzz,
    parse,
)
from .test_fuzz_trace import assemble as _assemble


def assemble(header, metas, stored, index=None) -> bytes:
    return _assemble(header, metas, stored, index, version=2)


def _derivable(steps: list[Step]) -> list[Step]:
    """The same routing with gate weights that follow the v2 rule (so they are derived)."""
    out = []
    for s in steps:
        top = np.take_along_axis(s.scores.astype(np.float16), s.topk_ids, -1).astype(np.float64)
        total = top.sum(-1, keepdims=True).astype(np.float32)
        w = top.astype(np.float32) / total
        out.append(Step(index=s.index, kind=s.kind, modality=s.modality,
                        request_id=s.request_id, position=s.position, topk_ids=s.topk_ids,
                        topk_weights=w, scores=s.scores, entropy=s.entropy))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz-trace-v2")
    steps = _steps()
    topn = write_trace(root / "topn.mtrace", MODEL, {"source": "fuzz"},
                       _derivable(steps)).read_bytes()
    full = write_trace(root / "full.mtrace", MODEL, {"source": "fuzz"}, steps,
                       top_n=None).read_bytes()
    assert _read_all(root / "topn.mtrace") == _read_all(root / "full.mtrace") == 3
    p = parse(topn)
    assert p.header["format_version"] == 2 and p.header["score_candidates"] == 2
    assert p.metas[0]["compression"] == "zstd" and p.metas[0]["derived"] == ["topk_weights"]
    assert parse(full).metas[0]["derived"] == []
    for data in (topn, full):  # the test-side assembler reproduces the writer's files
        q = parse(data)
        path = root / "roundtrip.mtrace"
        path.write_bytes(assemble(q.header, q.metas, q.stored))
        assert _read_all(path) == 3
    return {"root": root, "topn": topn, "full": full}


KINDS = ("topn", "full")


def test_every_truncation_is_refused(corpus):
    path = corpus["root"] / "cut.mtrace"
    cases = 0
    for kind in KINDS:
        data = corpus[kind]
        for cut in _cut_points(data):
            check(path, data[:cut], f"{kind} cut at {cut}", must_fail=True)
            cases += 1
    assert cases > 300, cases


def test_a_bit_flip_at_every_payload_and_binary_byte(corpus):
    """A flip in a zstd payload fails the CRC (named by step); one in a binary field
    fails; one in the JSON never escapes as another exception."""
    path = corpus["root"] / "flip.mtrace"
    must, failed_must, crc = 0, 0, 0
    for kind in KINDS:
        data = corpus[kind]
        for start, end, what, step in parse(data).regions:
            stride = 1 if what in MUST_FAIL_REGIONS else 19
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
    assert failed_must == must and crc > 300, (must, crc)


@fuzz(120)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       kind=st.sampled_from(KINDS))
def test_random_bit_flips(corpus, where, bit, kind):
    data = bytearray(corpus[kind])
    pos = int(where * len(data))
    data[pos] ^= 1 << bit
    region = next(r for r in parse(corpus[kind]).regions if r[0] <= pos < r[1])
    check(corpus["root"] / "rflip.mtrace", bytes(data), f"flip {pos}.{bit}", step=region[3],
          must_fail=region[2] in MUST_FAIL_REGIONS)


# -- JSON edits ------------------------------------------------------------------------
def test_header_edits(corpus):
    root = corpus["root"]
    p = parse(corpus["topn"])
    must = failed = 0
    cases = [(("score_candidates",), v, False) for v in SWAPS if v != 2]
    cases += [(("score_candidates",), v, False) for v in (0, 7, 1 << 40, 1)]
    cases += [(("fields",), f, False) for f in (
        ["modality", "request_id", "position", "topk_ids", "topk_scores", "cand_ids"],
        ["modality", "request_id", "position", "topk_ids", "topk_weights", "scores",
         "topk_scores", "cand_ids", "cand_scores", "entropy"],
        ["modality", "request_id", "position", "topk_ids", "topk_weights", "entropy"],
        ["modality", "request_id", "position", "topk_ids", "topk_weights", "topk_scores",
         "cand_ids", "cand_scores", "cand_scores"])]
    cases += [(("format_version",), v, False) for v in (1, 3, 2.0, "2", True)]
    for path, value, may_pass in cases:
        data = assemble(edited(p.header, path, value), p.metas, p.stored)
        out = check(root / "header.mtrace", data, f"header {path} = {value!r}",
                    must_fail=not may_pass)
        must += not may_pass
        failed += (not may_pass) and out.error is not None
    assert failed == must > 30, (failed, must)


def test_step_metadata_edits(corpus):
    """Every edit of a v2 step's metadata, the v2 keys included, is refused and names
    the step."""
    root = corpus["root"]
    cases = 0
    for kind in KINDS:
        p = parse(corpus[kind])
        for i in (0, 2):
            for key in p.metas[i]:
                if key == "arrays":
                    continue
                current = p.metas[i][key]
                extra: tuple[Any, ...] = ()
                if key == "derived":
                    extra = (["scores"], ["topk_weights", "topk_weights"], ["entropy"],
                             [] if current else ["topk_weights"])
                elif key == "compression":
                    extra = ("zlib", "none", "lz4", "ZSTD")
                else:
                    extra = (current + ("!" if isinstance(current, str) else 1),)
                for value in SWAPS + extra:
                    if value is not DELETE and type(value) is type(current) \
                            and value == current:
                        continue
                    metas = list(p.metas)
                    metas[i] = edited(p.metas[i], (key,), value)
                    check(root / "meta.mtrace", assemble(p.header, metas, p.stored),
                          f"{kind} step {i} {key} = {value!r}", step=i, must_fail=True)
                    cases += 1
    assert cases > 250, cases


def test_array_spec_edits(corpus):
    """Every edit of an array spec of step 0, filters included. An edit that keeps the
    array inside the payload may read other bytes that pass; everything else fails."""
    root = corpus["root"]
    must, failed = 0, 0
    for kind in KINDS:
        p = parse(corpus[kind])
        meta = p.metas[0]
        names = [s["name"] for s in meta["arrays"]]
        for j, spec in enumerate(meta["arrays"]):
            edits = _spec_edits(spec, meta["payload_bytes"],
                                [n for n in names if n != spec["name"]])
            edits += [("filters", v, None if v == [] else False) for v in SWAPS]
            edits += [("filters", v, False) for v in (["shuffle", "delta"], ["zip"],
                                                      ["shuffle", "shuffle"], "shuffle")]
            # a filter list that is well formed but not what was written reads other
            # values, which may or may not pass the value checks
            edits += [("filters", v, None) for v in ([], ["delta"], ["shuffle"],
                                                     ["delta", "shuffle"])
                      if v != spec["filters"]]
            for key, value, may_pass in edits:
                metas = list(p.metas)
                metas[0] = edited(meta, ("arrays", j, key), value)
                strict = may_pass is False
                out = check(root / "spec.mtrace", assemble(p.header, metas, p.stored),
                            f"{kind} {spec['name']}.{key} = {value!r}", step=0,
                            must_fail=strict)
                must += strict
                failed += strict and out.error is not None
    assert failed == must > 900, (failed, must)


# -- zstd --------------------------------------------------------------------------------
def _with_step(p, i: int, stored: bytes, **meta) -> bytes:
    metas, blobs = list(p.metas), list(p.stored)
    metas[i] = {**p.metas[i], "stored_bytes": len(stored), "crc32": zlib.crc32(stored),
                "compression": "zstd", **meta}
    blobs[i] = stored
    return assemble(p.header, metas, blobs)


def _payload(p, i: int) -> bytes:
    return zstandard.ZstdDecompressor().decompress(p.stored[i])


def test_zstd_bomb_with_a_correct_crc_is_refused_before_inflating(corpus):
    """Step 1's payload replaced by a small frame declaring (and holding) 1 GiB, CRC
    recomputed: refused from the frame header, memory far below 1 GiB."""
    p = parse(corpus["topn"])
    packer = zstandard.ZstdCompressor(level=1, write_content_size=True)
    chunks = packer.compressobj(size=1 << 30)
    bomb = b"".join([chunks.compress(bytes(1 << 20)) for _ in range(1024)] + [chunks.flush()])
    assert len(bomb) < 1 << 20 and zstandard.get_frame_parameters(bomb).content_size == 1 << 30
    out = check(corpus["root"] / "bomb.mtrace", _with_step(p, 1, bomb), "zstd bomb", step=1,
                must_fail=True)
    assert_names(out.error, "zstd frame declares 1073741824 bytes", "payload_bytes")
    assert out.peak_bytes < 64 << 20, out.peak_bytes
    # the same bomb with "payload_bytes" claiming it: refused by the step's size bound
    out = check(corpus["root"] / "bomb2.mtrace", _with_step(p, 1, bomb,
                                                            payload_bytes=1 << 30),
                "zstd bomb, claimed", step=1, must_fail=True)
    assert_names(out.error, "payload_bytes")
    assert out.peak_bytes < 64 << 20, out.peak_bytes


def test_zstd_payload_claims(corpus):
    root = corpus["root"] / "claims.mtrace"
    p = parse(corpus["topn"])
    payload = _payload(p, 1)
    z = zstandard.ZstdCompressor(level=3, write_content_size=True)
    nosize = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    # A frame header (RFC 8878) asking for a 1 GiB window: descriptor 0xC0 (8-byte
    # content size, not single-segment), window byte exponent 20 -> 2^(10+20); the blocks
    # after it are never reached.
    big_window = (b"\x28\xb5\x2f\xfd\xc0\xa0" + len(payload).to_bytes(8, "little")
                  + b"\x01\x00\x00" + bytes(8))
    assert zstandard.get_frame_parameters(big_window).window_size == 1 << 30
    cases = {
        "short": _with_step(p, 1, z.compress(payload[:-8])),
        "long": _with_step(p, 1, z.compress(payload + b"12345678")),
        "trailing": _with_step(p, 1, z.compress(payload) + b"junk"),
        "two frames": _with_step(p, 1, z.compress(payload[:10]) + z.compress(payload[10:])),
        "garbage": _with_step(p, 1, b"\x28\xb5\x2f\xfd" + b"\xff" * 40),
        "not zstd": _with_step(p, 1, zlib.compress(payload)),
        "cut": _with_step(p, 1, z.compress(payload)[:-6]),
        "no size": _with_step(p, 1, nosize.compress(payload) + nosize.flush()),
        "big window": _with_step(p, 1, big_window),
        "skippable": _with_step(p, 1, b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little")
                                + b"abcd" + z.compress(payload)),
        "undeclared": _with_step(p, 1, z.compress(payload), compression="none"),
        "as zlib": _with_step(p, 1, z.compress(payload), compression="zlib"),
        "empty": _with_step(p, 1, b""),
    }
    for name, data in cases.items():
        check(root, data, name, step=1, must_fail=True)
    # the honest frame at another level reads
    check(root, _with_step(p, 1, zstandard.ZstdCompressor(level=19).compress(payload)),
          "level 19", step=1)


def test_a_big_honest_frame_is_read_within_bounds(corpus):
    """A step claiming 2^16 tokens whose 1-MB-ish frame honestly inflates to what its
    shapes need: read within the memory bound, then refused for its values (all-zero
    candidate ids repeat), naming step and layer."""
    p = parse(corpus["topn"])
    meta = p.metas[1]
    T = 1 << 16
    arrays, offset = [], 0
    for spec in meta["arrays"]:
        shape = [T if d == TOKENS[1] and axis == (0 if len(spec["shape"]) == 1 else 1)
                 else d for axis, d in enumerate(spec["shape"])]
        nbytes = int(np.prod(shape)) * np.dtype(spec["dtype"]).itemsize
        arrays.append({**spec, "shape": shape, "offset": offset, "nbytes": nbytes})
        offset += nbytes
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(offset))
    data = _with_step(p, 1, frame, payload_bytes=offset, num_tokens=T, arrays=arrays)
    out = check(corpus["root"] / "honest.mtrace", data, "big honest frame", step=1,
                must_fail=True)
    assert_names(out.error, "layer 0")
    assert out.peak_bytes > offset and out.peak_bytes < 64 * offset


def test_window_limit_is_zstds_default():
    assert Limits.MAX_ZSTD_WINDOW_BYTES == 1 << 27


# -- values ------------------------------------------------------------------------------
def _edit_payload(p, i: int, name: str, fn) -> bytes:
    """Step i with one array's (unfiltered) values changed by ``fn`` and every filter of
    the step dropped, re-compressed with a correct size and CRC."""
    from macssim.trace._codec import decode_filters
    payload = _payload(p, i)
    meta = p.metas[i]
    arrays, chunks, offset = [], [], 0
    for spec in meta["arrays"]:
        arr = decode_filters(payload, spec["offset"], np.dtype(spec["dtype"]),
                             tuple(spec["shape"]), tuple(spec["filters"])).copy()
        if spec["name"] == name:
            arr = fn(arr)
        raw = np.ascontiguousarray(arr).tobytes()
        arrays.append({**spec, "offset": offset, "nbytes": len(raw), "filters": []})
        chunks.append(raw)
        offset += len(raw)
    new = b"".join(chunks)
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(new)
    return _with_step(p, i, frame, payload_bytes=len(new), arrays=arrays)


@pytest.mark.parametrize(("name", "fn", "message"), [
    ("cand_ids", lambda a: np.full_like(a, 200), '"cand_ids" holds expert 200'),
    ("cand_ids", lambda a: a[..., ::-1].copy() * 0, '"cand_ids" names one expert twice'),
    ("topk_ids", lambda a: np.repeat(a[..., :1], a.shape[-1], axis=-1),
     '"topk_ids" names one expert twice'),
    ("topk_ids", lambda a: np.full_like(a, 9), '"topk_ids" holds expert 9'),
    ("cand_scores", lambda a: a[..., ::-1].copy(), '"cand_scores" must not increase'),
    ("cand_scores", lambda a: np.full_like(a, np.inf), '"cand_scores" holds NaN, inf'),
    ("topk_scores", lambda a: -np.abs(a) - 1, '"topk_scores" holds NaN, inf or a negative'),
    ("entropy", lambda a: np.full_like(a, np.nan), '"entropy" holds NaN'),
    ("modality", lambda a: np.full_like(a, 7), '"modality" holds code 7'),
])
def test_bad_values_name_step_layer_and_field(corpus, name, fn, message):
    p = parse(corpus["topn"])
    out = check(corpus["root"] / "values.mtrace", _edit_payload(p, 0, name, fn),
                f"{name} edit", step=0, must_fail=True)
    assert_names(out.error, message)


def test_cli_refuses_bad_v2_traces_in_one_line(corpus):
    root = corpus["root"]
    p = parse(corpus["topn"])
    bad = root / "bad-v2.mtrace"
    bad.write_bytes(_with_step(p, 1, b"\x28\xb5\x2f\xfd" + b"\xff" * 40))
    for command in ("validate", "info"):
        res = invoke_cli(["trace", command, str(bad)], name=command)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith(
            f"Error: {bad}, step 1"), res.output
    good = root / "good-v2.mtrace"
    good.write_bytes(corpus["topn"])
    res = invoke_cli(["trace", "validate", str(good)], name="good")
    assert res.exit_code == 0 and "valid macssim trace v2, 3 steps, 7 tokens" in res.output
    res = invoke_cli(["trace", "info", str(good)], name="info")
    assert res.exit_code == 0 and "top 4 of 8 per token-layer" in res.output


def test_reading_the_corpus_twice_gives_the_same_steps(corpus):
    a = list(open_trace(corpus["root"] / "topn.mtrace"))
    b = list(open_trace(corpus["root"] / "topn.mtrace"))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.scores, y.scores)


def test_shapes_permuted_within_their_bytes_are_refused(corpus):
    """A shape that keeps the byte count (so the payload bounds hold) but is not the
    model's: refused with the field named, for every array with more than one axis."""
    root = corpus["root"]
    cases = 0
    for kind in KINDS:
        p = parse(corpus[kind])
        meta = p.metas[0]
        for j, spec in enumerate(meta["arrays"]):
            shape = spec["shape"]
            others = {tuple(shape[::-1]), tuple(shape[1:] + shape[:1])} - {tuple(shape)}
            for other in sorted(others):
                metas = list(p.metas)
                metas[0] = edited(meta, ("arrays", j, "shape"), list(other))
                out = check(root / "perm.mtrace", assemble(p.header, metas, p.stored),
                            f"{kind} {spec['name']} shape {other}", step=0, must_fail=True)
                assert_names(out.error, f'"{spec["name"]}"')
                cases += 1
    assert cases >= 8, cases
