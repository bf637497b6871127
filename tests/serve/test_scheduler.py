"""The scheduler against queueing figures computed by hand: one rank, step times from a
stub (constant, or affine in the step's tokens), so every TTFT and TPOT has a closed form."""

from __future__ import annotations

import math

import pytest

from macssim.serve import RequestSpec, SchedulerConfig, ServeError, StepCost, run_scheduler

C = 2.0 ** -6   # seconds per step of the constant stub (binary, so sums are exact)


def constant(batch):
    return C


def test_a_lone_request_takes_one_step_per_token():
    out = run_scheduler([RequestSpec(2.0, prompt_tokens=100, output_tokens=5)], 1, constant)
    (r,) = out.requests
    assert r.ttft_s == pytest.approx(C)
    assert r.tpot_s == pytest.approx(C)
    assert r.e2e_latency_s == pytest.approx(5 * C)
    assert [s.start_s for s in out.steps] == pytest.approx([2.0 + i * C for i in range(5)])


def test_queueing_delay_of_a_single_slot_server():
    """One slot, one-token outputs: a D/D/1 queue. Arrivals at 0, C/2 and 3C: the second
    waits for the first step to end (TTFT 1.5 C); the third finds the server idle since
    2C and starts on arrival (TTFT C)."""
    reqs = [RequestSpec(a, prompt_tokens=4, output_tokens=1) for a in (0.0, C / 2, 3 * C)]
    out = run_scheduler(reqs, 1, constant, SchedulerConfig(token_budget=4, max_seqs=1))
    assert [r.ttft_s for r in out.requests] == pytest.approx([C, 1.5 * C, C])
    assert [r.finish_s for r in out.requests] == pytest.approx([C, 2 * C, 4 * C])
    assert all(math.isnan(r.tpot_s) for r in out.requests)


A, B = 2.0 ** -9, 2.0 ** -13   # affine stub: A + B * tokens seconds


def affine(batch):
    return StepCost(duration_s=A + B * batch.num_tokens)


def test_chunked_prefill_of_one_long_prompt():
    """P = 10 with a budget of 4: chunks 4, 4, 2, then two decodes of 1 token."""
    out = run_scheduler([RequestSpec(0.0, prompt_tokens=10, output_tokens=3)], 1, affine,
                        SchedulerConfig(token_budget=4))
    (r,) = out.requests
    assert [s.tokens for s in out.steps] == [4, 4, 2, 1, 1]
    assert r.ttft_s == pytest.approx(3 * A + 10 * B)
    assert r.tpot_s == pytest.approx(A + B)
    assert r.e2e_latency_s == pytest.approx(3 * A + 10 * B + 2 * (A + B))


def test_decodes_go_before_prefill_chunks_of_later_requests():
    """Two prompts of 6 at t = 0, budget 8, 2 output tokens each.
    Step 1: r0's 6 + r1's first 2 (8 tokens). Step 2: r0 decodes (1) and r1's last 4
    (5 tokens); r0 is done and r1 has its first token. Step 3: r1 decodes (1 token)."""
    reqs = [RequestSpec(0.0, 6, 2), RequestSpec(0.0, 6, 2)]
    out = run_scheduler(reqs, 1, affine, SchedulerConfig(token_budget=8))
    d1, d2, d3 = A + 8 * B, A + 5 * B, A + B
    assert [s.tokens for s in out.steps] == [8, 5, 1]
    r0, r1 = out.requests
    assert (r0.ttft_s, r0.tpot_s, r0.e2e_latency_s) == pytest.approx((d1, d2, d1 + d2))
    assert (r1.ttft_s, r1.tpot_s, r1.e2e_latency_s) == pytest.approx(
        (d1 + d2, d3, d1 + d2 + d3))


def test_without_chunked_prefill_a_prompt_waits_until_it_fits():
    reqs = [RequestSpec(0.0, 6, 2), RequestSpec(0.0, 6, 2)]
    out = run_scheduler(reqs, 1, affine, SchedulerConfig(token_budget=8, chunked_prefill=False))
    # Step 1: r0 alone (6). Step 2: r0 decode + r1 whole (7). Step 3: r1 decode (1).
    assert [s.tokens for s in out.steps] == [6, 7, 1]
    d1, d2, d3 = A + 6 * B, A + 7 * B, A + B
    assert out.requests[1].ttft_s == pytest.approx(d1 + d2)
    assert out.requests[1].tpot_s == pytest.approx(d3)


def test_static_batch_saturates_at_slots_over_output_steps():
    """N = m·S requests at t = 0, S slots, K output tokens, constant step C: the slots
    turn over together every K steps, so the run lasts m·K·C and serves S / (K·C)
    requests per second; request j waits floor(j / S)·K·C for its first token."""
    S, K, m = 4, 5, 6
    reqs = [RequestSpec(0.0, 16, K) for _ in range(S * m)]
    out = run_scheduler(reqs, 1, constant, SchedulerConfig(token_budget=S * 16, max_seqs=S))
    makespan = max(r.finish_s for r in out.requests)
    assert makespan == pytest.approx(m * K * C)
    assert len(reqs) / makespan == pytest.approx(S / (K * C))
    for j, r in enumerate(out.requests):
        assert r.ttft_s == pytest.approx((j // S) * K * C + C)
        assert r.tpot_s == pytest.approx(C)


def test_above_capacity_the_queue_grows_and_completions_saturate():
    """Arrivals every C/2 (rate 2/C) on one slot with one-token outputs (capacity 1/C):
    the queue grows by one request every step and a request completes every C."""
    n = 200
    reqs = [RequestSpec(i * C / 2, 4, 1) for i in range(n)]
    out = run_scheduler(reqs, 1, constant, SchedulerConfig(token_budget=4, max_seqs=1))
    waiting = [s.waiting for s in out.steps]
    assert waiting[:50] == [i for i in range(50)]   # step i starts at iC: 2i+1 arrived, i+1 served
    finish = sorted(r.finish_s for r in out.requests)
    assert finish == pytest.approx([(i + 1) * C for i in range(n)])
    # the i-th request waits (i + 1)·C − i·C/2: TTFT grows linearly
    assert [r.ttft_s for r in out.requests] == pytest.approx(
        [(i + 1) * C - i * C / 2 for i in range(n)])


def test_ranks_take_arrivals_least_loaded_first():
    reqs = [RequestSpec(0.0, 10, 1), RequestSpec(0.0, 3, 1), RequestSpec(0.0, 3, 1),
            RequestSpec(0.0, 3, 1)]
    out = run_scheduler(reqs, 2, constant)
    # loads after each arrival: (11, 0) -> (11, 4) -> (11, 8) -> (11, 12) ... r3 to rank 1
    assert [r.rank for r in out.requests] == [0, 1, 1, 1]
    assert out.steps[0].tokens == 19


@pytest.mark.parametrize("bad, says", [
    ([], "no requests"),
    ([RequestSpec(-1.0, 1, 1)], "arrival_s"),
    ([RequestSpec(math.nan, 1, 1)], "arrival_s"),
    ([RequestSpec(0.0, 0, 1)], "prompt_tokens"),
    ([RequestSpec(0.0, 1, 0)], "output_tokens"),
])
def test_bad_requests_are_named(bad, says):
    with pytest.raises(ServeError, match=says):
        run_scheduler(bad, 1, constant)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_a_step_time_that_is_not_positive_is_refused(value):
    with pytest.raises(ServeError, match="step 0: step time"):
        run_scheduler([RequestSpec(0.0, 1, 1)], 1, lambda b: value)


def test_a_prompt_longer_than_the_budget_needs_chunked_prefill():
    with pytest.raises(ServeError, match="chunked prefill is off"):
        run_scheduler([RequestSpec(0.0, 9, 1)], 1, constant,
                      SchedulerConfig(token_budget=8, chunked_prefill=False))


@pytest.mark.parametrize("over", [{"token_budget": 0}, {"max_seqs": 0},
                                  {"chunked_prefill": "yes"}])
def test_bad_scheduler_config_is_named(over):
    with pytest.raises(ServeError, match=next(iter(over))):
        SchedulerConfig(**over)


def test_kv_cache_bounds_the_slots_like_max_seqs():
    """A rank whose KV cache holds S whole sequences (prompt P + K outputs each) behaves
    as S slots: the static-batch closed form above, with max_seqs unbounded."""
    S, K, m, P = 3, 4, 5, 16
    reqs = [RequestSpec(0.0, P, K) for _ in range(S * m)]
    cfg = SchedulerConfig(token_budget=S * P, kv_cache_tokens=S * (P + K) + (P + K) - 1)
    out = run_scheduler(reqs, 1, constant, cfg)
    for j, r in enumerate(out.requests):
        assert r.ttft_s == pytest.approx((j // S) * K * C + C)
    assert max(r.finish_s for r in out.requests) == pytest.approx(m * K * C)
    assert max(s.running for s in out.steps) == S


def test_kv_cache_admits_first_come_first_served_by_size():
    """KV of 30 tokens: a (10+2) and b (10+2) fit together (24); c (20+2) must wait until
    both have left, though it arrived while they ran; d (4+1), behind c, waits too."""
    reqs = [RequestSpec(0.0, 10, 2), RequestSpec(0.0, 10, 2), RequestSpec(C / 2, 20, 2),
            RequestSpec(C / 2, 4, 1)]
    out = run_scheduler(reqs, 1, constant, SchedulerConfig(token_budget=64,
                                                            kv_cache_tokens=30))
    a, b, c, d = out.requests
    assert (a.finish_s, b.finish_s) == pytest.approx((2 * C, 2 * C))
    assert c.scheduled_s == pytest.approx(2 * C) and c.first_token_s == pytest.approx(3 * C)
    assert d.scheduled_s == pytest.approx(2 * C)   # 22 + 5 <= 30: admitted beside c
    with pytest.raises(ServeError, match="exceed a rank's KV cache of 30 tokens"):
        run_scheduler([RequestSpec(0.0, 29, 2)], 1, constant,
                      SchedulerConfig(kv_cache_tokens=30))
