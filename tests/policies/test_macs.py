"""MACS's point, shown on inputs whose answer follows from the paper's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from macssim import PolicyError
from macssim.policies import (
    calibrate_expert_labels,
    entropy_weights,
    get_policy,
    list_policies,
)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def image_heavy_batch():
    """16 tokens, 4 experts, one per GPU (no local rerouting possible), k = 1, γ = 1:
    C = ceil(16·1/4) = 4. Eight image tokens all want expert 0: six redundant background
    patches (entropy 6 nats, router score 0.9) and two salient ones (entropy 2 nats,
    score 0.6). Eight text tokens spread 3/3/2 over experts 1-3, under capacity."""
    E = 4
    scores = torch.zeros(16, E)
    modality = torch.zeros(16, dtype=torch.uint8)
    entropy = torch.full((16,), 3.0)
    for t in range(6):
        scores[t] = torch.tensor([0.9, 0.05, 0.03, 0.02])
        modality[t], entropy[t] = 1, 6.0
    for t in range(6, 8):
        scores[t] = torch.tensor([0.6, 0.2, 0.1, 0.1])
        modality[t], entropy[t] = 1, 2.0
    for t, e in zip(range(8, 16), [1, 1, 1, 2, 2, 2, 3, 3], strict=True):
        scores[t] = torch.full((E,), 0.1)
        scores[t, e] = 0.7
    # Every token on GPU 4, which holds none of the experts: no local candidate, and
    # T = 16 under either capacity scope.
    return dict(scores=scores, top_k=1, placement=torch.arange(E), modality=modality,
                entropy=entropy, token_gpu=torch.full((16,), 4))


def test_entropy_weights_follow_the_formula():
    b = image_heavy_batch()
    w = entropy_weights(b["modality"], b["entropy"], delta=1.0)
    mu = (6 * 6.0 + 2 * 2.0) / 8                      # 5.0
    sigma = math.sqrt((6 * 1.0**2 + 2 * 3.0**2) / 8)  # sqrt(3)
    assert w[0].item() == pytest.approx(_sigmoid(-(6.0 - mu) / sigma), rel=1e-6)
    assert w[6].item() == pytest.approx(_sigmoid(-(2.0 - mu) / sigma), rel=1e-6)
    assert (w[8:] == 1).all()


def test_macs_drops_less_semantic_mass_than_token_drop():
    b = image_heavy_batch()
    mu, sigma = 5.0, math.sqrt(3.0)
    w_red, w_sal = _sigmoid(-(6 - mu) / sigma), _sigmoid(-(2 - mu) / sigma)
    total_semantic = 8 * 1.0 + 6 * w_red + 2 * w_sal
    # Token Drop keeps expert 0's four best scores: four redundant patches; it drops two
    # redundant and both salient tokens.
    td = get_policy("token-drop", capacity_factor=1.0)(**b)
    assert td.drops.total("dropped_assignments") == 4
    assert td.drops.dropped_assignments["image"] == 4
    expected_td = (2 * w_red + 2 * w_sal) / total_semantic
    assert td.drops.frac("semantic_mass") == pytest.approx(expected_td, rel=1e-6)
    # MACS counts load by weight: 2·w_sal + 6·w_red ≈ 3.86 <= C = 4, so everything fits.
    assert 2 * w_sal + 6 * w_red <= 4
    mc = get_policy("macs", capacity_factor=1.0)(**b)
    assert mc.drops.total("dropped_assignments") == 0
    assert mc.drops.frac("semantic_mass") == 0.0
    assert mc.drops.frac("semantic_mass") < td.drops.frac("semantic_mass")


def test_macs_admits_heaviest_first_when_it_must_drop():
    """At γ = 0.5, C = 2: expert 0 keeps the two salient tokens (w ≈ 0.85 each, 1.70),
    no redundant patch fits beside them (1.70 + 0.36 > 2), so all six are dropped."""
    b = image_heavy_batch()
    mc = get_policy("macs", capacity_factor=0.5)(**b)
    kept = mc.kept[:, 0]
    assert kept[6:8].all() and not kept[:6].any()
    td = get_policy("token-drop", capacity_factor=0.5)(**b)
    assert td.kept[:2, 0].all() and not td.kept[2:8, 0].any()  # two redundant by score


def test_modality_adaptive_capacity_moves_room_to_visual_experts():
    b = image_heavy_batch()
    labels = torch.tensor([1, -1, -1, 0])
    plan = get_policy("macs", capacity_factor=1.0, rho=0.5, scope="global")(
        **b, expert_labels=labels)
    w = plan.semantic_weight.double()
    r_v = w[:8].sum() / w.sum()
    base = 4.0
    expected = [base * (1 + 0.5 * m * (r_v.item() - 0.5)) for m in (1, -1, -1, 0)]
    assert plan.capacity.tolist() == pytest.approx(expected, rel=1e-12)
    assert r_v < 0.5  # text still dominates by weight: visual experts lose room here


def test_macs_without_entropy_says_what_is_missing():
    b = image_heavy_batch()
    with pytest.raises(PolicyError, match="entropy"):
        get_policy("macs")(**dict(b, entropy=None))


def test_unknown_policy_and_parameter_are_named():
    with pytest.raises(PolicyError, match="known: vanilla, token-drop, expanded-drop, macs"):
        get_policy("lottery")
    with pytest.raises(PolicyError, match="unknown parameter"):
        get_policy("token-drop", gamma=1)
    with pytest.raises(PolicyError, match="capacity_factor"):
        get_policy("macs", capacity_factor=0)
    assert set(list_policies()) == {"vanilla", "token-drop", "expanded-drop", "macs"}


def test_id_only_input_works_for_policies_that_need_no_scores():
    ids = torch.tensor([[0, 1], [0, 2], [0, 3]])
    plan = get_policy("token-drop", drop_policy="position", capacity_factor=1.0)(
        None, top_k=2, topk_ids=ids, num_experts=4, token_gpu=torch.zeros(3, dtype=torch.long))
    # C = ceil(3·2/4) = 2: expert 0 keeps the first two tokens.
    assert plan.kept.tolist() == [[True, True], [True, True], [False, True]]
    # Ids only: the gate and semantic masses cannot be measured, and say so.
    assert np.isnan(plan.drops.frac("gate_mass")) and np.isnan(plan.drops.frac("semantic_mass"))
    with pytest.raises(PolicyError, match="scores"):
        get_policy("expanded-drop")(None, top_k=2, topk_ids=ids, num_experts=4,
                                    placement=torch.zeros(4, dtype=torch.long))


def test_label_calibration():
    # Expert 0: visual only; 1: text only; 2: both alike (per token of each modality).
    visual = np.array([[10, 0, 5]])
    text = np.array([[0, 20, 10]])
    labels = calibrate_expert_labels(visual, text, visual_tokens=10, text_tokens=20)
    assert labels.tolist() == [[1, -1, 0]]
    assert (calibrate_expert_labels(visual, text, 0, 20) == 0).all()


def test_on_a_synthetic_image_heavy_trace_macs_drops_less_semantic_mass(small_trace):
    """docvqa prefill (mostly image tokens), every layer, γ = 1: MACS must lose less
    semantic mass than Token Drop, on the same yardstick. MACS admits by weight against
    the same C_base, and a visual token weighs < 1, so its capacity holds at least as
    many tokens, heaviest first."""
    from macssim.trace import open_trace

    trace = open_trace(small_trace)
    step = next(s for s in trace if s.kind == "prefill")
    assert (step.modality > 0).mean() > 0.5
    kw = dict(top_k=trace.model.top_k, modality=torch.from_numpy(step.modality),
              entropy=torch.from_numpy(step.entropy), placement=torch.arange(32) // 4,
              topk_ids=torch.from_numpy(step.topk_ids),
              token_gpu=torch.arange(step.modality.shape[0]) % 8)
    scores = torch.from_numpy(step.scores)
    td = get_policy("token-drop")(scores, **kw)
    mc = get_policy("macs")(scores, **kw)
    for t, m in zip(td.drops, mc.drops, strict=True):
        assert m.frac("semantic_mass") <= t.frac("semantic_mass")
    total = lambda plans, f: sum(d.total(f"dropped_{f}") for d in plans.drops)  # noqa: E731
    assert total(mc, "semantic_mass") < total(td, "semantic_mass")


def test_weight_basis_spends_the_same_budget_on_semantic_load():
    """capacity_basis="weight": C_base = ceil(γ·Σw·k/E) = ceil(11.857/4) = 3. Expert 0
    admits both salient tokens (2·0.8497 = 1.699) and three redundant ones (+3·0.3596 =
    2.778 <= 3; a fourth would make 3.138); the other three redundant are dropped."""
    b = image_heavy_batch()
    mu, sigma = 5.0, math.sqrt(3.0)
    w_red, w_sal = _sigmoid(-(6 - mu) / sigma), _sigmoid(-(2 - mu) / sigma)
    total = 8 + 6 * w_red + 2 * w_sal
    assert math.ceil(total * 1 / 4) == 3
    plan = get_policy("macs", capacity_basis="weight", scope="global")(**b)
    assert plan.capacity.tolist() == [3.0] * 4
    kept = plan.kept[:, 0]
    assert kept[6:8].all() and int(kept[:6].sum()) == 3 and kept[:3].all()
    assert plan.drops.frac("semantic_mass") == pytest.approx(3 * w_red / total, rel=1e-6)
    with pytest.raises(PolicyError, match="capacity_basis"):
        get_policy("macs", capacity_basis="bytes")
