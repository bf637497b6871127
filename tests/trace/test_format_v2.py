"""Trace format v2: a writer built from the spec alone is readable, macssim's writer round
trips what v2 keeps and reports what it does not, v1 converts, sizes are compact, and
broken v2 inputs are named."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from macssim import TraceError
from macssim.cli import main as cli_main
from macssim.trace import (
    ModelFacts,
    Step,
    TraceWriter,
    open_trace,
    unscored_experts_per_gpu,
    write_trace,
)

from . import _spec_writer_v2 as spec

E, K, L, T = 8, 2, 2, 5


def facts(**over) -> ModelFacts:
    return ModelFacts.from_dict(spec.model_facts(**over))


def make_step(i=0, seed=0, derivable=False, **over):
    arrays = spec.step_arrays(seed=seed)
    if derivable:
        top = np.take_along_axis(arrays["scores"].astype("<f2"), arrays["topk_ids"].astype(int),
                                 -1)
        arrays["topk_weights"] = spec.derived_weights(top)
    arrays.update(over)
    return Step(index=i, kind="prefill", **arrays)


def expected_top_n(arrays, m):
    """Dense scores and the known mask a reader must give, from the spec writer's choice."""
    scores16 = arrays["scores"].astype("<f2")
    ids = arrays["topk_ids"].astype(np.int64)
    _, cand, _ = spec.top_n_arrays(scores16, ids, m)
    known = np.zeros(scores16.shape, dtype=bool)
    np.put_along_axis(known, ids, True, -1)
    np.put_along_axis(known, cand, True, -1)
    dense = np.where(known, scores16.astype(np.float32), 0).astype(np.float32)
    floor = np.take_along_axis(scores16, cand, -1)[..., -1].astype(np.float32)
    return dense, known, floor


def _write_raw(tmp_path, data, name="t.mtrace"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the spec is enough ------------------------------------------------------------------
@pytest.mark.parametrize("derive", [True, False])
@pytest.mark.parametrize("compression", ["zstd", "zlib", "none"])
def test_a_writer_built_from_the_spec_is_readable(tmp_path, derive, compression):
    m = 3
    records, expected = [], []
    for i in range(2):
        arrays = make_step(i, seed=i, derivable=derive).arrays()
        stored, filters, derived = spec.v2_step_from(arrays, m)
        assert ("topk_weights" in derived) == derive
        records.append(spec.encode_step_v2(i, stored, filters, derived, compression))
        expected.append(arrays)
    path = _write_raw(tmp_path, spec.encode_trace_v2(records, candidates=m))
    trace = open_trace(path)
    assert trace.version == 2 and trace.scores_top_n == K + m and not trace.scores_complete
    assert trace.has("scores") and trace.fields == ("modality", "request_id", "position",
                                                    "topk_ids", "topk_weights", "scores",
                                                    "entropy")
    for arrays, step in zip(expected, trace, strict=True):
        dense, known, floor = expected_top_n(arrays, m)
        np.testing.assert_array_equal(step.scores, dense)
        np.testing.assert_array_equal(step.score_known, known)
        np.testing.assert_array_equal(step.score_floor, floor)
        assert not step.scores_complete and step.scores_kept == K + m
        np.testing.assert_array_equal(step.topk_ids, arrays["topk_ids"])
        np.testing.assert_array_equal(step.topk_weights, arrays["topk_weights"])
        np.testing.assert_array_equal(step.entropy, arrays["entropy"])
        np.testing.assert_array_equal(step.request_id, arrays["request_id"])
        # every score not kept is <= the floor (the spec's promise, checked on the truth)
        truth = arrays["scores"].astype("<f2").astype(np.float32)
        assert (np.where(known, -1, truth) <= floor[..., None]).all()


def test_macssim_writer_matches_the_spec_writer_field_by_field(tmp_path):
    """Both writers from one routing: every array macssim stores equals the spec writer's
    (the bytes may differ: zstd level, JSON key order)."""
    m = 3
    steps = [make_step(i, seed=i, derivable=(i == 0)) for i in range(2)]
    path = write_trace(tmp_path / "m.mtrace", facts(), {}, steps, top_n=K + m)
    ours = open_trace(path)
    records = []
    for i, st in enumerate(steps):
        stored, filters, derived = spec.v2_step_from(st.arrays(), m)
        records.append(spec.encode_step_v2(i, stored, filters, derived))
    theirs = open_trace(_write_raw(tmp_path, spec.encode_trace_v2(records, candidates=m),
                                   "s.mtrace"))
    for a, b in zip(ours, theirs, strict=True):
        for name in ("modality", "request_id", "position", "topk_ids", "topk_weights",
                     "scores", "score_known", "score_floor", "entropy"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    with open(path, "rb") as fh:  # and macssim's own records are as the spec describes
        fh.seek(16 + struct.unpack("<II", fh.read(16)[8:])[1])
        tag = fh.read(8)
        meta = json.loads(fh.read(struct.unpack("<I", tag[4:])[0]))
    assert meta["compression"] == "zstd" and meta["derived"] == ["topk_weights"]
    by_name = {a["name"]: a for a in meta["arrays"]}
    assert by_name["topk_ids"]["dtype"] == "|u1"
    assert by_name["cand_scores"]["filters"] == ["delta", "shuffle"]
    assert "topk_weights" not in by_name


# -- round trips ------------------------------------------------------------------------
def test_full_scores_v2_equals_v1(tmp_path):
    steps = [make_step(i, seed=i) for i in range(3)]
    v1 = open_trace(write_trace(tmp_path / "a.mtrace", facts(), {}, steps, format_version=1))
    v2 = open_trace(write_trace(tmp_path / "b.mtrace", facts(), {}, steps, top_n=None))
    assert v2.version == 2 and v2.scores_complete and v2.scores_top_n is None
    for a, b in zip(v1, v2, strict=True):
        assert b.scores_complete and b.score_known is None and b.score_floor is None
        for name in ("modality", "request_id", "position", "topk_ids", "topk_weights",
                     "scores", "entropy"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("version", [1, 2])
def test_expert_choices_are_the_steps_ids_and_modalities(tmp_path, version):
    """The labels' light read gives exactly what a full read holds, for v1 and v2."""
    steps = [make_step(i, seed=i) for i in range(3)]
    trace = open_trace(write_trace(tmp_path / "t.mtrace", facts(), {}, steps,
                                  format_version=version))
    choices = list(trace.expert_choices())
    assert len(choices) == trace.num_steps
    for (ids, modality), step in zip(choices, trace, strict=True):
        np.testing.assert_array_equal(ids, step.topk_ids)
        np.testing.assert_array_equal(modality, step.modality)


def test_expert_choices_check_what_they_read(tmp_path):
    """An expert id out of range is named as in a full read."""
    stored, filters, derived = _good_v2()
    stored["topk_ids"] = np.full_like(stored["topk_ids"], 9)
    rec = spec.encode_step_v2(0, stored, filters, derived)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match=r't\.mtrace, step 0, layer 0: "topk_ids" holds expert 9'):
        list(open_trace(path).expert_choices())


def test_expert_choices_refuse_an_expert_named_twice(tmp_path):
    """A token naming one expert twice would count it twice in the labels: the light read
    refuses it, as a full read does."""
    stored, filters, derived = _good_v2()
    ids = stored["topk_ids"].copy()
    ids[0, 1, 1] = ids[0, 1, 0]
    stored["topk_ids"] = ids
    rec = spec.encode_step_v2(0, stored, filters, derived)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError):
        open_trace(path).step(0)
    with pytest.raises(TraceError, match=r'step 0, layer 0: "topk_ids" names one expert twice '
                                         r"for token 1"):
        list(open_trace(path).expert_choices())


@pytest.mark.parametrize("codec", ["zstd", "zlib", "none"])
def test_codecs_round_trip_alike(tmp_path, codec):
    steps = [make_step(i, seed=i) for i in range(2)]
    a = open_trace(write_trace(tmp_path / "a.mtrace", facts(), {}, steps, codec=codec))
    b = open_trace(write_trace(tmp_path / "b.mtrace", facts(), {}, steps))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.score_known, y.score_known)


def test_weights_not_derivable_are_stored_exactly(tmp_path):
    step = make_step(0, derivable=True)
    odd = step.topk_weights.copy()
    odd[0, 0, 0] = np.nextafter(odd[0, 0, 0], np.float32(1))
    other = Step(index=0, kind="prefill", **{**step.arrays(), "topk_weights": odd})
    for st in (step, other):
        path = write_trace(tmp_path / f"{id(st)}.mtrace", facts(), {}, [st])
        np.testing.assert_array_equal(open_trace(path).step(0).topk_weights, st.topk_weights)


def test_large_expert_ids_use_two_bytes(tmp_path):
    model = facts(num_experts=300, top_k=2)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((L, T, 300))
    scores = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    ids = np.argsort(-scores.astype(np.float16), axis=-1, kind="stable")[..., :2]
    ids[0, 0] = [299, 298]
    st = Step(index=0, kind="decode", modality=np.zeros(T, "u1"),
              request_id=np.arange(T), position=np.zeros(T, int), topk_ids=ids, scores=scores)
    path = write_trace(tmp_path / "t.mtrace", model, {}, [st],
                       fields=("modality", "request_id", "position", "topk_ids", "scores"))
    got = open_trace(path).step(0)
    np.testing.assert_array_equal(got.topk_ids, ids)
    assert got.score_known[0, 0, 299] and got.score_known[0, 0, 298]


def test_id_only_trace_round_trips(tmp_path):
    st = make_step(0)
    bare = Step(index=0, kind="prefill", modality=st.modality, request_id=st.request_id,
                position=st.position, topk_ids=st.topk_ids)
    fields = ("modality", "request_id", "position", "topk_ids")
    got = open_trace(write_trace(tmp_path / "t.mtrace", facts(), {}, [bare], fields=fields))
    assert got.scores_top_n is None and not got.scores_complete and not got.has("scores")
    step = got.step(0)
    assert step.scores is None and step.score_known is None and not step.scores_complete
    np.testing.assert_array_equal(step.topk_ids, bare.topk_ids)


def test_top_n_choices(tmp_path):
    steps = [make_step(0)]
    with pytest.raises(TraceError, match="must exceed top_k"):
        write_trace(tmp_path / "a.mtrace", facts(), {}, steps, top_n=K)
    full = open_trace(write_trace(tmp_path / "b.mtrace", facts(), {}, steps, top_n=E))
    assert full.scores_complete  # N >= E keeps every score
    default = open_trace(write_trace(tmp_path / "c.mtrace", facts(), {}, steps))
    assert default.scores_top_n == 2 * K


def test_a_top_n_step_cannot_become_full_or_v1(tmp_path):
    path = write_trace(tmp_path / "a.mtrace", facts(), {}, [make_step(0)], top_n=K + 2)
    partial = open_trace(path).step(0)
    with pytest.raises(TraceError, match="format v1 stores every expert"):
        write_trace(tmp_path / "b.mtrace", facts(), {}, [partial], format_version=1)
    with pytest.raises(TraceError, match="cannot be written with every expert"):
        write_trace(tmp_path / "c.mtrace", facts(), {}, [partial], top_n=None)
    with pytest.raises(TraceError, match="fewer than 3 scored experts"):
        write_trace(tmp_path / "d.mtrace", facts(), {}, [partial], top_n=K + 3)
    # fewer candidates from the kept ones is fine, and keeps the best of them
    again = open_trace(write_trace(tmp_path / "e.mtrace", facts(), {}, [partial],
                                   top_n=K + 1)).step(0)
    assert (again.score_known <= partial.score_known).all()
    np.testing.assert_array_equal(again.scores[again.score_known],
                                  partial.scores[again.score_known])


def test_unscored_experts_per_gpu_counts_missing_candidates(tmp_path):
    st = make_step(0)
    path = write_trace(tmp_path / "a.mtrace", facts(), {}, [st], top_n=K + 2)
    step = open_trace(path).step(0)
    expert_gpu = np.arange(E) // 2  # 4 GPUs of 2 experts
    got = unscored_experts_per_gpu(step, expert_gpu)
    assert got.shape == (L, T, 4)
    # independent count: experts neither chosen nor scored, by GPU
    for layer in range(L):
        for t in range(T):
            chosen = set(st.topk_ids[layer, t].tolist())
            for g in range(4):
                want = sum(1 for e in range(E) if expert_gpu[e] == g and e not in chosen
                           and not step.score_known[layer, t, e])
                assert got[layer, t, g] == want
    assert got.sum() == L * T * (E - K - 2)
    full = open_trace(write_trace(tmp_path / "b.mtrace", facts(), {}, [st], top_n=None))
    assert unscored_experts_per_gpu(full.step(0), expert_gpu) is None


# -- conversion --------------------------------------------------------------------------
def test_cli_converts_v1_to_v2(tmp_path):
    steps = [make_step(i, seed=i) for i in range(3)]
    v1 = write_trace(tmp_path / "a.mtrace", facts(), {"source": "test"}, steps,
                     format_version=1)
    out = tmp_path / "b.mtrace"
    res = CliRunner().invoke(cli_main, ["trace", "convert", str(v1), str(out),
                                        "--top-n", "4"])
    assert res.exit_code == 0, res.output
    assert "(v1," in res.output and "(v2," in res.output
    a, b = open_trace(v1), open_trace(out)
    assert b.version == 2 and b.scores_top_n == 4 and b.provenance["source"] == "test"
    assert b.provenance["converted_from"]["format_version"] == 1
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(y.scores[y.score_known], x.scores[y.score_known])
        np.testing.assert_array_equal(x.topk_weights, y.topk_weights)
    res = CliRunner().invoke(cli_main, ["trace", "convert", str(v1), str(out)])
    assert res.exit_code == 1 and "--force" in res.output
    res = CliRunner().invoke(cli_main, ["trace", "convert", str(v1), str(out), "--force",
                                        "--top-n", "all"])
    assert res.exit_code == 0, res.output
    assert open_trace(out).scores_complete
    res = CliRunner().invoke(cli_main, ["trace", "validate", str(out)])
    assert res.exit_code == 0 and "trace v2" in res.output


# -- broken v2 inputs are named ------------------------------------------------------------
def _good_v2(m=3, **kw):
    arrays = make_step(0).arrays()
    stored, filters, derived = spec.v2_step_from(arrays, m)
    return stored, filters, derived


def test_zstd_frame_declaring_another_size_is_refused_before_inflating(tmp_path):
    stored, filters, derived = _good_v2()
    # a frame that inflates to 1 GiB of zeros, declaring it; payload_bytes says otherwise
    bomb = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\0" * (1 << 20))
    rec = spec.encode_step_v2(0, stored, filters, derived, frame=bomb)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match=r"step 0: the zstd frame declares 1048576 bytes, "
                                          r'but "payload_bytes" is \d+'):
        open_trace(path).step(0)


def test_zstd_frame_without_declared_size_is_refused(tmp_path):
    stored, filters, derived = _good_v2()
    payload = b"".join(np.ascontiguousarray(a).tobytes() for a in stored.values())
    frame = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    data = frame.compress(payload) + frame.flush()
    rec = spec.encode_step_v2(0, stored, filters, derived, frame=data)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match="zstd frame declares no size"):
        open_trace(path).step(0)


def test_stray_bytes_after_the_zstd_frame_are_refused(tmp_path):
    stored, filters, derived = _good_v2()
    payload = b"".join(np.ascontiguousarray(a).tobytes() for a in stored.values())
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(payload) + b"xx"
    rec = spec.encode_step_v2(0, stored, {}, derived, frame=frame)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match="not a valid zstd frame"):
        open_trace(path).step(0)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda a: a.__setitem__("cand_ids", np.full_like(a["cand_ids"], 9)),
     r'layer 0: "cand_ids" holds expert 9'),
    (lambda a: a.__setitem__("cand_ids", np.repeat(a["cand_ids"][..., :1], 3, axis=-1)),
     r'layer 0: "cand_ids" names one expert twice'),
    (lambda a: a.__setitem__("cand_scores", a["cand_scores"][..., ::-1].copy()),
     r'layer 0: "cand_scores" must not increase'),
    (lambda a: a.__setitem__("topk_scores", np.full_like(a["topk_scores"], np.nan)),
     r'layer 0: "topk_scores" holds NaN'),
    (lambda a: a.__setitem__("cand_scores", -a["cand_scores"]),
     r'"cand_scores" holds NaN, inf or a negative'),
])
def test_bad_top_n_arrays_are_named(tmp_path, mutate, message):
    stored, filters, derived = _good_v2()
    mutate(stored)
    rec = spec.encode_step_v2(0, stored, filters, derived)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match=r"t\.mtrace, step 0.*" + message):
        open_trace(path).step(0)


@pytest.mark.parametrize(("header_over", "fields", "message"), [
    ({}, None, 'missing field "score_candidates"'),
    ({"score_candidates": 0}, None, '"score_candidates"'),
    ({"score_candidates": 7}, None, '"score_candidates"'),
    ({"score_candidates": 3}, ["modality", "request_id", "position", "topk_ids",
                               "topk_scores", "entropy"], "all of"),
    ({"score_candidates": 3}, ["modality", "request_id", "position", "topk_ids", "scores",
                               "topk_scores", "cand_ids", "cand_scores"], "never with"),
    ({"score_candidates": 3}, ["modality", "request_id", "position", "topk_ids", "scores"],
     '"score_candidates" without'),
])
def test_bad_v2_headers_are_named(tmp_path, header_over, fields, message):
    path = _write_raw(tmp_path, spec.encode_trace_v2([], fields=fields,
                                                     header_over=header_over))
    with pytest.raises(TraceError, match=message):
        open_trace(path)


@pytest.mark.parametrize(("meta_over", "message"), [
    ({"derived": ["scores"]}, '"derived" must be'),
    ({"derived": "topk_weights"}, '"derived" must be'),
    ({"compression": "lz4"}, '"compression"'),
])
def test_bad_v2_step_metadata_is_named(tmp_path, meta_over, message):
    stored, filters, derived = _good_v2()
    rec = spec.encode_step_v2(0, stored, filters, derived, meta_over=meta_over)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match=r"step 0.*" + message):
        open_trace(path).step(0)


def test_bad_filters_are_named(tmp_path):
    stored, filters, derived = _good_v2()
    filters["entropy"] = ["shuffle", "delta"]
    rec = spec.encode_step_v2(0, stored, filters, derived)
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match=r'"arrays.entropy.filters" must list'):
        open_trace(path).step(0)


def test_derived_and_stored_weights_together_are_refused(tmp_path):
    stored, filters, _ = spec.v2_step_from(make_step(0).arrays(), 3, derive=False)
    rec = spec.encode_step_v2(0, stored, filters, ["topk_weights"])
    path = _write_raw(tmp_path, spec.encode_trace_v2([rec], candidates=3))
    with pytest.raises(TraceError, match="both stored and"):
        open_trace(path).step(0)


def test_v2_writes_are_deterministic(tmp_path):
    steps = [make_step(i, seed=i) for i in range(2)]
    a = write_trace(tmp_path / "a.mtrace", facts(), {"x": 1}, steps)
    b = write_trace(tmp_path / "b.mtrace", facts(), {"x": 1}, steps)
    assert a.read_bytes() == b.read_bytes()


def test_crc_covers_the_compressed_bytes(tmp_path):
    path = write_trace(tmp_path / "a.mtrace", facts(), {}, [make_step(0)])
    data = bytearray(path.read_bytes())
    (index_at,) = struct.unpack("<Q", bytes(data[-16:-8]))
    data[index_at - 5] ^= 0x01  # inside the step's compressed payload
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="checksum mismatch|corrupt"):
        list(open_trace(path))


def test_writer_rejects_unknown_codec_and_version(tmp_path):
    with pytest.raises(TraceError, match="codec must be one of"):
        TraceWriter(tmp_path / "a.mtrace", facts(), {}, codec="lz4")
    with pytest.raises(TraceError, match="codec must be one of"):
        TraceWriter(tmp_path / "a.mtrace", facts(), {}, codec="zstd", format_version=1)
    with pytest.raises(TraceError, match="format_version must be one of"):
        TraceWriter(tmp_path / "a.mtrace", facts(), {}, format_version=3)
    assert not list(tmp_path.iterdir())


def test_zlib_v2_payload_bound_holds():
    from macssim.trace._codec import decompress
    data = zlib.compress(b"\0" * 100000)
    with pytest.raises(TraceError, match="inflates to more than"):
        decompress(data, "zlib", 1000, "x")
