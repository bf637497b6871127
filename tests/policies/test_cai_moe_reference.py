"""Expanded Drop against an independent reference written from CAI-MoE (arXiv 2503.05066,
Algorithm 2) and its code's ``expanded_token_drop`` (CASE-Lab-UMD/Capacity-Aware-MoE,
``modeling_hf/modeling_olmoe.py``), not from macssim's implementation: on each device,
a token × expert mask of candidates (top-k plus every expert local to the device), the
scores masked by it, each expert's column keeping its C best rows, C = ceil(γ·k·T/E)
with T the device's tokens, the kept weight the softmax score. Random scores, ties
excluded (the reference's ``torch.topk`` orders ties arbitrarily)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from macssim.policies import get_policy


def cai_moe_expanded_drop(scores, k, gamma, local_experts):
    """One device's tokens: [T, E] softmax scores -> [T, E] bool kept, as the reference."""
    T, E = scores.shape
    capacity = math.ceil(gamma * k * (T / E))
    mask = np.zeros((T, E), dtype=bool)
    for t in range(T):
        for e in np.argsort(-scores[t])[:k]:
            mask[t, e] = True
        for e in local_experts:
            mask[t, e] = True
    masked = scores * mask
    keep = np.zeros((T, E), dtype=bool)
    for e in range(E):
        best = np.argsort(-masked[:, e])[:capacity]
        keep[best, e] = True
    return mask & keep


def reference_pairs(scores, k, gamma, expert_gpu, token_gpu, scope):
    kept = set()
    gpus = sorted(set(token_gpu.tolist()))
    if scope == "rank":
        for g in gpus:
            rows = np.nonzero(token_gpu == g)[0]
            local = np.nonzero(expert_gpu == g)[0]
            got = cai_moe_expanded_drop(scores[rows], k, gamma, local)
            kept |= {(int(rows[t]), int(e)) for t, e in zip(*np.nonzero(got), strict=True)}
        return kept
    # One capacity over all tokens; each token's local experts are its own GPU's.
    T, E = scores.shape
    capacity = math.ceil(gamma * k * (T / E))
    mask = np.zeros((T, E), dtype=bool)
    for t in range(T):
        mask[t, np.argsort(-scores[t])[:k]] = True
        mask[t, expert_gpu == token_gpu[t]] = True
    masked = scores * mask
    for e in range(E):
        for t in np.argsort(-masked[:, e])[:capacity]:
            if mask[t, e]:
                kept.add((int(t), e))
    return kept


@pytest.mark.parametrize("scope", ["rank", "global"])
@pytest.mark.parametrize("seed", range(6))
def test_expanded_drop_equals_cai_moe_reference(seed, scope):
    rng = np.random.default_rng(seed)
    T, E, G, k = int(rng.integers(20, 200)), 16, 4, 4
    gamma = float(rng.choice([0.5, 1.0, 1.5]))
    logits = rng.standard_normal((T, E)) * 2 + rng.standard_normal(E)
    scores = torch.softmax(torch.from_numpy(logits).float(), dim=1)
    s = scores.numpy().astype(np.float64)
    for col in (s, s.T):  # ties excluded, in rows (top-k) and columns (top-C)
        srt = np.sort(col, axis=1)
        assert (np.diff(srt, axis=1) > 0).all()
    expert_gpu = np.arange(E) // (E // G)
    token_gpu = rng.integers(0, G, size=T)
    plan = get_policy("expanded-drop", capacity_factor=gamma, scope=scope)(
        scores, top_k=k, placement=torch.from_numpy(expert_gpu),
        token_gpu=torch.from_numpy(token_gpu))
    ids, kept = plan.expert_ids.numpy(), plan.kept.numpy()
    got = {(int(t), int(ids[t, j])) for t, j in zip(*np.nonzero(kept), strict=True)}
    assert got == reference_pairs(s, k, gamma, expert_gpu, token_gpu, scope)
    # The reference's weight for an expert it added is the token's softmax score.
    added = plan.rerouted.numpy()
    t, j = np.nonzero(added)
    np.testing.assert_array_equal(plan.weights.numpy()[t, j], s[t, ids[t, j]].astype(np.float32))
    assert added.any()  # the test exercises added local experts
