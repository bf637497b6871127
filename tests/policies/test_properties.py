"""Property tests: every policy against its slow twin and against the invariants a
capacity policy must keep, on random router scores with ties, tiny and larger T, both
capacity scopes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macssim.policies import get_policy

from . import _reference as ref

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCOPE = st.sampled_from(["rank", "global"])


@st.composite
def batches(draw, max_tokens=40):
    """``max_tokens`` 40 keeps the slow twins quick; invariants also run up to 1000."""
    # A layer's batch: scores with frequent ties (logits from a small integer grid, or
    # continuous), k, a placement, the GPU of each token, modality and entropy.
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
    token_gpu = torch.from_numpy(rng.integers(0, num_gpus, size=T).astype(np.int64))
    modality = torch.from_numpy(rng.choice([0, 1, 2], size=T, p=[0.4, 0.5, 0.1]).astype(np.uint8))
    entropy = torch.from_numpy((rng.integers(0, 4, size=T) * 0.5 + 5.0).astype(np.float32))
    gamma = draw(st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]))
    labels = torch.from_numpy(rng.integers(-1, 2, size=num_experts).astype(np.int64))
    return dict(scores=scores, k=k, placement=placement, token_gpu=token_gpu,
                modality=modality, entropy=entropy, gamma=gamma, labels=labels)


def run(name, b, **params):
    kw = {} if name == "vanilla" else {"capacity_factor": b["gamma"]}
    kw.update(params)
    return get_policy(name, **kw)(b["scores"], top_k=b["k"], placement=b["placement"],
                                  token_gpu=b["token_gpu"], modality=b["modality"],
                                  entropy=b["entropy"], expert_labels=b["labels"])


def assert_same_plan(a, b):
    """Two plans equal in every field a replay reads."""
    assert torch.equal(a.expert_ids, b.expert_ids)
    assert torch.equal(a.kept, b.kept)
    assert torch.equal(a.rerouted, b.rerouted)
    assert a.drops == b.drops
    for name in ("capacity", "exchange_bytes"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), name


def router_slots_kept(plan, k):
    return plan.kept[:, :k].numpy()


@SETTINGS
@given(batches())
def test_vanilla_is_plain_topk(b):
    plan = run("vanilla", b)
    expected = ref.topk_ref(b["scores"].numpy(), b["k"])
    assert np.array_equal(plan.expert_ids.numpy(), expected)
    assert plan.kept.all() and not plan.rerouted.any()


@SETTINGS
@given(batches(), st.sampled_from(["probs", "position"]), SCOPE)
def test_token_drop_matches_its_twin(b, drop_policy, scope):
    plan = run("token-drop", b, drop_policy=drop_policy, scope=scope)
    ids, kept, _ = ref.token_drop_ref(b["scores"].numpy(), b["k"], b["gamma"],
                                      b["token_gpu"].numpy(), scope, drop_policy)
    assert np.array_equal(plan.expert_ids.numpy(), ids)
    assert ref.plan_pairs(plan) == kept


@SETTINGS
@given(batches(), SCOPE)
def test_expanded_drop_keeps_each_experts_top_c_of_its_candidates(b, scope):
    plan = run("expanded-drop", b, scope=scope)
    ids, kept, _ = ref.expanded_drop_ref(b["scores"].numpy(), b["k"], b["gamma"],
                                         b["placement"].numpy(), b["token_gpu"].numpy(), scope)
    assert np.array_equal(plan.expert_ids[:, :b["k"]].numpy(), ids)
    assert ref.plan_pairs(plan) == kept
    # Nothing added leaves the token's GPU.
    gpu, tg = b["placement"].numpy(), b["token_gpu"].numpy()
    t, j = np.nonzero(plan.rerouted.numpy())
    assert (gpu[plan.expert_ids.numpy()[t, j]] == tg[t]).all()
    assert not plan.rerouted[:, :b["k"]].any()


@SETTINGS
@given(batches(), st.sampled_from(["tokens", "weight"]), st.sampled_from([1.0, 4.0, 8.0]),
       st.sampled_from([0.0, 0.5, 1.0]), st.booleans(), SCOPE)
def test_macs_matches_its_twin(b, basis, delta, rho, continuous_entropy, scope):
    """Steep δ and continuous entropies give many distinct, tiny weights; labels with ρ > 0
    give fractional capacities: the float edges where admission must stay consistent."""
    if continuous_entropy:
        g = torch.Generator().manual_seed(int(b["scores"].shape[0]))
        b = dict(b, entropy=torch.rand(b["scores"].shape[0], generator=g) * 3 + 4)
    plan = run("macs", b, capacity_basis=basis, delta=delta, rho=rho, scope=scope)
    ids, kept, cap, w = ref.macs_ref(
        b["scores"].numpy(), b["k"], b["gamma"], b["placement"].numpy(),
        b["token_gpu"].numpy(), b["modality"].numpy(), b["entropy"].numpy(),
        b["labels"].numpy(), capacity_basis=basis, delta=delta, rho=rho, scope=scope)
    np.testing.assert_allclose(plan.semantic_weight.numpy(), w, rtol=1e-6)
    got_cap = plan.capacity.numpy()
    for (s, e), c in cap.items():
        assert got_cap[e] == pytest.approx(c, rel=1e-9) if scope == "global" else \
            got_cap[s, e] == pytest.approx(c, rel=1e-9)
    assert ref.plan_pairs(plan) == kept


def _bucket_loads(plan, b, name, scope):
    """Load each capacity bucket took: [S, E] (S = G for rank, 1 for global)."""
    ids, kept = plan.expert_ids.numpy(), plan.kept.numpy()
    E = b["scores"].shape[1]
    tg = b["token_gpu"].numpy()
    size = plan.semantic_weight.numpy().astype(np.float64) if name == "macs" else np.ones(len(tg))
    cap = plan.capacity.numpy()
    cap = cap[None] if cap.ndim == 1 else cap
    load = np.zeros((cap.shape[0], E))
    for t, j in zip(*np.nonzero(kept), strict=True):
        load[tg[t] if scope == "rank" else 0, ids[t, j]] += size[t]
    return load, cap


@SETTINGS
@given(st.one_of(batches(), batches(max_tokens=1000)),
       st.sampled_from(["token-drop", "expanded-drop", "macs"]), SCOPE)
def test_capacity_invariants(b, name, scope):
    plan = run(name, b, scope=scope)
    T, E = b["scores"].shape
    k = b["k"]
    load, cap = _bucket_loads(plan, b, name, scope)
    # Rank scope: no expert takes more than C of one GPU's tokens; global: of all.
    assert (load <= cap + 1e-6 * np.maximum(cap, 1)).all(), (load, cap)
    ids, kept, rer = plan.expert_ids.numpy(), plan.kept.numpy(), plan.rerouted.numpy()
    # The router's slots are counted, kept or dropped; added experts are counted apart.
    assert plan.drops.total("assignments") == T * k
    assert plan.drops.total("dropped_assignments") == int((~kept[:, :k]).sum())
    assert plan.drops.total("rerouted_assignments") == int(rer.sum())
    assert not (rer & ~kept).any()
    assert np.array_equal(ids[:, :k], ref.topk_ref(b["scores"].numpy(), k))
    # A token never holds one expert twice.
    masked = np.where(kept, ids, -1 - np.arange(ids.shape[1]))
    srt = np.sort(masked, axis=1)
    assert not (srt[:, 1:] == srt[:, :-1]).any()
    assert plan.drops.total("tokens_lost_all") == int((~kept.any(axis=1)).sum())
    assert (plan.exchange_bytes is None) == (scope == "rank")


@SETTINGS
@given(batches(), SCOPE, st.booleans())
def test_macs_admits_in_one_global_weight_order(b, scope, continuous_entropy):
    """No lighter candidate placed while a heavier one that fits is dropped: every
    candidate MACS refused would overflow its expert given what came before it in the
    order (heavier w, then higher score, then earlier token)."""
    if continuous_entropy:
        g = torch.Generator().manual_seed(int(b["scores"].shape[0]) + 1)
        b = dict(b, entropy=torch.rand(b["scores"].shape[0], generator=g) * 3 + 4)
    plan = run("macs", b, scope=scope, delta=4.0, rho=1.0)
    s, tg = b["scores"].numpy(), b["token_gpu"].numpy()
    w = plan.semantic_weight.numpy().astype(np.float64)
    cap = plan.capacity.numpy()
    cap = cap[None] if cap.ndim == 1 else cap
    ids = ref.topk_ref(s, b["k"])
    cands = ref.candidates_ref(s, ids, b["placement"].numpy(), tg, expanded=True)
    kept = ref.plan_pairs(plan)
    assert kept <= set(cands)
    for t, e in cands:
        if (t, e) in kept:
            continue
        src = tg[t] if scope == "rank" else 0
        before = sum(w[u] for u, f in kept if f == e and (tg[u] if scope == "rank" else 0)
                     == src and (-w[u], -s[u, e], u) < (-w[t], -s[t, e], t))
        assert before + w[t] > cap[src, e] * (1 + 1e-9), (t, e)


@SETTINGS
@given(batches(), st.sampled_from(["tokens", "weight"]), SCOPE, st.booleans())
def test_macs_on_text_only_batch_is_expanded_drop(b, basis, scope, unlabelled):
    """With ρ = 0, or no labelled expert, nothing moves capacity on a text-only batch."""
    b = dict(b, modality=torch.zeros_like(b["modality"]))
    if unlabelled:
        b = dict(b, labels=torch.zeros_like(b["labels"]))
        m = run("macs", b, capacity_basis=basis, scope=scope, rho=1.0)
    else:
        m = run("macs", b, capacity_basis=basis, scope=scope, rho=0.0)
    x = run("expanded-drop", b, scope=scope)
    assert torch.equal(m.expert_ids, x.expert_ids)
    assert torch.equal(m.kept, x.kept)
    assert torch.equal(m.rerouted, x.rerouted)


def test_macs_on_text_only_batch_follows_the_papers_formula():
    """No exemption: R_v = 0 shrinks visual experts to C_base·(1 − ρ/2) and grows text
    experts to C_base·(1 + ρ/2)."""
    T, E, k = 64, 8, 2
    scores = torch.softmax(torch.randn(T, E, generator=torch.Generator().manual_seed(1)), 1)
    labels = torch.tensor([1, -1, 0, 1, -1, 0, 1, -1])
    plan = get_policy("macs", rho=0.5, scope="global")(
        scores, top_k=k, placement=torch.arange(E) // 2, token_gpu=torch.zeros(T, dtype=torch.long),
        modality=torch.zeros(T, dtype=torch.uint8), entropy=torch.rand(T),
        expert_labels=labels)
    base = ref.capacity_ref(T, k, E, 1.0)
    expected = [base * (1 + 0.5 * int(m) * (0 - 0.5)) for m in labels]
    assert plan.capacity.tolist() == pytest.approx(expected)


@pytest.mark.parametrize("T", [1, 3, 4096])
@pytest.mark.parametrize("name", ["vanilla", "token-drop", "expanded-drop", "macs"])
def test_deterministic_and_sized(name, T):
    g = torch.Generator().manual_seed(T)
    E, k = 32, 4
    scores = torch.softmax(torch.randn(T, E, generator=g) * 2, dim=1)
    kw = dict(top_k=k, placement=torch.arange(E) // 8, token_gpu=torch.arange(T) % 4,
              modality=torch.randint(0, 3, (T,), generator=g, dtype=torch.uint8),
              entropy=torch.rand(T, generator=g) + 5)
    p = get_policy(name)
    a, b = p(scores, **kw), p(scores.clone(), **kw)
    width = k + (8 if name in ("expanded-drop", "macs") else 0)
    assert a.expert_ids.shape == (T, width) and a.expert_ids.dtype == torch.long
    assert a.kept.dtype == torch.bool and a.weights.shape == (T, width)
    assert torch.equal(a.expert_ids, b.expert_ids) and torch.equal(a.kept, b.kept)


@pytest.mark.parametrize("scope", ["rank", "global"])
@pytest.mark.parametrize("name", ["vanilla", "token-drop", "expanded-drop", "macs"])
def test_b_layers_in_one_call_equal_b_calls(name, scope):
    """Batching layers is an optimisation only: same plans, same drop tallies."""
    g = torch.Generator().manual_seed(7)
    B, T, E, k = 3, 200, 16, 4
    scores = torch.softmax(torch.randn(B, T, E, generator=g) * 2 + torch.randn(B, 1, E,
                                                                             generator=g), -1)
    modality = torch.randint(0, 3, (T,), generator=g, dtype=torch.uint8)
    entropy = torch.rand(B, T, generator=g) * 2 + 4
    labels = torch.randint(-1, 2, (B, E), generator=g)
    placement = torch.arange(E) // 4
    token_gpu = torch.randint(0, 4, (T,), generator=g)
    policy = get_policy(name, **({} if name == "vanilla" else {"capacity_factor": 0.8,
                                                               "scope": scope}))
    batched = policy(scores, top_k=k, modality=modality, entropy=entropy, placement=placement,
                     token_gpu=token_gpu, expert_labels=labels)
    for b, plan in enumerate(batched.layers()):
        single = policy(scores[b], top_k=k, modality=modality, entropy=entropy[b],
                        placement=placement, token_gpu=token_gpu, expert_labels=labels[b])
        assert_same_plan(plan, single)


def test_first_fit_admits_what_fits_even_at_float_edges():
    """A load a hair over a fractional capacity must not block a tiny candidate that
    fits within the tolerance, nor loop."""
    from macssim.policies._capacity import admit_by_priority

    admitted = admit_by_priority(
        bucket=torch.tensor([0, 0, 0]), size=torch.tensor([60.0, 40.0 + 5e-8, 1e-8],
                                                          dtype=torch.float64),
        capacity=torch.tensor([100.0], dtype=torch.float64),
        priority=[torch.tensor([0.9, 0.8, 0.1])])
    assert admitted.tolist() == [True, True, True]


def test_macs_with_labels_and_steep_weights_terminates(small_trace):
    """Fractional capacities (labels, ρ) and near-zero weights (large δ) on a real
    prefill."""
    from macssim.policies import expert_labels_from_trace
    from macssim.trace import open_trace

    trace = open_trace(small_trace)
    step = trace.step(0)
    labels = torch.from_numpy(expert_labels_from_trace(trace))
    T = step.topk_ids.shape[1]
    plan = get_policy("macs", capacity_factor=0.75, delta=4.0, rho=0.5)(
        torch.from_numpy(step.scores), top_k=4, placement=torch.arange(32) // 4,
        token_gpu=torch.arange(T) % 8,
        modality=torch.from_numpy(step.modality), entropy=torch.from_numpy(step.entropy),
        topk_ids=torch.from_numpy(step.topk_ids), expert_labels=labels)
    assert plan.kept.shape[:-1] == step.topk_ids.shape[:-1]


@SETTINGS
@given(st.one_of(batches(), batches(max_tokens=400)), st.integers(1, 3), SCOPE,
       st.sampled_from(["token-drop", "expanded-drop", "macs"]))
def test_compiled_cpu_admission_equals_the_vectorised_path(b, layers, scope, name):
    """The CPU runs admission as compiled loops, CUDA as whole-array sorts: one plan.
    Layers repeat the batch with shuffled scores, so that buckets of several layers mix."""
    import macssim.policies._capacity as capacity

    g = torch.Generator().manual_seed(layers)
    scores = torch.stack([b["scores"]] + [b["scores"][:, torch.randperm(
        b["scores"].shape[1], generator=g)] for _ in range(layers - 1)])
    entropy = b["entropy"].expand(layers, -1)
    policy = get_policy(name, capacity_factor=b["gamma"], scope=scope)

    def plan(compiled):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(capacity, "COMPILED_ON_CPU", compiled)
            return policy(scores, top_k=b["k"], placement=b["placement"],
                          token_gpu=b["token_gpu"], modality=b["modality"], entropy=entropy,
                          expert_labels=b["labels"])

    assert_same_plan(plan(True), plan(False))
