"""``capture_trace`` end to end on tiny models, and the errors people meet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from macssim import CaptureError
from macssim.capture import CaptureSettings, Prompt, builtin_prompts, capture_trace
from macssim.capture._inputs import encode
from macssim.capture._tiny_processor import build_tiny_processor
from macssim.trace import open_trace


def _small_prompts():
    """Three built-in prompts (document, photo, text-only): enough to batch and pad."""
    chosen = {p.name: p for p in builtin_prompts()}
    return [chosen["doc-ocr"], chosen["chat-short"], chosen["photo-caption"]]


def test_capture_with_the_processor_path(tmp_path):
    """qwen3-vl-moe's tiny model comes with a real Qwen3VLProcessor: the trace's modality
    counts must equal the processor's own mm_token_type_ids, request by request."""
    prompts = _small_prompts()
    out = tmp_path / "t.mtrace"
    result = capture_trace(out, tiny="qwen3-vl-moe", inputs=prompts,
                           settings=CaptureSettings(batch_size=2, decode_steps=2))
    trace = open_trace(out)
    steps = list(trace)
    assert result.num_batches == 2 and result.num_steps == len(steps) == 2 * 3
    assert [s.kind for s in steps] == ["prefill", "decode", "decode"] * 2
    processor = build_tiny_processor("qwen3-vl-moe")
    prefill = [s for s in steps if s.kind == "prefill"]
    expect_requests = [[0, 1], [2]]
    for step, requests in zip(prefill, expect_requests, strict=True):
        assert sorted(set(step.request_id.tolist())) == requests
        for r in requests:
            alone = encode(processor, _family(), [prompts[r]])
            types = alone["mm_token_type_ids"][0].numpy()
            mine = step.modality[step.request_id == r]
            np.testing.assert_array_equal(mine, types)
    head = trace.provenance
    assert head["model"] == "tiny-qwen3-vl-moe" and head["family"] == "qwen3-vl-moe"
    assert head["settings"]["decode_steps"] == 2
    assert head["video_input"] == "frames-as-images"  # its video processor needs torchvision
    assert [i["name"] for i in head["inputs"]] == [p.name for p in prompts]
    assert trace.model.num_experts == 8 and trace.model.top_k == 2
    assert set(trace.fields) >= {"scores", "topk_weights", "entropy"}
    assert result.tokens_by_modality["image"] == sum(
        int((s.modality == 1).sum()) for s in steps)


def _family():
    from macssim.capture import get_family

    return get_family("qwen3-vl-moe")


def test_tiny_capture_of_every_builtin_prompt_and_replay(tmp_path):
    """The offline demo: a synthetic-input family, all built-in prompts, read back."""
    out = tmp_path / "e.mtrace"
    result = capture_trace(out, tiny="ernie4.5-vl", settings=CaptureSettings(batch_size=4))
    trace = open_trace(out)
    total = sum(s.num_tokens for s in trace)
    assert total == result.tokens_by_kind["prefill"]
    sets = {s.name: (s.first, s.count) for s in trace.model.sets()}
    assert sets == {"text": (0, 8), "vision": (8, 8)}
    for step in trace:  # image tokens go to the vision experts, text ones to text experts
        image = step.modality == 1
        assert (step.topk_ids[:, image] >= 8).all()


def test_interrupted_capture_leaves_no_trace(tmp_path, monkeypatch):
    from transformers import MixtralForCausalLM

    calls = {"n": 0}
    real = MixtralForCausalLM.generate

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MixtralForCausalLM, "generate", flaky)
    out = tmp_path / "cut.mtrace"
    with pytest.raises(KeyboardInterrupt):
        capture_trace(out, tiny="mixtral", settings=CaptureSettings(batch_size=1))
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, monkeypatch):
    from transformers import Qwen3MoeForCausalLM

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Qwen3MoeForCausalLM, "generate", oom)
    with pytest.raises(CaptureError, match="out of memory.*--batch-size.*--max-tokens"):
        capture_trace(tmp_path / "o.mtrace", tiny="qwen3-moe",
                      settings=CaptureSettings(batch_size=3))
    assert list(tmp_path.iterdir()) == []


def test_image_that_will_not_decode(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "image": "bad.png"}) + "\n")
    with pytest.raises(CaptureError, match=r"in\.jsonl, line 1: image .*bad\.png.* will not "
                                           "decode"):
        capture_trace(tmp_path / "x.mtrace", tiny="qwen3-vl-moe", inputs=inputs)


def test_text_only_family_refuses_images(tmp_path):
    prompt = builtin_prompts()[0]
    with pytest.raises(CaptureError, match="text-only"):
        capture_trace(tmp_path / "x.mtrace", tiny="olmoe", inputs=[prompt])


def test_unknown_architecture_lists_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CaptureError, match="'bert' is not supported; supported families: "
                                           "qwen3-vl-moe, .*mixtral"):
        capture_trace(tmp_path / "x.mtrace", model=str(tmp_path))


def test_model_without_moe_routers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from macssim.capture import record_routing

    dense = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1))
    with pytest.raises(CaptureError, match="not supported; supported families"):
        with record_routing(dense):
            pass
    with pytest.raises(CaptureError, match="no MoE routers found"):
        with record_routing(dense, family="qwen3-moe"):
            pass


def test_internvl_with_a_dense_text_model_is_refused():
    from transformers import InternVLConfig

    from macssim.capture._families import family_for_config

    config = InternVLConfig(text_config={"model_type": "qwen2"})
    with pytest.raises(CaptureError, match="has no MoE routers"):
        family_for_config(config)


def test_local_checkpoint_directory_end_to_end(tmp_path):
    """--model with a local directory goes through the real loading code (AutoConfig,
    AutoTokenizer, from_pretrained): a tiny text model saved with its tokenizer."""
    from macssim.capture import build_tiny_model
    from macssim.capture._tiny_processor import _tokenizer

    ckpt = tmp_path / "ckpt"
    build_tiny_model("qwen3-moe", seed=1).save_pretrained(ckpt)
    tok = _tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(ckpt)
    prompts = [Prompt("a", "text", "route me"), Prompt("b", "text", "and me, a bit longer")]
    out = tmp_path / "q.mtrace"
    result = capture_trace(out, model=str(ckpt), inputs=prompts, device="cpu",
                           settings=CaptureSettings(decode_steps=1))
    trace = open_trace(out)
    assert result.family == "qwen3-moe" and trace.provenance["model"] == str(ckpt)
    first = trace.step(0)
    assert first.num_tokens == len("route me") + len("and me, a bit longer")


def test_missing_processor(tmp_path):
    from macssim.capture import build_tiny_model

    ckpt = tmp_path / "vl"
    build_tiny_model("qwen3-vl-moe").save_pretrained(ckpt)  # weights, no processor files
    with pytest.raises(CaptureError, match="missing processor"):
        capture_trace(tmp_path / "x.mtrace", model=str(ckpt), device="cpu")
