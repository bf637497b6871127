"""Slow twins of the policies: per-token Python loops that spell out the semantics the
vectorised code must match. Ties: higher priority first, then the earlier token; the
router's top-k by score, then lower expert id. Used only by tests."""

from __future__ import annotations

import math

import numpy as np

VISUAL = (1, 2)


def topk_ref(scores: np.ndarray, k: int) -> np.ndarray:
    return np.array([sorted(range(len(row)), key=lambda e: (-row[e], e))[:k] for row in scores],
                    dtype=np.int64).reshape(len(scores), k)


def capacity_ref(T: int, k: int, E: int, gamma: float) -> int:
    return math.ceil((T * k / E) * gamma)


def source_ref(token_gpu, scope):
    """The capacity source of each token: its GPU (rank) or one for all (global)."""
    return [int(g) if scope == "rank" else 0 for g in token_gpu]


def weights_ref(modality, entropy, delta, eps=1e-6, source=None):
    """w(x) = sigmoid(−δ·(H − μ)/(σ + ε)) over the visual tokens of the same source."""
    T = len(modality)
    source = [0] * T if source is None else source
    w = np.ones(T)
    if entropy is None:
        return w
    for s in set(source):
        vis = [i for i in range(T) if modality[i] in VISUAL and source[i] == s]
        if not vis:
            continue
        h = np.array([float(entropy[i]) for i in vis], dtype=np.float64)
        mu = h.mean()
        sigma = math.sqrt(((h - mu) ** 2).mean())
        for i, hi in zip(vis, h, strict=True):
            w[i] = 1.0 / (1.0 + math.exp(delta * (hi - mu) / (sigma + eps)))
    return w.astype(np.float32).astype(np.float64)  # the policies carry w in float32


def candidates_ref(scores, ids, gpu, token_gpu, expanded):
    """(token, expert) candidates: the top-k, plus (expanded) every expert on the token's
    GPU with a positive score that is not already in its top-k."""
    T, E = scores.shape
    out = []
    for t in range(T):
        mine = [int(e) for e in ids[t]]
        if expanded:
            mine += [e for e in range(E) if gpu[e] == token_gpu[t] and e not in ids[t]
                     and scores[t, e] > 0]
        out += [(t, e) for e in mine]
    return out


def first_fit_ref(cands, bucket_of, cap, size, prio):
    """Each bucket takes its candidates one by one in priority order (then token), each
    one that still fits: load + size <= capacity."""
    kept = set()
    for b in set(bucket_of(t, e) for t, e in cands):
        mine = sorted((c for c in cands if bucket_of(*c) == b), key=lambda c: (prio(*c), c[0]))
        load = 0.0
        for t, e in mine:
            if load + size[t] <= cap[b] + 1e-9 * max(cap[b], 1.0):
                load += size[t]
                kept.add((t, e))
    return kept


def token_drop_ref(scores, k, gamma, token_gpu, scope="rank", drop_policy="probs"):
    """Kept (token, expert) pairs and capacity per source."""
    T, E = scores.shape
    ids = topk_ref(scores, k)
    src = source_ref(token_gpu, scope)
    cap = {s: float(capacity_ref(src.count(s), k, E, gamma)) for s in set(src)}
    cands = candidates_ref(scores, ids, None, token_gpu, expanded=False)
    prio = (lambda t, e: -scores[t, e]) if drop_policy == "probs" else (lambda t, e: 0)
    kept = first_fit_ref(cands, lambda t, e: (src[t], e), {(s, e): cap[s] for s in cap
                                                            for e in range(E)},
                         np.ones(T), prio)
    return ids, kept, cap


def expanded_drop_ref(scores, k, gamma, gpu, token_gpu, scope="rank"):
    T, E = scores.shape
    ids = topk_ref(scores, k)
    src = source_ref(token_gpu, scope)
    cap = {(s, e): float(capacity_ref(src.count(s), k, E, gamma)) for s in set(src)
           for e in range(E)}
    cands = candidates_ref(scores, ids, gpu, token_gpu, expanded=True)
    kept = first_fit_ref(cands, lambda t, e: (src[t], e), cap, np.ones(T),
                         lambda t, e: -scores[t, e])
    return ids, kept, cap


def macs_ref(scores, k, gamma, gpu, token_gpu, modality, entropy, labels, delta=1.0, rho=0.5,
             min_capacity=1.0, capacity_basis="tokens", scope="rank"):
    T, E = scores.shape
    ids = topk_ref(scores, k)
    src = source_ref(token_gpu, scope)
    w = weights_ref(modality, entropy, delta, source=src)
    cap = {}
    for s in set(src):
        toks = [t for t in range(T) if src[t] == s]
        total = sum(w[t] for t in toks)
        n = len(toks) if capacity_basis == "tokens" else total
        base = float(math.ceil((n * k / E) * gamma))
        r_v = sum(w[t] for t in toks if modality[t] in VISUAL) / total
        for e in range(E):
            cap[(s, e)] = max(base * (1 + rho * labels[e] * (r_v - 0.5)), min_capacity)
    cands = candidates_ref(scores, ids, gpu, token_gpu, expanded=True)
    kept = first_fit_ref(cands, lambda t, e: (src[t], e), cap, w,
                         lambda t, e: (-w[t], -scores[t, e]))
    return ids, kept, cap, w


def plan_pairs(plan) -> set[tuple[int, int]]:
    """The (token, expert) pairs a single-layer plan computes."""
    ids, kept = plan.expert_ids.numpy(), plan.kept.numpy()
    return {(int(t), int(ids[t, j])) for t, j in zip(*np.nonzero(kept), strict=True)}
