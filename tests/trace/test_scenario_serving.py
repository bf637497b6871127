"""The `serving` scenario (the workload meant for the default trace): a serving-like
batch, checked against the scenario's own ranges, not against generated output."""

from __future__ import annotations

import numpy as np

from macssim.trace import get_scenario, synthetic_steps


def test_serving_is_a_batch_of_many_mixed_requests() -> None:
    s = get_scenario("serving")
    assert 16 <= s.batch_size <= 32 and s.decode_steps >= 1
    kinds = {k.name: k for k in s.requests}
    assert set(kinds) == {"chart", "page", "chat"}
    # Expected prefill: batch x mean prompt (uniform ranges) is several thousand tokens.
    assert 4_000 <= s.batch_size * s.mean_prompt_tokens() <= 16_000


def test_serving_steps_follow_the_scenario() -> None:
    s = get_scenario("serving")
    steps = list(synthetic_steps("qwen3-vl-30b-a3b", s, 3, seed=0))
    prefill, decode = steps[0], steps[1:]
    assert prefill.kind == "prefill" and all(d.kind == "decode" for d in decode)
    assert np.unique(prefill.request_id).size == s.batch_size
    lo = s.batch_size * min(sum(r[0] for r in (k.image_tokens, k.text_tokens))
                            for k in s.requests)
    hi = s.batch_size * max(k.max_prompt_tokens for k in s.requests)
    assert lo <= prefill.num_tokens <= hi
    for d in decode:  # every live sequence decodes one text token
        assert d.num_tokens == s.batch_size and (d.modality == 0).all()
