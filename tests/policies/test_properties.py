"""Property tests: every policy against its slow twin and against the invariants a
capacity policy must keep, on random router scores with ties, tiny and larger T."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macssim.policies import get_policy, megatron_capacity

from . import _reference as ref

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def batches(draw, max_tokens=40):
    """``max_tokens`` 40 keeps the slow twins quick; invariants also run up to 3000."""
    # A layer's batch: scores with frequent ties (logits from a small integer grid, or
    # continuous), k, a placement, modality and entropy.
    num_gpus = draw(st.integers(1, 4))
    per_gpu = draw(st.integers(1, 4))
    num_experts = num_gpus * per_gpu - draw(st.integers(0, min(per_gpu - 1, 1)) if per_gpu > 1
                                            else st.just(0))
    k = draw(st.integers(1, min(4, num_experts)))
    T = draw(st.integers(1, max_tokens))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        logits = rng.integers(0, 3, size=(T, num_experts)).astype(np.float32)  # many ties
    else:
        logits = (rng.standard_normal((T, num_experts)) * draw(st.sampled_from([0.5, 2.0, 6.0]))
                  + rng.standard_normal(num_experts) * 1.5).astype(np.float32)
    scores = torch.softmax(torch.from_numpy(logits), dim=1)
    placement = torch.from_numpy(
        np.minimum(np.arange(num_experts) // per_gpu, num_gpus - 1).astype(np.int64))
    modality = torch.from_numpy(rng.choice([0, 1, 2], size=T, p=[0.4, 0.5, 0.1]).astype(np.uint8))
    entropy = torch.from_numpy((rng.integers(0, 4, size=T) * 0.5 + 5.0).astype(np.float32))
    gamma = draw(st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]))
    labels = torch.from_numpy(rng.integers(-1, 2, size=num_experts).astype(np.int64))
    return dict(scores=scores, k=k, placement=placement, modality=modality, entropy=entropy,
                gamma=gamma, labels=labels)


def run(name, b, **params):
    kw = {} if name == "vanilla" else {"capacity_factor": b["gamma"]}
    kw.update(params)
    return get_policy(name, **kw)(b["scores"], top_k=b["k"], placement=b["placement"],
                                  modality=b["modality"], entropy=b["entropy"],
                                  expert_labels=b["labels"])


@SETTINGS
@given(batches())
def test_vanilla_is_plain_topk(b):
    plan = run("vanilla", b)
    expected = ref.topk_ref(b["scores"].numpy(), b["k"])
    assert np.array_equal(plan.expert_ids.numpy(), expected)
    assert plan.kept.all() and not plan.rerouted.any()


@SETTINGS
@given(batches(), st.sampled_from(["probs", "position"]))
def test_token_drop_keeps_exactly_the_c_best_of_each_expert(b, drop_policy):
    plan = run("token-drop", b, drop_policy=drop_policy)
    ids, kept = ref.token_drop_ref(b["scores"].numpy(), b["k"], b["gamma"], drop_policy)
    assert np.array_equal(plan.expert_ids.numpy(), ids)
    assert np.array_equal(plan.kept.numpy(), kept)
    T, E = b["scores"].shape
    C = megatron_capacity(T, b["k"], E, b["gamma"])
    load = np.bincount(ids[kept], minlength=E)
    demand = np.bincount(ids.ravel(), minlength=E)
    # An expert under capacity keeps all; an overloaded one keeps exactly C.
    assert np.array_equal(load, np.minimum(demand, C))
    if drop_policy == "probs":
        s = b["scores"].numpy()
        for e in range(E):
            mine = ids == e
            if mine.sum() > C:
                kept_s = s[:, e][(mine & kept).any(axis=1)]
                lost_s = s[:, e][(mine & ~kept).any(axis=1)]
                assert kept_s.min() >= lost_s.max()


@SETTINGS
@given(batches())
def test_expanded_drop_matches_its_twin(b):
    plan = run("expanded-drop", b)
    ids, kept, rerouted = ref.expanded_drop_ref(b["scores"].numpy(), b["k"], b["gamma"],
                                                b["placement"].numpy())
    assert np.array_equal(plan.expert_ids.numpy(), ids)
    assert np.array_equal(plan.kept.numpy(), kept)
    assert np.array_equal(plan.rerouted.numpy(), rerouted)


@SETTINGS
@given(batches(), st.sampled_from(["tokens", "weight"]), st.sampled_from([1.0, 4.0, 8.0]),
       st.sampled_from([0.5, 1.0]), st.booleans())
def test_macs_matches_its_twin(b, basis, delta, rho, continuous_entropy):
    """Steep δ and continuous entropies give many distinct, tiny weights; labels with ρ > 0
    give fractional capacities: the float edges where admission must stay consistent."""
    if continuous_entropy:
        g = torch.Generator().manual_seed(int(b["scores"].shape[0]))
        b = dict(b, entropy=torch.rand(b["scores"].shape[0], generator=g) * 3 + 4)
    plan = run("macs", b, capacity_basis=basis, delta=delta, rho=rho)
    ids, kept, rerouted, cap, w = ref.macs_ref(
        b["scores"].numpy(), b["k"], b["gamma"], b["placement"].numpy(),
        b["modality"].numpy(), b["entropy"].numpy(), b["labels"].numpy(),
        capacity_basis=basis, delta=delta, rho=rho)
    np.testing.assert_allclose(plan.semantic_weight.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(plan.capacity.numpy(), cap, rtol=1e-9)
    assert np.array_equal(plan.expert_ids.numpy(), ids)
    assert np.array_equal(plan.kept.numpy(), kept)
    assert np.array_equal(plan.rerouted.numpy(), rerouted)


@SETTINGS
@given(st.one_of(batches(), batches(max_tokens=3000)),
       st.sampled_from(["token-drop", "expanded-drop", "macs"]))
def test_capacity_invariants(b, name):
    plan = run(name, b)
    T, E = b["scores"].shape
    k = b["k"]
    ids, kept, rer = plan.expert_ids.numpy(), plan.kept.numpy(), plan.rerouted.numpy()
    size = plan.semantic_weight.numpy().astype(np.float64) if name == "macs" else np.ones(T)
    load = np.zeros(E)
    np.add.at(load, ids[kept], np.broadcast_to(size[:, None], ids.shape)[kept])
    cap = plan.capacity.numpy()
    assert (load <= cap + 1e-6 * np.maximum(cap, 1)).all(), (load, cap)
    # Every assignment is either kept or dropped, and the tally says so.
    assert plan.drops.total("assignments") == T * k
    assert plan.drops.total("dropped_assignments") == int((~kept).sum())
    assert plan.drops.total("rerouted_assignments") == int(rer.sum())
    assert not (rer & ~kept).any()
    # A token never holds one expert twice among its kept slots.
    masked = np.where(kept, ids, -1 - np.arange(k))  # dropped slots get distinct fillers
    srt = np.sort(masked, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    # Rerouting stays on the GPU of the expert the slot overflowed from.
    original = ref.topk_ref(b["scores"].numpy(), k)
    gpu = b["placement"].numpy()
    assert (gpu[ids[rer]] == gpu[original[rer]]).all()
    assert (ids[~rer] == original[~rer]).all()
    lost_all = int((~kept.any(axis=1)).sum())
    assert plan.drops.total("tokens_lost_all") == lost_all


@SETTINGS
@given(batches(), st.sampled_from(["tokens", "weight"]))
def test_macs_on_text_only_batch_is_expanded_drop(b, basis):
    b = dict(b, modality=torch.zeros_like(b["modality"]))
    m, x = run("macs", b, capacity_basis=basis), run("expanded-drop", b)
    assert torch.equal(m.expert_ids, x.expert_ids)
    assert torch.equal(m.kept, x.kept)
    assert torch.equal(m.rerouted, x.rerouted)


@pytest.mark.parametrize("T", [1, 3, 4096])
@pytest.mark.parametrize("name", ["vanilla", "token-drop", "expanded-drop", "macs"])
def test_deterministic_and_sized(name, T):
    g = torch.Generator().manual_seed(T)
    E, k = 32, 4
    scores = torch.softmax(torch.randn(T, E, generator=g) * 2, dim=1)
    kw = dict(top_k=k, placement=torch.arange(E) // 8,
              modality=torch.randint(0, 3, (T,), generator=g, dtype=torch.uint8),
              entropy=torch.rand(T, generator=g) + 5)
    p = get_policy(name)
    a, b = p(scores, **kw), p(scores.clone(), **kw)
    assert a.expert_ids.shape == (T, k) and a.expert_ids.dtype == torch.long
    assert a.kept.dtype == torch.bool and a.weights.shape == (T, k)
    assert torch.equal(a.expert_ids, b.expert_ids) and torch.equal(a.kept, b.kept)


@pytest.mark.parametrize("name", ["vanilla", "token-drop", "expanded-drop", "macs"])
def test_b_layers_in_one_call_equal_b_calls(name):
    """Batching layers is an optimisation only: same plans, same drop tallies."""
    g = torch.Generator().manual_seed(7)
    B, T, E, k = 3, 200, 16, 4
    scores = torch.softmax(torch.randn(B, T, E, generator=g) * 2 + torch.randn(B, 1, E,
                                                                             generator=g), -1)
    modality = torch.randint(0, 3, (T,), generator=g, dtype=torch.uint8)
    entropy = torch.rand(B, T, generator=g) * 2 + 4
    labels = torch.randint(-1, 2, (B, E), generator=g)
    placement = torch.arange(E) // 4
    policy = get_policy(name, **({} if name == "vanilla" else {"capacity_factor": 0.8}))
    batched = policy(scores, top_k=k, modality=modality, entropy=entropy, placement=placement,
                     expert_labels=labels)
    for b, plan in enumerate(batched.layers()):
        single = policy(scores[b], top_k=k, modality=modality, entropy=entropy[b],
                        placement=placement, expert_labels=labels[b])
        assert torch.equal(plan.expert_ids, single.expert_ids)
        assert torch.equal(plan.kept, single.kept)
        assert torch.equal(plan.rerouted, single.rerouted)
        assert plan.drops == single.drops
        if single.capacity is not None:
            assert torch.equal(plan.capacity, single.capacity)


def test_reroute_admits_what_fits_even_at_float_edges():
    """Regression: a load a hair over a fractional capacity once let a tiny-weight
    proposal pass the fit check yet fail admission, forever. It must be admitted."""
    from macssim.policies._capacity import reroute_local

    new_ids, rerouted = reroute_local(
        scores=torch.tensor([[0.6, 0.4]]), expert_ids=torch.tensor([[0]]),
        overflow=torch.tensor([[True]]), expert_gpu=torch.tensor([0, 0]),
        load=torch.tensor([100.0, 100.0 + 5e-8], dtype=torch.float64),
        capacity=torch.tensor([100.0, 100.0], dtype=torch.float64),
        token_size=torch.tensor([1e-8], dtype=torch.float64))
    assert new_ids.tolist() == [[1]] and rerouted.tolist() == [[True]]


def test_macs_with_labels_and_steep_weights_terminates(small_trace):
    """The configuration that exposed the regression above: fractional capacities
    (labels, ρ) and near-zero weights (large δ) on a real prefill."""
    from macssim.policies import expert_labels_from_trace
    from macssim.trace import open_trace

    trace = open_trace(small_trace)
    step = trace.step(0)
    labels = torch.from_numpy(expert_labels_from_trace(trace))
    plan = get_policy("macs", capacity_factor=0.75, delta=4.0, rho=0.5)(
        torch.from_numpy(step.scores), top_k=4, placement=torch.arange(32) // 4,
        modality=torch.from_numpy(step.modality), entropy=torch.from_numpy(step.entropy),
        topk_ids=torch.from_numpy(step.topk_ids), expert_labels=labels)
    assert plan.kept.shape == step.topk_ids.shape
