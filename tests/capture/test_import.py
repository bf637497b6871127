"""Importing vLLM's routed experts and SGLang's per-token dump (ids only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from macssim import CaptureError
from macssim.capture import TinyRequest, import_sglang, import_vllm, record_routing, tiny_batch
from macssim.capture._import import ID_FIELDS
from macssim.trace import ModelFacts, open_trace

FACTS = ModelFacts(name="toy", num_layers=4, moe_layers=(1, 2, 3), num_experts=8, top_k=2,
                   hidden_size=16, expert_intermediate_size=8)


def _routed(rng, n):
    """[n, 3 MoE layers, top-2] distinct expert ids per token."""
    return np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)])
                     for _ in range(n)])


def test_vllm_round_trip_equals_a_captured_generate(tiny_models, tmp_path):
    """Export a real capture the way vLLM reports it (per request, prompt then generated
    tokens) and import it: the rebuilt schedule (prefill, then one token per request) is
    generate's, so every step's ids must come back equal."""
    model = tiny_models("qwen3-moe")
    inputs = tiny_batch("qwen3-moe", model.config, [TinyRequest(3, 0, 2), TinyRequest(6, 0, 3)])
    with torch.no_grad(), record_routing(model, eos_token_ids=()) as rec:
        model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None)
    per_request = {}
    for b in range(2):
        rows = [s.topk_ids[:, s.request_id == b] for s in rec.steps]  # [L, n, k]
        per_request[f"req{b}"] = np.concatenate(rows, axis=1).transpose(1, 0, 2)
    prompt = inputs["attention_mask"].sum(1).tolist()
    arrays = dict(per_request)
    arrays.update({f"req{b}.prompt_len": np.array(prompt[b]) for b in range(2)})
    np.savez(tmp_path / "routed.npz", **arrays)
    result = import_vllm(tmp_path / "routed.npz", tmp_path / "v.mtrace", rec.facts,
                         batch_size=2)
    trace = open_trace(result.path)
    assert trace.fields == ID_FIELDS and not trace.has("scores")
    assert "cannot run on this trace" in trace.provenance["limits"]
    imported = list(trace)
    assert len(imported) == len(rec.steps)
    for got, want in zip(imported, rec.steps, strict=True):
        assert got.kind == want.kind
        np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
        np.testing.assert_array_equal(got.request_id, want.request_id)
        np.testing.assert_array_equal(got.position, want.position)


def test_vllm_json_with_token_ids_marks_images(tmp_path):
    rng = np.random.default_rng(0)
    a, b = _routed(rng, 6), _routed(rng, 3)
    records = [{"request_id": "a", "routed_experts": a.tolist(), "prompt_len": 4,
                "token_ids": [1, 9, 9, 5, 7, 7]},
               {"request_id": "b", "routed_experts": b.tolist()}]
    (tmp_path / "r.json").write_text(json.dumps(records))
    import_vllm(tmp_path / "r.json", tmp_path / "j.mtrace", FACTS, batch_size=1,
                image_token_id=9)
    steps = list(open_trace(tmp_path / "j.mtrace"))
    # request a: prefill of 4, two decode tokens; request b: whole sequence is prompt
    assert [(s.kind, s.num_tokens) for s in steps] == [
        ("prefill", 4), ("decode", 1), ("decode", 1), ("prefill", 3)]
    np.testing.assert_array_equal(steps[0].modality, [0, 1, 1, 0])
    np.testing.assert_array_equal(steps[2].position, [5])
    np.testing.assert_array_equal(steps[3].topk_ids, b.transpose(1, 0, 2))
    np.testing.assert_array_equal(steps[3].request_id, [1, 1, 1])


def test_vllm_all_decoder_layers_are_cut_to_moe_layers(tmp_path):
    rng = np.random.default_rng(1)
    full = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(4)])
                     for _ in range(5)])  # [5 tokens, 4 decoder layers, 2]
    np.save(tmp_path / "one.npy", full)
    import_vllm(tmp_path / "one.npy", tmp_path / "n.mtrace", FACTS)
    step = open_trace(tmp_path / "n.mtrace").step(0)
    np.testing.assert_array_equal(step.topk_ids, full[:, 1:].transpose(1, 0, 2))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((5, 3, 4), dtype=np.int64), "top-k 4, expected 2"),
    (np.zeros((5, 7, 2), dtype=np.int64), "7 layers, expected 3 MoE layers or 4 decoder"),
    (np.zeros((5, 3), dtype=np.int64), "integer array"),
])
def test_vllm_shape_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(CaptureError, match=message):
        import_vllm(tmp_path / "bad.npy", tmp_path / "x.mtrace", FACTS)
    assert not (tmp_path / "x.mtrace").exists()


def _sglang_dump(rng):
    """Two forward passes on rank 0 (an extend of requests of 3 and 2 tokens, then a
    decode of both) and one on rank 1; 10 physical experts (2 replicas) for 8 logical,
    ids padded to 8 columns with -1 as SGLang's recorder does, 4 decoder layers of which
    layer 0 is dense (all -1)."""
    p2l = np.array([list(range(8)) + [0, 5]] * 4)

    def pass_of(n):
        ids = -np.ones((4, n, 8), dtype=np.int64)
        for layer in (1, 2, 3):
            for t in range(n):
                ids[layer, t, :2] = rng.choice(10, 2, replace=False)
                while p2l[layer, ids[layer, t, 0]] == p2l[layer, ids[layer, t, 1]]:
                    ids[layer, t, 1] = rng.integers(10)
        return ids

    extend, decode, other = pass_of(5), pass_of(2), pass_of(1)
    records = [
        {"forward_pass_id": 2, "rank": 0, "input_ids": [4, 4], "positions": [3, 2],
         "extend_seq_lens": None, "forward_mode": 2, "topk_ids_of_layer": decode.tolist()},
        {"forward_pass_id": 1, "rank": 0, "input_ids": [1, 9, 9, 1, 3],
         "positions": [0, 1, 2, 0, 1], "extend_seq_lens": [3, 2], "forward_mode": 1,
         "topk_ids_of_layer": extend.tolist()},
        {"forward_pass_id": 1, "rank": 1, "input_ids": [5], "positions": [0],
         "extend_seq_lens": [1], "forward_mode": 1, "topk_ids_of_layer": other.tolist()},
    ]
    return {"records": records, "last_physical_to_logical_map": p2l.tolist()}, p2l, extend, \
        decode


def test_sglang_json_maps_physical_to_logical(tmp_path):
    dump, p2l, extend, decode = _sglang_dump(np.random.default_rng(2))
    (tmp_path / "d.json").write_text(json.dumps(dump))
    result = import_sglang(tmp_path / "d.json", tmp_path / "s.mtrace", FACTS,
                           image_token_id=9)
    assert result.num_steps == 2 and result.num_requests is None
    first, second = open_trace(tmp_path / "s.mtrace")
    assert (first.kind, second.kind) == ("prefill", "decode")
    for step, raw in ((first, extend), (second, decode)):
        want = np.take_along_axis(p2l[1:, None, :], raw[1:, :, :2].reshape(3, 1, -1),
                                  axis=2).reshape(3, -1, 2)
        np.testing.assert_array_equal(step.topk_ids, want)
    np.testing.assert_array_equal(first.request_id, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(first.modality, [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(second.position, [3, 2])
    rank1 = import_sglang(tmp_path / "d.json", tmp_path / "r1.mtrace", FACTS, rank=1)
    assert rank1.num_tokens == 1
    with pytest.raises(CaptureError, match="no records of rank 5; ranks present: \\[0, 1\\]"):
        import_sglang(tmp_path / "d.json", tmp_path / "r5.mtrace", FACTS, rank=5)


def test_sglang_pt_is_never_unpickled(tmp_path):
    (tmp_path / "dump.pt").write_bytes(b"\x80\x04 definitely a pickle")
    with pytest.raises(CaptureError, match="pickles and are never loaded"):
        import_sglang(tmp_path / "dump.pt", tmp_path / "x.mtrace", FACTS)


def test_sglang_bad_top_k(tmp_path):
    dump, *_ = _sglang_dump(np.random.default_rng(3))
    dump["records"][0]["topk_ids_of_layer"][2][0][1] = -1  # a token routed to one expert
    (tmp_path / "d.json").write_text(json.dumps(dump))
    with pytest.raises(CaptureError, match="forward pass 2: a MoE layer does not route"):
        import_sglang(tmp_path / "d.json", tmp_path / "x.mtrace", FACTS)
    assert not (tmp_path / "x.mtrace").exists()


# -- untrusted files ---------------------------------------------------------------------
def _npy_with_header(descr: str, shape: tuple, data: bytes) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize(("data", "message"), [
    (_npy_with_header("<i8", (10**9, 3, 2), bytes(240)),
     r"declares shape \[1000000000, 3, 2\] of int64 \(48000000000 bytes\), but 240 bytes"),
    (_npy_with_header("|O", (1,), b"\x80\x04."), "never loaded"),
    (_npy_with_header("<f8", (5, 3, 2), bytes(240)), "must hold integers, got dtype '<f8'"),
    (b"\x93NUMPY\x01\x00\x20\x00__import__('os').system('x')   \n", "not a Python literal"),
    (b"not an array", "bad magic"),
])
def test_vllm_npy_is_checked_before_allocating(tmp_path, data, message):
    (tmp_path / "r.npy").write_bytes(data)
    with pytest.raises(CaptureError, match=message) as err:
        import_vllm(tmp_path / "r.npy", tmp_path / "x.mtrace", FACTS)
    assert str(tmp_path / "r.npy") in str(err.value)
    assert not (tmp_path / "x.mtrace").exists()


@pytest.mark.parametrize(("edit", "message"), [
    ({"routed_experts": [[[0, 9]] * 3] * 2}, r'request 0: "routed_experts" holds expert 9 at '
                                             r"token 0, layer 0, expected 0 <= id < E = 8"),
    ({"routed_experts": [[[0, 1]] * 3, [[0, 1]] * 2]}, "must be a rectangular array"),
    ({"routed_experts": [[["0", "1"]] * 3] * 2}, "must hold integers"),
    ({"routed_experts": [[[0, True]] * 3] * 2}, "got true/false"),
    ({"prompt_len": "2"}, r'"prompt_len" must be an integer >= 1 and <= 2'),
    ({"request_id": {"a": 1}}, '"request_id" must be a string'),
    ({"token_ids": [1.5, 2.5]}, '"token_ids" must hold integers'),
])
def test_vllm_json_fields_are_checked(tmp_path, edit, message):
    record = {"request_id": "a", "routed_experts": [[[0, 1]] * 3] * 2, **edit}
    (tmp_path / "r.json").write_text(json.dumps([record]))
    with pytest.raises(CaptureError, match=message) as err:
        import_vllm(tmp_path / "r.json", tmp_path / "x.mtrace", FACTS)
    assert str(tmp_path / "r.json") in str(err.value)


def test_vllm_npz_zip_bomb_is_refused_unread(tmp_path, monkeypatch):
    from macssim._validate import Limits

    monkeypatch.setattr(Limits, "MAX_IMPORT_BYTES", 1000)
    np.savez_compressed(tmp_path / "r.npz", a=np.zeros((100, 3, 2), dtype=np.int64))
    with pytest.raises(CaptureError, match="4928 bytes unpacked, at most 1000 allowed"):
        import_vllm(tmp_path / "r.npz", tmp_path / "x.mtrace", FACTS)


@pytest.mark.parametrize(("path", "value", "message"), [
    (("records", 0, "positions"), [0, 1, 2, 0, -1], r'"positions" must lie in \[0, '),
    (("records", 0, "forward_mode"), "1", r'"forward_mode" must be an integer'),
    (("records", 0, "extend_seq_lens"), "32", r'"extend_seq_lens" must be a list'),
    (("records", 1, "extend_seq_lens"), [3, 3], r'"extend_seq_lens" sums to 6, but the pass '
                                                r"has 5 tokens"),
    (("records", 0, "input_ids"), [1], r'"input_ids" has 1 entries, fewer than the 2'),
    (("records", 0, "rank"), "0", r'records\[0\]: "rank" must be an integer'),
    (("records", 1), [], r'"records\[1\]" must be a mapping'),
    (("last_physical_to_logical_map",), [list(range(8))] * 4,
     r'forward pass \d: "topk_ids_of_layer" holds [89] at layer \d, token \d, expected -1 '
     r"\(unused\) or a physical expert id in \[0, 8\)"),
    (("last_physical_to_logical_map",), [[0] * 9 + [8]] * 4,
     r'"last_physical_to_logical_map" must map each physical expert to a logical one'),
])
def test_sglang_fields_are_checked(tmp_path, path, value, message):
    dump, *_ = _sglang_dump(np.random.default_rng(4))
    parent = dump
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    (tmp_path / "d.json").write_text(json.dumps(dump))
    with pytest.raises(CaptureError, match=message) as err:
        import_sglang(tmp_path / "d.json", tmp_path / "x.mtrace", FACTS)
    assert str(tmp_path / "d.json") in str(err.value)
    assert not (tmp_path / "x.mtrace").exists()


def test_import_paths_that_are_not_files(tmp_path):
    with pytest.raises(CaptureError, match="is a directory"):
        import_sglang(tmp_path, tmp_path / "x.mtrace", FACTS)
    with pytest.raises(CaptureError, match="No such file"):
        import_vllm(tmp_path / "absent.npy", tmp_path / "x.mtrace", FACTS)
    with pytest.raises(CaptureError, match='"batch_size" must be >= 1'):
        import_vllm(tmp_path / "absent.npy", tmp_path / "x.mtrace", FACTS, batch_size=0)
