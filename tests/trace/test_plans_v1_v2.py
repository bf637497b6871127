"""Every policy's plan on a v2 trace equals its plan on the same routing stored as v1, for
what v2 is documented to support (docs/trace-format.md, "What top-N scores lose"):
vanilla and token-drop with the default top-N scores; every policy when v2 keeps every
score. And with top-N scores, the API says where scores are missing."""

from __future__ import annotations

import numpy as np
import pytest

from macssim.replay import ReplayConfig, replay
from macssim.trace import (
    ModelFacts,
    get_scenario,
    open_trace,
    synthetic_steps,
    unscored_experts_per_gpu,
    write_trace,
)

MODEL = ModelFacts(
    name="small-moe", num_layers=4, moe_layers=(0, 1, 2, 3), num_experts=32, top_k=4,
    hidden_size=1024, expert_intermediate_size=512, num_attention_heads=8, num_kv_heads=2,
    head_dim=128, vision_flops_per_token=1e9)
ALL = ("macs", "expanded-drop", "token-drop", "vanilla")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1v2")
    scenario = get_scenario("mixed").with_overrides(batch_size=3, decode_steps=2)
    steps = list(synthetic_steps(MODEL, scenario, 3, seed=1))
    return {
        "v1": write_trace(root / "v1.mtrace", MODEL, {"source": "test"}, steps,
                          format_version=1),
        "v2": write_trace(root / "v2.mtrace", MODEL, {"source": "test"}, steps),
        "v2 all": write_trace(root / "v2all.mtrace", MODEL, {"source": "test"}, steps,
                              top_n=None),
    }


def _plans(path, policies):
    res = replay(ReplayConfig(trace=path, policies=policies, topology="8xH100"))
    return res


def _same(a, b):
    assert a.policies == b.policies
    assert a.layers.equals(b.layers)
    assert a.steps.equals(b.steps)
    assert a.drops.equals(b.drops)
    for name in a.policies:
        np.testing.assert_array_equal(a.gpu_load[name], b.gpu_load[name])


def test_vanilla_and_token_drop_plans_are_equal_on_top_n_scores(traces):
    assert not open_trace(traces["v2"]).scores_complete
    _same(_plans(traces["v1"], ("vanilla", "token-drop")),
          _plans(traces["v2"], ("vanilla", "token-drop")))


def test_every_policy_plans_alike_when_v2_keeps_every_score(traces):
    assert open_trace(traces["v2 all"]).scores_complete
    _same(_plans(traces["v1"], ALL), _plans(traces["v2 all"], ALL))


def test_top_n_steps_say_which_scores_are_missing(traces):
    """On the default v2 trace every step reports its missing scores, and for an EP8
    placement some overflow candidates are unscored: the case a rerouting policy must
    report."""
    full = list(open_trace(traces["v1"]))
    part = list(open_trace(traces["v2"]))
    expert_gpu = np.arange(MODEL.num_experts) // (MODEL.num_experts // 8)
    for a, b in zip(full, part, strict=True):
        assert a.scores_complete and not b.scores_complete
        assert b.scores_kept == 2 * MODEL.top_k
        np.testing.assert_array_equal(b.scores[b.score_known], a.scores[b.score_known])
        assert (a.scores[~b.score_known] <= np.repeat(
            b.score_floor[..., None], MODEL.num_experts, axis=2)[~b.score_known]).all()
        missing = unscored_experts_per_gpu(b, expert_gpu)
        assert missing.sum() == b.num_tokens * MODEL.num_moe_layers * (
            MODEL.num_experts - 2 * MODEL.top_k)
        assert unscored_experts_per_gpu(a, expert_gpu) is None
