"""Trace format v1: round trips, the spec is enough to write one, every broken input is
named, writes are atomic, reads stream. (Writers default to v2, so every writer here asks
for v1; v2 has its own tests in test_format_v2.py.)"""

from __future__ import annotations

import functools
import hashlib
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from macssim import TraceError
from macssim.trace import (
    ModelFacts,
    Step,
    open_trace,
)
from macssim.trace import TraceWriter as _TraceWriter
from macssim.trace import write_trace as _write_trace

from . import _spec_writer as spec

TraceWriter = functools.partial(_TraceWriter, format_version=1)
write_trace = functools.partial(_write_trace, format_version=1)

GOLDEN = Path(__file__).with_name("golden_v1.mtrace")


def facts(**over) -> ModelFacts:
    return ModelFacts.from_dict(spec.model_facts(**over))


def make_step(i=0, seed=0, **over):
    arrays = spec.step_arrays(seed=seed)
    arrays.update(over)
    return Step(index=i, kind="prefill", **arrays)


def test_round_trip_keeps_every_array(tmp_path):
    steps = [make_step(i, seed=i) for i in range(3)]
    path = write_trace(tmp_path / "t.mtrace", facts(), {"source": "test"}, steps)
    trace = open_trace(path)
    assert trace.num_steps == 3 and trace.num_tokens == 15
    assert trace.model == facts()
    for wrote, read in zip(steps, trace, strict=True):
        for name, arr in wrote.arrays().items():
            got = getattr(read, name)
            if name == "scores":  # stored as float16
                np.testing.assert_array_equal(got, arr.astype(np.float16).astype(np.float32))
            else:
                np.testing.assert_array_equal(got, arr)


def test_compressed_round_trip(tmp_path):
    steps = [make_step(i, seed=i) for i in range(2)]
    a = open_trace(write_trace(tmp_path / "a.mtrace", facts(), {}, steps, compress=True))
    b = open_trace(write_trace(tmp_path / "b.mtrace", facts(), {}, steps))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.scores, y.scores)


def test_a_writer_built_from_the_spec_is_readable(tmp_path):
    records = [spec.encode_step(i, spec.step_arrays(seed=i), compress=bool(i % 2))
               for i in range(3)]
    path = tmp_path / "spec.mtrace"
    path.write_bytes(spec.encode_trace(records))
    trace = open_trace(path)
    assert [s.index for s in trace] == [0, 1, 2]
    assert trace.step(1).topk_ids.shape == (2, 5, 2)


def test_golden_bytes_are_stable(tmp_path):
    """The writer's bytes for a fixed input do not drift (format changes need a new
    version); the golden file also still reads."""
    path = write_trace(tmp_path / "g.mtrace", facts(), {"source": "golden"},
                       [make_step(0), make_step(1, seed=1)])
    assert path.read_bytes() == GOLDEN.read_bytes()
    assert open_trace(GOLDEN).num_steps == 2


def _write_raw(tmp_path, data: bytes) -> Path:
    path = tmp_path / "bad.mtrace"
    path.write_bytes(data)
    return path


def _read_all(path):
    return [s for s in open_trace(path)]


BAD_STEPS = {
    "wrong shape": (dict(topk_ids=np.zeros((2, 5, 3), "<i2")),
                    r'step 0, layer 0: "topk_ids" is \[T, 3\], expected \[T, 2\]'),
    "expert id >= E": (dict(topk_ids=np.full((2, 5, 2), [0, 8], "<i2")),
                       r'layer 0: "topk_ids" holds expert 8, expected 0 <= id < E = 8'),
    "repeated expert": (dict(topk_ids=np.full((2, 5, 2), 3, "<i2")), "names one expert twice"),
    "NaN": (dict(entropy=np.full((2, 5), np.nan, "<f4")), '"entropy" holds NaN or inf'),
    "negative weight": (dict(topk_weights=np.full((2, 5, 2), -0.5, "<f4")),
                        '"topk_weights" holds a negative value'),
    "wrong dtype": (dict(position=np.arange(5, dtype="<f4")),
                    r'"position" has dtype \'<f4\', expected one of'),
    "bad modality": (dict(modality=np.full(5, 9, "|u1")), '"modality" holds code 9'),
}


@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_is_named(tmp_path, case):
    over, message = BAD_STEPS[case]
    arrays = spec.step_arrays()
    arrays.update(over)
    path = _write_raw(tmp_path, spec.encode_trace([spec.encode_step(0, arrays)]))
    with pytest.raises(TraceError, match=message) as err:
        _read_all(path)
    assert str(path) in str(err.value)


def test_missing_field(tmp_path):
    arrays = spec.step_arrays()
    del arrays["entropy"]
    path = _write_raw(tmp_path, spec.encode_trace([spec.encode_step(0, arrays)]))
    with pytest.raises(TraceError, match='step 0: field "entropy" is missing'):
        _read_all(path)


def test_optional_fields_may_be_left_out(tmp_path):
    arrays = {k: v for k, v in spec.step_arrays().items()
              if k in ("modality", "request_id", "position", "topk_ids")}
    path = _write_raw(tmp_path, spec.encode_trace(
        [spec.encode_step(0, arrays)], fields=list(arrays)))
    step = open_trace(path).step(0)
    assert step.scores is None and step.entropy is None


def test_wrong_version(tmp_path):
    path = _write_raw(tmp_path, spec.encode_trace([], version=3))
    with pytest.raises(TraceError, match="format_version 3 is not supported"):
        open_trace(path)


def test_header_missing_model_field(tmp_path):
    model = spec.model_facts()
    del model["top_k"]
    path = _write_raw(tmp_path, spec.encode_trace([], model=model))
    with pytest.raises(TraceError, match=r"header.model: missing field\(s\) \['top_k'\]"):
        open_trace(path)


def test_truncated_file(tmp_path):
    data = spec.encode_trace([spec.encode_step(0, spec.step_arrays())])
    path = _write_raw(tmp_path, data[: len(data) // 2])
    with pytest.raises(TraceError, match="truncated file"):
        open_trace(path)


def test_corrupt_bytes_fail_the_checksum(tmp_path):
    path = _write_raw(tmp_path, spec.encode_trace(
        [spec.encode_step(0, spec.step_arrays(), crc_delta=1)]))
    with pytest.raises(TraceError, match=r"step 0: checksum mismatch"):
        _read_all(path)


def test_not_a_trace(tmp_path):
    path = _write_raw(tmp_path, b"PK\x03\x04 this is a zip file, not a trace")
    with pytest.raises(TraceError, match="not a macssim trace"):
        open_trace(path)
    with pytest.raises(TraceError, match="cannot read trace"):
        open_trace(tmp_path / "absent.mtrace")


def test_writer_refuses_bad_steps_and_leaves_nothing(tmp_path):
    path = tmp_path / "t.mtrace"
    with pytest.raises(TraceError, match='"topk_ids" holds expert 8'):
        with TraceWriter(path, facts(), {}) as w:
            w.write(make_step(0))
            w.write(make_step(1, topk_ids=np.full((2, 5, 2), [1, 8])))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_trace(tmp_path):
    path = write_trace(tmp_path / "t.mtrace", facts(), {"run": "previous"}, [make_step(0)])
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(path, facts(), {}, replace=True) as w:
            w.write(make_step(0))
            raise KeyboardInterrupt
    assert path.read_bytes() == before  # untouched, no partial file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.mtrace"]


def test_a_file_that_is_not_a_trace_is_never_overwritten(tmp_path):
    path = tmp_path / "notes.mtrace"
    path.write_bytes(b"my notes")
    for replace in (False, True):
        with pytest.raises(TraceError, match="not a macssim trace"):
            write_trace(path, facts(), {}, [make_step(0)], replace=replace)
    assert path.read_bytes() == b"my notes"
    (tmp_path / "dir.mtrace").mkdir()
    with pytest.raises(TraceError, match="not a regular file"):
        write_trace(tmp_path / "dir.mtrace", facts(), {}, [make_step(0)], replace=True)


def test_an_earlier_trace_is_replaced_only_when_asked(tmp_path):
    path = write_trace(tmp_path / "t.mtrace", facts(), {"run": 1}, [make_step(0)])
    with pytest.raises(TraceError, match="--force"):
        write_trace(path, facts(), {"run": 2}, [make_step(0)])
    assert open_trace(path).provenance == {"run": 1}
    write_trace(path, facts(), {"run": 2}, [make_step(0)], replace=True)
    assert open_trace(path).provenance == {"run": 2}


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    stale = tmp_path / f".t.mtrace.tmp-{dead}"
    stale.write_bytes(b"half a trace")
    other = tmp_path / f".other.mtrace.tmp-{dead}"  # another target's: not ours to judge
    other.write_bytes(b"x")
    write_trace(tmp_path / "t.mtrace", facts(), {}, [make_step(0)])
    assert not stale.exists()
    assert other.exists()


def test_reading_streams_one_step_at_a_time(tmp_path):
    """Memory while iterating stays near one step, not the file: 40 steps of ~200 kB."""
    big = dict(T=400, L=2, k=2, E=64)
    model = facts(num_experts=64)
    steps = (Step(index=i, kind="decode", **spec.step_arrays(seed=i, **big)) for i in range(40))
    path = write_trace(tmp_path / "big.mtrace", model, {}, steps)
    size = path.stat().st_size
    tracemalloc.start()
    for _ in open_trace(path):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size / 5, (peak, size)


def test_checksum_of_trace_is_sha256(tmp_path):
    path = write_trace(tmp_path / "t.mtrace", facts(), {}, [make_step()])
    assert open_trace(path).sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


# -- untrusted input: model facts, lengths, offsets, bombs ------------------------------
def test_presets_pass_validation():
    from macssim.trace import get_model_preset, list_model_presets

    for name in list_model_presets():
        facts = get_model_preset(name)
        assert ModelFacts.from_dict(facts.to_dict()) == facts


BAD_FACTS = {
    "num_experts": (10**9, r'"num_experts" must be an integer >= 1 and <= 16384'),
    "num_attention_heads": (-4, r'"num_attention_heads" must be an integer >= 1'),
    "vocab_size": (-1, r'"vocab_size" must be an integer >= 1'),
    "num_shared_experts": (-2, r'"num_shared_experts" must be an integer >= 0'),
    "hidden_size": (16.0, r'"hidden_size" must be an integer .* got 16.0'),
    "top_k": (True, r'"top_k" must be an integer .* got True'),
    "vision_flops_per_token": (float("nan"), r'"vision_flops_per_token" must be a finite'),
    "moe_layers": ([1, 0], '"moe_layers" must be strictly increasing'),
    "dtype": ("int3", '"dtype" must be one of'),
    "score_function": ("relu", '"score_function" must be one of'),
    "expert_sets": ([{"name": "t", "first": 0, "count": 5},
                     {"name": "v", "first": 4, "count": 4}], '"expert_sets" overlap'),
    "name": (["x"], '"name" must be a string'),
}


@pytest.mark.parametrize("key", list(BAD_FACTS))
def test_model_facts_are_checked_on_construction(key):
    value, message = BAD_FACTS[key]
    with pytest.raises(TraceError, match=message):
        ModelFacts.from_dict(spec.model_facts(**{key: value}), where="t.mtrace: header.model")
    with pytest.raises(TraceError, match=message):  # the constructor checks the same
        ModelFacts(**{**spec.model_facts(), key: value})


@pytest.mark.parametrize("value", [None, "8", [8], {"a": 1}, 8.5])
def test_from_dict_never_leaks_another_exception(value):
    for key in ("num_layers", "moe_layers", "top_k", "expert_sets", "dtype", "source"):
        if key == "source" and isinstance(value, str):
            continue  # any string is a source
        with pytest.raises(TraceError, match=rf'^t: header.model: .*"{key}'):
            ModelFacts.from_dict(spec.model_facts(**{key: value}), where="t: header.model")
    with pytest.raises(TraceError, match="expected an object"):
        ModelFacts.from_dict([1, 2], where="t: header.model")


def test_a_header_claiming_a_billion_experts_is_refused_before_allocating(tmp_path):
    path = _write_raw(tmp_path, spec.encode_trace(
        [spec.encode_step(0, spec.step_arrays())], model=spec.model_facts(num_experts=10**9)))
    tracemalloc.start()
    with pytest.raises(TraceError, match=r'header.model: "num_experts" must be an integer'):
        open_trace(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 << 20


def test_lengths_beyond_the_file_are_refused(tmp_path):
    data = bytearray(spec.encode_trace([spec.encode_step(0, spec.step_arrays())]))
    data[12:16] = (1 << 31).to_bytes(4, "little")  # hlen: 2 GiB
    with pytest.raises(TraceError, match="header claims 2147483648 bytes"):
        open_trace(_write_raw(tmp_path, bytes(data)))
    meta = {"stored_bytes": 10**12}
    path = _write_raw(tmp_path, spec.encode_trace(
        [spec.encode_step(0, spec.step_arrays(), meta_over=meta)]))
    with pytest.raises(TraceError, match=r'step 0: truncated or corrupt record: "stored_bytes"'):
        _read_all(path)


def test_zlib_bomb_is_refused(tmp_path):
    """A payload that inflates far beyond its declared size, with a correct CRC."""
    arrays = spec.step_arrays()
    payload = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    bomb = zlib.compress(payload + bytes(64 << 20), 9)
    record = spec.encode_step(0, arrays, compress=True, meta_over={
        "stored_bytes": len(bomb), "crc32": zlib.crc32(bomb)})
    mlen = int.from_bytes(record[4:8], "little")
    path = _write_raw(tmp_path, spec.encode_trace([record[:8 + mlen] + bomb]))
    tracemalloc.start()
    with pytest.raises(TraceError, match="step 0: compressed payload inflates to more than"):
        _read_all(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize(("over", "message"), [
    ({"num_tokens": "5"}, r'step 0: "num_tokens" must be an integer'),
    ({"num_tokens": 4}, r'step 0: "num_tokens" is 4, but "modality" holds 5 tokens'),
    ({"step": 3}, r'step 0: "step" is 3, expected 0'),
    ({"arrays": {"name": "x"}}, r'step 0: "arrays" must be a list'),
    ({"payload_bytes": 10**9}, r'step 0: "payload_bytes" is 1000000000, more than'),
    ({"crc32": None}, r'step 0: "crc32" must be an integer'),
    ({"compression": "lz4"}, r'step 0: "compression" must be one of'),
])
def test_bad_step_metadata_is_named(tmp_path, over, message):
    path = _write_raw(tmp_path, spec.encode_trace(
        [spec.encode_step(0, spec.step_arrays(), meta_over=over)]))
    with pytest.raises(TraceError, match=message):
        _read_all(path)


def test_paths_that_are_not_trace_files(tmp_path):
    with pytest.raises(TraceError, match="is a directory"):
        open_trace(tmp_path)
    with pytest.raises(TraceError, match="empty file"):
        open_trace(_write_raw(tmp_path, b""))


def test_a_step_without_tokens_round_trips(tmp_path):
    arrays = spec.step_arrays(T=0)
    path = write_trace(tmp_path / "t.mtrace", facts(), {}, [Step(index=0, kind="decode",
                                                                **arrays)])
    assert open_trace(path).step(0).topk_ids.shape == (2, 0, 2)


def test_writer_refuses_what_a_reader_would_refuse(tmp_path):
    with pytest.raises(TraceError, match="provenance must be plain JSON"):
        TraceWriter(tmp_path / "a.mtrace", facts(), {"x": float("nan")})
    with pytest.raises(TraceError, match='"position" holds 4294967300, which does not fit'):
        write_trace(tmp_path / "b.mtrace", facts(), {},
                    [make_step(0, position=np.arange(5, dtype=np.int64) + (1 << 32))])
    (tmp_path / "file").write_text("x")
    with pytest.raises(TraceError, match="cannot write trace"):  # parent is a file
        write_trace(tmp_path / "file" / "c.mtrace", facts(), {}, [make_step(0)])
    assert not (tmp_path / "a.mtrace").exists() and not (tmp_path / "b.mtrace").exists()


def test_the_index_token_total_is_checked_once_every_step_is_read(tmp_path):
    import json
    import struct

    path = write_trace(tmp_path / "t.mtrace", facts(), {}, [make_step(0), make_step(1)])
    total = sum(s.num_tokens for s in open_trace(path))
    blob = path.read_bytes()
    (at,) = struct.unpack("<Q", blob[-16:-8])
    (ilen,) = struct.unpack("<I", blob[at + 4:at + 8])
    index = json.loads(blob[at + 8:at + 8 + ilen])
    assert index["num_tokens"] == total
    index["num_tokens"] = total + 1
    new = json.dumps(index).encode()
    path.write_bytes(blob[:at] + b"INDX" + struct.pack("<I", len(new)) + new
                     + struct.pack("<Q", at) + b"MACSEND\0")
    trace = open_trace(path)
    assert next(iter(trace)).num_tokens  # a reader that stops early is not held to it
    with pytest.raises(TraceError, match=r'"num_tokens" is \d+, but the steps hold'):
        list(trace)
