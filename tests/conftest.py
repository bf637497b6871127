"""Shared fixtures: small traces made with the synthetic generator, so replay and report
tests run in seconds."""

from __future__ import annotations

import pytest

from macssim.trace import ModelFacts, get_scenario, synthesize

SMALL_MODEL = ModelFacts(
    name="small-moe", num_layers=4, moe_layers=(0, 1, 2, 3), num_experts=32, top_k=4,
    hidden_size=1024, expert_intermediate_size=512, num_attention_heads=8, num_kv_heads=2,
    head_dim=128, vision_flops_per_token=1e9)


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory):
    """An image-heavy trace: 1 prefill of 2 document requests + 3 decode steps, 4 MoE
    layers of 32 experts, top-4."""
    path = tmp_path_factory.mktemp("traces") / "small.mtrace"
    scenario = get_scenario("docvqa").with_overrides(batch_size=2, decode_steps=3)
    synthesize(path, model=SMALL_MODEL, scenario=scenario, num_steps=4, seed=0)
    return path
