"""Slow twins of the policies: per-token Python loops that spell out the semantics the
vectorised code must match (ties: higher priority first, then token, then slot; local
candidates by score, then lower expert id). Used only by tests."""

from __future__ import annotations

import math

import numpy as np

VISUAL = (1, 2)


def topk_ref(scores: np.ndarray, k: int) -> np.ndarray:
    return np.array([sorted(range(len(row)), key=lambda e: (-row[e], e))[:k] for row in scores],
                    dtype=np.int64).reshape(len(scores), k)


def capacity_ref(T: int, k: int, E: int, gamma: float) -> int:
    return math.ceil((T * k / E) * gamma)


def weights_ref(modality, entropy, delta, eps=1e-6):
    w = np.ones(len(modality))
    vis = [i for i, m in enumerate(modality) if m in VISUAL]
    if entropy is None or not vis:
        return w
    h = np.array([float(entropy[i]) for i in vis], dtype=np.float64)
    mu = h.mean()
    sigma = math.sqrt(((h - mu) ** 2).mean())
    for i, hi in zip(vis, h, strict=True):
        w[i] = 1.0 / (1.0 + math.exp(delta * (hi - mu) / (sigma + eps)))
    w = w.astype(np.float32).astype(np.float64)  # the policies carry w in float32
    return w


def admit_ref(scores, ids, cap, size, prio=None):
    """First pass: each expert admits its assignments by (prio desc, score desc, token,
    slot) while the running load stays <= capacity."""
    T, k = ids.shape
    kept = np.zeros((T, k), dtype=bool)
    for e in range(scores.shape[1]):
        slots = [(t, j) for t in range(T) for j in range(k) if ids[t, j] == e]
        slots.sort(key=lambda s: (-(prio[s[0]] if prio is not None else 0),
                                  -scores[s[0], e], s[0], s[1]))
        load = 0.0
        for t, j in slots:
            if load + size[t] <= cap[e] + 1e-9 * max(cap[e], 1.0):
                load += size[t]
                kept[t, j] = True
            else:
                break
    return kept


def reroute_ref(scores, ids, kept, gpu, cap, size, prio=None):
    T, k = ids.shape
    E = scores.shape[1]
    ids = ids.copy()
    load = np.zeros(E)
    for t in range(T):
        for j in range(k):
            if kept[t, j]:
                load[ids[t, j]] += size[t]
    taken = [set(ids[t].tolist()) for t in range(T)]
    rerouted = np.zeros((T, k), dtype=bool)
    pending = [(t, j) for t in range(T) for j in range(k) if not kept[t, j]]
    while pending:
        proposals, still = [], []
        for t, j in pending:
            g = gpu[ids[t, j]]
            local = sorted((e for e in range(E) if gpu[e] == g), key=lambda e: (-scores[t, e], e))
            choice = next((e for e in local if e not in taken[t] and scores[t, e] > 0
                           and cap[e] - load[e] + 1e-9 * max(cap[e], 1.0) >= size[t]), None)
            if choice is not None:
                proposals.append((t, j, choice))
        if not proposals:
            break
        seen, deduped = set(), []
        for t, j, e in proposals:           # token-major, slot order: the lowest slot wins
            if (t, e) in seen:
                still.append((t, j))
                continue
            seen.add((t, e))
            deduped.append((t, j, e))
        winners = set()
        for e in range(E):
            mine = [p for p in deduped if p[2] == e]
            mine.sort(key=lambda p: (-(prio[p[0]] if prio is not None else 0),
                                     -scores[p[0], e], p[0], p[1]))
            room, used = cap[e] - load[e] + 1e-9 * max(cap[e], 1.0), 0.0
            for t, j, _ in mine:
                if used + size[t] <= room + 1e-9 * max(room, 1.0):
                    used += size[t]
                    winners.add((t, j, e))
                else:
                    break
        for t, j, e in winners:
            ids[t, j] = e
            rerouted[t, j] = True
            taken[t].add(e)
            load[e] += size[t]
        won = {(t, j) for t, j, _ in winners}
        pending = [(t, j) for t, j, _ in deduped if (t, j) not in won] + still
        pending.sort()
    return ids, kept | rerouted, rerouted


def token_drop_ref(scores, k, gamma, drop_policy="probs"):
    T, E = scores.shape
    ids = topk_ref(scores, k)
    cap = np.full(E, float(capacity_ref(T, k, E, gamma)))
    s = scores if drop_policy == "probs" else np.zeros_like(scores)
    return ids, admit_ref(s, ids, cap, np.ones(T))


def expanded_drop_ref(scores, k, gamma, gpu):
    T, E = scores.shape
    ids, kept = token_drop_ref(scores, k, gamma)
    cap = np.full(E, float(capacity_ref(T, k, E, gamma)))
    return reroute_ref(scores, ids, kept, gpu, cap, np.ones(T))


def macs_ref(scores, k, gamma, gpu, modality, entropy, labels, delta=1.0, rho=0.5,
             min_capacity=1.0, capacity_basis="tokens"):
    T, E = scores.shape
    ids = topk_ref(scores, k)
    w = weights_ref(modality, entropy, delta)
    base = float(capacity_ref(T, k, E, gamma) if capacity_basis == "tokens"
                 else math.ceil((w.sum() * k / E) * gamma))
    r_v = sum(w[i] for i in range(T) if modality[i] in VISUAL) / w.sum()
    if 0 < r_v < 1:
        cap = np.array([max(base * (1 + rho * labels[e] * (r_v - 0.5)), min_capacity)
                        for e in range(E)])
    else:
        cap = np.full(E, max(base, min_capacity))
    kept = admit_ref(scores, ids, cap, w, prio=w)
    new_ids, kept, rerouted = reroute_ref(scores, ids, kept, gpu, cap, w, prio=w)
    return new_ids, kept, rerouted, cap, w
