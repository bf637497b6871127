"""Fuzzing the vLLM and SGLang importers: an engine export from a stranger either imports
into a trace that reads back clean, or fails with one ``MacssimError`` naming the input
file, leaving no output, in bounded time and memory.

The corpus is a small valid export of each kind (.npy, .npz plain and compressed, .json,
.jsonl, SGLang JSON); cases truncate and flip them, forge .npy headers (a huge shape, an
object dtype, floats), build zip bombs by hand, and edit every JSON field (a type swap, a
huge, negative or NaN number, ragged and out-of-range id lists). Hypothesis adds random
truncations, flips and JSON values, derandomised.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macssim._validate import Limits
from macssim.capture import import_sglang, import_vllm
from macssim.trace import ModelFacts, open_trace

from ._harness import DELETE, Outcome, assert_names, edited, invoke_cli, run_bounded

FACTS = ModelFacts(name="toy", num_layers=4, moe_layers=(1, 2, 3), num_experts=8, top_k=2,
                   hidden_size=16, expert_intermediate_size=8)
SWAPS: tuple[Any, ...] = (DELETE, "x", "", [], [1], {}, {"a": 1}, 1.5, 2.0, True, False, None,
                          10**18, 10**9, 2**64, -1, 0, float("nan"), float("inf"))


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _routed(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3 MoE layers, top-2] distinct expert ids per token."""
    return np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)])
                     for _ in range(n)])


def _sglang_dump(rng: np.random.Generator) -> dict:
    """Rank 0: an extend (requests of 3 and 2 tokens) and a decode; rank 1: one extend.
    10 physical experts for 8 logical (two replicas), 4 decoder layers (layer 0 dense: -1),
    ids padded to 4 columns with -1."""
    p2l = [list(range(8)) + [0, 5]] * 4

    def pass_of(n: int) -> list:
        ids = -np.ones((4, n, 4), dtype=np.int64)
        for layer in (1, 2, 3):
            for t in range(n):
                while True:
                    pick = rng.choice(10, 2, replace=False)
                    if p2l[layer][pick[0]] != p2l[layer][pick[1]]:
                        break
                ids[layer, t, :2] = pick
        return ids.tolist()

    return {"records": [
        {"forward_pass_id": 1, "rank": 0, "input_ids": [1, 9, 9, 1, 3],
         "positions": [0, 1, 2, 0, 1], "extend_seq_lens": [3, 2], "forward_mode": 1,
         "topk_ids_of_layer": pass_of(5)},
        {"forward_pass_id": 2, "rank": 0, "input_ids": [4, 4], "positions": [3, 2],
         "extend_seq_lens": None, "forward_mode": 2, "topk_ids_of_layer": pass_of(2)},
        {"forward_pass_id": 1, "rank": 1, "input_ids": [5], "positions": [0],
         "extend_seq_lens": [1], "forward_mode": 1, "topk_ids_of_layer": pass_of(1)},
    ], "last_physical_to_logical_map": p2l}


def _npz(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _npy(arr: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    a, b = _routed(rng, 5), _routed(rng, 3)
    records = [{"request_id": "a", "routed_experts": a.tolist(), "prompt_len": 3,
                "token_ids": [1, 9, 9, 5, 7]},
               {"request_id": "b", "routed_experts": b.tolist()}]
    arrays = {"a": a, "a.prompt_len": np.array(3), "a.token_ids": np.array([1, 9, 9, 5, 7]),
              "b": b}
    return {
        "root": tmp_path_factory.mktemp("fuzz-import"),
        "npy": _npy(a),
        "npz": _npz(arrays),
        "npzc": _npz(arrays, compressed=True),
        "json": records,
        "jsonl": records,
        "sglang": _sglang_dump(rng),
        "a": a,
    }


# -- the check every case passes -------------------------------------------------------
def put(path: Path, data: bytes) -> None:
    with open(path, "r+b" if path.exists() else "wb") as fh:
        fh.write(data)
        fh.truncate()


def _json_bytes(kind: str, data: Any) -> bytes:
    if kind == "jsonl":
        return b"\n".join(json.dumps(r).encode() for r in data)
    return json.dumps(data).encode()


def _import_and_read(importer, path: Path, out: Path) -> int:
    importer(path, out, FACTS)
    return sum(1 for _ in open_trace(out))  # what an import writes always reads back


def check(root: Path, suffix: str, data: bytes | Any, name: str, *, must_fail: bool = False,
          sglang: bool = False) -> Outcome:
    """Write the case to ``root/case.<suffix>`` and import it: a valid trace, or a
    MacssimError naming the input file and no output left behind."""
    path = root / f"case.{suffix}"
    if not isinstance(data, bytes):
        data = _json_bytes(suffix, data)
    put(path, data)
    out = root / "case-out.mtrace"
    out.unlink(missing_ok=True)
    importer = import_sglang if sglang else import_vllm
    outcome = run_bounded(lambda: _import_and_read(importer, path, out), name=name)
    if outcome.error is not None:
        assert_names(outcome.error, str(path))
        assert "\n" not in str(outcome.error), f"{name}: message spans lines"
        assert not out.exists(), f"{name}: an output was left behind"
        assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [], name
    elif must_fail:
        raise AssertionError(f"{name}: the importer accepted it")
    return outcome


def test_the_corpus_imports(corpus):
    root = corpus["root"]
    for kind in ("npy", "npz", "npzc", "json", "jsonl"):
        assert check(root, kind.replace("npzc", "npz"), corpus[kind], kind).error is None
    assert check(root, "json", corpus["sglang"], "sglang", sglang=True).error is None


# -- .npy ------------------------------------------------------------------------------
def test_every_npy_truncation_is_refused(corpus):
    data = corpus["npy"]
    for cut in range(len(data)):
        check(corpus["root"], "npy", data[:cut], f"npy cut at {cut}", must_fail=True)


def test_npy_bit_flips(corpus):
    """A flip in the magic or the header's length always fails; elsewhere (the header
    dict, the ids) it may give other valid ids, but never another exception."""
    data = corpus["npy"]
    failed_magic = 0
    for pos in range(0, len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos * 3 % 8)
        error = check(corpus["root"], "npy", bytes(flipped), f"npy flip at {pos}",
                      must_fail=pos < 10).error
        failed_magic += pos < 10 and error is not None
    assert failed_magic == 10


def _forged_npy(descr: str, shape: tuple, data: bytes, fortran: bool = False,
                version: tuple[int, int] = (1, 0)) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(header)) + header + data


def test_forged_npy_headers(corpus):
    a = corpus["a"].astype("<i8")
    raw = a.tobytes()
    cases = {
        "a billion tokens": (_forged_npy("<i8", (10**9, 3, 2), raw), True),
        "2**62 tokens": (_forged_npy("<i8", (2**62, 3, 2), raw), True),
        "negative shape": (_forged_npy("<i8", (-5, 3, 2), raw), True),
        "float shape": (_forged_npy("<i8", (5.0, 3, 2), raw), True),
        "shape too small": (_forged_npy("<i8", (4, 3, 2), raw), True),
        "floats": (_forged_npy("<f8", (5, 3, 2), a.astype("<f8").tobytes()), True),
        "bools": (_forged_npy("|b1", (5, 3, 2), bytes(30)), True),
        "object (a pickle)": (_npy(np.array([[[1]]], dtype=object), allow_pickle=True), True),
        "structured": (_forged_npy("[('a', '<i8')]", (5, 3, 2), raw), True),
        "0-d": (_forged_npy("<i8", (), raw[:8]), True),
        "version 3": (_forged_npy("<i8", (5, 3, 2), raw, version=(3, 0)), True),
        "version 9": (_forged_npy("<i8", (5, 3, 2), raw, version=(9, 0)), True),
        "header of code": (b"\x93NUMPY\x01\x00" + struct.pack("<H", 54)
                           + b"__import__('os').system('echo pwned')".ljust(53) + b"\n", True),
        "huge header length": (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{", True),
        "big-endian": (_forged_npy(">i8", (5, 3, 2), a.astype(">i8").tobytes()), False),
        "int8": (_forged_npy("|i1", (5, 3, 2), a.astype("i1").tobytes()), False),
        "version 2": (_forged_npy("<i8", (5, 3, 2), raw, version=(2, 0)), False),
        "out of range ids": (_forged_npy("<i8", (5, 3, 2), (a + 8).tobytes()), True),
        "uint64 beyond int64": (_forged_npy("<u8", (5, 3, 2), (a.astype("<u8") + 2**63)
                                            .tobytes()), True),
    }
    for name, (data, must_fail) in cases.items():
        error = check(corpus["root"], "npy", data, name, must_fail=must_fail).error
        if not must_fail:
            assert error is None, f"{name}: {error}"


# -- .npz ------------------------------------------------------------------------------
def _zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive built by hand from (name, deflated data, crc, compressed size,
    declared size): the sizes and CRC are whatever the case says."""
    out, central = bytearray(), bytearray()
    for name, data, crc, csize, usize in members:
        offset = len(out)
        n = name.encode()
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize,
                           len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc,
                               csize, usize, len(n), 0, 0, 0, 0, 0, offset) + n
    at = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                                 len(central), at, 0)
    return bytes(out)


def _deflate_zeros(prefix: bytes, zeros: int) -> bytes:
    """A raw deflate stream of ``prefix`` then ``zeros`` zero bytes, built from one
    repeated full-flush chunk (so a 1 GiB bomb takes milliseconds to make)."""
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    chunk = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + chunk * (zeros >> 20) + packer.flush()


def test_zip_bombs_are_refused_without_inflating(corpus):
    root = corpus["root"]
    member = _npy(corpus["a"])
    honest = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = honest.compress(member) + honest.flush()
    crc = zlib.crc32(member)
    bomb = _deflate_zeros(member, 1 << 30)
    assert len(bomb) < 2 << 20
    cases = {
        # the archive says 1 GiB + the member: over the import limit, refused unread
        "declared huge": _zip([("a.npy", bomb, crc, len(bomb), len(member) + (1 << 30))]),
        # an honest member with a wrong CRC
        "bad crc": _zip([("a.npy", deflated, crc ^ 1, len(deflated), len(member))]),
        # a member that is not an array
        "not npy": _zip([("a.txt", deflated, crc, len(deflated), len(member))]),
        # the same request twice
        "twice": _zip([("a.npy", deflated, crc, len(deflated), len(member))] * 2),
        # an array whose header claims more than the member holds
        "shape claim": _zip([("a.npy", zlib.compress(_forged_npy("<i8", (10**9, 3, 2),
                                                                  b""))[2:-4],
                              zlib.crc32(_forged_npy("<i8", (10**9, 3, 2), b"")),
                              len(zlib.compress(_forged_npy("<i8", (10**9, 3, 2), b""))) - 6,
                              len(_forged_npy("<i8", (10**9, 3, 2), b"")))]),
    }
    for name, data in cases.items():
        assert check(root, "npz", data, name, must_fail=True).peak_bytes < 64 << 20, name
    ok = _zip([("a.npy", deflated, crc, len(deflated), len(member))])
    assert check(root, "npz", ok, "hand-built zip").error is None
    # The archive gives the member's true size and CRC, but its stream inflates to 1 GiB
    # more: zipfile stops at the declared size, so the member reads as itself and the rest
    # is never inflated.
    sneaky = _zip([("a.npy", bomb, crc, len(bomb), len(member))])
    outcome = check(root, "npz", sneaky, "inflates past its size")
    assert outcome.error is None and outcome.peak_bytes < 64 << 20


def test_npz_companions(corpus):
    a = corpus["a"]
    cases = {
        "prompt_len float": ({"a": a, "a.prompt_len": np.array(3.0)}, True),
        "prompt_len 0": ({"a": a, "a.prompt_len": np.array(0)}, True),
        "prompt_len > n": ({"a": a, "a.prompt_len": np.array(6)}, True),
        "prompt_len two values": ({"a": a, "a.prompt_len": np.array([2, 3])}, True),
        "token_ids short": ({"a": a, "a.token_ids": np.arange(4)}, True),
        "token_ids floats": ({"a": a, "a.token_ids": np.arange(5.0)}, True),
        "token_ids 2-D": ({"a": a, "a.token_ids": np.arange(10).reshape(5, 2)}, False),
        "ids as floats": ({"a": a.astype(float)}, True),
        "ids as bools": ({"a": a > 3}, True),
        "wrong top-k": ({"a": a[:, :, :1]}, True),
        "decoder layers": ({"a": np.concatenate([a[:, :1], a], axis=1)}, False),
        "no requests": ({"a.prompt_len": np.array(3)}, True),
        "repeated expert": ({"a": np.zeros_like(a)}, True),
    }
    for name, (arrays, must_fail) in cases.items():
        for compressed in (False, True):
            error = check(corpus["root"], "npz", _npz(arrays, compressed), name,
                          must_fail=must_fail).error
            if not must_fail:
                assert error is None, f"{name}: {error}"


@fuzz(60)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       cut=st.booleans(), kind=st.sampled_from(["npz", "npzc"]))
def test_random_npz_damage(corpus, where, bit, cut, kind):
    data = corpus[kind]
    pos = int(where * len(data))
    if cut:
        damaged = data[:pos]
    else:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << bit
        damaged = bytes(damaged)
    check(corpus["root"], "npz", damaged, f"{kind} {'cut' if cut else 'flip'} at {pos}",
          must_fail=cut)


# -- vLLM JSON -------------------------------------------------------------------------
def _vllm_may_pass(key: str, value: Any) -> bool:
    if key == "request_id":
        return value is DELETE or value is None or (isinstance(value, str) and value != "") \
            or type(value) is int
    if key == "prompt_len":
        return value is DELETE or value is None or (type(value) is int and 1 <= value <= 5)
    if key == "token_ids":
        return value is DELETE or value is None
    return False


ID_LISTS = {
    "ragged": [[[0, 1]] * 3] * 4 + [[[0, 1]] * 2], "strings": [[["0", "1"]] * 3] * 5,
    "floats": [[[0.0, 1.0]] * 3] * 5, "bools mixed in": [[[0, True]] * 3] * 5,
    "out of range": [[[0, 8]] * 3] * 5, "negative": [[[-1, 1]] * 3] * 5,
    "repeated": [[[1, 1]] * 3] * 5, "huge": [[[0, 2**70]] * 3] * 5,
    "nulls": [[[0, None]] * 3] * 5, "deep": json.loads("[" * 200 + "]" * 200),
    "top-1": [[[0]] * 3] * 5, "2-D": [[0, 1]] * 5,
}


def test_vllm_json_field_edits(corpus):
    root = corpus["root"]
    must, failed = 0, 0
    for kind in ("json", "jsonl"):
        records = corpus[kind]
        cases = [((0, key), v, _vllm_may_pass(key, v))
                 for key in ("request_id", "routed_experts", "prompt_len", "token_ids")
                 for v in SWAPS]
        cases += [((0, "routed_experts"), v, False) for v in ID_LISTS.values()]
        cases += [((0, "token_ids"), v, False) for v in ([1, 2], ["1"] * 5, [1.0] * 5,
                                                         [[1]] * 5)]
        cases += [((0,), v, False) for v in SWAPS if v is not DELETE]
        for path, value, may_pass in cases:
            error = check(root, kind, edited(records, path, value),
                          f"{kind} {path} = {value!r:.40}", must_fail=not may_pass).error
            must += not may_pass
            failed += (not may_pass) and error is not None
    for kind, data in (("json", b'{"not": "a list"}'), ("json", b"[1, 2"),
                       ("json", b"\xff\xfe"), ("jsonl", b"{}\n[1]\n"), ("jsonl", b"\n\n"),
                       ("json", b"[]"), ("jsonl", b'{"routed_experts": NaN}')):
        check(root, kind, data, f"{kind} {data!r}", must_fail=True)
    assert failed == must > 150, (failed, must)


@fuzz(80)
@given(key=st.sampled_from(["request_id", "routed_experts", "prompt_len", "token_ids"]),
       value=st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                          | st.floats() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=5), max_leaves=30))
def test_random_vllm_json_values(corpus, key, value):
    check(corpus["root"], "json", edited(corpus["json"], (0, key), value),
          f"{key} = {value!r:.60}")


# -- SGLang JSON -----------------------------------------------------------------------
def _sglang_may_pass(key: str, value: Any) -> bool:
    """For record 0 (the rank-0 extend of 5 tokens)."""
    if key in ("forward_pass_id", "rank"):
        return value is DELETE or (type(value) is int and 0 <= value <= 2**62)
    if key == "extend_seq_lens":
        return value is DELETE or value is None or value == []
    if key == "forward_mode":
        return type(value) is int and 0 <= value <= 1 << 16
    return False


def test_sglang_field_edits(corpus):
    root = corpus["root"]
    dump = corpus["sglang"]
    must, failed = 0, 0
    keys = ("forward_pass_id", "rank", "input_ids", "positions", "extend_seq_lens",
            "forward_mode", "topk_ids_of_layer")
    cases = [(("records", 0, key), v, _sglang_may_pass(key, v)) for key in keys for v in SWAPS]
    cases += [(("records", 0, "topk_ids_of_layer"), v, False) for v in ID_LISTS.values()]
    cases += [(("records", 0, "positions"), v, False)
              for v in ([0, 1, 2, 0, -1], [0, 1, 2, 0, 2**31], [0, 1, 2, 0, 1.0], [0] * 6)]
    cases += [(("records", 0, "extend_seq_lens"), v, False)
              for v in ([3, 3], [5, -1, 1], [2.5, 2.5], "35", [True, 4], [1] * 6)]
    cases += [(("records",), v, False) for v in SWAPS]
    cases += [(("records", 1), v, False) for v in ("x", [], None, 1)]
    cases += [(("last_physical_to_logical_map",), v, v is DELETE or v is None)
              for v in SWAPS]
    p2l = dump["last_physical_to_logical_map"]
    cases += [(("last_physical_to_logical_map",), v, False)
              for v in (p2l[:3], [row[:8] for row in p2l], [row[:-1] + [8] for row in p2l],
                        [row[:-1] + [-1] for row in p2l], [[0.5] * 10] * 4)]
    for path, value, may_pass in cases:
        # DELETE/None of the map: the physical ids 8 and 9 then exceed E, which the dump
        # may or may not hold for rank 0; either way it is read or refused cleanly.
        error = check(root, "json", edited(dump, path, value),
                      f"sglang {path} = {value!r:.40}", must_fail=not may_pass,
                      sglang=True).error
        must += not may_pass
        failed += (not may_pass) and error is not None
    assert failed == must > 150, (failed, must)
    for data in (b"[]", b'{"records": {}}', b"{", b"", b'{"records": [], "x": NaN}'):
        check(root, "json", data, f"sglang {data!r}", must_fail=True, sglang=True)
    (root / "dump.pt").write_bytes(b"\x80\x04pickle")
    error = run_bounded(lambda: import_sglang(root / "dump.pt", root / "o.mtrace", FACTS),
                        name="pt").error
    assert_names(error, str(root / "dump.pt"), "never loaded")


@fuzz(80)
@given(key=st.sampled_from(["forward_pass_id", "rank", "input_ids", "positions",
                            "extend_seq_lens", "forward_mode", "topk_ids_of_layer"]),
       record=st.integers(0, 2),
       value=st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                          | st.floats() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=5), max_leaves=30))
def test_random_sglang_values(corpus, key, record, value):
    check(corpus["root"], "json", edited(corpus["sglang"], ("records", record, key), value),
          f"sglang {record}.{key} = {value!r:.60}", sglang=True)


@fuzz(60)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       kind=st.sampled_from(["json", "jsonl", "sglang"]))
def test_random_json_bit_flips(corpus, where, bit, kind):
    data = bytearray(_json_bytes(kind if kind != "sglang" else "json", corpus[kind]))
    pos = int(where * len(data))
    data[pos] ^= 1 << bit
    check(corpus["root"], "jsonl" if kind == "jsonl" else "json", bytes(data),
          f"{kind} flip at {pos}", sglang=kind == "sglang")


# -- limits and the command line -------------------------------------------------------
def test_files_over_the_limits_are_refused_unread(corpus, monkeypatch):
    """A file larger than the limit is refused from its size alone (the limits are
    lowered here so that the test files stay small)."""
    root = corpus["root"]
    monkeypatch.setattr(Limits, "MAX_IMPORT_BYTES", 100)
    monkeypatch.setattr(Limits, "MAX_JSON_BYTES", 100)
    for suffix, data, sglang in (("npy", corpus["npy"], False), ("npz", corpus["npz"], False),
                                 ("jsonl", corpus["jsonl"], False),
                                 ("json", corpus["json"], False),
                                 ("json", corpus["sglang"], True)):
        error = check(root, suffix, data, f"{suffix} over the limit", must_fail=True,
                      sglang=sglang).error
        assert "allowed" in str(error), error
    monkeypatch.setattr(Limits, "MAX_IMPORT_BYTES", 1 << 30)
    monkeypatch.setattr("macssim.capture._import._MAX_ZIP_DIRECTORY", 100)
    error = check(root, "npz", corpus["npz"], "npz directory over the limit",
                  must_fail=True).error
    assert "directory is" in str(error), error


def test_cli_imports_fail_in_one_line(corpus, tmp_path):
    bad = {
        "cut.npy": corpus["npy"][:60],
        "huge.npy": _forged_npy("<i8", (10**9, 48, 8), b""),
        "bomb.npz": _zip([("a.npy", _deflate_zeros(b"", 64 << 20), 0, 0, 5)]),
        "empty.json": b"",
        "nan.jsonl": b'{"routed_experts": [[[NaN]]]}',
    }
    for name, data in bad.items():
        path = tmp_path / name
        path.write_bytes(data)
        args = ["capture", "--import-vllm", str(path), "--facts", "qwen3-vl-30b-a3b",
                "-o", str(tmp_path / "out.mtrace")]
        res = invoke_cli(args, name=name)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert lines[0].startswith(f"Error: {path}"), res.output
        assert not (tmp_path / "out.mtrace").exists()
    for path in (tmp_path, tmp_path / "absent.json", Path(os.devnull)):
        for option in ("--import-vllm", "--import-sglang"):
            res = invoke_cli(["capture", option, str(path), "--facts", "qwen3-vl-30b-a3b",
                              "-o", str(tmp_path / "out.mtrace")], name=f"{option} {path}")
            assert res.exit_code in (1, 2) and "Error" in res.output, res.output
