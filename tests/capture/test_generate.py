"""Steps under ``generate``: the prefill holds every prompt token, each decode step one token
per live sequence, positions continue, finished sequences drop out; and the feature
entropy against its closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from macssim.capture import (
    TinyRequest,
    build_tiny_model,
    feature_entropy,
    record_routing,
    tiny_batch,
)

REQUESTS = [TinyRequest(3, 1, 2), TinyRequest(7, 0, 4)]


@pytest.mark.parametrize("family", ["qwen3-vl-moe", "ernie4.5-vl", "llama4", "mixtral"])
def test_prefill_then_one_token_per_sequence(tiny_models, family):
    model = tiny_models(family)
    reqs = REQUESTS if model.config.model_type != "mixtral" else \
        [TinyRequest(3, 0, 2), TinyRequest(7, 0, 4)]
    inputs = tiny_batch(family, model.config, reqs)
    lengths = inputs["attention_mask"].sum(1).tolist()
    decode = 3
    with torch.no_grad(), record_routing(model, eos_token_ids=()) as rec:
        model.generate(**inputs, max_new_tokens=decode + 1, do_sample=False,
                       eos_token_id=None)
    steps = rec.steps
    assert [s.kind for s in steps] == ["prefill"] + ["decode"] * decode
    assert steps[0].num_tokens == sum(lengths)
    for t, step in enumerate(steps[1:]):
        assert step.num_tokens == len(reqs)
        np.testing.assert_array_equal(step.request_id, np.arange(len(reqs)))
        np.testing.assert_array_equal(step.position, np.array(lengths) + t)
        assert (step.modality == 0).all()
    assert [s.index for s in steps] == list(range(len(steps)))


def _cache_arg(model):
    """The KV-cache keyword of ``model.forward``: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("arg", ["own", "past_key_values"])
@pytest.mark.parametrize("family", ["qwen3-moe", "mixtral"])
def test_decode_told_by_the_cache_without_an_attention_mask(tiny_models, family, arg):
    """``generate`` drops an all-ones attention mask (one request, or no padding), so a
    decode call can carry nothing but ``input_ids`` and the KV cache, whose name changed in
    transformers 5.24 (``past_key_values`` -> ``cache``; the old name still accepted): the
    cache's length alone must make it a decode step, positions continuing after it."""
    from transformers import DynamicCache

    model = tiny_models(family)
    inputs = tiny_batch(family, model.config, [TinyRequest(5, 0, 3)])
    n = int(inputs["input_ids"].shape[1])
    name = _cache_arg(model) if arg == "own" else arg
    cache = DynamicCache(config=model.config.get_text_config())
    prefill = {k: v for k, v in inputs.items() if k != "attention_mask"}
    with torch.no_grad(), record_routing(model, eos_token_ids=()) as rec:
        out = model(**prefill, use_cache=True, **{name: cache})
        assert cache.get_seq_length() == n
        nxt = out.logits[:, -1:].argmax(-1)
        model(input_ids=nxt, use_cache=True, **{name: cache})
    assert [s.kind for s in rec.steps] == ["prefill", "decode"]
    assert rec.steps[0].num_tokens == n
    np.testing.assert_array_equal(rec.steps[0].position, np.arange(n))
    np.testing.assert_array_equal(rec.steps[1].position, [n])
    np.testing.assert_array_equal(rec.steps[1].request_id, [0])


def test_finished_sequence_leaves_the_decode_steps():
    """Make request 0's first generated token the end-of-sequence token: from the next
    decode call on it is fed that token (then padding) and must not appear; request 1
    stays."""
    model = build_tiny_model("mixtral", seed=3)
    inputs = tiny_batch("mixtral", model.config, [TinyRequest(4, 0, 2), TinyRequest(5, 0, 3)],
                        seed=3)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=1, do_sample=False, eos_token_id=None)
    first = out[:, -1].tolist()
    if first[0] == first[1]:
        pytest.skip("both requests start with the same token; no way to finish only one")
    with torch.no_grad(), record_routing(model, eos_token_ids=[first[0]]) as rec:
        model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=first[0],
                       pad_token_id=0)
    decode = [s for s in rec.steps if s.kind == "decode"]
    assert decode, "request 1 keeps generating"
    for step in decode:
        np.testing.assert_array_equal(step.request_id, [1])


def test_feature_entropy_closed_forms():
    d = 64
    uniform = torch.zeros((3, d))
    np.testing.assert_allclose(feature_entropy(uniform).numpy(), math.log(d), rtol=1e-6)
    peaked = torch.zeros((1, d))
    peaked[0, 5] = 1e4
    assert float(feature_entropy(peaked)[0]) < 1e-6
    # two equal peaks: ln 2
    twin = torch.full((1, d), -1e4)
    twin[0, [1, 9]] = 3.0
    np.testing.assert_allclose(float(feature_entropy(twin)[0]), math.log(2), rtol=1e-6)
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = np.exp(x.numpy()) / np.exp(x.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(feature_entropy(x.to(torch.bfloat16)).numpy(),
                               -(p * np.log(p)).sum(1), rtol=2e-2)
    assert feature_entropy(x.float()).dtype == torch.float32


def test_hooks_removed_after_an_error(tiny_models):
    model = tiny_models("qwen3-moe")
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with pytest.raises(RuntimeError), record_routing(model):
        raise RuntimeError("boom")
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert after == before


def test_router_returning_a_bare_tensor_is_refused(monkeypatch):
    """transformers 4.x gates returned plain logits; say what was expected."""
    from macssim import CaptureError

    model = build_tiny_model("olmoe")
    router = type(model.model.layers[0].mlp.gate)
    real = router.forward
    monkeypatch.setattr(router, "forward", lambda self, h: real(self, h)[0])
    inputs = tiny_batch("olmoe", model.config, [TinyRequest(3, 0, 2)])
    with pytest.raises(CaptureError, match=r"returned Tensor, expected the transformers 5 "
                                           r"tuple \(logits, weights, ids\)"):
        with torch.no_grad(), record_routing(model):
            model(**inputs)
